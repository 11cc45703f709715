//! Services beside a cell: a private network of the cell's own (`--internal` unless the
//! plan allows the network), each service started on it under its name with the
//! stage's hardened defaults, health-checked with `exec` until it passes, then
//! reached from the test container by name (an `--add-host` per service, so neither
//! engine's DNS plugin is needed). Everything is removed when the cell ends, unless
//! `keep_failed` keeps a failed cell.
use kiln_protocol::{ContainerSpec, HealthSpec, RunId, ServiceSpec};
use smol::future::FutureExt;
use std::time::{Duration, Instant};

use super::args::{self, EngineKind, SECRETS_DIR};
use super::engine::Engine;
use crate::stages::ctx::{StageCtx, Stop};
use crate::stages::proc::{ProcEnd, ProcSpec, run_streamed};

/// Lines of a service's log kept in its part (and in an unhealthy service's error).
pub const LOG_TAIL: usize = 50;

/// A name a container is reached by: `[a-z0-9]`, inner `-`, at most 63 bytes.
pub fn is_host_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && !n.starts_with('-')
        && !n.ends_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The cell's network: `<cell container>-net`.
pub fn network_name(cell_container: &str) -> String {
    format!("{cell_container}-net")
}

/// A service's container: `<cell container>-svc-<service>`.
pub fn container_name(cell_container: &str, service: &str) -> String {
    format!("{cell_container}-svc-{service}")
}

/// What a cell's services have created so far (what teardown removes).
#[derive(Debug, Default, Clone)]
pub struct Started {
    /// The cell's network, once created.
    pub network: Option<String>,
    /// `(service, container)` of each service started.
    pub containers: Vec<(String, String)>,
    /// `(service, address)` on the network, for `--add-host`.
    pub hosts: Vec<(String, String)>,
}

/// Why the services are not ready.
#[derive(Debug, Clone)]
pub enum NotReady {
    /// The stage was stopped meanwhile.
    Stopped(Stop),
    /// An engine fault or an unhealthy service: the cell is an `error`; the service
    /// it names (if one) and its log tail.
    Error(String, Option<String>, Vec<String>),
}

/// `network create` for the cell: internal (no way out) unless `open`; docker's
/// bridge gets no host address either (`inhibit_ipv4`), so the host itself is out of
/// reach too.
pub fn network_args(
    kind: EngineKind,
    (run, stage): (&RunId, &str),
    spec: &ContainerSpec,
    name: &str,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["network".into(), "create".into()];
    if !spec.network {
        a.push("--internal".into());
        if kind == EngineKind::Docker {
            a.extend([
                "--opt".into(),
                "com.docker.network.bridge.inhibit_ipv4=true".into(),
            ]);
        }
    }
    a.extend(args::labels(run, stage, spec));
    a.push(name.into());
    a
}

/// `run --detach` for a service: the stage's hardening, the workspace read-only, its
/// own secrets, its env, on the cell's network under its name.
#[allow(clippy::too_many_arguments)]
pub fn service_args(
    (run, stage): (&RunId, &str),
    spec: &ContainerSpec,
    svc: &ServiceSpec,
    image: &str,
    container: &str,
    network: &str,
    earlier: &[(String, String)],
    workspace: &str,
    secrets: Option<&str>,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        "--name".into(),
        container.into(),
        "--pull=never".into(),
    ];
    a.extend(args::hardening(spec));
    a.extend([
        "--network".into(),
        network.into(),
        "--network-alias".into(),
        svc.name.clone(),
        "--hostname".into(),
        svc.name.clone(),
    ]);
    for (host, ip) in earlier {
        a.extend(["--add-host".into(), format!("{host}:{ip}")]);
    }
    a.extend(args::labels(run, stage, spec));
    a.extend(["--volume".into(), format!("{workspace}:/workspace:ro")]);
    if let Some(s) = secrets {
        a.extend(["--volume".into(), format!("{s}:{SECRETS_DIR}:ro")]);
        a.extend(["--env".into(), format!("KILN_SECRETS_DIR={SECRETS_DIR}")]);
    }
    for (k, v) in &svc.env {
        a.extend(["--env".into(), format!("{k}={v}")]);
    }
    a.push(image.into());
    a.extend(svc.command.iter().cloned());
    a
}

