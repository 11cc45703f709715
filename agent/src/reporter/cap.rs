//! The last guard on frame size: an event whose encoding exceeds [`FRAME_CAP`] is cut
//! (long texts end with [`TRUNCATED`], old tail lines are dropped) so that one frame
//! always fits the coordinator's batch cap and can never get the run refused.
use kiln_protocol::Event;

/// Largest encoded event the reporter emits (the coordinator takes 1 MiB batches).
pub const FRAME_CAP: usize = 256 << 10;

/// What ends a text that was cut.
pub const TRUNCATED: &str = "… [truncated]";

/// Longest single text kept in a cut event (a log line, a detail, a tail line).
const TEXT_CAP: usize = 16 << 10;

fn size(e: &Event) -> usize {
    postcard::experimental::serialized_size(e).unwrap_or(usize::MAX)
}

/// Cuts `s` to at most `max` bytes (on a char boundary) plus the marker.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str(TRUNCATED);
}

/// The event as is when it fits [`FRAME_CAP`], else cut down to fit.
pub fn cap_event(mut e: Event) -> Event {
    if size(&e) <= FRAME_CAP {
        return e;
    }
    match &mut e {
        Event::Log { text, .. } => cut(text, FRAME_CAP - 1024),
        Event::StageFinished { detail, .. } => cut(detail, FRAME_CAP - 1024),
        Event::Part { detail, tail, .. } => {
            cut(detail, TEXT_CAP);
            for line in tail.iter_mut() {
                cut(line, TEXT_CAP);
            }
            // Keep the newest lines that fit; say how many older ones went.
            let budget = FRAME_CAP - 2 * TEXT_CAP;
            let mut used = 0;
            let keep = tail
                .iter()
                .rev()
                .take_while(|l| {
                    used += l.len() + 4;
                    used <= budget
                })
                .count();
            let dropped = tail.len() - keep;
            if dropped > 0 {
                tail.drain(..dropped);
                tail.insert(0, format!("{TRUNCATED} {dropped} earlier line(s)"));
            }
        }
        _ => {}
    }
    if size(&e) > FRAME_CAP {
        // Anything else this large is made of names: cut every text short.
        match &mut e {
            Event::Claim {
                agent_version,
                boot_id,
                ..
            } => {
                cut(agent_version, TEXT_CAP);
                cut(boot_id, TEXT_CAP);
            }
            Event::Hello {
                hostname,
                macs,
                serial,
            } => {
                cut(hostname, TEXT_CAP);
                macs.truncate(1024);
                if let Some(s) = serial {
                    cut(s, TEXT_CAP);
                }
            }
            Event::Measure { name, unit, .. } => {
                cut(name, TEXT_CAP);
                cut(unit, TEXT_CAP);
            }
            Event::Artifact { name, .. } | Event::Part { name, .. } => cut(name, TEXT_CAP),
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Outcome, Stream};

    #[test]
    fn small_events_pass_untouched_and_large_ones_are_cut_to_fit() {
        let small = Event::Log {
            stage: 0,
            stream: Stream::Stdout,
            text: "hi".into(),
        };
        assert_eq!(cap_event(small.clone()), small);
        let Event::Log { text, .. } = cap_event(Event::Log {
            stage: 0,
            stream: Stream::Stderr,
            text: "é".repeat(400_000),
        }) else {
            panic!("not a log")
        };
        assert!(text.ends_with(TRUNCATED) && text.len() <= FRAME_CAP);
        let part = cap_event(Event::Part {
            stage: 0,
            name: "debian:12".into(),
            outcome: Outcome::Failed,
            detail: "d".repeat(1 << 20),
            tail: (0..200)
                .map(|i| format!("{i:04}{}", "x".repeat(6000)))
                .collect(),
        });
        assert!(size(&part) <= FRAME_CAP, "{}", size(&part));
        let Event::Part { tail, detail, .. } = part else {
            panic!("not a part")
        };
        assert!(detail.ends_with(TRUNCATED));
        assert!(tail[0].starts_with(TRUNCATED), "{}", &tail[0][..40]);
        assert!(tail.last().unwrap().starts_with("0199"), "newest line kept");
        let detail = cap_event(Event::StageFinished {
            stage: 0,
            attempt: 1,
            outcome: Outcome::Error,
            exit_code: None,
            duration_ms: 0,
            detail: "x".repeat(2 << 20),
        });
        assert!(size(&detail) <= FRAME_CAP);
    }
}
