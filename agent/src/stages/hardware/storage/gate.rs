//! The storage stage's write gate: a disk is written only when it is one of the host's
//! expected disks (its serial must match when the spec names one), nothing uses it,
//! both ends are all zeros with no known signature, wipefs probed it successfully and
//! found nothing, and an `O_EXCL` open succeeds. Anything else is a hold reason.
use kiln_protocol::DiskSpec;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::wipe::{self, Ends};
use crate::stages::ctx::StageCtx;
use crate::stages::hardware::collect::{self, Roots};
use crate::stages::hardware::tools::{Tool, ToolError};
use crate::stages::hardware::usage::{self, BlockDev};

/// A disk that passed every gate: held open exclusively until dropped.
#[derive(Debug)]
pub struct Claim {
    /// The exclusive handle; nothing else can mount or claim the disk while it lives.
    _file: File,
    /// The canonical device node (`/dev/sdb`): what fio and badblocks are given.
    pub node: PathBuf,
}

/// Whether `path` (from the spec) names the device `bd`.
fn path_names(path: &str, bd: &BlockDev) -> bool {
    path == bd.given || std::fs::canonicalize(path).is_ok_and(|n| n == bd.node)
}

/// Whether `bd` (whose serial read from sysfs is `serial`, empty when unreadable) is
/// one of the expected `disks`. An entry with a serial matches only that serial (its
/// path, if any, narrows further); an entry without one matches by path.
pub fn expected(disks: &[DiskSpec], bd: &BlockDev, serial: &str) -> Result<(), String> {
    if disks.is_empty() {
        return Err("the host's spec lists no expected disks".into());
    }
    let serial = serial.trim();
    let mut why = Vec::new();
    for d in disks {
        let path_ok = |unset: bool| d.path.as_deref().map_or(unset, |p| path_names(p, bd));
        match d.serial.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(want) if serial == want && path_ok(true) => return Ok(()),
            Some(want) if serial.is_empty() && path_ok(true) => why.push(format!(
                "the device's serial cannot be read, so the spec's serial {want:?} cannot be confirmed"
            )),
            Some(want) if path_ok(false) => why.push(format!(
                "the spec expects serial {want:?} at this path but the device's serial is {serial:?}"
            )),
            Some(_) => {}
            None if path_ok(false) => return Ok(()),
            None => {}
        }
    }
    let mut msg = format!(
        "not among the host's expected disks (path {}, serial {serial:?})",
        bd.given
    );
    if !why.is_empty() {
        msg = format!("{msg}: {}", why.join("; "));
    }
    Err(msg)
}

