//! Ticket signing and every refusal a verifier must make.
use crate::{sample_ticket, test_key};
use kiln_protocol::*;

fn file(t: &Ticket, key: &SecretKey) -> Vec<u8> {
    SignedTicket::sign(t, key).to_file()
}

fn check(bytes: &[u8], trusted: &[PublicKey]) -> Result<Ticket, Error> {
    let t = SignedTicket::from_file(bytes)?.verify(trusted)?;
    t.check_time(1_700_000_100)?;
    t.check_host(&[Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56])], Some("SN1"))?;
    Ok(t)
}

#[test]
fn signed_ticket_round_trips() {
    let key = test_key(1);
    let t = sample_ticket();
    let bytes = file(&t, &key);
    assert_eq!(&bytes[..8], TICKET_MAGIC);
    assert_eq!(check(&bytes, &[key.public()]), Ok(t));
}

#[test]
fn every_flipped_byte_is_refused() {
    let key = test_key(1);
    let bytes = file(&sample_ticket(), &key);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert!(
                check(&b, &[key.public()]).is_err(),
                "flipping bit {bit:#x} of byte {i} was accepted"
            );
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let key = test_key(1);
    let bytes = file(&sample_ticket(), &key);
    for n in 0..bytes.len() {
        assert!(
            check(&bytes[..n], &[key.public()]).is_err(),
            "truncated to {n} accepted"
        );
    }
}

#[test]
fn other_key_is_untrusted() {
    let bytes = file(&sample_ticket(), &test_key(2));
    let err = check(&bytes, &[test_key(1).public()]).unwrap_err();
    assert!(matches!(err, Error::UntrustedKey(_)), "{err}");
}

#[test]
fn key_id_collision_still_needs_the_signature() {
    // A ticket claiming the trusted key's id but signed by another key.
    let mut st = SignedTicket::sign(&sample_ticket(), &test_key(2));
    st.key_id = test_key(1).public().key_id();
    let err = check(&st.to_file(), &[test_key(1).public()]).unwrap_err();
    assert_eq!(err, Error::BadSignature);
}

#[test]
fn expired_and_wrong_host() {
    let key = test_key(1);
    let mut t = sample_ticket();
    t.not_after = 1_700_000_050;
    let err = check(&file(&t, &key), &[key.public()]).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired"));

    let mut t = sample_ticket();
    t.host.macs = vec![Mac([2; 6])];
    let err = check(&file(&t, &key), &[key.public()]).unwrap_err();
    assert!(err.to_string().contains("02:02:02:02:02:02"), "{err}");

    let mut t = sample_ticket();
    t.host.serial = Some("OTHER".into());
    let err = check(&file(&t, &key), &[key.public()]).unwrap_err();
    assert!(err.to_string().contains("OTHER"), "{err}");

    let mut t = sample_ticket();
    t.host.macs.clear();
    t.host.serial = None;
    assert!(matches!(
        check(&file(&t, &key), &[key.public()]),
        Err(Error::HostMismatch(_))
    ));
}

#[test]
fn unknown_versions_are_named() {
    let key = test_key(1);
    // A version 1 file (before enrolled host keys), a version 2 file (before container
    // services and holds) and a future version 4.
    for v in [1u8, 2, 4] {
        let mut bytes = file(&sample_ticket(), &key);
        bytes[7] = v;
        assert_eq!(
            check(&bytes, &[key.public()]),
            Err(Error::UnsupportedVersion(v as u16))
        );
    }

    let mut t = sample_ticket();
    t.version = 9;
    assert_eq!(
        check(&file(&t, &key), &[key.public()]),
        Err(Error::UnsupportedVersion(9))
    );
}

#[test]
fn garbage_is_refused_without_panic() {
    let key = test_key(1);
    let mut seed = [0u8; 4096];
    getrandom::getrandom(&mut seed).unwrap();
    for n in [0, 1, 7, 8, 9, 100, 4096] {
        assert!(check(&seed[..n], &[key.public()]).is_err());
        let mut with_magic = TICKET_MAGIC.to_vec();
        with_magic.extend_from_slice(&seed[..n]);
        assert!(check(&with_magic, &[key.public()]).is_err());
    }
    assert!(matches!(
        SignedTicket::from_file(b"hello world, not a ticket"),
        Err(Error::BadMagic(_))
    ));
}

#[test]
fn key_files() {
    let key = test_key(5);
    let line = key.public().to_line("ops@router");
    assert!(line.starts_with("kiln-ed25519 "));
    assert!(line.ends_with(" ops@router"));
    assert_eq!(
        PublicKey::from_line(&format!("# comment\n{line}\n")),
        Ok(key.public())
    );
    assert!(key.public().fingerprint().starts_with("SHA256:"));
    assert_eq!(key.public().fingerprint().len(), 7 + 43);
    let sk = SecretKey::from_line(&key.to_line()).unwrap();
    assert_eq!(sk.public(), key.public());
    for bad in [
        "",
        "ssh-ed25519 AAAA",
        "kiln-ed25519 !!!",
        "kiln-ed25519 AAAA",
    ] {
        assert!(PublicKey::from_line(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn batches_verify_with_the_claim_key_only() {
    let agent = test_key(3);
    let batch = Batch {
        run: RunId([1; 16]),
        frames: vec![Frame {
            seq: 1,
            at_ms: 5,
            event: Event::RunFinished {
                outcome: Outcome::Passed,
            },
        }],
    };
    let sealed = batch.seal(&agent);
    assert_eq!(Batch::open(&sealed, &agent.public()), Ok(batch.clone()));
    assert_eq!(
        Batch::open(&sealed, &test_key(4).public()),
        Err(Error::BadSignature)
    );
    for i in 0..sealed.len() {
        let mut b = sealed.clone();
        b[i] ^= 0x40;
        assert!(Batch::open(&b, &agent.public()).is_err(), "byte {i}");
    }
    let req = SecretsRequest {
        run: RunId([1; 16]),
        names: vec!["k".into()],
        at_ms: 1,
    };
    let sealed = req.seal(&agent);
    assert_eq!(SecretsRequest::open(&sealed, &agent.public()), Ok(req));
    assert!(SecretsRequest::open(&sealed, &test_key(4).public()).is_err());
}
