//! Who may read the pages and the JSON API, and act on runs: users (argon2id
//! password hashes in `state/users/<name>`), API tokens (`state/tokens/<id>`, the
//! secret stored as its sha256), and the server's login sessions (in memory: a
//! restart logs everyone out). Agent routes, iPXE and the CAS have checks of their
//! own and need none of this.
use anyhow::{Context, Result, bail};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::fsutil::write_atomic;
use crate::state::{State, check_name};

/// What a login may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read pages and the JSON API.
    Viewer,
    /// Read, and act: abort, release, retry, approve, power, issue.
    Operator,
}

impl Role {
    /// `viewer` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    /// Parses `viewer` or `operator`.
    pub fn parse(s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => bail!("role {other:?}: use viewer or operator"),
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User or token name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Longest password accepted (argon2 takes any length; a bound keeps a request's
/// hashing cost bounded).
pub const MAX_PASSWORD: usize = 1024;

/// Largest users/ or tokens/ file read.
const MAX_RECORD: u64 = 4096;

fn hasher() -> argon2::Argon2<'static> {
    // argon2id, 19 MiB, 2 passes, 1 lane: OWASP's recommended minimum.
    argon2::Argon2::default()
}

fn random_hex<const N: usize>() -> String {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Adds (or replaces) user `name` with `password` (hashed with argon2id; the clear
/// password is never stored or logged).
pub fn add_user(state: &State, name: &str, password: &str, role: Role) -> Result<()> {
    check_name(name, "user")?;
    if password.len() < 8 || password.len() > MAX_PASSWORD {
        bail!("a password is 8 to {MAX_PASSWORD} bytes");
    }
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).context("random salt")?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = hasher()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string();
    let dir = state.root.join("users");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(
        &dir.join(name),
        format!("{}\n{hash}\n", role.as_str()).as_bytes(),
        0o600,
    )
}

/// Removes user `name`.
pub fn remove_user(state: &State, name: &str) -> Result<()> {
    check_name(name, "user")?;
    std::fs::remove_file(state.root.join("users").join(name))
        .with_context(|| format!("no user {name}"))
}

/// A hash to verify against when the user does not exist, so a wrong name costs
/// what a wrong password does.
static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let salt = SaltString::encode_b64(b"kiln-no-such-user").expect("a fixed salt");
    hasher()
        .hash_password(b"no such user", &salt)
        .expect("hashing a fixed password")
        .to_string()
});

/// The user, when `password` is theirs.
pub fn check_password(state: &State, name: &str, password: &str) -> Option<Identity> {
    if password.len() > MAX_PASSWORD {
        return None;
    }
    let record = check_name(name, "user").ok().and_then(|()| {
        kiln_protocol::io::read_text_capped(
            &state.root.join("users").join(name),
            MAX_RECORD,
            "user",
        )
        .ok()
    });
    let (role, hash) = record
        .as_deref()
        .and_then(|r| r.split_once('\n'))
        .map_or((None, DUMMY.as_str()), |(role, h)| {
            (Role::parse(role).ok(), h.trim())
        });
    let ok = PasswordHash::new(hash)
        .ok()
        .is_some_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok());
    match (ok, role) {
        (true, Some(role)) => Some(Identity {
            name: name.to_string(),
            role,
        }),
        _ => None,
    }
}

fn sha_hex(s: &str) -> String {
    kiln_protocol::Sha256::of(s.as_bytes()).to_string()
}

/// Creates an API token for `name` with `role`; returns it (shown once: only its
/// sha256 is stored).
pub fn create_token(state: &State, name: &str, role: Role) -> Result<String> {
    check_name(name, "token")?;
    let id = random_hex::<8>();
    let secret = random_hex::<24>();
    let dir = state.root.join("tokens");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(
        &dir.join(&id),
        format!("{name}\n{}\n{}\n", role.as_str(), sha_hex(&secret)).as_bytes(),
        0o600,
    )?;
    Ok(format!("kiln_{id}_{secret}"))
}

/// Removes the token with `id` (the part after `kiln_`, before the next `_`).
pub fn remove_token(state: &State, id: &str) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("token id {id:?}: hex digits, as `token list` shows");
    }
    std::fs::remove_file(state.root.join("tokens").join(id))
        .with_context(|| format!("no token {id}"))
}

/// Every token: id, name, role.
pub fn tokens(state: &State) -> Result<Vec<(String, String, Role)>> {
    let dir = state.root.join("tokens");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let Ok(text) = kiln_protocol::io::read_text_capped(&e.path(), MAX_RECORD, "token") else {
            continue;
        };
        let mut l = text.lines();
        if let (Some(name), Some(role)) = (l.next(), l.next().and_then(|r| Role::parse(r).ok())) {
            out.push((id, name.to_string(), role));
        }
    }
    out.sort();
    Ok(out)
}

