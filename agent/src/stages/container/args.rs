//! The `podman run` / `docker run` argument list of one matrix cell, and the names
//! derived from a cell: its label, slug and container name.
use kiln_protocol::{ContainerSpec, ImageRef, RunId};

/// Which engine's command line to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// podman.
    Podman,
    /// docker.
    Docker,
}

/// One cell of a stage's matrix: an image and one value per extra axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Position in the matrix (image-major), unique within the stage.
    pub index: usize,
    /// The image.
    pub image: ImageRef,
    /// One (name, value) per extra axis, in the plan's order.
    pub env: Vec<(String, String)>,
}

impl Cell {
    /// The name shown in log prefixes and reports: `debian:12` or `debian:12 PY=3.11`.
    pub fn label(&self) -> String {
        let mut s = self.image.label().to_string();
        for (k, v) in &self.env {
            s.push(' ');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    /// The label reduced to `[A-Za-z0-9_.=-]` (for artifact folders and names).
    pub fn slug(&self) -> String {
        slug(&self.label(), "=")
    }
}

/// Every cell of the matrix: `images` × each extra axis, image-major.
pub fn cells(spec: &ContainerSpec) -> Vec<Cell> {
    let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
    for (name, values) in &spec.axes {
        combos = combos
            .iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((name.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    let mut out = Vec::new();
    for image in &spec.images {
        for env in &combos {
            out.push(Cell {
                index: out.len(),
                image: image.clone(),
                env: env.clone(),
            });
        }
    }
    out
}

/// Keeps ASCII letters, digits, `_`, `.`, `-` (and `extra`); everything else becomes `_`.
fn slug(s: &str, extra: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) || extra.contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Longest stage or cell part kept in a container name.
const NAME_PART: usize = 40;

/// `kiln-<run8>-<stage>-<attempt>-<index>-<cell>`, within podman's and docker's
/// name rules (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`). The cell index keeps names unique even
/// where two labels reduce to the same slug.
pub fn container_name(run: &RunId, stage: &str, attempt: u32, cell: &Cell) -> String {
    let run8 = &run.to_string()[..8];
    let part = |s: &str| {
        let mut s = slug(s, "");
        s.truncate(NAME_PART);
        s
    };
    format!(
        "kiln-{run8}-{}-{attempt}-{}-{}",
        part(stage),
        cell.index,
        part(&cell.label())
    )
}

/// A cell's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellNet {
    /// `--network none` (the default: no network at all).
    None,
    /// The engine's default network (`network = true`, no services).
    Default,
    /// The cell's own network, shared with its services: each `(name, address)` is
    /// an `--add-host` so the test reaches a service by name (no engine DNS needed).
    Named {
        /// The network's name.
        network: String,
        /// Service names and their addresses on the network.
        hosts: Vec<(String, String)>,
    },
}

impl CellNet {
    /// What a cell without services gets: none unless the plan allows the network.
    pub fn plain(spec: &ContainerSpec) -> CellNet {
        if spec.network {
            CellNet::Default
        } else {
            CellNet::None
        }
    }
}

/// The label `keep_failed` stages put on their containers and networks, valued with
/// the stage's name: what `kiln-agent gc` removes, and what the next run of the same
/// stage removes first.
pub const KEEP_LABEL: &str = "kiln.keep";

/// Labels on everything a stage creates: `kiln.run`, and for `keep_failed` stages
/// [`KEEP_LABEL`]`=<stage>`.
pub fn labels(run: &RunId, stage: &str, spec: &ContainerSpec) -> Vec<String> {
    let mut a = vec!["--label".into(), format!("kiln.run={run}")];
    if spec.keep_failed {
        a.extend(["--label".into(), format!("{KEEP_LABEL}={stage}")]);
    }
    a
}

/// The hardened defaults (each relaxation explicit in the plan) shared by test
/// containers and services: read-only root, all capabilities dropped,
/// no-new-privileges, an unprivileged user, memory/CPU/process caps, a tmpfs `/tmp`.
pub fn hardening(spec: &ContainerSpec) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if spec.read_only {
        a.push("--read-only".into());
    }
    a.extend(["--cap-drop".into(), "ALL".into()]);
    for cap in &spec.cap_add {
        a.extend(["--cap-add".into(), cap.clone()]);
    }
    if spec.no_new_privileges {
        a.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    let user = spec.user.as_deref().unwrap_or(DEFAULT_USER);
    a.extend(["--user".into(), user.into()]);
    if spec.memory_bytes > 0 {
        a.extend(["--memory".into(), spec.memory_bytes.to_string()]);
    }
    if spec.cpu_millis > 0 {
        let cpus = format!("{}.{:03}", spec.cpu_millis / 1000, spec.cpu_millis % 1000);
        a.extend(["--cpus".into(), cpus]);
    }
    if spec.pids_limit > 0 {
        a.extend(["--pids-limit".into(), spec.pids_limit.to_string()]);
    }
    let mut tmpfs = "/tmp:rw,nosuid,nodev,mode=1777".to_string();
    if spec.tmpfs_bytes > 0 {
        tmpfs.push_str(&format!(",size={}", spec.tmpfs_bytes));
    }
    a.extend(["--tmpfs".into(), tmpfs]);
    a
}

/// Where a cell's folders live on the agent's host.
#[derive(Debug, Clone)]
pub struct Mounts {
    /// The stage's folder (the test bundle), mounted read-only at `/workspace`.
    pub workspace: String,
    /// The cell's empty artifact folder, mounted read-write at `/artifacts`.
    pub artifacts: String,
    /// The stage's secret files, mounted read-only at [`SECRETS_DIR`] (none: no mount).
    pub secrets: Option<String>,
}

/// Where a container finds the stage's secrets, one file per secret.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Default user when the plan names none: nobody:nogroup.
pub const DEFAULT_USER: &str = "65534:65534";
/// Default working directory inside the container.
pub const DEFAULT_WORKDIR: &str = "/workspace";

/// The full argument list after the engine's program name: `run … IMAGE [COMMAND…]`
/// (`image` is the cell's image name: the registry reference, archive name or build
/// tag).
///
/// `env` (plan env, then the cell's axes) goes on the command line as `NAME=VALUE`.
/// Secrets are never in it: they are files in a read-only mount ([`Mounts::secrets`]),
/// so no value is in the engine's command line, its environment, or the container's
/// metadata (`podman inspect` / `docker inspect` list the environment).
#[allow(clippy::too_many_arguments)]
pub fn run_args(
    kind: EngineKind,
    (run, stage): (&RunId, &str),
    spec: &ContainerSpec,
    cell: &Cell,
    image: &str,
    name: &str,
    net: &CellNet,
    mounts: &Mounts,
    env: &[(String, String)],
) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into()];
    if !spec.keep_failed {
        a.push("--rm".into());
    }
    a.extend(["--name".into(), name.into()]);
    if kind == EngineKind::Podman {
        // A container left by a crashed agent under the same name is replaced.
        a.push("--replace".into());
    }
    a.push("--pull=never".into());
    a.extend(hardening(spec));
    match net {
        CellNet::None => a.extend(["--network".into(), "none".into()]),
        CellNet::Default => {}
        CellNet::Named { network, hosts } => {
            a.extend(["--network".into(), network.clone()]);
            for (host, ip) in hosts {
                a.extend(["--add-host".into(), format!("{host}:{ip}")]);
            }
        }
    }
    a.extend(labels(run, stage, spec));
    a.extend([
        "--volume".into(),
        format!("{}:/workspace:ro", mounts.workspace),
        "--volume".into(),
        format!("{}:/artifacts:rw", mounts.artifacts),
    ]);
    if let Some(secrets) = &mounts.secrets {
        a.extend(["--volume".into(), format!("{secrets}:{SECRETS_DIR}:ro")]);
    }
    for m in &spec.mounts {
        let mode = if m.read_only { "ro" } else { "rw" };
        a.extend([
            "--volume".into(),
            format!("{}:{}:{mode}", m.host, m.container),
        ]);
    }
    let workdir = spec.workdir.as_deref().unwrap_or(DEFAULT_WORKDIR);
    a.extend(["--workdir".into(), workdir.into()]);
    for (k, v) in env.iter().chain(&cell.env) {
        a.extend(["--env".into(), format!("{k}={v}")]);
    }
    a.push(image.into());
    a.extend(spec.command.iter().cloned());
    a
}

/// A hardened spec for unit tests elsewhere in the module.
#[cfg(test)]
pub(crate) fn tests_spec() -> ContainerSpec {
    tests::spec(&["x"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::Runtime;

    pub(crate) fn spec(images: &[&str]) -> ContainerSpec {
        ContainerSpec {
            runtime: Runtime::Auto,
            images: images
                .iter()
                .map(|i| ImageRef::Registry(i.to_string()))
                .collect(),
            axes: vec![],
            command: vec!["./run.sh".into()],
            workdir: None,
            concurrency: 2,
            fail_fast: true,
            read_only: true,
            network: false,
            user: None,
            cap_add: vec![],
            no_new_privileges: true,
            memory_bytes: 512 << 20,
            cpu_millis: 1500,
            pids_limit: 256,
            tmpfs_bytes: 64 << 20,
            mounts: vec![],
            services: vec![],
            keep_failed: false,
        }
    }

    const RUN: RunId = RunId([7; 16]);

    fn mounts() -> Mounts {
        Mounts {
            workspace: "/w".into(),
            artifacts: "/a".into(),
            secrets: None,
        }
    }

    #[test]
    fn matrix_is_images_times_axes_with_labels() {
        let mut s = spec(&["debian:12", "fedora:40"]);
        s.axes = vec![("PY".into(), vec!["3.11".into(), "3.12".into()])];
        let labels: Vec<String> = cells(&s).iter().map(Cell::label).collect();
        assert_eq!(
            labels,
            [
                "debian:12 PY=3.11",
                "debian:12 PY=3.12",
                "fedora:40 PY=3.11",
                "fedora:40 PY=3.12"
            ]
        );
        assert_eq!(cells(&s)[3].index, 3);
        assert_eq!(cells(&s)[0].slug(), "debian_12_PY=3.11");
        assert!(cells(&spec(&[])).is_empty());
    }

    #[test]
    fn hardened_defaults_are_on_the_command_line() {
        let s = spec(&["debian:12"]);
        let c = &cells(&s)[0];
        let env = [("LEVEL".to_string(), "2".to_string())];
        let m = Mounts {
            secrets: Some("/s".into()),
            ..mounts()
        };
        let a = run_args(
            EngineKind::Podman,
            (&RUN, "st"),
            &s,
            c,
            "debian:12",
            "n",
            &CellNet::None,
            &m,
            &env,
        );
        let line = a.join(" ");
        for want in [
            "run --rm --name n --replace --pull=never --read-only --cap-drop ALL",
            "--security-opt no-new-privileges --user 65534:65534",
            "--memory 536870912 --cpus 1.500 --pids-limit 256",
            "--tmpfs /tmp:rw,nosuid,nodev,mode=1777,size=67108864 --network none",
            "--label kiln.run=07070707070707070707070707070707",
            "--volume /w:/workspace:ro --volume /a:/artifacts:rw",
            "--volume /s:/run/secrets:ro --workdir /workspace",
            "--env LEVEL=2 debian:12 ./run.sh",
        ] {
            assert!(line.contains(want), "{want:?} not in {line:?}");
        }
        let d = run_args(
            EngineKind::Docker,
            (&RUN, "st"),
            &s,
            c,
            "debian:12",
            "n",
            &CellNet::None,
            &mounts(),
            &[],
        );
        assert!(!d.contains(&"--replace".to_string()));
    }

    #[test]
    fn relaxations_are_explicit() {
        let mut s = spec(&["x"]);
        s.read_only = false;
        s.network = true;
        s.no_new_privileges = false;
        s.user = Some("0:0".into());
        s.cap_add = vec!["NET_ADMIN".into()];
        s.memory_bytes = 0;
        s.cpu_millis = 0;
        s.pids_limit = 0;
        s.tmpfs_bytes = 0;
        s.workdir = Some("/src".into());
        let line = run_args(
            EngineKind::Podman,
            (&RUN, "st"),
            &s,
            &cells(&s)[0],
            "x",
            "n",
            &CellNet::plain(&s),
            &mounts(),
            &[],
        )
        .join(" ");
        for gone in [
            "--read-only",
            "--network",
            "no-new-privileges",
            "--memory",
            "--cpus",
        ] {
            assert!(!line.contains(gone), "{gone} in {line}");
        }
        assert!(
            line.contains("--cap-drop ALL --cap-add NET_ADMIN --user 0:0"),
            "{line}"
        );
        assert!(
            line.contains("--tmpfs /tmp:rw,nosuid,nodev,mode=1777 "),
            "{line}"
        );
        assert!(line.contains("--workdir /src"), "{line}");
    }

    #[test]
    fn names_are_unique_and_safe() {
        let mut s = spec(&["registry.example/a b:1", "registry.example/a_b:1"]);
        s.axes = vec![("K".into(), vec!["x/y".into()])];
        let cs = cells(&s);
        let run = RunId([0xab; 16]);
        let a = container_name(&run, "my stage", 2, &cs[0]);
        let b = container_name(&run, "my stage", 2, &cs[1]);
        assert_eq!(a, "kiln-abababab-my_stage-2-0-registry.example_a_b_1_K_x_y");
        assert_ne!(a, b);
        let long = container_name(&run, &"s".repeat(500), 1, &cs[0]);
        assert!(long.len() < 120, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
    }
}
