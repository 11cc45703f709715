//! Plan files: examples, defaults, every kind, and errors that name the line.
use super::*;
use kiln_protocol::{ImageRef, Os, Runtime, StageKind, StorageTool};
use std::os::unix::fs::{PermissionsExt, symlink};

struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: State,
    host: Host,
}

fn fx() -> Fx {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let (state, _) = State::init(&dir.join("state")).expect("init");
    state.set_secret("ssh-ci", b"key").expect("secret");
    state
        .set_secret("lab-known-hosts", b"hosts")
        .expect("secret");
    let host = Host {
        name: "box".into(),
        macs: vec!["52:54:00:00:00:01".into()],
        serial: None,
        image: None,
        spec: None,
        agent_key: None,
        power: None,
    };
    Fx {
        _tmp: tmp,
        dir,
        state,
        host,
    }
}

impl Fx {
    fn file(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn load(&self, text: &str) -> Result<LoadedPlan> {
        load_plan(&self.file("plan.toml", text), &self.state, &self.host)
    }

    fn fails(&self, text: &str, line: usize, needle: &str) {
        let e = format!("{:#}", self.load(text).expect_err(needle));
        let at = format!("plan.toml:{line}: ");
        assert!(
            e.contains(&at) && e.contains(needle),
            "want {at}…{needle}, got: {e}"
        );
        assert!(!e.contains('\n'), "error is not one line: {e}");
    }
}

const EXEC: &str = "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = \"true\"\n";

#[test]
fn every_example_parses() {
    let f = fx();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&dir).expect("examples/plans") {
        let path = e.expect("entry").path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let loaded = load_plan(&path, &f.state, &f.host)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(!loaded.plan.stages.is_empty());
        for sha in &loaded.cas {
            assert!(f.state.cas().has(sha), "{} not in the CAS", sha);
        }
        seen.push(
            path.file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned(),
        );
    }
    seen.sort();
    for want in [
        "burn-in",
        "distros",
        "services",
        "smoke",
        "ssh-linux-windows",
    ] {
        assert!(seen.iter().any(|s| s == want), "missing example {want}");
    }
}

#[test]
fn plan_level_defaults() {
    let f = fx();
    let p = f.load(EXEC).expect("load").plan;
    assert_eq!(p.name, "plan");
    assert!(p.fail_fast);
    assert_eq!(p.timeout_s, 0);
    let s = &p.stages[0];
    assert_eq!(
        s.kind,
        StageKind::Exec {
            command: vec!["sh".into(), "-c".into(), "true".into()]
        }
    );
    assert_eq!(
        (s.timeout_s, s.retries, s.destructive, s.continue_on_failure),
        (0, 0, false, false)
    );
    let p = f
        .load(&format!("name = \"n\"\nfail_fast = false\ntimeout = \"2h\"\n{EXEC}retries = 2\ntimeout = 90\nenv = {{ B = 2, A = \"x\" }}\nsecrets = [\"ssh-ci\"]\n"))
        .expect("load")
        .plan;
    assert_eq!(
        (p.name.as_str(), p.fail_fast, p.timeout_s),
        ("n", false, 7200)
    );
    let s = &p.stages[0];
    assert_eq!((s.retries, s.timeout_s), (2, 90));
    assert_eq!(
        s.env,
        vec![("A".into(), "x".into()), ("B".into(), "2".into())]
    );
    assert_eq!(s.secrets, vec!["ssh-ci".to_string()]);
}

#[test]
fn container_defaults_are_hardened() {
    let f = fx();
    let p = f
        .load("[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = \"debian:12\"\n")
        .expect("load")
        .plan;
    let StageKind::Container(c) = &p.stages[0].kind else {
        panic!("not a container stage");
    };
    assert_eq!(c.runtime, Runtime::Auto);
    assert_eq!(c.images, vec![ImageRef::Registry("debian:12".into())]);
    assert!(c.read_only && !c.network && c.no_new_privileges && c.fail_fast);
    assert_eq!(c.user, None);
    assert!(c.cap_add.is_empty() && c.mounts.is_empty() && c.command.is_empty());
    assert_eq!(
        (c.memory_bytes, c.cpu_millis, c.pids_limit),
        (2 << 30, 2000, 1024)
    );
    assert_eq!((c.tmpfs_bytes, c.concurrency), (64 << 20, 4));
}

