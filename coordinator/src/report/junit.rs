//! JUnit XML: one testcase per stage, for CI systems that render test results.
use std::fmt::Write;

use crate::fmt::Markup;
use crate::status::Loaded;

/// Escapes text for XML 1.0, dropping control characters it cannot carry.
fn xml(s: &str) -> String {
    crate::fmt::escape(s, Markup::Xml)
}

/// How a stage outcome maps onto JUnit's result elements.
fn element(outcome: &str) -> Option<&'static str> {
    match outcome {
        "passed" | "warning" => None,
        "skipped" | "not_run" => Some("skipped"),
        "failed" | "timed_out" | "held" => Some("failure"),
        _ => Some("error"), // error, aborted, lost, running
    }
}

/// The run as a JUnit `<testsuites>` document.
pub fn render(l: &Loaded) -> String {
    let s = &l.status;
    let count = |e: &str| {
        s.stages
            .iter()
            .filter(|st| element(&st.outcome) == Some(e))
            .count()
    };
    let (failures, errors, skipped) = (count("failure"), count("error"), count("skipped"));
    let secs = |ms: Option<u64>| ms.unwrap_or(0) as f64 / 1000.0;
    let total: f64 = s.stages.iter().map(|st| secs(st.duration_ms)).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let head = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{total:.3}\"",
        s.stages.len()
    );
    let _ = writeln!(out, "<testsuites name=\"kiln\" {head}>");
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" id=\"{}\" hostname=\"{}\" {head}>",
        xml(&s.plan),
        xml(&s.run),
        xml(&s.host)
    );
    let _ = writeln!(
        out,
        "    <properties><property name=\"run\" value=\"{}\"/><property name=\"state\" value=\"{}\"/><property name=\"outcome\" value=\"{}\"/></properties>",
        xml(&s.run),
        s.state.as_str(),
        s.outcome.unwrap_or("")
    );
    for st in &s.stages {
        let _ = writeln!(
            out,
            "    <testcase name=\"{}\" classname=\"{}.{}\" time=\"{:.3}\">",
            xml(&st.name),
            xml(&s.plan),
            st.kind,
            secs(st.duration_ms)
        );
        let msg = if st.detail.is_empty() {
            st.outcome.clone()
        } else {
            format!("{}: {}", st.outcome, st.detail)
        };
        match element(&st.outcome) {
            Some("skipped") => {
                let _ = writeln!(out, "      <skipped message=\"{}\"/>", xml(&msg));
            }
            Some(e) => {
                let _ = writeln!(
                    out,
                    "      <{e} message=\"{}\" type=\"{}\"/>",
                    xml(&msg),
                    xml(&st.outcome)
                );
            }
            None => {}
        }
        let log: Vec<&str> = crate::report::log_lines(&l.frames)
            .filter(|(i, _)| *i == st.index)
            .map(|(_, t)| t)
            .collect();
        if !log.is_empty() {
            let _ = writeln!(
                out,
                "      <system-out>{}</system-out>",
                xml(&log.join("\n"))
            );
        }
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