/// The identity of a bearer token, if it is one of ours.
pub fn check_token(state: &State, token: &str) -> Option<Identity> {
    let rest = token.strip_prefix("kiln_")?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || secret.len() > 128 {
        return None;
    }
    let text = kiln_protocol::io::read_text_capped(
        &state.root.join("tokens").join(id),
        MAX_RECORD,
        "token",
    )
    .ok()?;
    let mut l = text.lines();
    let (name, role, hash) = (l.next()?, Role::parse(l.next()?).ok()?, l.next()?);
    // Both sides are sha256 hex of the same length: compare without an early exit.
    let given = sha_hex(secret);
    let same = given.len() == hash.len()
        && given
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then(|| Identity {
        name: name.to_string(),
        role,
    })
}

/// A login session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in.
    pub who: Identity,
    /// The token every form of this session carries.
    pub csrf: String,
    expires: Instant,
}

/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Wrong passwords one address may try per [`FAIL_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window of [`MAX_FAILURES`].
pub const FAIL_WINDOW: Duration = Duration::from_secs(300);
/// Most sessions held (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// Most addresses whose failures are counted.
const MAX_TRACKED: usize = 10_000;

/// The server's sessions and login-failure counts.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Sessions {
    /// A new session for `who`; returns its id (the cookie's value).
    pub fn open(&self, who: Identity) -> (String, Session) {
        let id = random_hex::<32>();
        let s = Session {
            who,
            csrf: random_hex::<16>(),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.len() >= MAX_SESSIONS {
            let now = Instant::now();
            live.retain(|_, s| s.expires > now);
            if live.len() >= MAX_SESSIONS
                && let Some(oldest) = live
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session with cookie value `id`.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session with cookie value `id`.
    pub fn close(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Whether `addr` may try a password now.
    pub fn may_try(&self, addr: IpAddr) -> bool {
        let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match f.get(&addr) {
            Some((n, since)) => *n < MAX_FAILURES || since.elapsed() >= FAIL_WINDOW,
            None => true,
        }
    }

    /// Counts a wrong password from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if f.len() >= MAX_TRACKED {
            f.retain(|_, (_, since)| since.elapsed() < FAIL_WINDOW);
        }
        let e = f.entry(addr).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAIL_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Forgets `addr`'s failures (after a right password).
    pub fn succeeded(&self, addr: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = State::init(&d.path().join("s")).unwrap();
        (d, s)
    }

    #[test]
    fn passwords_are_stored_hashed_and_checked() {
        let (_d, s) = state();
        add_user(&s, "ada", "correct horse", Role::Operator).unwrap();
        let stored = std::fs::read_to_string(s.root.join("users/ada")).unwrap();
        assert!(!stored.contains("correct horse"), "{stored}");
        assert!(stored.contains("$argon2id$"), "{stored}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(s.root.join("users/ada"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert_eq!(
            check_password(&s, "ada", "correct horse"),
            Some(Identity {
                name: "ada".into(),
                role: Role::Operator
            })
        );
        assert_eq!(check_password(&s, "ada", "wrong horse"), None);
        assert_eq!(check_password(&s, "bob", "correct horse"), None);
        assert_eq!(check_password(&s, "../ada", "correct horse"), None);
        assert!(add_user(&s, "short", "1234567", Role::Viewer).is_err());
    }

    #[test]
    fn tokens_are_shown_once_and_stored_as_digests() {
        let (_d, s) = state();
        let t = create_token(&s, "ci", Role::Viewer).unwrap();
        let id = &t[5..21];
        let stored = std::fs::read_to_string(s.root.join("tokens").join(id)).unwrap();
        assert!(!stored.contains(&t[22..]), "{stored}");
        assert_eq!(check_token(&s, &t).map(|i| i.role), Some(Role::Viewer));
        let mut bad = t.clone();
        bad.pop();
        bad.push('x');
        assert_eq!(check_token(&s, &bad), None);
        assert_eq!(check_token(&s, "kiln_../../key_x"), None);
        remove_token(&s, id).unwrap();
        assert_eq!(check_token(&s, &t), None);
    }

    #[test]
    fn five_wrong_passwords_from_one_address_stop_it_trying() {
        let s = Sessions::default();
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let b: IpAddr = "10.0.0.10".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(s.may_try(a));
            s.failed(a);
        }
        assert!(!s.may_try(a));
        assert!(s.may_try(b), "another address is not held back");
    }
}
