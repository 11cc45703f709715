//! The machine's clock against the ticket and the coordinator.
//!
//! A lab machine whose CMOS battery died boots at 1970 or some date in the past. In
//! boot mode the agent sets such a clock forward before it checks the ticket: to the
//! coordinator's HTTP `Date` when that lies after the ticket's signed `issued_at` and
//! not after its expiry, else to `issued_at` ([`plan`], [`correct`]). A clock *ahead*
//! of the ticket's expiry is never set back to accept a ticket: the refusal names both
//! times. Outside boot mode the agent never sets the clock.
//!
//! Separately, every time-stamped request (the secrets request, upload signatures,
//! frames) uses the local clock plus the offset the coordinator's `Date` header showed
//! ([`Skew`]), so a host whose clock is off by more than the coordinator's 5-minute
//! window is not refused.
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A `Date` header has one-second resolution and the reply takes time to arrive: an
/// offset up to this size is noise, and the local clock is used as it is.
pub const SKEW_TOLERANCE_MS: i64 = 2_000;

/// Unix seconds of an HTTP `Date` header value (`Sun, 06 Nov 1994 08:49:37 GMT` and
/// the two obsolete forms); `None` when it does not parse.
pub fn parse_date(value: &str) -> Option<u64> {
    if value.len() > 64 {
        return None;
    }
    let t = httpdate::parse_http_date(value.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// A time for people: `2001-01-01 00:00:00 UTC (978307200)`.
pub fn show(unix_s: u64) -> String {
    let t = UNIX_EPOCH.checked_add(Duration::from_secs(unix_s));
    match t.filter(|_| unix_s < 253_402_300_800) {
        // httpdate formats years 1970..=9999 only.
        Some(t) => format!("{} ({unix_s})", httpdate::fmt_http_date(t)),
        None => format!("unix {unix_s}"),
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The coordinator's clock as seen from here: the local clock plus the offset its last
/// `Date` header showed (0 while that offset is within [`SKEW_TOLERANCE_MS`]).
#[derive(Debug, Default)]
pub struct Skew {
    offset_ms: AtomicI64,
}

impl Skew {
    /// The offset to add to the local clock, in milliseconds (positive: the local
    /// clock is behind the coordinator's).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Unix milliseconds on the coordinator's clock, as well as it is known.
    pub fn now_ms(&self) -> u64 {
        system_ms().saturating_add_signed(self.offset_ms())
    }

    /// Takes in a `Date` header received now; returns the offset it showed when that
    /// is beyond the tolerance (and now applies), `None` otherwise (the offset is then
    /// 0, or the value did not parse and nothing changed).
    pub fn note_date(&self, value: &str) -> Option<i64> {
        self.note_date_at(value, system_ms())
    }

    /// [`Skew::note_date`] with the local clock given (for tests).
    pub fn note_date_at(&self, value: &str, local_ms: u64) -> Option<i64> {
        let date_s = parse_date(value)?;
        // The header truncates to the second: its middle is the best guess.
        let remote_ms = date_s.saturating_mul(1000).saturating_add(500);
        let off =
            (remote_ms as i128 - local_ms as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        if off.abs() <= SKEW_TOLERANCE_MS {
            self.offset_ms.store(0, Ordering::Relaxed);
            return None;
        }
        self.offset_ms.store(off, Ordering::Relaxed);
        Some(off)
    }
}

/// What the clock was set to, from what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The coordinator's HTTP `Date`.
    CoordinatorDate,
    /// The ticket's signed `issued_at` (no usable `Date`).
    IssuedAt,
}

/// A clock set forward in boot mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    /// The machine's clock before, unix seconds.
    pub from_s: u64,
    /// What it was set to, unix seconds.
    pub to_s: u64,
    /// Where `to_s` came from.
    pub source: Source,
}

/// Name of the measurement a correction is reported as (seconds set forward).
pub const CORRECTION_MEASURE: &str = "agent.clock_set_forward_s";

/// Name of the measurement a skew seen outside boot mode is reported as (seconds the
/// local clock is behind the coordinator's; negative: ahead).
pub const SKEW_MEASURE: &str = "agent.clock_skew_s";

impl Correction {
    /// Seconds the clock moved forward.
    pub fn seconds(&self) -> u64 {
        self.to_s - self.from_s
    }

    /// One line for the console and the run's log.
    pub fn line(&self) -> String {
        let from = match self.source {
            Source::CoordinatorDate => "the coordinator's Date",
            Source::IssuedAt => "the ticket's issued_at",
        };
        format!(
            "clock set forward by {} s, from {} to {} ({from}): it was behind the ticket's issued_at",
            self.seconds(),
            show(self.from_s),
            show(self.to_s)
        )
    }
}

/// Decides, from verified ticket times, whether boot mode sets the clock: `Ok(None)`
/// leaves it; `Ok(Some((to, source)))` sets it forward to `to`; `Err` is a refusal
/// naming both times (a ticket expired by the coordinator's `Date` or by a local clock
/// ahead of its expiry: never "fixed").
pub fn plan(
    now_s: u64,
    issued_at: u64,
    not_after: u64,
    date_s: Option<u64>,
) -> Result<Option<(u64, Source)>, String> {
    if let Some(d) = date_s.filter(|d| *d > not_after) {
        return Err(format!(
            "ticket refused: it expired at {} by the coordinator's clock (Date {}); this machine's clock says {}",
            show(not_after),
            show(d),
            show(now_s)
        ));
    }
    if now_s > not_after {
        return Err(format!(
            "ticket refused: this machine's clock says {}, after the ticket's expiry {}; a clock ahead is never set back to accept a ticket",
            show(now_s),
            show(not_after)
        ));
    }
    if now_s >= issued_at {
        return Ok(None);
    }
    Ok(Some(match date_s {
        Some(d) if d > issued_at => (d, Source::CoordinatorDate),
        _ => (issued_at, Source::IssuedAt),
    }))
}

/// Sets the system clock (`CLOCK_REALTIME`); needs `CAP_SYS_TIME` (root in the image).
pub fn set_system_clock(unix_s: u64) -> Result<(), String> {
    let secs = i64::try_from(unix_s).map_err(|_| format!("time {unix_s} is out of range"))?;
    nix::time::clock_settime(
        nix::time::ClockId::CLOCK_REALTIME,
        nix::sys::time::TimeSpec::new(secs as _, 0),
    )
    .map_err(|e| format!("setting the clock to {}: {e}", show(unix_s)))
}

/// Boot mode's clock step, given the verified ticket's times, the coordinator's
/// `Date` (if any), the clock now and the setter (the real one is
/// [`set_system_clock`]; tests pass a recorder). `Err` is a one-line refusal.
pub fn correct(
    now_s: u64,
    issued_at: u64,
    not_after: u64,
    date_s: Option<u64>,
    set: &dyn Fn(u64) -> Result<(), String>,
) -> Result<Option<Correction>, String> {
    let Some((to_s, source)) = plan(now_s, issued_at, not_after, date_s)? else {
        return Ok(None);
    };
    set(to_s).map_err(|e| format!("the clock is behind the ticket's issued_at and {e}"))?;
    Ok(Some(Correction {
        from_s: now_s,
        to_s,
        source,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const ISSUED: u64 = 1_700_000_000;
    const EXPIRES: u64 = ISSUED + 3600;
    const Y2001: u64 = 978_307_200;

    fn run(now: u64, date: Option<u64>) -> (Result<Option<Correction>, String>, Vec<u64>) {
        let set = RefCell::new(Vec::new());
        let r = correct(now, ISSUED, EXPIRES, date, &|t| {
            set.borrow_mut().push(t);
            Ok(())
        });
        (r, set.into_inner())
    }

    #[test]
    fn a_clock_behind_issued_at_goes_to_the_coordinators_date_when_it_is_valid() {
        let (r, set) = run(Y2001, Some(ISSUED + 60));
        let c = r.unwrap().unwrap();
        assert_eq!(set, [ISSUED + 60]);
        assert_eq!(c.source, Source::CoordinatorDate);
        assert_eq!(c.seconds(), ISSUED + 60 - Y2001);
        let line = c.line();
        assert!(
            line.contains("Mon, 01 Jan 2001 00:00:00 GMT") && line.contains("coordinator's Date"),
            "{line}"
        );
        // At 1970 too.
        let (r, set) = run(3, Some(ISSUED + 1));
        assert_eq!(r.unwrap().unwrap().from_s, 3);
        assert_eq!(set, [ISSUED + 1]);
    }

    #[test]
    fn without_a_usable_date_the_clock_goes_to_issued_at() {
        // Offline: no Date.
        let (r, set) = run(Y2001, None);
        assert_eq!(r.unwrap().unwrap().source, Source::IssuedAt);
        assert_eq!(set, [ISSUED]);
        // A coordinator whose own clock is before issued_at.
        let (r, set) = run(Y2001, Some(ISSUED - 10));
        assert_eq!(r.unwrap().unwrap().to_s, ISSUED);
        assert_eq!(set, [ISSUED]);
    }

    #[test]
    fn a_clock_within_the_ticket_is_left_alone() {
        for now in [ISSUED, ISSUED + 1, EXPIRES] {
            let (r, set) = run(now, Some(EXPIRES - 1));
            assert_eq!(r.unwrap(), None);
            assert!(set.is_empty());
        }
    }

    #[test]
    fn an_expired_ticket_is_refused_naming_both_times_and_the_clock_is_not_touched() {
        // A clock ahead of expiry: never set back.
        let (r, set) = run(EXPIRES + 1, Some(ISSUED + 5));
        let e = r.unwrap_err();
        assert!(set.is_empty());
        assert!(e.starts_with("ticket refused:"), "{e}");
        assert!(e.contains(&EXPIRES.to_string()) && e.contains(&(EXPIRES + 1).to_string()));
        assert!(e.contains("never set back"), "{e}");
        // A dead clock, but the coordinator says the ticket has expired.
        let (r, set) = run(Y2001, Some(EXPIRES + 100));
        let e = r.unwrap_err();
        assert!(set.is_empty());
        assert!(e.contains("by the coordinator's clock"), "{e}");
        assert!(
            e.contains(&EXPIRES.to_string()) && e.contains(&Y2001.to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_failing_setter_is_a_refusal() {
        let r = correct(Y2001, ISSUED, EXPIRES, None, &|_| Err("EPERM".into()));
        let e = r.unwrap_err();
        assert!(
            e.contains("behind the ticket's issued_at") && e.contains("EPERM"),
            "{e}"
        );
    }

    #[test]
    fn skew_applies_only_beyond_the_tolerance() {
        let s = Skew::default();
        let date = "Tue, 14 Nov 2023 22:13:20 GMT"; // 1_700_000_000
        assert_eq!(parse_date(date), Some(ISSUED));
        // One second off: noise.
        assert_eq!(s.note_date_at(date, ISSUED * 1000 - 1000), None);
        assert_eq!(s.offset_ms(), 0);
        // Ten minutes behind.
        let off = s.note_date_at(date, ISSUED * 1000 - 600_000).unwrap();
        assert_eq!(off, 600_500);
        let ahead = s.now_ms() as i64 - system_ms() as i64;
        assert!((600_000..=601_000).contains(&ahead), "{ahead}");
        // Garbage changes nothing; a later good Date within tolerance resets it.
        assert_eq!(s.note_date_at("yesterday", 0), None);
        assert_eq!(s.offset_ms(), 600_500);
        assert_eq!(s.note_date_at(date, ISSUED * 1000), None);
        assert_eq!(s.offset_ms(), 0);
        assert_eq!(parse_date(&"x".repeat(100)), None);
    }
}
