//! Text from the machine under test never reaches the operator's terminal raw: `run
//! logs`, `run show`, `run watch` and the JSON show control characters as escapes;
//! `--raw` gives the exact bytes.
use kiln_protocol::{Event, Outcome};

use super::*;
use crate::common::{Coordinator, kc};

/// A title-setting OSC, a screen clear, a carriage return and a C1 CSI.
const OSC: &str = "\x1b]0;pwned\x07";
const CLEAR: &str = "\x1b[2J";
const NASTY: [&str; 4] = [
    "title \x1b]0;pwned\x07 set",
    "screen \x1b[2J cleared",
    "over\rwritten",
    "c1 \u{9b}31m csi",
];

/// Whether `text` holds a character a terminal would act on (other than line ends).
fn has_controls(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n' && c != '\t') || ('\u{202a}'..='\u{202e}').contains(&c)
    })
}

/// A finished run whose hostname, log lines, stage detail and part carry escapes.
fn hostile_run(state: &std::path::Path) -> String {
    let run = issue(state);
    let c = Coordinator::start(state);
    let mut r = Reporter::new(run);
    let mut events = vec![
        r.claim(),
        Event::Hello {
            hostname: format!("node{OSC}1"),
            macs: vec![],
            serial: None,
        },
        Event::StageStarted {
            stage: 0,
            attempt: 1,
        },
    ];
    events.extend(NASTY.iter().map(|t| log(0, t)));
    events.extend([
        Event::Part {
            stage: 0,
            name: format!("part{CLEAR}"),
            outcome: Outcome::Failed,
            detail: "bidi \u{202e}gnp.exe".into(),
            tail: vec![],
        },
        finished(0, Outcome::Failed, &format!("detail {CLEAR}{OSC} \u{9b}2J")),
        Event::RunFinished {
            outcome: Outcome::Failed,
        },
    ]);
    let f = r.frames(events);
    ack(&c.url, &run, &r.seal(f));
    run.to_string()
}

#[test]
fn run_logs_and_show_make_control_characters_visible_and_raw_keeps_them() {
    let (_d, state) = keyed_state();
    let run = hostile_run(&state);

    let o = kc(&state, &["run", "logs", &run]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        !has_controls(&o.stdout),
        "raw controls in run logs: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.contains("[build] title \\x1b]0;pwned\\x07 set\n"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("screen \\x1b[2J cleared"), "{}", o.stdout);
    assert!(o.stdout.contains("over\\rwritten"), "{}", o.stdout);
    assert!(o.stdout.contains("c1 \\u{9b}31m csi"), "{}", o.stdout);
    let o = kc(&state, &["run", "logs", &run, "--stage", "build"]);
    assert!(!has_controls(&o.stdout), "{:?}", o.stdout);

    let o = kc(&state, &["run", "logs", &run, "--raw"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let want: String = NASTY.iter().map(|t| format!("[build] {t}\n")).collect();
    assert_eq!(o.stdout, want, "--raw prints the exact bytes");

    let o = kc(&state, &["run", "show", &run]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        !has_controls(&o.stdout),
        "raw controls in run show: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.contains("reports as node\\x1b]0;pwned\\x071"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("detail \\x1b[2J\\x1b]0;pwned\\x07 \\u{9b}2J"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("part\\x1b[2J"), "{}", o.stdout);
    assert!(o.stdout.contains("bidi \\u{202e}gnp.exe"), "{}", o.stdout);
    let o = kc(&state, &["run", "show", &run, "--raw"]);
    assert!(
        o.stdout.contains(&format!("detail {CLEAR}{OSC} \u{9b}2J")),
        "{:?}",
        o.stdout
    );

    // `run watch` of the ended run prints every line once, escaped.
    let o = kc(&state, &["run", "watch", &run]);
    assert_eq!(o.code, 1, "a failed run: {}", o.stderr);
    assert!(
        !has_controls(&o.stdout),
        "raw controls in run watch: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.contains("title \\x1b]0;pwned\\x07 set"),
        "{}",
        o.stdout
    );

    // JSON keeps the values but writes C1 and bidi characters as \u escapes too.
    for args in [
        vec!["run", "show", &run, "--json"],
        vec!["runs", "--json"],
        vec!["report", &run],
    ] {
        let o = kc(&state, &args);
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
        assert!(!has_controls(&o.stdout), "{args:?}: {:?}", o.stdout);
        let _: serde_json::Value = serde_json::from_str(&o.stdout).expect("still JSON");
    }
    // The HTML report escapes markup and shows controls and bidi characters too.
    let o = kc(&state, &["report", &run, "--format", "html"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        !has_controls(&o.stdout),
        "raw controls in the page: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.contains("title \\x1b]0;pwned\\x07 set"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("bidi \\u{202e}gnp.exe"), "{}", o.stdout);

    let o = kc(&state, &["run", "show", &run, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["hostname"], format!("node{OSC}1"));
    assert_eq!(
        v["stages"][0]["detail"],
        format!("detail {CLEAR}{OSC} \u{9b}2J")
    );
}
