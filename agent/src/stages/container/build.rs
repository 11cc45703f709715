//! Images built on the agent from a Containerfile in the stage's test folder.
//!
//! A build is named by what goes into it: the tag is
//! `localhost/kiln-build/<stage>:<hash>`, the hash covering the context's tree hash,
//! the Containerfile's path and bytes, and the resolved build arguments. An image
//! with that tag already present is reused without building (unless `no_cache`);
//! cells whose builds resolve to the same tag share one image, built once.
use kiln_protocol::BuildSpec;
use sha2::Digest;
use std::path::{Component, Path, PathBuf};

/// Hex digits of the content hash kept in the tag.
pub const TAG_HASH_LEN: usize = 24;

/// A build resolved for one cell: what to build and the tag it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// `localhost/kiln-build/<stage>:<hash>`.
    pub tag: String,
    /// The part (and log prefix) its output goes under: `build`, then each matrix
    /// axis the arguments use as ` NAME=value`.
    pub part: String,
    /// The Containerfile on this host.
    pub file: PathBuf,
    /// The context folder on this host.
    pub context: PathBuf,
    /// `--build-arg` values, axes substituted, in the plan's order.
    pub args: Vec<(String, String)>,
    /// Build afresh, without the layer cache and without reusing the tag.
    pub no_cache: bool,
}

/// A relative path inside the test folder: no root, no `..`.
fn inside(dir: &Path, rel: &str, what: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "{what} {rel:?} must be a relative path inside the test folder"
        ));
    }
    Ok(dir.join(p))
}

/// `${NAME}` in `value` replaced by the cell's value of matrix axis `NAME`; the axes
/// used are added to `used`.
fn substitute(value: &str, axes: &[(String, String)], used: &mut Vec<String>) -> String {
    let mut out = value.to_string();
    for (k, v) in axes {
        let var = format!("${{{k}}}");
        if out.contains(&var) {
            out = out.replace(&var, v);
            if !used.contains(k) {
                used.push(k.clone());
            }
        }
    }
    out
}

/// The stage name as an image repository component: lowercase `[a-z0-9]` runs joined
/// by single `-`, at most 64 bytes, `stage` if nothing is left.
pub fn repo_part(stage: &str) -> String {
    let mut out = String::new();
    for c in stage.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(64);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "stage".into() } else { out }
}

/// Resolves `spec` for a cell with matrix values `axes`, in the test folder `dir`:
/// reads the Containerfile and hashes the context.
pub fn resolve(
    stage: &str,
    dir: &Path,
    spec: &BuildSpec,
    axes: &[(String, String)],
) -> Result<Build, String> {
    let file = inside(dir, &spec.file, "build")?;
    let context = inside(dir, &spec.context, "context")?;
    let containerfile = std::fs::read(&file)
        .map_err(|e| format!("reading the Containerfile {}: {e}", spec.file))?;
    let tree = kiln_protocol::tree::tree_hash(&context)
        .map_err(|e| format!("hashing the build context {:?}: {e}", spec.context))?;
    let mut used = Vec::new();
    let args: Vec<(String, String)> = spec
        .args
        .iter()
        .map(|(k, v)| (k.clone(), substitute(v, axes, &mut used)))
        .collect();
    let mut h = sha2::Sha256::new();
    h.update(b"kiln-build-v1\0");
    h.update(tree.0);
    h.update(spec.file.as_bytes());
    h.update(b"\0");
    h.update(sha2::Sha256::digest(&containerfile));
    h.update(spec.context.as_bytes());
    h.update(b"\0");
    let mut sorted = args.clone();
    sorted.sort();
    for (k, v) in &sorted {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\0");
    }
    let hash = kiln_protocol::hex(&h.finalize());
    let mut part = "build".to_string();
    for (k, v) in axes.iter().filter(|(k, _)| used.contains(k)) {
        part.push_str(&format!(" {k}={v}"));
    }
    Ok(Build {
        tag: format!(
            "localhost/kiln-build/{}:{}",
            repo_part(stage),
            &hash[..TAG_HASH_LEN]
        ),
        part,
        file,
        context,
        args,
        no_cache: spec.no_cache,
    })
}