#[test]
fn container_matrix_archives_and_mounts() {
    let f = fx();
    f.file("img/tools.tar", "not really a tar, the CAS does not care");
    let p = f
        .load(concat!(
            "[[stage]]\nname = \"m\"\nkind = \"container\"\nruntime = \"podman\"\n",
            "matrix = { image = [\"debian:12\", { archive = \"img/tools.tar\", name = \"localhost/tools:1\" }], PY = [\"3.11\", 3] }\n",
            "command = [\"./run.sh\"]\nuser = \"0:0\"\ncpus = 0.5\nmemory = \"256M\"\nnetwork = true\n",
            "mounts = [{ host = \"/srv/cache\", container = \"/cache\" }]\nallow_host_mounts = true\n",
        ))
        .expect("load");
    let StageKind::Container(c) = &p.plan.stages[0].kind else {
        panic!("not a container stage");
    };
    let ImageRef::Archive { name, sha256, size } = &c.images[1] else {
        panic!("not an archive: {:?}", c.images[1]);
    };
    assert_eq!(name, "localhost/tools:1");
    assert_eq!(*size, 39);
    assert_eq!(p.cas, vec![*sha256]);
    assert!(f.state.cas().has(sha256));
    assert_eq!(c.axes, vec![("PY".into(), vec!["3.11".into(), "3".into()])]);
    assert_eq!(
        (c.runtime, c.cpu_millis, c.memory_bytes),
        (Runtime::Podman, 500, 256 << 20)
    );
    assert_eq!(c.user.as_deref(), Some("0:0"));
    assert!(c.network);
    assert!(c.mounts[0].read_only, "mounts are read-only unless asked");
}

#[test]
fn hardware_kinds() {
    let f = fx();
    let p = f
        .load(concat!(
            "[[stage]]\nname = \"i\"\nkind = \"inventory\"\n",
            "[[stage]]\nname = \"s\"\nkind = \"storage\"\ndevices = [\"/dev/vdb\"]\ntool = \"badblocks\"\nsize = \"1G\"\n",
            "[[stage]]\nname = \"n\"\nkind = \"network\"\nserver = \"10.0.0.1\"\nmin_mbps = 900\n",
            "[[stage]]\nname = \"c\"\nkind = \"cpu_stress\"\nduration = \"1m\"\n",
            "[[stage]]\nname = \"g\"\nkind = \"gpu\"\n",
        ))
        .expect("load")
        .plan;
    assert_eq!(p.stages[0].kind, StageKind::Inventory);
    let StageKind::Storage(s) = &p.stages[1].kind else {
        panic!("storage")
    };
    assert_eq!(
        (s.tool, s.duration_s, s.size_bytes),
        (StorageTool::Badblocks, 30, 1 << 30)
    );
    let StageKind::Network(n) = &p.stages[2].kind else {
        panic!("network")
    };
    assert_eq!((n.port, n.duration_s, n.min_mbps), (5201, 10, Some(900.0)));
    let StageKind::CpuStress(c) = &p.stages[3].kind else {
        panic!("cpu")
    };
    assert_eq!((c.duration_s, c.workers), (60, 0));
    let StageKind::Gpu(g) = &p.stages[4].kind else {
        panic!("gpu")
    };
    assert_eq!(g.duration_s, 0);
}

