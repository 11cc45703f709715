//! Setup commands: `init` (idempotent, private key), `key`, `host add`, `secret set`.
use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn init_is_idempotent_and_the_key_is_private() {
    let (_tmp, state) = fresh_state();
    let key_file = state.join("key/coordinator.key");
    let before = std::fs::read(&key_file).expect("key");
    assert_eq!(
        std::fs::metadata(&key_file)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let again = kc(&state, &["init"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        std::fs::read(&key_file).expect("key"),
        before,
        "init changed the key"
    );
    let key = kc(&state, &["key"]);
    assert_eq!(key.code, 0);
    assert_eq!(again.stdout, key.stdout, "init and key print the same key");
    let lines: Vec<&str> = key.stdout.lines().collect();
    assert!(lines[0].starts_with("kiln-ed25519 "), "{}", key.stdout);
    assert!(lines[1].starts_with("SHA256:"), "{}", key.stdout);
    let pubkey = kiln_protocol::PublicKey::from_line(lines[0]).expect("key line parses");
    assert_eq!(pubkey.fingerprint(), lines[1]);
    let file = std::fs::read_to_string(state.join("key/coordinator.pub")).expect("pub");
    assert_eq!(file.trim(), lines[0]);
}

#[test]
fn host_add_validates_and_normalizes() {
    let (_tmp, state) = fresh_state();
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "rack1",
            "--mac",
            "52-54-00-AB-CD-EF",
            "--mac",
            "525400abcd01",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let hosts = std::fs::read_to_string(state.join("hosts.toml")).expect("hosts");
    assert!(
        hosts.contains("\"52:54:00:ab:cd:ef\"") && hosts.contains("\"52:54:00:ab:cd:01\""),
        "{hosts}"
    );
    let bind = [
        "host", "add", "rack1", "--serial", "SN 1", "--image", "agent",
    ];
    let o = kc(&state, &bind);
    assert_eq!(o.code, 2, "an unknown image must be refused: {}", o.stdout);
    assert!(o.stderr.contains("no image \"agent\""), "{}", o.stderr);
    let kernel = write(&state, "k.bin", "kernel");
    let initrd = write(&state, "i.bin", "initrd");
    let o = kc(
        &state,
        &[
            "image",
            "add",
            "agent",
            "--kernel",
            &kernel.to_string_lossy(),
            "--initrd",
            &initrd.to_string_lossy(),
        ],
    );
    assert_eq!(o.code, 0, "image add: {}", o.stderr);
    let o = kc(&state, &bind);
    assert_eq!(o.code, 0, "update: {}", o.stderr);
    let list = kc(&state, &["host", "list"]);
    assert!(
        list.stdout.contains("rack1")
            && list.stdout.contains("52:54:00:ab:cd:ef")
            && list.stdout.contains("SN 1")
            && list.stdout.contains("agent"),
        "{}",
        list.stdout
    );
    for (args, why) in [
        (
            &["host", "add", "x", "--mac", "52:54:00:zz:00:01"][..],
            "bad MAC",
        ),
        (
            &["host", "add", "x", "--mac", "01:00:5e:00:00:01"][..],
            "not a unicast",
        ),
        (&["host", "add", "x"][..], "at least one --mac or --serial"),
        (
            &["host", "add", "x", "--mac", "52:54:00:ab:cd:ef"][..],
            "already belongs to host rack1",
        ),
        (
            &["host", "add", "../x", "--serial", "S"][..],
            "invalid host name",
        ),
    ] {
        let o = kc(&state, args);
        assert_eq!(o.code, 2, "{args:?} accepted");
        assert!(o.stderr.contains(why), "{args:?}: {}", o.stderr);
    }
}

#[test]
fn secrets_are_stored_private_and_never_printed() {
    let (tmp, state) = fresh_state();
    let f = write(tmp.path(), "value", "hunter2-very-secret");
    let o = kc(
        &state,
        &["secret", "set", "registry-token", "--file", s(&f)],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!o.stdout.contains("hunter2") && !o.stderr.contains("hunter2"));
    let stored = state.join("secrets/registry-token");
    assert_eq!(
        std::fs::read_to_string(&stored).expect("stored"),
        "hunter2-very-secret"
    );
    assert_eq!(
        std::fs::metadata(&stored)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let o = kc(&state, &["secret", "set", "../escape", "--file", s(&f)]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("invalid secret name"), "{}", o.stderr);
}
