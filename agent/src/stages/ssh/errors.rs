//! Naming the reason of an ssh failure (exit 255) from its stderr, so that
//! infrastructure errors carry why: refused, authentication, host key, timeout.

/// The last non-empty line of `s`.
pub fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// Names the reason of an ssh failure (exit 255) from its stderr.
pub fn classify(stderr: &str) -> String {
    let has = |p: &str| stderr.contains(p);
    let why =
        if has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("Host key verification failed") {
            if has("No ") && has("host key is known") {
                "host key not known (pinned key of another type?)"
            } else {
                "host key mismatch"
            }
        } else if has("Permission denied") || has("Too many authentication failures") {
            "authentication failed"
        } else if has("Connection refused") {
            "connection refused"
        } else if has("Could not resolve hostname") || has("Name or service not known") {
            "cannot resolve host"
        } else if has("timed out") {
            "connection timed out"
        } else if has("No route to host") || has("Network is unreachable") {
            "host unreachable"
        } else if has("Connection closed")
            || has("Connection reset")
            || has("kex_exchange_identification")
        {
            "connection closed"
        } else if has("Load key") || has("invalid format") {
            "bad private key"
        } else {
            "ssh failed"
        };
    match last_line(stderr) {
        "" => why.to_string(),
        l => format!("{why}: {l}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ssh_errors() {
        assert!(
            classify("ssh: connect to host 127.0.0.1 port 2: Connection refused\n")
                .starts_with("connection refused: ssh: connect")
        );
        assert!(
            classify("root@h: Permission denied (publickey).\n")
                .starts_with("authentication failed")
        );
        assert!(classify("@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!\nHost key verification failed.\n").starts_with("host key mismatch"));
        assert_eq!(classify(""), "ssh failed");
    }
}