#[test]
fn ssh_needs_entrypoint_and_pinned_host_key() {
    let f = fx();
    f.file("lin/run.sh", "echo hi\n");
    f.file("win/run.sh", "echo wrong entrypoint\n");
    let ssh = |extra: &str| {
        format!(
            "[[stage]]\nname = \"r\"\nkind = \"ssh\"\nhost = \"h\"\nuser = \"ci\"\nkey = \"ssh-ci\"\n{extra}"
        )
    };
    let p = f
        .load(&ssh("tests = \"lin\"\nknown_hosts = \"lab-known-hosts\"\n"))
        .expect("load")
        .plan;
    let StageKind::Ssh(s) = &p.stages[0].kind else {
        panic!("ssh")
    };
    assert_eq!((s.port, s.os, s.keep), (22, Os::Linux, false));
    // The key and known_hosts secrets are listed so the agent fetches them.
    assert_eq!(p.stages[0].secrets, ["ssh-ci", "lab-known-hosts"]);
    let pin = "host_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKLt1qPAxCfxaXdzhcJfIVTAF2Wtm34rDwTkEsWE9DmG\"\n";
    f.fails(
        &ssh(&format!("tests = \"win\"\nos = \"windows\"\n{pin}")),
        7,
        "tests folder win has no run.ps1",
    );
    f.fails(&ssh(pin), 1, "`tests` is required for ssh stages");
    f.fails(&ssh("tests = \"lin\"\n"), 1, "never trusted on first use");
    f.fails(
        &ssh(&format!(
            "tests = \"lin\"\nknown_hosts = \"lab-known-hosts\"\n{pin}"
        )),
        9,
        "not both",
    );
    f.fails(
        &ssh("tests = \"lin\"\nhost_key = \"AAAA\"\n"),
        8,
        "`host_key` must be",
    );
    f.fails(
        &ssh("tests = \"lin\"\nknown_hosts = \"nope\"\n"),
        8,
        "secret \"nope\" is not set",
    );
    f.fails(
        &ssh("tests = \"lin\"\nos = \"beos\"\n"),
        8,
        "not linux or windows",
    );
    // Windows entrypoints are cmd.exe lines: `"` and `%` cannot travel in env values.
    f.file("win/run.ps1", "echo hi\n");
    let win = |v: &str| {
        ssh(&format!(
            "tests = \"win\"\nos = \"windows\"\n{pin}env = {{ V = '{v}' }}\n"
        ))
    };
    assert!(f.load(&win("plain & <fine>")).is_ok());
    f.fails(&win("50%"), 10, "Windows command line cannot carry");
    f.fails(&win("a\"b"), 10, "Windows command line cannot carry");
}

