//! Files in and out of a run: artifact uploads (online) or kept blobs (offline),
//! CAS downloads into the work folder's cache, or a local CAS folder (offline);
//! every object is checked against its sha256.
use kiln_protocol::{RunId, SecretKey, Sha256};
use sha2::Digest;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::{Backoff, Client, Fail, Fetched, Offset, Put};

/// How long uploads and downloads keep retrying transient failures.
pub const TRANSFER_LIMIT: Duration = Duration::from_secs(120);

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Reads an open file through once from its start: its digest and length, in
/// memory flat in the file's size.
fn hash_file(file: &mut fs::File) -> io::Result<(Sha256, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((Sha256(h.finalize().into()), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

/// The digest of a file's bytes, streamed.
pub fn sha_of_file(path: &Path) -> io::Result<Sha256> {
    Ok(hash_file(&mut fs::File::open(path)?)?.0)
}

/// Uploads an open file as an artifact of `run`, signed by the run's claim key:
/// hashed in one streaming pass (the digest names the object), then sent from disk
/// as it is read. A broken connection, a 503 or another 5xx is retried with
/// [`Backoff`] for [`TRANSFER_LIMIT`], each retry asking the coordinator how many
/// bytes it holds and sending only the rest. A 413 (the run's upload quota, or the
/// artifact cap) is an error of kind [`io::ErrorKind::QuotaExceeded`]: the artifact
/// is not stored, nothing else is wrong.
pub fn upload_artifact(
    c: &Client,
    run: &RunId,
    claim: &SecretKey,
    mut file: fs::File,
) -> io::Result<(Sha256, u64)> {
    let (sha, len) = hash_file(&mut file)?;
    let deadline = Instant::now() + TRANSFER_LIMIT;
    let mut backoff = Backoff::default();
    loop {
        let put = match c.artifact_offset(run, &sha, len, claim) {
            Ok(Offset::Stored) => return Ok((sha, len)),
            Ok(Offset::Have(have)) => {
                // All bytes staged: send the last one again, so the coordinator
                // finishes the upload (a range cannot be empty).
                let from = have.min(len.saturating_sub(1));
                file.seek(SeekFrom::Start(from))?;
                let body = io::Read::take(&mut file, len - from);
                c.put_artifact(run, &sha, len, from, body, claim)
            }
            Err(put) => put,
        };
        match put {
            Put::Stored => return Ok((sha, len)),
            Put::OverQuota(why) => {
                return Err(io::Error::new(
                    io::ErrorKind::QuotaExceeded,
                    format!("over the run's upload quota or the artifact cap ({why})"),
                ));
            }
            Put::Refused(why) => {
                return Err(other(format!("artifact {sha} refused: {why}")));
            }
            Put::Resync if Instant::now() < deadline => {
                log::warn!(
                    "uploading artifact {sha}: the coordinator holds another part (asking again)"
                );
            }
            Put::Retry(why) if Instant::now() < deadline => {
                log::warn!("uploading artifact {sha}: {why} (resuming)");
                std::thread::sleep(backoff.next_delay());
            }
            Put::Resync => {
                return Err(other(format!(
                    "uploading artifact {sha}: no agreement on the offset"
                )));
            }
            Put::Retry(why) => {
                return Err(other(format!("uploading artifact {sha}: {why}")));
            }
        }
    }
}

/// Offline: keeps a copy of the open file in `work/blobs/<sha>` for the bundle,
/// copied as it is hashed (memory flat in the file's size).
pub fn keep_blob(work: &Path, mut file: fs::File) -> io::Result<(Sha256, u64)> {
    let dir = work.join("blobs");
    fs::create_dir_all(&dir)?;
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".in-{}.tmp", kiln_protocol::hex(&nonce)));
    let copied = (|| {
        let mut out = fs::File::create(&tmp)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            len += n as u64;
        }
        out.sync_all()?;
        Ok::<_, io::Error>((Sha256(h.finalize().into()), len))
    })();
    let (sha, len) = match copied {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let dest = dir.join(sha.to_string());
    if dest.exists() {
        fs::remove_file(&tmp)?;
    } else {
        fs::rename(&tmp, &dest)?;
    }
    Ok((sha, len))
}

/// The kept blob of an offline run.
pub fn blob_path(work: &Path, sha: &Sha256) -> PathBuf {
    work.join("blobs").join(sha.to_string())
}

/// Online: a CAS object in the work folder's cache, downloaded and checked if needed.
pub fn download_cas(c: &Client, work: &Path, sha: &Sha256) -> io::Result<PathBuf> {
    let dir = work.join("cas");
    fs::create_dir_all(&dir)?;
    let dest = dir.join(sha.to_string());
    if dest.is_file() {
        return Ok(dest);
    }
    let tmp = dir.join(format!("{sha}.part"));
    let deadline = Instant::now() + TRANSFER_LIMIT;
    let mut backoff = Backoff::default();
    loop {
        // Keep what an earlier try (or an earlier start of the agent) received.
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&tmp)?;
        match c.get_cas(sha, &mut f) {
            Ok(how) => {
                f.sync_all()?;
                drop(f);
                let got = sha_of_file(&tmp)?;
                if got != *sha {
                    let _ = fs::remove_file(&tmp);
                    if how == Fetched::Resumed {
                        // The kept bytes may be stale: once more from byte 0.
                        log::warn!(
                            "cas object {sha}: resumed download hashes to {got}; starting over"
                        );
                        continue;
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("cas object {sha}: downloaded bytes hash to {got}"),
                    ));
                }
                fs::rename(&tmp, &dest)?;
                return Ok(dest);
            }
            Err(Fail::Refused(refused)) => {
                let _ = fs::remove_file(&tmp);
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cas object {sha}: {refused}"),
                ));
            }
            Err(Fail::Transient(why)) if Instant::now() < deadline => {
                log::warn!("downloading cas object {sha}: {why} (retrying)");
                std::thread::sleep(backoff.next_delay());
            }
            Err(Fail::Transient(why)) => {
                return Err(other(format!("downloading cas object {sha}: {why}")));
            }
        }
    }
}

