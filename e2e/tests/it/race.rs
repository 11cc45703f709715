//! Agents racing for one run: real `kiln-agent run` processes with their own work
//! folders, started together on one pending run. Exactly one claim binds it; every
//! other agent is refused before it runs anything, and is recorded as contested.
use crate::common::*;
use crate::runs::{Fx, s};
use std::process::{Command, Stdio};

/// How many agents race.
const AGENTS: usize = 8;

#[test]
fn agents_racing_for_one_run_get_one_claim_and_the_rest_run_nothing() {
    let fx = Fx::new();
    let server = Coordinator::start(&fx.state);
    // Each agent that runs the stage appends the folder it ran in: its work folder.
    let markers = fx.dir.join("markers");
    let plan = fx.plan(
        "p.toml",
        &format!(
            "name = \"p\"\n[[stage]]\nname = \"mark\"\nkind = \"exec\"\n\
             command = [\"sh\", \"-c\", \"pwd >> '{}'\"]\n",
            markers.display()
        ),
    );
    let run = fx.issue(&plan, Some(&server.url), None);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    let works: Vec<_> = (0..AGENTS)
        .map(|i| fx.dir.join(format!("work{i}")))
        .collect();
    let children: Vec<_> = works
        .iter()
        .map(|w| {
            Command::new(bin("kiln-agent"))
                .args(["run", "--ticket", s(&ticket), "--trust", s(&fx.trust())])
                .args(["--work", s(w)])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting kiln-agent")
        })
        .collect();
    let outs: Vec<Out> = children
        .into_iter()
        .map(|c| Out::from(c.wait_with_output().expect("waiting for kiln-agent")))
        .collect();

    let winners: Vec<usize> = (0..AGENTS).filter(|i| outs[*i].code == 0).collect();
    assert_eq!(winners.len(), 1, "exactly one agent runs: {outs:#?}");
    let winner = winners[0];
    for (i, o) in outs.iter().enumerate().filter(|(i, _)| *i != winner) {
        assert_eq!(o.code, 2, "agent {i} lost the race: {o:?}");
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "agent {i}: {}",
            o.stderr
        );
        assert!(
            o.stderr.contains("claim refused"),
            "agent {i}: {}",
            o.stderr
        );
        assert!(
            o.stderr
                .contains("409 run already claimed by another agent key"),
            "agent {i}: {}",
            o.stderr
        );
    }
    // Only the winner ran the stage, once.
    let ran = std::fs::read_to_string(&markers).expect("the winner ran its stage");
    let ran: Vec<&str> = ran.lines().collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    let winner_work = works[winner].canonicalize().expect("winner's work folder");
    assert!(
        std::path::Path::new(ran[0]).starts_with(&winner_work),
        "the stage ran in {} (winner: {})",
        ran[0],
        winner_work.display()
    );
    // One stored Claim, one `claim` record; the others are `contested` records.
    let claims: Vec<_> = fx
        .stored_frames(&run)
        .into_iter()
        .filter(|f| matches!(f.event, kiln_protocol::Event::Claim { .. }))
        .collect();
    assert_eq!(claims.len(), 1, "{claims:?}");
    let record = std::fs::read_to_string(fx.state.join("runs").join(&run).join("claims"))
        .expect("claims record");
    let kinds: Vec<&str> = record
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "claim").count(),
        1,
        "{record}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "contested").count(),
        AGENTS - 1,
        "{record}"
    );
    assert_eq!(kinds.len(), AGENTS, "{record}");
    let show = fx.show(&run);
    assert_eq!(show["outcome"], "passed", "{show}");
    assert_eq!(show["contested"], true, "{show}");
}