#[test]
fn errors_name_the_line() {
    let f = fx();
    f.fails(&format!("bogus = 1\n{EXEC}"), 1, "unknown field `bogus`");
    f.fails(
        &format!("{EXEC}colour = \"red\"\n"),
        5,
        "unknown field `colour`",
    );
    f.fails(
        &format!("{EXEC}image = \"debian:12\"\n"),
        5,
        "`image` is not a setting of exec stages",
    );
    f.fails(&format!("{EXEC}retries = \"two\"\n"), 5, "invalid type");
    f.fails(
        "[[stage]]\nname = \"a\"\nkind = \"teleport\"\n",
        3,
        "unknown kind \"teleport\"",
    );
    f.fails(
        &format!("{EXEC}timeout = \"ten minutes\"\n"),
        5,
        "invalid duration",
    );
    f.fails(
        &format!("timeout = [1]\n{EXEC}"),
        1,
        "`timeout`: must be a duration",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = \"x\"\nmemory = \"lots\"\n",
        5,
        "invalid size",
    );
    f.fails(
        &format!("{EXEC}\n{EXEC}"),
        7,
        "duplicate stage name \"a\" (first at line 2)",
    );
    f.fails(
        &format!("{EXEC}tests = \"missing/folder\"\n"),
        5,
        "tests folder missing/folder does not exist",
    );
    f.fails("name = \"x\"\n", 1, "no [[stage]]");
    f.fails(
        "[[stage]]\nname = \"a b\"\nkind = \"exec\"\n",
        2,
        "invalid stage name",
    );
    f.fails(
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\n",
        1,
        "`command` is required",
    );
    f.fails(
        &format!("{EXEC}env = {{ \"A-B\" = \"1\" }}\n"),
        5,
        "not an environment variable name",
    );
    f.fails(
        &format!("{EXEC}secrets = [\"unset\"]\n"),
        5,
        "secret \"unset\" is not set",
    );
    f.fails(&format!("{EXEC}command = 5\n"), 5, "duplicate key");
    f.fails(
        &format!("{EXEC}timeout = 9223372036854775807\n"),
        5,
        "longer than a year",
    );
    f.fails(
        &format!("{EXEC}timeout = \"400d\"\n"),
        5,
        "longer than a year",
    );
    f.fails(
        "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = []\n",
        4,
        "non-empty array",
    );
    f.fails(
        "[[stage]]\nname = \"s\"\nkind = \"storage\"\n",
        1,
        "`devices` is required",
    );
    f.fails(
        "[[stage]]\nname = \"s\"\nkind = \"storage\"\ndevices = [\"/etc/passwd\"]\n",
        4,
        "not a path under /dev/",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"cpu_stress\"\n",
        1,
        "`duration` is required",
    );
    f.fails(
        "[[stage]]\nname = \"n\"\nkind = \"network\"\nport = 70000\nserver = \"x\"\n",
        4,
        "invalid value",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = \"a\"\nmatrix = { image = [\"b\"] }\n",
        4,
        "not both",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\n",
        1,
        "need `image`, `matrix.image` or `build`",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = { archive = \"nope.tar\", name = \"x\" }\n",
        4,
        "image archive nope.tar does not exist",
    );
}

#[test]
fn container_builds_come_from_the_test_folder() {
    let f = fx();
    f.file("t/Containerfile", "FROM x\n");
    f.file("t/ctx/data", "1");
    let head = "[[stage]]\nname = \"b\"\nkind = \"container\"\ntests = \"t\"\n";
    let p = f
        .load(&format!(
            "{head}build = \"Containerfile\"\ncontext = \"ctx\"\nno_cache = true\n\
             matrix = {{ BASE = [\"a:1\", \"b:1\"] }}\nbuild_args = {{ BASE = \"${{BASE}}\", V = 2 }}\n"
        ))
        .expect("plan");
    let StageKind::Container(c) = &p.plan.stages[0].kind else {
        panic!("not a container stage");
    };
    assert_eq!(
        c.images,
        [ImageRef::Build(kiln_protocol::BuildSpec {
            file: "Containerfile".into(),
            context: "ctx".into(),
            args: vec![("BASE".into(), "${BASE}".into()), ("V".into(), "2".into())],
            no_cache: true,
        })]
    );
    f.fails(
        &format!("{head}build = \"Containerfile\"\nbuild_args = {{ BASE = \"${{BASE}}\" }}\n"),
        6,
        "build_args.BASE uses ${BASE}, which is not a matrix axis",
    );
    f.fails(
        &format!("{head}build = \"../plan.toml\"\n"),
        5,
        "`build` must be a relative path inside the test folder",
    );
    f.fails(
        &format!("{head}build = \"Nope\"\n"),
        5,
        "`build` \"Nope\" is not a file in the test folder",
    );
    f.fails(
        &format!("{head}build = \"Containerfile\"\ncontext = \"Containerfile\"\n"),
        6,
        "is not a folder",
    );
    f.fails(
        &format!("{head}build = \"Containerfile\"\nimage = \"x\"\n"),
        5,
        "give `build` or `image`/`matrix.image`, not both",
    );
    f.fails(
        &format!("{head}image = \"x\"\nno_cache = true\n"),
        6,
        "`no_cache` needs `build`",
    );
    f.fails(
        "[[stage]]\nname = \"b\"\nkind = \"container\"\nbuild = \"Containerfile\"\n",
        4,
        "`build` needs `tests`",
    );
}

#[test]
fn container_services_and_keep_failed() {
    let f = fx();
    f.file("t/Containerfile", "FROM x\n");
    let head = "[[stage]]\nname = \"s\"\nkind = \"container\"\ntests = \"t\"\nimage = \"a:1\"\n\
                secrets = [\"ssh-ci\"]\nkeep_failed = true\n";
    let p = f
        .load(&format!(
            "{head}[[stage.service]]\nname = \"web\"\nimage = \"b:1\"\ncommand = [\"httpd\", \"-f\"]\n\
             env = {{ PORT = 8080 }}\nsecrets = [\"ssh-ci\"]\n\
             health = {{ command = [\"wget\", \"-q\", \"http://127.0.0.1:8080/\"], interval = \"200ms\", timeout = \"2s\", retries = 5, start_period = 1 }}\n\
             [[stage.service]]\nname = \"db\"\nbuild = \"Containerfile\"\n"
        ))
        .expect("plan");
    let StageKind::Container(c) = &p.plan.stages[0].kind else {
        panic!("not a container stage");
    };
    assert!(c.keep_failed);
    assert_eq!(
        c.services,
        [
            kiln_protocol::ServiceSpec {
                name: "web".into(),
                image: ImageRef::Registry("b:1".into()),
                command: vec!["httpd".into(), "-f".into()],
                env: vec![("PORT".into(), "8080".into())],
                secrets: vec!["ssh-ci".into()],
                health: Some(kiln_protocol::HealthSpec {
                    command: vec!["wget".into(), "-q".into(), "http://127.0.0.1:8080/".into()],
                    interval_ms: 200,
                    timeout_ms: 2000,
                    retries: 5,
                    start_period_ms: 1000,
                }),
            },
            kiln_protocol::ServiceSpec {
                name: "db".into(),
                image: ImageRef::Build(kiln_protocol::BuildSpec {
                    file: "Containerfile".into(),
                    context: String::new(),
                    args: vec![],
                    no_cache: false,
                }),
                command: vec![],
                env: vec![],
                secrets: vec![],
                health: None,
            },
        ]
    );
    let svc = |body: &str| format!("{head}[[stage.service]]\n{body}\n");
    f.fails(&svc("image = \"b\""), 8, "a service needs a `name`");
    f.fails(
        &svc("name = \"Web_1\"\nimage = \"b\""),
        8,
        "is not a host name",
    );
    f.fails(
        &svc("name = \"w\""),
        8,
        "service w needs `image` or `build`",
    );
    f.fails(
        &svc("name = \"w\"\nimage = \"b\"\nport = 1"),
        8,
        "`port` is not a service setting",
    );
    f.fails(
        &svc("name = \"w\"\nimage = \"b\"\nsecrets = [\"other\"]"),
        8,
        "secret \"other\" is not in the stage's `secrets`",
    );
    f.fails(
        &svc("name = \"w\"\nimage = \"b\"\nhealth = { interval = \"1s\" }"),
        8,
        "`health` needs a `command`",
    );
    f.fails(
        &svc("name = \"w\"\nimage = \"b\"\nhealth = { command = \"true\", interval = \"soon\" }"),
        8,
        "health.interval: invalid duration",
    );
    f.fails(
        &format!(
            "{}[[stage.service]]\nname = \"w\"\nimage = \"c\"\n",
            svc("name = \"w\"\nimage = \"b\"")
        ),
        8,
        "two services are named \"w\"",
    );
}

#[test]
fn bind_mounts_need_allow_host_mounts() {
    let f = fx();
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = \"x\"\n\nmounts = [{ host = \"/\", container = \"/host\" }]\n",
        6,
        "stage \"c\": bind mounts are refused unless the stage sets `allow_host_mounts = true`",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = \"x\"\nallow_host_mounts = true\nmounts = [{ host = \"srv\", container = \"/x\" }]\n",
        6,
        "must be absolute",
    );
}