/// The signatures `wipefs -n -J` finds on `node`; `Ok(Err(why))` when it could not
/// probe (missing, killed, non-zero exit, or output that is not its JSON); `Err` only
/// when the stage was stopped.
async fn wipefs(
    ctx: &StageCtx,
    program: &str,
    node: &Path,
) -> Result<Result<Vec<String>, String>, ToolError> {
    let node = node.to_string_lossy().into_owned();
    let c = match Tool::new([program, "--no-act", "--json", node.as_str()], 60)
        .run(ctx)
        .await
    {
        Ok(c) => c,
        Err(e @ ToolError::Stopped(_)) => return Err(e),
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(if let Some(sig) = c.signal() {
        Err(format!("{program} killed by signal {sig}"))
    } else if let Some(code) = c.code().filter(|&c| c != 0) {
        let tail = c.stderr.last().cloned().unwrap_or_default();
        Err(format!("{program} exited {code}: {tail}"))
    } else {
        wipe::parse_wipefs(&c.text()).map_err(|e| format!("{program}: {e}"))
    })
}

/// Every gate for writing to `dev`, with `wipefs_program` as wipefs (tests pass a
/// fake's path). `Ok(Err(reasons))`: hold the disk; `Err`: the stage was stopped.
pub async fn gate(
    ctx: &StageCtx,
    roots: &Roots,
    dev: &str,
    wipefs_program: &str,
) -> Result<Result<Claim, Vec<String>>, ToolError> {
    let bd = match usage::resolve(&roots.sys, dev) {
        Ok(bd) => bd,
        Err(e) => return Ok(Err(vec![format!("cannot resolve {dev}: {e}")])),
    };
    let mut why = Vec::new();
    let serial = collect::disk(&roots.sys, &bd.name).serial;
    if let Err(e) = expected(&ctx.host.spec.disks, &bd, &serial) {
        why.push(e);
    }
    why.extend(usage::in_use(&roots.sys, &roots.proc, &bd));
    // An operator's approval (verified by the agent, bound to run, stage and this
    // serial) overrides the blank checks for this disk only; the rest still hold.
    let approved = !serial.trim().is_empty() && ctx.approved.iter().any(|s| s == serial.trim());
    if approved {
        ctx.note(&format!(
            "{dev}: serial {:?} approved by the operator: the blank checks are skipped",
            serial.trim()
        ));
        if !why.is_empty() {
            return Ok(Err(why));
        }
        return Ok(usage::claim(&bd.node)
            .map(|f| Claim {
                _file: f,
                node: bd.node.clone(),
            })
            .map_err(|e| vec![format!("cannot open exclusively (in use?): {e}")]));
    }
    let node = bd.node.clone();
    match smol::unblock(move || Ends::read(&node)).await {
        Ok(ends) => {
            let sigs = wipe::probe(&ends);
            if !sigs.is_empty() {
                let s: Vec<String> = sigs
                    .iter()
                    .map(|s| format!("{} at byte {}", s.kind, s.offset))
                    .collect();
                why.push(format!("wipe probe found {}", s.join(", ")));
            } else if !ends.blank() {
                // What an unknown filesystem, or one the probe misses, looks like.
                why.push("the first/last MiB hold data but no known signature: not blank".into());
            }
        }
        Err(e) => why.push(format!("wipe probe could not read the device: {e}")),
    }
    match wipefs(ctx, wipefs_program, &bd.node).await? {
        Ok(found) if found.is_empty() => {}
        Ok(found) => why.push(format!("wipefs found {}", found.join(", "))),
        Err(e) => why.push(format!("wipefs could not probe: {e}")),
    }
    if !why.is_empty() {
        return Ok(Err(why));
    }
    Ok(usage::claim(&bd.node)
        .map(|f| Claim {
            _file: f,
            node: bd.node.clone(),
        })
        .map_err(|e| vec![format!("cannot open exclusively (in use?): {e}")]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdb() -> BlockDev {
        BlockDev {
            given: "/dev/sdb".into(),
            node: "/dev/sdb".into(),
            name: "sdb".into(),
            devno: "8:16".into(),
        }
    }

    fn entry(path: Option<&str>, serial: Option<&str>) -> DiskSpec {
        DiskSpec {
            path: path.map(String::from),
            serial: serial.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_named_serial_must_match() {
        let bd = sdb();
        let both = [entry(Some("/dev/sdb"), Some("S1"))];
        let e = expected(&both, &bd, "S2").unwrap_err();
        assert!(
            e.contains("expects serial \"S1\"") && e.contains("\"S2\""),
            "{e}"
        );
        assert_eq!(expected(&both, &bd, "S1"), Ok(()));
        let e = expected(&both, &bd, "").unwrap_err();
        assert!(e.contains("serial cannot be read"), "{e}");
        // The path narrows: the right serial at another path is not the expected disk.
        assert!(expected(&[entry(Some("/dev/sdc"), Some("S1"))], &bd, "S1").is_err());
        // Serial only: any path.
        assert_eq!(expected(&[entry(None, Some("S1"))], &bd, "S1"), Ok(()));
        let e = expected(&[entry(None, Some("S1"))], &bd, "").unwrap_err();
        assert!(e.contains("serial cannot be read"), "{e}");
    }

    #[test]
    fn path_only_entries_match_by_path() {
        let bd = sdb();
        assert_eq!(
            expected(&[entry(Some("/dev/sdb"), None)], &bd, "S9"),
            Ok(())
        );
        assert_eq!(
            expected(&[entry(Some("/dev/sdb"), Some(" "))], &bd, ""),
            Ok(())
        );
        let e = expected(&[entry(Some("/dev/sdc"), None)], &bd, "S9").unwrap_err();
        assert!(e.starts_with("not among the host's expected disks"), "{e}");
        assert!(expected(&[], &bd, "S9").unwrap_err().contains("lists no"));
    }
}