/// The engine's `build` arguments (after the program name). Without `network` the
/// build's `RUN` steps have no network either.
pub fn build_args(b: &Build, network: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "build".into(),
        "--file".into(),
        b.file.to_string_lossy().into_owned(),
        "--tag".into(),
        b.tag.clone(),
        "--label".into(),
        "kiln.build=1".into(),
        // A failed step's container goes too (docker keeps it otherwise).
        "--force-rm".into(),
    ];
    if !network {
        a.extend(["--network".into(), "none".into()]);
    }
    if b.no_cache {
        a.push("--no-cache".into());
    }
    for (k, v) in &b.args {
        a.extend(["--build-arg".into(), format!("{k}={v}")]);
    }
    a.push(b.context.to_string_lossy().into_owned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[(&str, &str)]) -> BuildSpec {
        BuildSpec {
            file: "Containerfile".into(),
            context: "".into(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            no_cache: false,
        }
    }

    #[test]
    fn the_tag_follows_context_containerfile_and_args() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Containerfile"), "FROM x\n").unwrap();
        std::fs::write(d.path().join("data"), "1").unwrap();
        let s = spec(&[("BASE", "${BASE}"), ("K", "v")]);
        let a = [("BASE".to_string(), "a".to_string())];
        let b = [("BASE".to_string(), "b".to_string())];
        let ab = [
            ("BASE".to_string(), "a".to_string()),
            ("PY".to_string(), "3".to_string()),
        ];
        let first = resolve("My Stage!", d.path(), &s, &a).unwrap();
        assert!(
            first.tag.starts_with("localhost/kiln-build/my-stage:"),
            "{}",
            first.tag
        );
        assert_eq!(first.tag.len(), "localhost/kiln-build/my-stage:".len() + 24);
        assert_eq!(first.part, "build BASE=a");
        assert_eq!(
            first.args,
            [("BASE".into(), "a".into()), ("K".into(), "v".into())]
        );
        // Same inputs, same tag; an axis the args do not use does not count.
        assert_eq!(resolve("My Stage!", d.path(), &s, &ab).unwrap(), first);
        assert_ne!(
            resolve("My Stage!", d.path(), &s, &b).unwrap().tag,
            first.tag
        );
        std::fs::write(d.path().join("data"), "2").unwrap();
        let ctx_changed = resolve("My Stage!", d.path(), &s, &a).unwrap();
        assert_ne!(ctx_changed.tag, first.tag);
        std::fs::write(d.path().join("Containerfile"), "FROM x \n").unwrap();
        assert_ne!(
            resolve("My Stage!", d.path(), &s, &a).unwrap().tag,
            ctx_changed.tag
        );
        assert_eq!(
            resolve("s", d.path(), &spec(&[]), &a).unwrap().part,
            "build"
        );
    }

    #[test]
    fn paths_stay_inside_the_test_folder() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(&[]);
        s.file = "../Containerfile".into();
        assert!(
            resolve("s", d.path(), &s, &[])
                .unwrap_err()
                .contains("relative path")
        );
        s.file = "/etc/passwd".into();
        assert!(resolve("s", d.path(), &s, &[]).is_err());
        s.file = "missing".into();
        assert!(
            resolve("s", d.path(), &s, &[])
                .unwrap_err()
                .contains("reading the Containerfile")
        );
        assert_eq!(repo_part("--"), "stage");
        assert_eq!(repo_part("A__b..C"), "a-b-c");
    }

    #[test]
    fn build_arguments() {
        let b = Build {
            tag: "t".into(),
            part: "build".into(),
            file: "/w/Containerfile".into(),
            context: "/w".into(),
            args: vec![("BASE".into(), "img".into())],
            no_cache: true,
        };
        assert_eq!(
            build_args(&b, false).join(" "),
            "build --file /w/Containerfile --tag t --label kiln.build=1 --force-rm --network none --no-cache --build-arg BASE=img /w"
        );
        assert!(!build_args(&b, true).contains(&"--network".to_string()));
    }
}