#[test]
fn bundles_refuse_links_that_leave_the_folder() {
    let f = fx();
    f.file("t/run.sh", "true\n");
    symlink("../../state/key/coordinator.key", f.dir.join("t/up")).expect("symlink");
    f.fails(
        &format!("{EXEC}tests = \"t\"\n"),
        5,
        "up -> ../../state/key/coordinator.key (link leaves the folder)",
    );
    std::fs::remove_file(f.dir.join("t/up")).expect("rm");
    symlink("/etc/passwd", f.dir.join("t/abs")).expect("symlink");
    f.fails(
        &format!("{EXEC}tests = \"t\"\n"),
        5,
        "abs -> /etc/passwd (link leaves the folder)",
    );
    std::fs::remove_file(f.dir.join("t/abs")).expect("rm");
    symlink("run.sh", f.dir.join("t/inside")).expect("symlink");
    f.load(&format!("{EXEC}tests = \"t\"\n"))
        .expect("a link inside the folder is fine");
}

/// Links that each stay inside by their text but leave together: `a -> b` with
/// `b -> ../../state` style chains, and `x -> y/..` where `y` is a link.
#[test]
fn bundles_refuse_chained_links() {
    let f = fx();
    f.file("t/run.sh", "true\n");
    f.file("t/sub/keep", "k\n");
    // `r -> .`, `q1 -> r/..` (really the folder's parent), `key -> q1/state/...`.
    symlink(".", f.dir.join("t/r")).expect("symlink");
    symlink("r/..", f.dir.join("t/q1")).expect("symlink");
    symlink("q1/state/key/coordinator.key", f.dir.join("t/key")).expect("symlink");
    assert!(
        std::fs::read(f.dir.join("t/key")).is_ok(),
        "the chain really reaches the state's key"
    );
    f.fails(
        &format!("{EXEC}tests = \"t\"\n"),
        5,
        "links may not point at links",
    );
    for name in ["r", "q1", "key"] {
        std::fs::remove_file(f.dir.join("t").join(name)).expect("rm");
    }
    symlink("..", f.dir.join("t/sub/up")).expect("symlink");
    symlink("sub/up/..", f.dir.join("t/x")).expect("symlink");
    f.fails(
        &format!("{EXEC}tests = \"t\"\n"),
        5,
        "x -> sub/up/.. (link through the link sub/up; links may not point at links)",
    );
}

