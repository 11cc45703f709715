//! The `network` stage: iperf3 (`-J`) against the plan's server, upload then download
//! (`-R`), throughput as measurements, a minimum in Mbit/s. A busy server is retried;
//! an unreachable one is an infrastructure error, never the host's fault.
use kiln_protocol::{NetworkSpec, Outcome};
use serde_json::Value;
use std::time::Duration;

use super::tools::Tool;
use crate::stages::ctx::{StageCtx, StageResult};

/// Tries against a server busy with another client's test.
const BUSY_TRIES: u32 = 6;

/// One direction's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Received at the far end, Mbit/s.
    pub mbps: f64,
    /// Sent by the sender, Mbit/s.
    pub sent_mbps: f64,
    /// TCP retransmits (sender side), when reported.
    pub retransmits: Option<u64>,
}

/// Reads an `iperf3 -J` document: the throughput, or iperf3's error text.
pub fn parse(text: &str) -> Result<Throughput, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(e) = doc["error"].as_str() {
        return Err(e.to_string());
    }
    let end = &doc["end"];
    let rx = end["sum_received"]["bits_per_second"].as_f64();
    let tx = end["sum_sent"]["bits_per_second"].as_f64();
    match (rx, tx) {
        (Some(rx), Some(tx)) => Ok(Throughput {
            mbps: rx / 1e6,
            sent_mbps: tx / 1e6,
            retransmits: end["sum_sent"]["retransmits"].as_u64(),
        }),
        _ => Err("iperf3 JSON has no end.sum_received/sum_sent".into()),
    }
}

/// The iperf3 argv for one direction.
pub fn argv(spec: &NetworkSpec, reverse: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "iperf3".into(),
        "-c".into(),
        spec.server.clone(),
        "-p".into(),
        spec.port.to_string(),
        "-t".into(),
        spec.duration_s.max(1).to_string(),
        "-J".into(),
        "--connect-timeout".into(),
        "5000".into(),
    ];
    if reverse {
        a.push("-R".into());
    }
    a
}

/// One direction, retried while the server is busy.
async fn direction(
    ctx: &StageCtx,
    spec: &NetworkSpec,
    reverse: bool,
) -> Result<Throughput, StageResult> {
    let mut wait = Duration::from_secs(2);
    for attempt in 1..=BUSY_TRIES {
        let tool = Tool::new(argv(spec, reverse), spec.duration_s + 30);
        let c = tool.run(ctx).await.map_err(|e| e.result(ctx))?;
        match parse(&c.text()) {
            Ok(t) => return Ok(t),
            Err(e) if e.contains("busy") && attempt < BUSY_TRIES => {
                ctx.note(&format!(
                    "iperf3 server busy; trying again in {}s",
                    wait.as_secs()
                ));
                smol::Timer::after(wait).await;
                wait = (wait * 2).min(Duration::from_secs(15));
            }
            Err(e) => {
                let server = format!("{}:{}", spec.server, spec.port);
                return Err(StageResult::error(format!("iperf3 to {server}: {e}")));
            }
        }
    }
    unreachable!("the last try returns")
}

/// Runs the stage.
pub async fn run(ctx: &StageCtx, spec: &NetworkSpec) -> StageResult {
    let mut problems = Vec::new();
    let mut summary = Vec::new();
    for (reverse, label) in [(false, "tx"), (true, "rx")] {
        let t = match direction(ctx, spec, reverse).await {
            Ok(t) => t,
            Err(r) => return r,
        };
        ctx.measure(&format!("net.{label}_mbps"), t.mbps, "Mbit/s");
        if let Some(r) = t.retransmits {
            ctx.measure(&format!("net.{label}_retransmits"), r as f64, "count");
        }
        let dir = if reverse { "download (-R)" } else { "upload" };
        ctx.note(&format!(
            "{dir} to {}:{}: {:.1} Mbit/s received, {:.1} sent, retransmits {}",
            spec.server,
            spec.port,
            t.mbps,
            t.sent_mbps,
            t.retransmits.map(|r| r.to_string()).unwrap_or("n/a".into())
        ));
        summary.push(format!("{label} {:.0} Mbit/s", t.mbps));
        if let Some(min) = spec.min_mbps
            && t.mbps < min
        {
            problems.push(format!("{dir} {:.1} Mbit/s below {min}", t.mbps));
        }
    }
    if problems.is_empty() {
        StageResult::new(Outcome::Passed, summary.join(", "))
    } else {
        StageResult::new(Outcome::Failed, problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        crate::stages::hardware::testutil::fixture("iperf3", name)
    }

    #[test]
    fn captured_runs() {
        let f = parse(&fixture("loopback-fwd.json")).unwrap();
        assert!((f.mbps - 11682.898010126175).abs() < 1e-6, "{f:?}");
        assert!(f.sent_mbps > 11000.0);
        assert!(f.retransmits.is_some());
        let r = parse(&fixture("loopback-rev.json")).unwrap();
        assert!(r.mbps > 1000.0, "{r:?}");
    }

    #[test]
    fn refused_is_the_error_text() {
        assert_eq!(
            parse(&fixture("refused.json")).unwrap_err(),
            "unable to connect to server: Connection refused"
        );
        assert!(parse("").is_err());
        assert!(parse("{\"end\":{}}").is_err());
    }
}