/// Offline: a CAS object in a local folder, checked against its digest.
pub fn local_cas(cas_dir: Option<&Path>, sha: &Sha256) -> io::Result<PathBuf> {
    let Some(dir) = cas_dir else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cas object {sha}: no CAS folder for this offline run (pass --cas DIR)"),
        ));
    };
    let p = dir.join(sha.to_string());
    let got = sha_of_file(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("cas object {}: {e}", p.display())))?;
    if got != *sha {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cas object {}: bytes hash to {got}", p.display()),
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::serve;

    #[test]
    fn local_cas_checks_the_digest() {
        let d = tempfile::tempdir().unwrap();
        let sha = Sha256::of(b"hello");
        fs::write(d.path().join(sha.to_string()), b"hello").unwrap();
        assert!(local_cas(Some(d.path()), &sha).is_ok());
        fs::write(d.path().join(sha.to_string()), b"hellO").unwrap();
        let e = local_cas(Some(d.path()), &sha).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(local_cas(None, &sha).is_err());
    }

    #[test]
    fn kept_blobs_are_named_by_digest() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.txt");
        fs::write(&f, b"artifact").unwrap();
        let (sha, size) = keep_blob(d.path(), fs::File::open(&f).unwrap()).unwrap();
        assert_eq!(size, 8);
        assert_eq!(fs::read(blob_path(d.path(), &sha)).unwrap(), b"artifact");
    }

    fn body() -> Vec<u8> {
        (0..60_000u32).map(|i| (i % 251) as u8).collect()
    }

    fn quick(url: &str) -> Client {
        Client::with_timeouts(
            url,
            crate::client::Timeouts {
                connect: Duration::from_secs(2),
                api: Duration::from_secs(1),
                transfer_idle: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn a_slow_download_succeeds_while_bytes_keep_coming() {
        let data = body();
        let sha = Sha256::of(&data);
        let d2 = data.clone();
        // 3 s in all, a chunk every 100 ms: over the 1 s API bound, never idle 1 s.
        let (url, _rx) = serve(vec![Box::new(move |_h, s| {
            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", d2.len()).unwrap();
            for c in d2.chunks(2_000) {
                s.write_all(c).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })]);
        let work = tempfile::tempdir().unwrap();
        let p = download_cas(&quick(&url), work.path(), &sha).unwrap();
        assert_eq!(fs::read(p).unwrap(), data);
    }

    #[test]
    fn a_broken_download_resumes_with_range_and_a_200_restarts_cleanly() {
        let data = body();
        let sha = Sha256::of(&data);
        let (a, b) = (data.clone(), data.clone());
        let c2 = data.clone();
        let (url, rx) = serve(vec![
            // Half the body, then the connection drops.
            Box::new(move |_h, s| {
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", a.len()).unwrap();
                s.write_all(&a[..25_000]).unwrap();
            }),
            // The rest, as the coordinator answers a range.
            Box::new(move |_h, s| {
                let n = b.len();
                write!(
                    s,
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 25000-{}/{n}\r\nContent-Length: {}\r\n\r\n",
                    n - 1,
                    n - 25_000
                )
                .unwrap();
                s.write_all(&b[25_000..]).unwrap();
            }),
        ]);
        let work = tempfile::tempdir().unwrap();
        let p = download_cas(&quick(&url), work.path(), &sha).unwrap();
        assert_eq!(fs::read(p).unwrap(), data);
        assert!(!rx.recv().unwrap().contains("range:"));
        assert!(rx.recv().unwrap().contains("range: bytes=25000-"));

        // A server that ignores Range: the kept bytes are dropped, not duplicated.
        let work = tempfile::tempdir().unwrap();
        fs::create_dir_all(work.path().join("cas")).unwrap();
        fs::write(work.path().join(format!("cas/{sha}.part")), &data[..10_000]).unwrap();
        let (url, rx) = serve(vec![Box::new(move |_h, s| {
            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", c2.len()).unwrap();
            s.write_all(&c2).unwrap();
        })]);
        let p = download_cas(&quick(&url), work.path(), &sha).unwrap();
        assert_eq!(fs::read(p).unwrap(), data);
        assert!(rx.recv().unwrap().contains("range: bytes=10000-"));
    }

    /// Reads a request body of `n` bytes after its head.
    fn body_of(s: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    fn answer(s: &mut std::net::TcpStream, status: &str, extra: &str) {
        write!(
            s,
            "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
    }

    fn claim_key() -> SecretKey {
        SecretKey::from_seed([7; 32])
    }

    #[test]
    fn a_503_is_retried_and_the_upload_resumes_from_the_offset_the_coordinator_holds() {
        let data = body();
        let sha = Sha256::of(&data);
        let n = data.len();
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        fs::write(&f, &data).unwrap();
        let rest = data[20_000..].to_vec();
        let (url, rx) = serve(vec![
            Box::new(|_h, s| answer(s, "204 No Content", "Kiln-Upload-Offset: 0\r\n")),
            // The whole body read, then busy.
            Box::new(move |_h, s| {
                assert_eq!(body_of(s, n), data);
                answer(s, "503 Service Unavailable", "");
            }),
            Box::new(|_h, s| answer(s, "204 No Content", "Kiln-Upload-Offset: 20000\r\n")),
            Box::new(move |_h, s| {
                assert_eq!(body_of(s, n - 20_000), rest);
                answer(s, "201 Created", "");
            }),
        ]);
        let c = quick(&url);
        let run = RunId([1; 16]);
        let file = fs::File::open(&f).unwrap();
        let got = upload_artifact(&c, &run, &claim_key(), file).unwrap();
        assert_eq!(got, (sha, n as u64));
        let heads: Vec<String> = rx.iter().take(4).collect();
        assert!(heads[0].starts_with("head "), "{heads:?}");
        assert!(
            heads[0].contains(&format!("kiln-upload-length: {n}")),
            "{heads:?}"
        );
        assert!(heads[1].starts_with("put "), "{heads:?}");
        assert!(
            heads[1].contains(&format!("content-length: {n}")),
            "{heads:?}"
        );
        assert!(!heads[1].contains("content-range"), "{heads:?}");
        assert!(!heads[1].contains("chunked"), "{heads:?}");
        assert!(heads[2].starts_with("head "), "{heads:?}");
        assert!(heads[3].starts_with("put "), "{heads:?}");
        assert!(
            heads[3].contains(&format!("content-range: bytes 20000-{}/{n}", n - 1)),
            "{heads:?}"
        );
        assert!(
            heads[3].contains(&format!("content-length: {}", n - 20_000)),
            "{heads:?}"
        );
    }

    #[test]
    fn over_the_quota_is_its_own_error_and_is_not_retried() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        fs::write(&f, body()).unwrap();
        let n = body().len();
        // Refused when asking for the offset, or on the PUT itself.
        let (url, rx) = serve(vec![
            Box::new(|_h, s| answer(s, "413 Payload Too Large", "")),
            Box::new(|_h, s| answer(s, "204 No Content", "Kiln-Upload-Offset: 0\r\n")),
            Box::new(move |_h, s| {
                body_of(s, n);
                answer(s, "413 Payload Too Large", "");
            }),
        ]);
        let c = quick(&url);
        let run = RunId([1; 16]);
        for _ in 0..2 {
            let e =
                upload_artifact(&c, &run, &claim_key(), fs::File::open(&f).unwrap()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::QuotaExceeded, "{e}");
            assert!(e.to_string().contains("over the run's upload quota"), "{e}");
        }
        assert_eq!(rx.iter().take(3).count(), 3);
        assert!(rx.try_recv().is_err(), "a 413 was retried");
    }
}