#[test]
fn bundles_are_deterministic() {
    let f = fx();
    let script = f.file("t/run.sh", "echo one\n");
    f.file("t/sub/data.txt", "data\n");
    let plan = format!("{EXEC}tests = \"t\"\n");
    let bundle = || {
        f.load(&plan).expect("load").plan.stages[0]
            .tests
            .clone()
            .expect("bundle")
    };
    let first = bundle();
    assert_eq!(bundle(), first, "same folder, same bundle");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&script)
        .and_then(|h| h.set_modified(old))
        .expect("set mtime");
    assert_eq!(bundle(), first, "mtimes do not count");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exec = bundle();
    assert_ne!(
        exec.sha256, first.sha256,
        "the exec bit is part of the bundle"
    );
    assert_eq!(exec.tree, first.tree, "the tree hash covers contents only");
    std::fs::write(&script, "echo two\n").expect("write");
    let changed = bundle();
    assert_ne!(changed.sha256, exec.sha256);
    assert_ne!(changed.tree, exec.tree);
    assert_eq!(
        f.state.cas().get(&changed.sha256).expect("in cas").len() as u64,
        changed.size
    );
}

/// The same container stage in every TOML spelling of its tables: inline tables,
/// dotted keys (bare and quoted), sub-tables, arrays of tables, and the stage list
/// itself inline. Each compiles to the same wire plan.
#[test]
fn every_toml_spelling_of_a_table_compiles_to_the_same_plan() {
    let f = fx();
    let head = "name = \"p\"\n[[stage]]\nname = \"m\"\nkind = \"container\"\n";
    let rest = "command = [\"./run.sh\"]\nallow_host_mounts = true\n";
    let inline = format!(
        "{head}{rest}matrix = {{ image = [\"a:1\", \"b:1\"], PY = [\"3.11\", 3] }}\n\
         env = {{ A = \"1\", B = 2 }}\n\
         mounts = [{{ host = \"/srv/cache\", container = \"/cache\", read_only = false }}]\n"
    );
    let want = f.load(&inline).expect("inline tables").plan;
    let StageKind::Container(c) = &want.stages[0].kind else {
        panic!("not a container stage");
    };
    assert_eq!(c.images.len(), 2);
    assert_eq!(c.axes.len(), 1);
    assert_eq!(want.stages[0].env.len(), 2);
    let spellings = [
        (
            "dotted keys",
            format!(
                "{head}{rest}matrix.image = [\"a:1\", \"b:1\"]\nmatrix.PY = [\"3.11\", 3]\n\
                 env.A = \"1\"\nenv.B = 2\n\
                 mounts = [{{ host = \"/srv/cache\", container = \"/cache\", read_only = false }}]\n"
            ),
        ),
        (
            "quoted dotted keys",
            format!(
                "{head}{rest}\"matrix\".\"image\" = [\"a:1\", \"b:1\"]\n'matrix'.PY = [\"3.11\", 3]\n\
                 env . A = \"1\"\nenv.\"B\" = 2\n\
                 mounts = [{{ host = \"/srv/cache\", container = \"/cache\", read_only = false }}]\n"
            ),
        ),
        (
            "sub-tables and an array of tables",
            format!(
                "{head}{rest}[stage.matrix]\nimage = [\"a:1\", \"b:1\"]\nPY = [\"3.11\", 3]\n\
                 [stage.env]\nA = \"1\"\nB = 2\n\
                 [[stage.mounts]]\nhost = \"/srv/cache\"\ncontainer = \"/cache\"\nread_only = false\n"
            ),
        ),
        (
            "the stage list inline, dotted keys inside",
            "name = \"p\"\nstage = [{ name = \"m\", kind = \"container\", \
                 command = [\"./run.sh\"], allow_host_mounts = true, \
                 matrix.image = [\"a:1\", \"b:1\"], matrix.PY = [\"3.11\", 3], \
                 env.A = \"1\", env.B = 2, \
                 mounts = [{ host = \"/srv/cache\", container = \"/cache\", read_only = false }] }]\n".to_string(),
        ),
        (
            "the stage list inline, tables inline",
            "name = \"p\"\nstage = [{ name = \"m\", kind = \"container\", \
                 command = [\"./run.sh\"], allow_host_mounts = true, \
                 matrix = { image = [\"a:1\", \"b:1\"], PY = [\"3.11\", 3] }, \
                 env = { A = \"1\", B = 2 }, \
                 mounts = [{ host = \"/srv/cache\", container = \"/cache\", read_only = false }] }]\n".to_string(),
        ),
    ];
    for (what, text) in spellings {
        let got = f
            .load(&text)
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n{text}"))
            .plan;
        assert_eq!(got, want, "{what}:\n{text}");
    }
}