impl Engine {
    /// Runs an engine control command; its stdout when it exits 0, else its last line
    /// of stderr. Not cut short by a stop (teardown must finish).
    pub async fn capture(&self, args: &[String]) -> Result<String, String> {
        let out = async_process::Command::new(self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.program))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{} {}: {}",
                self.program,
                args.first().map_or("", String::as_str),
                err.lines().last().unwrap_or("").trim()
            ))
        }
    }

    /// The last lines a container logged (both streams).
    pub async fn log_tail(&self, ctx: &StageCtx, container: &str, lines: usize) -> Vec<String> {
        let n = lines.to_string();
        let mut spec = ProcSpec::new([self.program, "logs", "--tail", &n, container]);
        spec.quiet_stdout = true;
        spec.quiet_stderr = true;
        spec.tail_lines = lines;
        spec.ignore_stop = true;
        spec.timeout = Some(Duration::from_secs(30));
        run_streamed(ctx, &spec).await.tail
    }

    /// Removes services and the network (what is missing is fine).
    pub async fn teardown(&self, started: &Started) {
        let names: Vec<String> = started.containers.iter().map(|(_, c)| c.clone()).collect();
        self.remove_all(&names).await;
        if let Some(n) = &started.network {
            self.remove_networks(std::slice::from_ref(n)).await;
        }
    }

    /// Removes networks (what is missing or in use stays; errors are ignored).
    pub async fn remove_networks(&self, names: &[String]) {
        for n in names {
            let _ = self
                .capture(&["network".into(), "rm".into(), n.clone()])
                .await;
        }
    }

    /// Stops (kills) containers at once, keeping them.
    pub async fn stop_now(&self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut a: Vec<String> = vec!["stop".into(), "--time".into(), "0".into()];
        a.extend(names.iter().cloned());
        let _ = self.capture(&a).await;
    }
}

/// Starts the cell's network and its services in order, each healthy before the
/// next starts; `started` records what exists, for teardown whatever happens.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    ctx: &StageCtx,
    engine: &Engine,
    spec: &ContainerSpec,
    images: &[String],
    cell_container: &str,
    workspace: &str,
    secrets: &dyn Fn(&ServiceSpec) -> Option<String>,
    started: &mut Started,
) -> Result<(), NotReady> {
    let network = network_name(cell_container);
    engine
        .capture(&network_args(
            engine.kind,
            (&ctx.run, &ctx.stage.name),
            spec,
            &network,
        ))
        .await
        .map_err(|e| NotReady::Error(format!("creating the cell's network: {e}"), None, vec![]))?;
    started.network = Some(network.clone());
    for (svc, image) in spec.services.iter().zip(images) {
        if let Some(s) = ctx.stop.reason() {
            return Err(NotReady::Stopped(s));
        }
        let container = container_name(cell_container, &svc.name);
        let argv = service_args(
            (&ctx.run, &ctx.stage.name),
            spec,
            svc,
            image,
            &container,
            &network,
            &started.hosts,
            workspace,
            secrets(svc).as_deref(),
        );
        // Recorded first: a failed start may still leave a created container.
        started
            .containers
            .push((svc.name.clone(), container.clone()));
        if let Err(e) = engine.capture(&argv).await {
            let tail = engine.log_tail(ctx, &container, LOG_TAIL).await;
            return Err(NotReady::Error(
                format!("service {} did not start: {e}", svc.name),
                Some(svc.name.clone()),
                tail,
            ));
        }
        let ip = engine
            .capture(&[
                "inspect".into(),
                "--format".into(),
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}".into(),
                container.clone(),
            ])
            .await
            .map_err(|e| NotReady::Error(format!("service {}: {e}", svc.name), None, vec![]))?;
        let Some(ip) = ip.split_whitespace().next().map(str::to_string) else {
            return Err(NotReady::Error(
                format!("service {} has no address on the cell's network", svc.name),
                Some(svc.name.clone()),
                vec![],
            ));
        };
        started.hosts.push((svc.name.clone(), ip));
        if let Some(h) = &svc.health {
            ctx.note(&format!(
                "service {}: waiting for its health check",
                svc.name
            ));
            match wait_healthy(ctx, engine, &container, h).await {
                Ok(checks) => ctx.note(&format!(
                    "service {} is healthy (after {checks} checks)",
                    svc.name
                )),
                Err(Unhealthy::Stopped(s)) => return Err(NotReady::Stopped(s)),
                Err(Unhealthy::Never(checks, last)) => {
                    let tail = engine.log_tail(ctx, &container, LOG_TAIL).await;
                    return Err(NotReady::Error(
                        format!(
                            "service {} never became healthy ({checks} checks; last: {last})",
                            svc.name
                        ),
                        Some(svc.name.clone()),
                        tail,
                    ));
                }
            }
        }
    }
    Ok(())
}

