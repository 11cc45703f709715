//! Container stages end to end: plan files with `kind = "container"` issued by the
//! coordinator, run by a real agent process with real podman (runc); outcomes, parts,
//! artifacts in the CAS, secrets kept out of everything stored, and no container left.
//! Needs the local test images from `.ci/podman.sh` (and its CONTAINERS_CONF).
use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const IMAGE_A: &str = "localhost/kiln-test-a:1";
const IMAGE_B: &str = "localhost/kiln-test-b:1";

/// podman and the test images, or a loud skip (a failure in CI).
pub fn require_podman() -> bool {
    if !require_tool("podman") {
        return false;
    }
    let exists = |i: &str| {
        Command::new("podman")
            .args(["image", "exists", i])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if exists(IMAGE_A) && exists(IMAGE_B) {
        return true;
    }
    let why = "the podman test images are missing (run `. .ci/podman.sh`)";
    skip(why);
    false
}

/// A state folder with host `here` (this machine), a scratch folder and a server.
struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    server: Coordinator,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

impl Fx {
    fn new() -> Fx {
        let (tmp, state) = fresh_state();
        add_local_host(&state, "here");
        let server = Coordinator::start(&state);
        Fx {
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            state,
            server,
        }
    }

    /// Issues `plan` (written as plan.toml) for `here`; returns the run id.
    fn issue(&self, plan: &str) -> String {
        let p = write(&self.dir, "plan.toml", plan);
        let o = kc(
            &self.state,
            &[
                "ticket",
                "issue",
                "--plan",
                s(&p),
                "--host",
                "here",
                "--url",
                &self.server.url,
            ],
        );
        assert_eq!(o.code, 0, "ticket issue failed: {}", o.stderr);
        o.stdout.trim().to_string()
    }

    /// `kiln-agent run` for `run`, as a child, with a relative work folder (as a user
    /// typing `--work work` would: the container stage must not mind).
    fn agent(&self, run: &str) -> Child {
        let ticket = self.state.join("runs").join(run).join("ticket.kiln");
        let trust = self.state.join("key/coordinator.pub");
        Command::new(bin("kiln-agent"))
            .args(["run", "--ticket", s(&ticket), "--trust", s(&trust)])
            .args(["--work", "work"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting kiln-agent")
    }

    /// [`Fx::agent`] with `wrappers` first in PATH and the work folder `work`.
    fn agent_with_path(&self, run: &str, wrappers: &Path, work: &str) -> Child {
        self.agent_with_path_to(run, wrappers, work, Stdio::inherit())
    }

    /// [`Fx::agent_with_path`] with the agent's stderr going to `err`.
    fn agent_with_path_to(&self, run: &str, wrappers: &Path, work: &str, err: Stdio) -> Child {
        let ticket = self.state.join("runs").join(run).join("ticket.kiln");
        let trust = self.state.join("key/coordinator.pub");
        let path = format!(
            "{}:{}",
            wrappers.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(bin("kiln-agent"))
            .args(["run", "--ticket", s(&ticket), "--trust", s(&trust)])
            .args(["--work", work])
            .env("PATH", path)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("starting kiln-agent")
    }

    fn show(&self, run: &str) -> Value {
        let o = kc(&self.state, &["run", "show", run, "--json"]);
        assert_eq!(o.code, 0, "run show failed: {}", o.stderr);
        serde_json::from_str(&o.stdout).expect("run show --json is JSON")
    }

    fn logs(&self, run: &str) -> String {
        kc(&self.state, &["run", "logs", run]).stdout
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let mut code = None;
    wait_until(limit, "the agent to exit", || {
        code = child.try_wait().expect("try_wait");
        code.is_some()
    });
    code.and_then(|c| c.code()).unwrap_or(-1)
}

/// Containers (any state) named for `run`.
fn containers_of(run: &str) -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .expect("podman ps");
    let prefix = format!("kiln-{}-", &run[..8]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

const RUN_SH: &str = r#"#!/bin/sh
. /etc/os-release
echo "token is $(cat "$KILN_SECRETS_DIR/registry-token")"
i=0; while [ $i -lt 300 ]; do echo "$ID line $i"; i=$((i+1)); done
echo "$ID" > /artifacts/result.txt
[ "$ID" = kiln-a ] || { echo "$ID: unsupported" >&2; exit 1; }
"#;

#[test]
fn a_two_image_matrix_reports_cells_artifacts_and_never_the_secret() {
    if !require_podman() {
        return;
    }
    let fx = Fx::new();
    const SECRET: &str = "e2e-container-secret-9731";
    let sf = write(&fx.dir, "token.txt", &format!("{SECRET}\n"));
    let o = kc(
        &fx.state,
        &["secret", "set", "registry-token", "--file", s(&sf)],
    );
    assert_eq!(o.code, 0, "secret set: {}", o.stderr);
    write(&fx.dir, "tests/smoke/run.sh", RUN_SH);
    let run = fx.issue(&format!(
        r#"name = "distros"
[[stage]]
name = "distros"
kind = "container"
matrix = {{ image = ["{IMAGE_A}", "{IMAGE_B}"] }}
fail_fast = false
command = ["sh", "./run.sh"]
tests = "tests/smoke"
secrets = ["registry-token"]
timeout = "5m"
"#
    ));
    let mut agent = fx.agent(&run);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(180)), 1);

    let show = fx.show(&run);
    let st = &show["stages"][0];
    assert_eq!(st["kind"], "container");
    assert_eq!(st["outcome"], "failed", "{st}");
    let parts = st["parts"].as_array().expect("parts");
    let part = |name: &str| {
        parts
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no part {name}: {st}"))
    };
    assert_eq!(part(IMAGE_A)["outcome"], "passed");
    let b = part(IMAGE_B);
    assert_eq!(b["outcome"], "failed");
    let tail: Vec<&str> = b["tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The last 200 lines with the error among them (the tail keeps stderr's last lines
    // whatever the engine's delivery order); within stdout, in order.
    assert_eq!(tail.len(), 200);
    assert!(tail.contains(&"kiln-b: unsupported"), "{tail:?}");
    let out: Vec<&&str> = tail.iter().filter(|l| l.contains(" line ")).collect();
    assert_eq!(out.len(), 199, "{tail:?}");
    for (k, l) in out.iter().enumerate() {
        assert_eq!(**l, format!("kiln-b line {}", 101 + k), "{tail:?}");
    }

    // Each cell's artifact, in the CAS under its digest.
    for (slug, id) in [
        ("localhost_kiln-test-a_1", "kiln-a"),
        ("localhost_kiln-test-b_1", "kiln-b"),
    ] {
        let art = st["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == format!("{slug}/result.txt"))
            .unwrap_or_else(|| panic!("no artifact for {slug}: {st}"));
        let bytes =
            std::fs::read(fx.state.join("cas").join(art["sha256"].as_str().unwrap())).unwrap();
        assert_eq!(bytes, format!("{id}\n").as_bytes());
    }

    let logs = fx.logs(&run);
    assert!(
        logs.contains(&format!("[{IMAGE_B}] kiln-b line 299\n")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("[{IMAGE_A}] token is [redacted:registry-token]\n")),
        "{logs}"
    );
    // The secret was there (redacted), and is in nothing the coordinator stored.
    let events = std::fs::read(fx.state.join("runs").join(&run).join("events.log")).unwrap();
    assert!(!events.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    for format in ["json", "html", "junit"] {
        let r = kc(&fx.state, &["report", &run, "--format", format]);
        assert_eq!(r.code, 0, "report {format}: {}", r.stderr);
        assert!(!r.stdout.contains(SECRET), "secret in the {format} report");
    }
    assert!(!logs.contains(SECRET));
    assert!(containers_of(&run).is_empty(), "{:?}", containers_of(&run));
}

#[test]
fn timeout_and_abort_leave_no_container() {
    if !require_podman() {
        return;
    }
    let fx = Fx::new();
    let run = fx.issue(&format!(
        r#"name = "stops"
fail_fast = false
[[stage]]
name = "slow"
kind = "container"
image = "{IMAGE_A}"
command = ["sh", "-c", "echo slow running; sleep 300"]
timeout = "3s"

[[stage]]
name = "abortable"
kind = "container"
image = "{IMAGE_A}"
command = ["sh", "-c", "echo waiting for abort; sleep 300"]
"#
    ));
    let mut agent = fx.agent(&run);
    wait_until(
        Duration::from_secs(120),
        "the second container to run",
        || fx.logs(&run).contains("waiting for abort"),
    );
    assert_eq!(
        containers_of(&run).len(),
        1,
        "the second stage's container runs"
    );
    let o = kc(&fx.state, &["run", "abort", &run, "--reason", "e2e abort"]);
    assert_eq!(o.code, 0, "run abort: {}", o.stderr);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(60)), 1);
    let show = fx.show(&run);
    assert_eq!(show["stages"][0]["outcome"], "timed_out", "{show}");
    assert_eq!(show["stages"][1]["outcome"], "aborted", "{show}");
    assert!(fx.logs(&run).contains("[slow] slow running"));
    assert!(containers_of(&run).is_empty(), "{:?}", containers_of(&run));
}

/// Drops an image name when the test ends, however it ends.
struct Untag(String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", &self.0]).output();
    }
}

#[test]
fn an_image_archive_travels_through_the_cas_and_is_loaded() {
    if !require_podman() {
        return;
    }
    let fx = Fx::new();
    let name = format!("localhost/kiln-e2e-archive:{}", std::process::id());
    let podman = |args: &[&str]| {
        let o = Command::new("podman").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    podman(&["tag", IMAGE_B, &name]);
    let _untag = Untag(name.clone());
    let tar = fx.dir.join("image.tar");
    podman(&["save", "--quiet", "--output", s(&tar), &name]);
    // Only the archive can bring the name back.
    podman(&["rmi", &name]);
    let run = fx.issue(&format!(
        r#"name = "archive"
[[stage]]
name = "from-archive"
kind = "container"
image = {{ archive = "image.tar", name = "{name}" }}
command = ["sh", "-c", ". /etc/os-release; echo running $ID"]
"#
    ));
    let mut agent = fx.agent(&run);
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(120)), 0);
    let show = fx.show(&run);
    assert_eq!(show["stages"][0]["outcome"], "passed", "{show}");
    assert!(
        fx.logs(&run).contains("running kiln-b\n"),
        "{}",
        fx.logs(&run)
    );
    assert!(containers_of(&run).is_empty());
}

/// What `engine` holds of run `run`: containers (any state), networks and volumes
/// whose name starts `kiln-<run8>`, one `kind name` line each.
pub fn leftovers(engine: &str, run: &str) -> Vec<String> {
    let prefix = format!("kiln-{}", &run[..8]);
    let mut out = Vec::new();
    for (kind, args) in [
        ("container", &["ps", "-a", "--format", "{{.Names}}"][..]),
        ("network", &["network", "ls", "--format", "{{.Name}}"][..]),
        ("volume", &["volume", "ls", "--format", "{{.Name}}"][..]),
    ] {
        let o = Command::new(engine)
            .args(args)
            .output()
            .expect("engine list");
        assert!(
            o.status.success(),
            "{engine} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.starts_with(&prefix) {
                out.push(format!("{kind} {l}"));
            }
        }
    }
    out
}

/// The engine, its test images, and (for docker) a daemon that answers.
fn require_engine(engine: &str) -> bool {
    if engine == "podman" {
        return require_podman();
    }
    if !require_tool("docker") {
        return false;
    }
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE_A])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        skip("docker does not answer or lacks the test images (run `. .ci/docker.sh`)");
    }
    ok
}