/// An error in a table written with dotted keys names the line of the key.
#[test]
fn errors_in_dotted_key_tables_name_their_line() {
    let f = fx();
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\n\n  matrix.image = [\"a:1\"]\nmatrix.PY = []\n",
        5,
        "matrix.PY must be a non-empty array",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind = \"container\"\nimage = \"a\"\nenv.A = \"1\"\nenv.B = [1]\n",
        5,
        "env B must be a string, number or boolean",
    );
    f.fails(
        "[[stage]]\nname = \"c\"\nkind.x = \"container\"\n",
        3,
        "invalid type: map, expected a string",
    );
    f.fails(
        EXEC.replace("command = \"true\"", "command.x = 1").as_str(),
        4,
        "command",
    );
}

#[test]
fn hold_settings_go_into_the_plan_with_the_public_keys() {
    let f = fx();
    // Default: never, and nothing else.
    let p = f.load(EXEC).unwrap().plan;
    assert_eq!(p.hold, kiln_protocol::Hold::default());
    f.state
        .set_secret(
            "ops-keys",
            b"# operators\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA ann@lab\n\nssh-rsa AAAAB3Nza bob\n",
        )
        .unwrap();
    let p = f
        .load(&format!(
            "hold = \"on_failure\"\nhold_for = \"90m\"\nhold_keys = \"ops-keys\"\n{EXEC}"
        ))
        .unwrap()
        .plan;
    assert_eq!(p.hold.when, kiln_protocol::HoldWhen::OnFailure);
    assert_eq!(p.hold.for_s, 5400);
    assert_eq!(
        p.hold.keys,
        [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA ann@lab",
            "ssh-rsa AAAAB3Nza bob"
        ]
    );
    let p = f.load(&format!("hold = \"always\"\n{EXEC}")).unwrap().plan;
    assert_eq!((p.hold.for_s, p.hold.keys.len()), (DEFAULT_HOLD_S, 0));
}

#[test]
fn bad_hold_settings_name_the_line() {
    let f = fx();
    f.fails(
        &format!("hold = \"sometimes\"\n{EXEC}"),
        1,
        "not one of never, on_failure, always",
    );
    f.fails(
        &format!("hold = \"always\"\nhold_for = \"8d\"\n{EXEC}"),
        2,
        "not between 1s and 7 days",
    );
    f.fails(&format!("hold_for = \"1h\"\n{EXEC}"), 1, "need `hold = ");
    f.fails(
        &format!("hold = \"always\"\nhold_keys = \"nope\"\n{EXEC}"),
        2,
        "secret \"nope\" is not set",
    );
    f.state
        .set_secret("priv", b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
        .unwrap();
    f.fails(
        &format!("hold = \"always\"\nhold_keys = \"priv\"\n{EXEC}"),
        2,
        "holds a private key",
    );
    f.state.set_secret("junk", b"hello world\n").unwrap();
    f.fails(
        &format!("hold = \"always\"\nhold_keys = \"junk\"\n{EXEC}"),
        2,
        "line 1 is not an OpenSSH public key",
    );
}

#[test]
fn lights_out_keys_are_read_beside_the_plan() {
    let f = fx();
    let stage = "[[stage]]\nname = \"a\"\nkind = \"exec\"\ncommand = [\"true\"]\n";
    let none = f.load(stage).expect("plain plan");
    assert_eq!(none.lights, PlanLights::default());
    let set = f
        .load(&format!(
            "power_off = false\nboot_timeout = \"5m\"\nlost_after = 90\n{stage}"
        ))
        .expect("lights-out plan");
    assert_eq!(
        set.lights,
        PlanLights {
            power_off: Some(false),
            boot_timeout_s: Some(300),
            lost_after_s: Some(90),
        }
    );
    f.fails(
        &format!("\nboot_timeout = \"soon\"\n{stage}"),
        2,
        "boot_timeout",
    );
    f.fails(
        &format!("power_off = \"no\"\n{stage}"),
        1,
        "expected a boolean",
    );
}
