//! The index against the state folder: after a random mix of command-line writes
//! (ticket issue, abort, hosts.toml edits) and server writes (claims and results
//! through the real ingest), every answer of a following index equals the answer
//! read from disk, and equals that of an index built afresh.
use super::*;
use crate::claims::Source;
use crate::ingest::{Ingester, Mode};
use crate::state::Hosts;
use kiln_protocol::{Batch, Event, Frame, Outcome, SecretKey};

struct Lab {
    _dir: tempfile::TempDir,
    state: State,
    plan: std::path::PathBuf,
}

/// Host `h<i>` has MAC `02:00:00:00:00:0<i>`; hosts.toml gets the first `n`.
fn mac(i: usize) -> Mac {
    format!("02:00:00:00:00:{i:02x}").parse().unwrap()
}

fn write_hosts(state: &State, n: usize, extra_mac_for_h0: bool) {
    let mut text = String::new();
    for i in 0..n {
        let mut macs = vec![format!("\"{}\"", mac(i))];
        if i == 0 && extra_mac_for_h0 {
            macs.push(format!("\"{}\"", mac(0x40)));
        }
        text.push_str(&format!(
            "[[host]]\nname = \"h{i}\"\nmacs = [{}]\n",
            macs.join(", ")
        ));
    }
    let hosts: Hosts = toml::from_str(&text).unwrap();
    state.save_hosts(&hosts).unwrap();
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = State::init(&dir.path().join("s")).unwrap();
    write_hosts(&state, 3, false);
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, "[[stage]]\nname = \"inv\"\nkind = \"inventory\"\n").unwrap();
    Lab {
        _dir: dir,
        state,
        plan,
    }
}

fn post(ing: &Ingester, run: RunId, frames: Vec<Frame>, key: &SecretKey) {
    let body = Batch { run, frames }.seal(key);
    let from = Source::Net("127.0.0.1:9".parse().unwrap());
    ing.ingest(&run, &body, Mode::Online, from)
        .unwrap_or_else(|r| panic!("ingest: {} {}", r.status, r.reason));
}

