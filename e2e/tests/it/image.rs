//! The netboot image every qemu test boots: built once by `image/build-local` into
//! `target/kiln-image/`, trusting a fixed test key, and the state folders that sign
//! with that key.
use crate::common::*;
use kiln_protocol::SecretKey;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// The test-only signing key the cached image trusts (never used outside tests).
const TEST_KEY_SEED: [u8; 32] = *b"kiln e2e netboot test key, v1..!";

/// Every tool the image builder and the qemu tests need.
const TOOLS: [&str; 17] = [
    "qemu-system-x86_64",
    "apt-get",
    "cpio",
    "zstd",
    "busybox",
    "dpkg-deb",
    "modinfo",
    "mkfs.ext4",
    "debugfs",
    // Into the image: container and ssh stages.
    "podman",
    "runc",
    "conmon",
    "ssh",
    // Into the image: held machines (and the tests' SSH checks).
    "dropbear",
    "dropbearkey",
    "ssh-keygen",
    "ssh-keyscan",
];

/// The netboot image (kernel, initrd), built once per test process into
/// `target/kiln-image/` and rebuilt when the agent or the image sources are newer.
/// `None`: a tool is missing (a loud skip, or a CI failure).
pub fn image() -> Option<(PathBuf, PathBuf)> {
    if !TOOLS.iter().all(|t| require_tool(t)) {
        return None;
    }
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    Some(IMAGE.get_or_init(build).clone())
}

fn build() -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = bin("kiln-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target folder")
        .join("kiln-image");
    std::fs::create_dir_all(&dir).expect("mkdir target/kiln-image");
    let trust = dir.join("trusted.pub");
    let line = format!("{}\n", test_key().public().to_line("kiln-e2e-test"));
    if std::fs::read_to_string(&trust).ok().as_deref() != Some(line.as_str()) {
        std::fs::write(&trust, &line).expect("write trusted.pub");
    }
    let initrd = dir.join("initrd");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = mtime(&initrd).unwrap_or(SystemTime::UNIX_EPOCH);
    let sources = [
        "init",
        "udhcpc.script",
        "build-local",
        "modules.list",
        "containers.conf",
        "storage.conf",
    ]
    .map(|f| repo.join("image").join(f));
    let stale = [bin("kiln-agent"), trust.clone()]
        .iter()
        .chain(sources.iter())
        .any(|p| mtime(p).is_none_or(|t| t > built));
    if stale || !dir.join("kernel").is_file() {
        let t = Instant::now();
        let out = Command::new(repo.join("image/build-local"))
            .arg(&dir)
            .arg("--trust")
            .arg(&trust)
            .arg("--agent")
            .arg(bin("kiln-agent"))
            .output()
            .expect("running image/build-local");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "image/build-local failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "{} (built in {:.1}s)",
            stdout.trim(),
            t.elapsed().as_secs_f64()
        );
    }
    (dir.join("kernel"), initrd)
}

/// The key the image trusts.
pub fn test_key() -> SecretKey {
    SecretKey::from_seed(TEST_KEY_SEED)
}

/// A state folder under `dir` whose signing key is the test key the image trusts.
pub fn trusted_state(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    let key = test_key();
    write(
        &state,
        "key/coordinator.key",
        &format!("{}\n", key.to_line()),
    );
    write(
        &state,
        "key/coordinator.pub",
        &format!("{}\n", key.public().to_line("kiln-e2e-test")),
    );
    std::fs::set_permissions(
        state.join("key/coordinator.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod the test key");
    let o = kc(&state, &["init"]);
    assert_eq!(o.code, 0, "init failed: {}", o.stderr);
    state
}

/// Registers the image as `kiln` in `state` (for `host add … --image kiln`).
pub fn register(state: &Path, kernel: &Path, initrd: &Path) {
    let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    let o = kc(
        state,
        &["image", "add", "kiln", "--kernel", k, "--initrd", i],
    );
    assert_eq!(o.code, 0, "image add failed: {}{}", o.stdout, o.stderr);
}

#[test]
fn build_local_wants_a_key_and_refuses_the_test_only_one() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&Path]| -> Out {
        Command::new("bash")
            .arg(repo.join("image/build-local"))
            .args(args)
            .output()
            .expect("running image/build-local")
            .into()
    };
    let out = tmp.path().join("img");
    let o = run(&[&out]);
    assert_ne!(o.code, 0, "no key, no image: {o:?}");
    assert!(o.stderr.contains("--trust"), "{}", o.stderr);
    let test_key = repo.join("nixos-tests/fixtures/test-coordinator.pub");
    let o = run(&[&out, Path::new("--trust"), &test_key]);
    assert_ne!(o.code, 0, "the test key is refused: {o:?}");
    assert!(o.stderr.contains("test-only key"), "{}", o.stderr);
    assert!(!out.join("initrd").exists());
}

/// `--lean` leaves the container engine out (ssh stays): both flavours are named in
/// `image.txt`, and build-local prints what went in and both sizes.
#[test]
fn build_local_lean_leaves_the_container_engine_out() {
    let Some((_, full)) = image() else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = full.parent().expect("image folder");
    let out = Command::new(repo.join("image/build-local"))
        .arg(tmp.path())
        .arg("--trust")
        .arg(dir.join("trusted.pub"))
        .arg("--agent")
        .arg(bin("kiln-agent"))
        .arg("--lean")
        .env("KILN_IMAGE_CACHE", dir.join(".cache"))
        .output()
        .expect("running image/build-local --lean");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kiln image (image-lean)"), "{stdout}");
    assert!(
        stdout.contains("/usr/bin/ssh") && !stdout.contains("podman"),
        "{stdout}"
    );
    let files = |initrd: &Path| -> String {
        let sh = format!("zstd -dc '{}' | cpio -t --quiet", initrd.display());
        let o = Command::new("sh")
            .args(["-c", &sh])
            .output()
            .expect("cpio -t");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let lean = tmp.path().join("initrd");
    let (lean_files, full_files) = (files(&lean), files(&full));
    for f in [
        "usr/bin/podman",
        "usr/sbin/runc",
        "usr/bin/conmon",
        "etc/containers/containers.conf",
    ] {
        assert!(full_files.lines().any(|l| l == f), "{f} is in the image");
        assert!(
            !lean_files.lines().any(|l| l == f),
            "{f} is not in image-lean"
        );
    }
    assert!(lean_files.lines().any(|l| l == "usr/bin/ssh"));
    let mib = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1048576.0;
    assert!(mib(&lean) < mib(&full));
    eprintln!(
        "initrd compressed: image {:.1} MiB, image-lean {:.1} MiB (goal 48 MiB)",
        mib(&full),
        mib(&lean)
    );
    let txt = std::fs::read_to_string(tmp.path().join("image.txt")).unwrap();
    assert!(txt.starts_with("flavour image-lean\n"), "{txt}");
}
