//! Link, clock and row-remapping health ([`super::nvhealth`]'s queries) and how it
//! is judged.
use std::collections::{BTreeMap, BTreeSet};

use super::nvhealth::{self, Link, Remap, Throttle};
use crate::stages::ctx::StageCtx;
use crate::stages::hardware::tools::Tool;

/// How busy a GPU must be for a link sample to count as under load, percent.
pub(super) const BUSY: u32 = 50;

/// A GPU's link and clock health over the stage: its link (the worst seen while busy
/// under the load test, once there is such a sample, else as queried idle) and every
/// clock-cut reason seen active.
#[derive(Debug, Clone, Default)]
pub(super) struct Health {
    pub(super) link: Link,
    pub(super) busy_samples: usize,
    throttles: BTreeSet<Throttle>,
}

impl Health {
    /// Adds one link query's lines (`during_load`: taken while gpu_burn ran). Only
    /// samples that find the GPU busy judge its link: gpu_burn spends its first seconds
    /// on the CPU, and an idle link trains down to save power.
    pub(super) fn merge(all: &mut BTreeMap<u32, Health>, links: Vec<Link>, during_load: bool) {
        let worst = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for l in links {
            let h = all.entry(l.index).or_default();
            h.throttles.extend(l.throttles.iter().copied());
            let busy = during_load && l.utilization.is_some_and(|u| u >= BUSY);
            h.link.generation_max = l.generation_max.or(h.link.generation_max);
            h.link.width_max = l.width_max.or(h.link.width_max);
            h.link.index = l.index;
            if busy && h.busy_samples > 0 {
                h.link.generation = worst(h.link.generation, l.generation);
                h.link.width = worst(h.link.width, l.width);
            } else if busy || h.busy_samples == 0 {
                // The first busy sample replaces the idle link; idle samples update it.
                h.link.generation = l.generation;
                h.link.width = l.width;
            }
            h.busy_samples += usize::from(busy);
        }
    }

    /// (failures, warnings) for this GPU; its link is judged only from busy samples.
    pub(super) fn judge(&self) -> (Vec<String>, Vec<String>) {
        let (mut fail, mut warn) = (Vec::new(), Vec::new());
        let l = &self.link;
        if self.busy_samples > 0 {
            if let (Some(w), Some(max)) = (l.width, l.width_max)
                && w < max
            {
                fail.push(format!("PCIe link x{w} of x{max} under load"));
            }
            if let (Some(g), Some(max)) = (l.generation, l.generation_max)
                && g < max
            {
                warn.push(format!("PCIe gen {g} of {max} under load"));
            }
        }
        let (hw, sw): (Vec<Throttle>, Vec<Throttle>) =
            self.throttles.iter().partition(|t| t.is_hardware());
        let labels = |ts: &[Throttle]| ts.iter().map(|t| t.label()).collect::<Vec<_>>().join(", ");
        if !hw.is_empty() {
            fail.push(format!("clocks cut by the hardware ({})", labels(&hw)));
        }
        if !sw.is_empty() {
            warn.push(format!("clocks cut by the driver ({})", labels(&sw)));
        }
        (fail, warn)
    }
}

/// (failures, warnings) from a GPU's row remapping.
pub(super) fn judge_remap(r: &Remap) -> (Vec<String>, Vec<String>) {
    let (mut fail, mut warn) = (Vec::new(), Vec::new());
    if r.failure == Some(true) {
        fail.push("memory row remapping failed (no spare rows left)".to_string());
    }
    if r.pending == Some(true) {
        warn.push("memory row remap pending (reset the GPU to apply it)".to_string());
    }
    (fail, warn)
}

/// A health query's lines, or why it gave none.
pub(super) async fn health_query<T>(
    ctx: &StageCtx,
    argv: Vec<String>,
    parse: fn(&str) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, String> {
    match Tool::new(argv, 60).run(ctx).await {
        Ok(c) if c.success() => parse(&c.text()),
        Ok(c) => {
            let text = format!("{}\n{}", c.text(), c.stderr.join("\n"));
            let first = text.lines().map(str::trim).find(|l| !l.is_empty());
            Err(format!(
                "nvidia-smi {}: {}",
                c.status(),
                first.unwrap_or("")
            ))
        }
        Err(e) => Err(e.result(ctx).detail),
    }
}

/// The health checks are extras, never the stage's end: a query that gives nothing
/// is noted once, as `what … not checked`.
pub(super) fn or_note<T>(ctx: &StageCtx, what: &str, r: Result<Vec<T>, String>) -> Option<Vec<T>> {
    r.map_err(|why| ctx.note(&format!("{what} not checked: {why}")))
        .ok()
}

pub(super) async fn links(ctx: &StageCtx, smi: &str) -> Result<Vec<Link>, String> {
    let argv = nvhealth::gpu_argv(smi, nvhealth::LINK_QUERY);
    health_query(ctx, argv, nvhealth::parse_links).await
}