fn frame(seq: u64, event: Event) -> Frame {
    Frame {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        event,
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Every MAC the mix uses, and one nobody has.
fn macs() -> Vec<Mac> {
    let mut v: Vec<Mac> = (0..6).map(mac).collect();
    v.push(mac(0x40));
    v.push(mac(0x7f));
    v
}

fn check(index: &Index, lab: &Lab, step: usize) {
    let key = lab.state.public_key().unwrap();
    for m in macs() {
        assert_eq!(
            index.next_pending(&m).unwrap(),
            crate::store::next_pending(&lab.state, &key, &m).unwrap(),
            "step {step}: next pending for {m}"
        );
    }
    let mut disk = crate::status::summaries(&lab.state, &key).unwrap();
    disk.reverse();
    assert_eq!(index.all().unwrap(), disk, "step {step}: the listing");
    for h in 0..6 {
        let n = disk.iter().filter(|s| s.host == format!("h{h}")).count();
        assert_eq!(
            index.runs_of(&format!("h{h}")),
            n,
            "step {step}: runs of h{h}"
        );
    }
}

#[test]
fn a_following_index_answers_as_the_folder_does_after_a_random_mix_of_writes() {
    let lab = lab();
    let ing = Ingester::new(&lab.state).unwrap();
    let (index, built) = Index::build(&lab.state, true).unwrap();
    assert_eq!((built.runs, built.pending), (0, 0));
    let seed = 0x5eed_1234_u64;
    let mut rng = Rng(seed);
    let mut hosts = 3;
    let mut runs: Vec<RunId> = Vec::new();
    let mut claimed: Vec<(RunId, SecretKey, bool)> = Vec::new();
    for step in 0..160 {
        match rng.below(8) {
            // Issue (the command line's path, which notes the journal).
            0..=2 => {
                let h = rng.below(hosts);
                let t = crate::ticket::issue(&lab.state, &lab.plan, &format!("h{h}"), 3600, None)
                    .unwrap();
                runs.push(t.run);
            }
            // Abort a run (refused once finished: that is fine).
            3 if !runs.is_empty() => {
                let id = runs[rng.below(runs.len())];
                let key = lab.state.public_key().unwrap();
                let _ = crate::store::request_abort(&RunDir::new(&lab.state, id), &key, "mix");
            }
            // Claim the oldest pending run of some MAC, as a booted agent would.
            4 | 5 => {
                let m = macs()[rng.below(6)];
                if let Some(id) = index.next_pending(&m).unwrap() {
                    let mut seed = [0u8; 32];
                    seed[..16].copy_from_slice(&id.0);
                    let k = SecretKey::from_seed(seed);
                    let claim = Event::Claim {
                        agent_key: k.public(),
                        agent_version: "mix".into(),
                        boot_id: "b".into(),
                    };
                    post(&ing, id, vec![frame(1, claim)], &k);
                    claimed.push((id, k, false));
                }
            }
            // Finish a claimed run.
            6 if claimed.iter().any(|c| !c.2) => {
                let open: Vec<usize> = (0..claimed.len()).filter(|&i| !claimed[i].2).collect();
                let i = open[rng.below(open.len())];
                let (id, k, done) = &mut claimed[i];
                let outcome = if rng.below(2) == 0 {
                    Outcome::Passed
                } else {
                    Outcome::Failed
                };
                post(&ing, *id, vec![frame(2, Event::RunFinished { outcome })], k);
                *done = true;
            }
            // hosts.toml edits: a new host, or a second MAC for h0.
            _ => {
                if hosts < 6 && rng.below(2) == 0 {
                    hosts += 1;
                }
                write_hosts(&lab.state, hosts, rng.below(2) == 0);
            }
        }
        check(&index, &lab, step);
    }
    assert!(runs.len() > 30, "{} runs", runs.len());
    assert!(claimed.iter().filter(|c| c.2).count() > 3, "{claimed:?}");
    // A rebuild reads the same, from summary.json for the finished runs.
    let (fresh, built) = Index::build(&lab.state, true).unwrap();
    assert_eq!(built.runs, runs.len());
    assert_eq!(
        built.summarized, 0,
        "every finished run was summarized as it ended"
    );
    assert_eq!(fresh.all().unwrap(), index.all().unwrap());
    for m in macs() {
        assert_eq!(
            fresh.next_pending(&m).unwrap(),
            index.next_pending(&m).unwrap()
        );
    }
}

#[test]
fn a_missing_or_stale_summary_is_rebuilt_and_a_bad_one_is_not_trusted() {
    let lab = lab();
    let ing = Ingester::new(&lab.state).unwrap();
    let t = crate::ticket::issue(&lab.state, &lab.plan, "h1", 3600, None).unwrap();
    let k = SecretKey::from_seed([4; 32]);
    let claim = Event::Claim {
        agent_key: k.public(),
        agent_version: "t".into(),
        boot_id: "b".into(),
    };
    post(&ing, t.run, vec![frame(1, claim)], &k);
    let finished = Event::RunFinished {
        outcome: Outcome::Failed,
    };
    post(&ing, t.run, vec![frame(2, finished)], &k);
    let rd = RunDir::new(&lab.state, t.run);
    // A snapshot (a command) writes nothing; a server's index writes it.
    let (_, built) = Index::build(&lab.state, false).unwrap();
    assert_eq!(built.summarized, 1);
    assert!(!rd.path(files::SUMMARY).exists());
    let (_, built) = Index::build(&lab.state, true).unwrap();
    assert_eq!(built.summarized, 1);
    assert!(rd.path(files::SUMMARY).is_file());
    let (_, built) = Index::build(&lab.state, true).unwrap();
    assert_eq!(built.summarized, 0, "kept");
    // A lying summary (its sizes do not match the log) is not believed.
    let text = std::fs::read_to_string(rd.path(files::SUMMARY)).unwrap();
    let lie = text
        .replace("\"failed\"", "\"passed\"")
        .replace("\"events_len\":", "\"events_len\":1");
    std::fs::write(rd.path(files::SUMMARY), lie).unwrap();
    let (i, built) = Index::build(&lab.state, true).unwrap();
    assert_eq!(built.summarized, 1);
    assert_eq!(i.all().unwrap()[0].outcome.as_deref(), Some("failed"));
    // Junk is not believed either.
    std::fs::write(rd.path(files::SUMMARY), b"\xff{").unwrap();
    let (i, built) = Index::build(&lab.state, true).unwrap();
    assert_eq!(built.summarized, 1);
    assert_eq!(i.all().unwrap()[0].outcome.as_deref(), Some("failed"));
}

#[test]
fn pages_walk_every_run_once_newest_first() {
    let lab = lab();
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(
            crate::ticket::issue(&lab.state, &lab.plan, &format!("h{}", i % 3), 3600, None)
                .unwrap()
                .run,
        );
    }
    let (index, _) = Index::build(&lab.state, false).unwrap();
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let p = index.page(5, before.as_ref()).unwrap();
        assert_eq!(p.total, 23);
        assert!(p.rows.len() <= 5);
        seen.extend(p.rows.iter().map(|s| s.run.clone()));
        pages += 1;
        match p.next {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let mut want: Vec<String> = index.all().unwrap().into_iter().map(|s| s.run).collect();
    assert_eq!(seen, want);
    want.sort();
    let mut all: Vec<String> = ids.iter().map(ToString::to_string).collect();
    all.sort();
    assert_eq!(want, all);
    assert!(index.page(5, Some(&RunId([0xee; 16]))).is_err());
}