/// Where `program` is in PATH.
fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not in PATH"))
}

/// A folder holding `engine`, a wrapper that appends its arguments to `calls.log`
/// there and runs the real engine.
fn engine_wrapper(dir: &Path, engine: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.join("wrap");
    std::fs::create_dir_all(&d).unwrap();
    let real = which(engine);
    let w = write(
        &d,
        engine,
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            d.join("calls.log").display(),
            real.display()
        ),
    );
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn engine_builds(wrappers: &Path) -> Vec<String> {
    std::fs::read_to_string(wrappers.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("build "))
        .map(str::to_string)
        .collect()
}

/// Removes every tag of image repository `.1` from engine `.0` when dropped.
struct Rmi(String, String);

impl Drop for Rmi {
    fn drop(&mut self) {
        let o = Command::new(&self.0)
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output();
        let listed = o
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for t in listed.lines() {
            if t.starts_with(&format!("{}:", self.1)) {
                let _ = Command::new(&self.0).args(["rmi", "--force", t]).output();
            }
        }
    }
}

/// A Containerfile built on first use, reused (the engine is never asked to build)
/// on the second run of the unchanged folder, rebuilt after one changed byte; nothing
/// of any run is left in the engine.
fn containerfile_built_then_reused(engine: &str) {
    if !require_engine(engine) {
        return;
    }
    let fx = Fx::new();
    let stage = format!("e2e-build-{engine}-{}", std::process::id());
    let repo = format!("localhost/kiln-build/{stage}");
    let _rmi = Rmi(engine.to_string(), repo.clone());
    write(
        &fx.dir,
        "tests/built/Containerfile",
        &format!("FROM {IMAGE_A}\nCOPY hello.txt /hello.txt\n"),
    );
    write(&fx.dir, "tests/built/hello.txt", "hello from the build\n");
    let plan = format!(
        r#"name = "build"
[[stage]]
name = "{stage}"
kind = "container"
runtime = "{engine}"
build = "Containerfile"
tests = "tests/built"
command = ["cat", "/hello.txt"]
timeout = "5m"
"#
    );
    let wrap = engine_wrapper(&fx.dir, engine);
    let mut runs = Vec::new();
    for round in 0..3 {
        if round == 2 {
            write(&fx.dir, "tests/built/hello.txt", "hello from the build!\n");
        }
        let run = fx.issue(&plan);
        let mut agent = fx.agent_with_path(&run, &wrap, &format!("work{round}"));
        let code = wait_exit(&mut agent, Duration::from_secs(180));
        assert_eq!(
            code,
            0,
            "round {round}: {} {}",
            fx.show(&run),
            fx.logs(&run)
        );
        let show = fx.show(&run);
        let st = &show["stages"][0];
        assert_eq!(st["outcome"], "passed", "{st}");
        let build = st["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "build")
            .unwrap_or_else(|| panic!("no build part: {st}"))
            .clone();
        let builds = engine_builds(&wrap);
        match round {
            0 => {
                assert_eq!(builds.len(), 1, "{builds:?}");
                assert!(
                    build["detail"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("built {repo}:")),
                    "{build}"
                );
            }
            1 => {
                assert_eq!(
                    builds.len(),
                    1,
                    "the engine built nothing the second time: {builds:?}"
                );
                assert!(
                    build["detail"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("reused {repo}:")),
                    "{build}"
                );
            }
            _ => assert_eq!(builds.len(), 2, "a changed byte rebuilds: {builds:?}"),
        }
        let want = if round == 2 {
            "hello from the build!\n"
        } else {
            "hello from the build\n"
        };
        assert!(fx.logs(&run).contains(want), "{}", fx.logs(&run));
        assert!(
            leftovers(engine, &run).is_empty(),
            "{:?}",
            leftovers(engine, &run)
        );
        runs.push(run);
    }
}

#[test]
fn containerfile_built_then_reused_podman() {
    containerfile_built_then_reused("podman");
}

#[test]
fn containerfile_built_then_reused_docker() {
    containerfile_built_then_reused("docker");
}

/// The names of the volumes mounted into container `name`.
fn volumes_of(engine: &str, name: &str) -> Vec<String> {
    let o = Command::new(engine)
        .args([
            "inspect",
            "--format",
            "{{range .Mounts}}{{if .Name}}{{.Name}} {{end}}{{end}}",
            name,
        ])
        .output()
        .expect("engine inspect");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// An agent SIGKILLed while its cell runs leaves the container (and the anonymous
/// volume of the built image's `VOLUME`), its service and their network to the
/// engine; restarted, the stage's next attempt removes them first, and when it ends
/// nothing of the run is left.
fn a_killed_agent_leaves_nothing_after_its_restart(engine: &str) {
    if !require_engine(engine) {
        return;
    }
    let fx = Fx::new();
    let stage = format!("e2e-crash-{engine}-{}", std::process::id());
    let _rmi = Rmi(engine.to_string(), format!("localhost/kiln-build/{stage}"));
    write(
        &fx.dir,
        "tests/crash/Containerfile",
        &format!("FROM {IMAGE_A}\nVOLUME /data\n"),
    );
    let run = fx.issue(&format!(
        r#"name = "crash"
[[stage]]
name = "{stage}"
kind = "container"
runtime = "{engine}"
build = "Containerfile"
tests = "tests/crash"
command = ["sh", "-c", "echo attempt $KILN_ATTEMPT; [ $KILN_ATTEMPT != 1 ] || sleep 300; echo done"]
retries = 1
timeout = "10m"

[[stage.service]]
name = "idle"
image = "{IMAGE_A}"
command = ["sleep", "300"]
"#
    ));
    let wrap = engine_wrapper(&fx.dir, engine);
    let mut agent = fx.agent_with_path(&run, &wrap, "work");
    wait_until(Duration::from_secs(120), "the first attempt to run", || {
        fx.logs(&run).contains("attempt 1")
    });
    agent.kill().expect("SIGKILL the agent");
    let _ = agent.wait();
    let left = leftovers(engine, &run);
    assert_eq!(
        left.len(),
        3,
        "the test, its service and their network outlive the agent: {left:?}"
    );
    let container = left
        .iter()
        .find(|l| l.starts_with("container ") && !l.contains("-svc-"))
        .expect("the test container")
        .trim_start_matches("container ")
        .to_string();
    let volumes = volumes_of(engine, &container);
    assert_eq!(
        volumes.len(),
        1,
        "the VOLUME's anonymous volume: {volumes:?}"
    );

    // The restarted agent's own words are kept, for when it does not pass.
    let err = fx.dir.join("agent2.stderr");
    let mut agent = fx.agent_with_path_to(
        &run,
        &wrap,
        "work",
        Stdio::from(std::fs::File::create(&err).expect("stderr file")),
    );
    let code = wait_exit(&mut agent, Duration::from_secs(180));
    assert_eq!(
        code,
        0,
        "the restarted agent said:\n{}\nthe run's log:\n{}",
        std::fs::read_to_string(&err).unwrap_or_default(),
        fx.logs(&run)
    );
    assert!(fx.logs(&run).contains("attempt 2"), "{}", fx.logs(&run));
    assert!(
        leftovers(engine, &run).is_empty(),
        "{:?}",
        leftovers(engine, &run)
    );
    let o = Command::new(engine)
        .args(["volume", "ls", "--format", "{{.Name}}"])
        .output()
        .expect("volume ls");
    let now = String::from_utf8_lossy(&o.stdout);
    for v in &volumes {
        assert!(!now.lines().any(|l| l == v), "volume {v} is left");
    }
}

#[test]
fn a_killed_agent_leaves_nothing_after_its_restart_podman() {
    a_killed_agent_leaves_nothing_after_its_restart("podman");
}

#[test]
fn a_killed_agent_leaves_nothing_after_its_restart_docker() {
    a_killed_agent_leaves_nothing_after_its_restart("docker");
}

/// A plan with a service: busybox httpd serving a file of the test folder, healthy
/// before the test, reached by name; its secret a file it reads (redacted in the
/// log); its log a part; nothing of the run left.
fn a_service_from_the_plan_is_reached_by_name(engine: &str) {
    if !require_engine(engine) {
        return;
    }
    let fx = Fx::new();
    const SECRET: &str = "e2e-service-secret-5521";
    let sf = write(&fx.dir, "svc-token.txt", SECRET);
    let o = kc(&fx.state, &["secret", "set", "svc-token", "--file", s(&sf)]);
    assert_eq!(o.code, 0, "secret set: {}", o.stderr);
    write(
        &fx.dir,
        "tests/svc/www/index.html",
        "served from the test folder\n",
    );
    let run = fx.issue(&format!(
        r#"name = "services"
[[stage]]
name = "svc-{engine}"
kind = "container"
runtime = "{engine}"
image = "{IMAGE_A}"
tests = "tests/svc"
secrets = ["svc-token"]
command = ["sh", "-c", "wget -q -O- http://web:8080/index.html"]
timeout = "5m"

[[stage.service]]
name = "web"
image = "{IMAGE_A}"
secrets = ["svc-token"]
command = ["sh", "-c", "echo token $(cat $KILN_SECRETS_DIR/svc-token); exec httpd -f -p 8080 -h /workspace/www"]
health = {{ command = ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"], interval = "100ms", retries = 50 }}
"#
    ));
    let mut agent = fx.agent(&run);
    let code = wait_exit(&mut agent, Duration::from_secs(180));
    assert_eq!(code, 0, "{} {}", fx.show(&run), fx.logs(&run));
    let logs = fx.logs(&run);
    assert!(logs.contains("served from the test folder\n"), "{logs}");
    let show = fx.show(&run);
    let web = show["stages"][0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "service web")
        .unwrap_or_else(|| panic!("no service part: {show}"))
        .clone();
    let tail = web["tail"].to_string();
    assert!(tail.contains("token [redacted:svc-token]"), "{web}");
    assert!(!show.to_string().contains(SECRET) && !logs.contains(SECRET));
    assert!(
        leftovers(engine, &run).is_empty(),
        "{:?}",
        leftovers(engine, &run)
    );
}

#[test]
fn a_service_from_the_plan_is_reached_by_name_podman() {
    a_service_from_the_plan_is_reached_by_name("podman");
}

#[test]
fn a_service_from_the_plan_is_reached_by_name_docker() {
    a_service_from_the_plan_is_reached_by_name("docker");
}