enum Unhealthy {
    Stopped(Stop),
    Never(u32, String),
}

/// Runs the health command in the container until it exits 0: failures within the
/// start period do not count; `retries` counted failures make it unhealthy.
async fn wait_healthy(
    ctx: &StageCtx,
    engine: &Engine,
    container: &str,
    h: &HealthSpec,
) -> Result<u32, Unhealthy> {
    let began = Instant::now();
    let start_period = Duration::from_millis(h.start_period_ms);
    let (mut checks, mut failures) = (0u32, 0u32);
    loop {
        let mut p = ProcSpec::new(
            [engine.program, "exec", container]
                .into_iter()
                .map(str::to_string)
                .chain(h.command.iter().cloned()),
        );
        p.quiet_stdout = true;
        p.quiet_stderr = true;
        p.tail_lines = 1;
        p.timeout = Some(Duration::from_millis(h.timeout_ms));
        let out = run_streamed(ctx, &p).await;
        checks += 1;
        let last = out.tail.last().cloned().unwrap_or_default();
        let why = match out.end {
            ProcEnd::Exited(0) => return Ok(checks),
            ProcEnd::Stopped(s) => return Err(Unhealthy::Stopped(s)),
            ProcEnd::Exited(c) => format!(
                "exit {c}{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ),
            ProcEnd::TimedOut(d) => format!("no answer within {} ms", d.as_millis()),
            ProcEnd::Signaled(s) => format!("killed by signal {s}"),
            ProcEnd::SpawnFailed(e) => e,
        };
        if began.elapsed() >= start_period {
            failures += 1;
            if failures >= h.retries.max(1) {
                return Err(Unhealthy::Never(checks, why));
            }
        }
        let interval = Duration::from_millis(h.interval_ms);
        let stop = async { Some(ctx.stopped().await) }
            .or(async {
                smol::Timer::after(interval).await;
                None
            })
            .await;
        if let Some(s) = stop {
            return Err(Unhealthy::Stopped(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::ImageRef;

    #[test]
    fn host_names() {
        assert!(is_host_name("web") && is_host_name("db-1"));
        for bad in ["", "-a", "a-", "Web", "a_b", "a:b", "a b", &"a".repeat(64)] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn service_and_network_arguments() {
        let mut spec = crate::stages::container::args::tests_spec();
        let run = RunId([7; 16]);
        let svc = ServiceSpec {
            name: "web".into(),
            image: ImageRef::Registry("i".into()),
            command: vec!["httpd".into()],
            env: vec![("K".into(), "v".into())],
            secrets: vec!["s".into()],
            health: None,
        };
        let earlier = [("db".to_string(), "10.0.0.2".to_string())];
        let line = service_args(
            (&run, "st"),
            &spec,
            &svc,
            "i",
            "c-svc-web",
            "c-net",
            &earlier,
            "/w",
            Some("/s"),
        )
        .join(" ");
        for want in [
            "run --detach --name c-svc-web --pull=never --read-only --cap-drop ALL",
            "--user 65534:65534",
            "--network c-net --network-alias web --hostname web --add-host db:10.0.0.2",
            "--volume /w:/workspace:ro --volume /s:/run/secrets:ro",
            "--env K=v i httpd",
        ] {
            assert!(line.contains(want), "{want:?} not in {line:?}");
        }
        let net =
            |kind, spec: &ContainerSpec| network_args(kind, (&run, "st"), spec, "n").join(" ");
        assert_eq!(
            net(EngineKind::Podman, &spec),
            "network create --internal --label kiln.run=07070707070707070707070707070707 n"
        );
        assert!(
            net(EngineKind::Docker, &spec)
                .contains("--internal --opt com.docker.network.bridge.inhibit_ipv4=true")
        );
        spec.network = true;
        spec.keep_failed = true;
        assert_eq!(
            net(EngineKind::Docker, &spec),
            "network create --label kiln.run=07070707070707070707070707070707 --label kiln.keep=st n"
        );
    }
}
