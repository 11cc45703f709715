//! TLS trust for BMCs. BMCs mostly present self-signed certificates, so trust is
//! explicit per host: the certificate (or the CA that signed it) is pinned with
//! `--power-ca FILE`, or every certificate is accepted with `--power-insecure`.
//! A pinned file matches when the BMC presents exactly that certificate, or one that
//! chains to it (then the name is checked too). Handshake signatures are always
//! verified.
use anyhow::{Context, Result, bail};
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// How a BMC's certificate is trusted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// PEM text of one or more certificates: the BMC's own or its CA.
    Pinned(String),
    /// Any certificate (`--power-insecure`).
    Insecure,
}

/// Largest `--power-ca` file read.
pub const MAX_CA_BYTES: u64 = 64 << 10;

/// The certificates in PEM text; an error when there are none.
pub fn parse_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("reading PEM certificates: {e:?}"))?;
    if certs.is_empty() {
        bail!("no PEM certificate (-----BEGIN CERTIFICATE-----) found");
    }
    Ok(certs)
}

#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    pinned: Vec<CertificateDer<'static>>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    insecure: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure
            || self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.chain {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map_err(|e| {
                    rustls::Error::General(format!(
                        "the BMC's certificate is neither the pinned one nor signed by it ({e})"
                    ))
                }),
            None => Err(rustls::Error::General(
                "the BMC's certificate is not the pinned one".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts as `trust` says.
pub fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>> {
    // ring, not aws-lc-rs (which needs cmake and a C toolchain of its own); a BMC
    // link gains nothing from the post-quantum key exchange ring's provider lacks.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (pinned, insecure) = match trust {
        Trust::Pinned(pem) => (parse_pem(pem).context("the pinned BMC certificate")?, false),
        Trust::Insecure => (Vec::new(), true),
    };
    let chain = if pinned.is_empty() {
        None
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(pinned.iter().cloned());
        if added == 0 {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        }
    };
    let verifier = Verifier {
        provider: provider.clone(),
        pinned,
        chain,
        insecure,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}
