//! Every ticket the agent must refuse, with exit 2 and a one-line reason: damaged,
//! truncated, random, foreign, expired, bound elsewhere, unknown versions.
use super::*;
use kiln_agent::verify::check_ticket;
use kiln_protocol::{Mac, TICKET_MAGIC};

#[test]
fn every_flipped_byte_is_refused() {
    let f = fx();
    let (_, ticket) = f.issue(&f.plan("small.toml", SMALL_PLAN), "here");
    let bytes = std::fs::read(&ticket).expect("ticket");
    let (trusted, here) = (f.trusted(), f.here());
    assert!(
        check_ticket(&bytes, &trusted, now(), &here).is_ok(),
        "the original must verify"
    );
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            let err = check_ticket(&b, &trusted, now(), &here)
                .err()
                .unwrap_or_else(|| {
                    panic!(
                        "flipping {bit:#x} at byte {i} of {} was accepted",
                        bytes.len()
                    )
                });
            assert!(err.starts_with("ticket refused: "), "{err}");
        }
    }
    // A few positions through the real binary: magic, format version, body, signature.
    let flip = |i: usize| {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        b
    };
    f.refused(&flip(0), "bad magic");
    f.refused(&flip(7), "unsupported format version");
    f.refused(&flip(bytes.len() / 2), "ticket refused");
    f.refused(&flip(bytes.len() - 1), "bad signature");
    f.refused(&flip(9), "untrusted key");
}

#[test]
fn truncated_and_random_files_are_refused() {
    let f = fx();
    let (_, ticket) = f.issue(&f.plan("small.toml", SMALL_PLAN), "here");
    let bytes = std::fs::read(&ticket).expect("ticket");
    let (trusted, here) = (f.trusted(), f.here());
    for n in 0..bytes.len() {
        assert!(
            check_ticket(&bytes[..n], &trusted, now(), &here).is_err(),
            "truncated to {n} accepted"
        );
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(
        check_ticket(&extra, &trusted, now(), &here)
            .unwrap_err()
            .contains("trailing")
    );
    for round in 0..2000usize {
        let mut len = [0u8; 2];
        getrandom::getrandom(&mut len).expect("random");
        let mut junk = vec![0u8; u16::from_le_bytes(len) as usize % 600];
        getrandom::getrandom(&mut junk).expect("random");
        if round % 2 == 1 {
            // Past the magic, so the decoder and verifier see the noise.
            junk.splice(0..0, TICKET_MAGIC.iter().copied());
        }
        assert!(
            check_ticket(&junk, &trusted, now(), &here).is_err(),
            "random bytes accepted: {junk:?}"
        );
    }
    f.refused(&bytes[..bytes.len() / 2], "truncated");
    f.refused(b"", "bad magic");
    let mut junk = vec![0u8; 300];
    getrandom::getrandom(&mut junk).expect("random");
    junk[0] = b'X';
    f.refused(&junk, "bad magic");
}

#[test]
fn foreign_expired_and_misbound_tickets_are_refused() {
    let f = fx();
    let plan = f.plan("small.toml", SMALL_PLAN);
    let (_, ticket) = f.issue(&plan, "here");

    // A valid ticket from another coordinator (its own key, same host binding).
    let (_other_tmp, other) = fresh_state();
    add_local_host(&other, "here");
    let o = kc(
        &other,
        &[
            "ticket",
            "issue",
            "--plan",
            s(&plan),
            "--host",
            "here",
            "--out",
            s(&f.dir.join("other.kiln")),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        agent(&[
            "verify",
            "--ticket",
            s(&f.dir.join("other.kiln")),
            "--trust",
            s(&other.join("key/coordinator.pub"))
        ])
        .code,
        0
    );
    f.refused(
        &std::fs::read(f.dir.join("other.kiln")).expect("other"),
        "signed by an untrusted key",
    );
    let show = kc(&f.state, &["ticket", "show", s(&f.dir.join("other.kiln"))]);
    assert_eq!(show.code, 2);
    assert!(
        show.stderr.contains("not this coordinator's"),
        "{}",
        show.stderr
    );

    f.refused(
        &f.resign(&ticket, |t| {
            t.issued_at = now() - 7200;
            t.not_after = now() - 3600;
        }),
        "ticket expired",
    );
    f.refused(
        &f.resign(&ticket, |t| {
            t.host.macs = vec![Mac([0x02, 0, 0, 0, 0, 0x01])]
        }),
        "no local MAC matches 02:00:00:00:00:01",
    );
    f.refused(
        &f.resign(&ticket, |t| t.version = 4),
        "unsupported format version 4",
    );
    // A version 1 file (before enrolled host keys) is named, not misread.
    let mut magic = std::fs::read(&ticket).expect("ticket");
    magic[7] = 1;
    f.refused(&magic, "unsupported format version 1");

    // Bound by the coordinator to another serial: alone, and next to this MAC.
    let o = kc(
        &f.state,
        &[
            "host",
            "add",
            "elsewhere",
            "--serial",
            "NOT-THIS-MACHINE-42",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (_, t) = f.issue(&plan, "elsewhere");
    f.refused(&std::fs::read(&t).expect("ticket"), "NOT-THIS-MACHINE-42");
    let o = kc(
        &f.state,
        &["host", "add", "here", "--serial", "NOT-THIS-MACHINE-43"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (_, t) = f.issue(&plan, "here");
    f.refused(&std::fs::read(&t).expect("ticket"), "NOT-THIS-MACHINE-43");
}
