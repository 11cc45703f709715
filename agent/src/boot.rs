//! Netboot mode: kernel command line, trusted key baked into the image, power off.
use kiln_protocol::{Mac, RunId};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::end::RunEnd;
use crate::exit::{EXIT_INFRA, EXIT_REFUSED};
use crate::hostinfo::HostInfo;
use crate::runner::{RunOptions, run_ticket};
use crate::verify::{check_ticket, load_trust, now_s};

/// Work folder inside the image (a tmpfs mounted by its init).
pub const BOOT_WORK: &str = "/tmp/kiln";

/// Where the image's init mounts the disk named by `kiln.offline=`: `ticket.kiln` (and
/// `ticket.kiln.cas/`) in, `result.kiln` (the bundle) out.
pub const OFFLINE_DIR: &str = "/media/kiln";

/// Longest pause between two tries to reach the coordinator.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What netboot mode reads and whether it powers off (from `kiln-agent boot`'s flags).
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Kernel command line file (`/proc/cmdline` on a booted machine).
    pub cmdline: PathBuf,
    /// Trusted key file baked into the image.
    pub trust: PathBuf,
    /// Stay on at the end (for debugging) instead of powering off or idling as PID 1.
    pub no_poweroff: bool,
    /// The enrolled host key file, for tickets that name one.
    pub agent_key: Option<PathBuf>,
}

/// What the kernel command line tells the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct BootArgs {
    /// `kiln.url=`: the coordinator as the machine reached it when booting.
    pub url: Option<String>,
    /// `kiln.offline=DEV`: run offline from the ticket on this disk (mounted by init).
    pub offline: Option<String>,
    /// `kiln.run=`: the run to start (none: ask for the host's next pending ticket).
    pub run: Option<RunId>,
    /// `BOOTIF=01-aa-bb-…`: the NIC the firmware booted from.
    pub bootif: Option<Mac>,
}

/// Parses `/proc/cmdline` text. The error is a one-line reason.
pub fn parse_cmdline(text: &str) -> Result<BootArgs, String> {
    let mut url = None;
    let mut run = None;
    let mut bootif = None;
    let mut offline = None;
    for arg in text.split_whitespace() {
        if let Some(v) = arg.strip_prefix("kiln.url=") {
            let v = v.trim_end_matches('/');
            if !(v.starts_with("http://") || v.starts_with("https://")) || v.len() < 8 {
                return Err(format!("kiln.url={v} is not an http:// URL"));
            }
            url = Some(v.to_string());
        } else if let Some(v) = arg.strip_prefix("kiln.run=") {
            run = Some(
                v.parse()
                    .map_err(|_| format!("kiln.run={v} is not a run id"))?,
            );
        } else if let Some(v) = arg.strip_prefix("kiln.offline=") {
            offline = Some(v.to_string());
        } else if let Some(v) = arg.strip_prefix("BOOTIF=") {
            // pxelinux form: hardware type "01-" then the MAC with dashes.
            bootif = v.get(3..).and_then(|m| m.parse().ok());
        }
    }
    if url.is_none() && offline.is_none() {
        return Err("no kiln.url= (or kiln.offline=) on the kernel command line".into());
    }
    Ok(BootArgs {
        url,
        offline,
        run,
        bootif,
    })
}

/// The ticket's URL: the named run's, else the booted NIC's next pending ticket.
pub fn ticket_url(args: &BootArgs, host: &HostInfo) -> Option<String> {
    let url = args.url.as_deref()?;
    if let Some(run) = &args.run {
        return Some(format!("{url}/v1/runs/{run}/ticket"));
    }
    let mac = args.bootif.or_else(|| host.macs.first().copied())?;
    Some(format!("{url}/v1/hosts/{mac}/ticket"))
}

/// Prints one line on the console (stderr is `/dev/console` for the image's init).
fn say(line: &str) {
    eprintln!("kiln: {line}");
}

/// Netboot mode, start to end: returns the exit status (when it does not power off or
/// idle).
pub fn boot_main(c: &BootConfig) -> i32 {
    // As PID 1 the agent runs as a child of a reaper (this never returns as PID 1).
    crate::reaper::supervise_if_init();
    say(&format!("agent {} booting", env!("CARGO_PKG_VERSION")));
    match boot(c) {
        Ok((end, offline)) => {
            if offline {
                // Unmount so the result bundle is on the disk before power goes.
                nix::unistd::sync();
                let _ = std::process::Command::new("umount")
                    .arg(OFFLINE_DIR)
                    .status();
            }
            finish(c, end)
        }
        Err(reason) => {
            say(&reason);
            idle(c, EXIT_REFUSED)
        }
    }
}

/// Everything up to the end of the run (and whether it was offline); `Err` is a
/// refusal before anything ran.
fn boot(c: &BootConfig) -> Result<(RunEnd, bool), String> {
    let text = kiln_protocol::io::read_text_capped(&c.cmdline, 64 * 1024, "a kernel command line")
        .map_err(|e| format!("cannot read {e}"))?;
    let args = parse_cmdline(&text)?;
    let trusted = load_trust(&c.trust)?;
    let host = HostInfo::detect();
    let offline = args.offline.is_some();
    let mut date_s = None;
    let (bytes, ticket_path, out) = if offline {
        let dir = PathBuf::from(OFFLINE_DIR);
        let p = dir.join("ticket.kiln");
        let bytes =
            crate::verify::read_ticket_file(&p).map_err(|e| format!("offline disk: {e}"))?;
        (bytes, Some(p), Some(dir.join("result.kiln")))
    } else {
        let url = ticket_url(&args, &host).ok_or("no kiln.run= and no network interface")?;
        let (bytes, date) = fetch_with_retries(&url)?;
        date_s = date;
        (bytes, None, None)
    };
    let clock = set_clock(&bytes, &trusted, date_s, &crate::clock::set_system_clock)?;
    let (_, ticket) = check_ticket(&bytes, &trusted, now_s(), &host)?;
    say(&format!(
        "ticket ok: run {} for host {}, plan {:?} ({} stages)",
        ticket.run,
        ticket.host.name,
        ticket.plan.name,
        ticket.plan.stages.len()
    ));
    let opts = RunOptions {
        ticket_bytes: bytes,
        ticket_path,
        trusted,
        url: args.url,
        out,
        work: Some(PathBuf::from(BOOT_WORK).join(ticket.run.to_string())),
        cas_dir: None,
        secrets: BTreeMap::new(),
        agent_key: c.agent_key.clone(),
        clock,
        hold: crate::hold::HoldMode::Ssh(crate::hold::SshConfig::image()),
    };
    // As PID 1 a panic would take the kernel down with it; report it instead.
    std::panic::catch_unwind(move || run_ticket(opts))
        .map(|end| (end, offline))
        .map_err(|_| "the run loop panicked (a bug); see the lines above".to_string())
}

/// A dead clock (behind the ticket's signed `issued_at`) is set forward, once the
/// ticket's signature verifies: to the coordinator's `Date` (`date_s`) when valid for
/// the ticket, else to `issued_at` ([`crate::clock::correct`]). A ticket expired by
/// the `Date` or by a clock ahead is refused naming both times. A ticket that does not
/// verify is left to [`check_ticket`]'s refusal, the clock untouched.
fn set_clock(
    bytes: &[u8],
    trusted: &[kiln_protocol::PublicKey],
    date_s: Option<u64>,
    set: &dyn Fn(u64) -> Result<(), String>,
) -> Result<Option<crate::clock::Correction>, String> {
    let Some(ticket) = kiln_protocol::SignedTicket::from_file(bytes)
        .ok()
        .and_then(|s| s.verify(trusted).ok())
    else {
        return Ok(None);
    };
    let c = crate::clock::correct(now_s(), ticket.issued_at, ticket.not_after, date_s, set)?;
    if let Some(c) = &c {
        say(&c.line());
    }
    Ok(c)
}

/// Acts on how the run ended: power off when it finished, idle otherwise.
fn finish(c: &BootConfig, end: RunEnd) -> i32 {
    let code = end.exit_status();
    match end {
        RunEnd::Finished { outcome, shutdown } => {
            let why = if shutdown {
                " (shutdown requested)"
            } else {
                ""
            };
            if crate::hold::reboot_asked() {
                say(&format!("run finished: {}; rebooting", outcome.as_str()));
                return reboot(c, code);
            }
            say(&format!(
                "run finished: {}{why}; powering off",
                outcome.as_str()
            ));
            power_off(c, code)
        }
        RunEnd::Refused(reason) => {
            let reason =
                if reason.starts_with("ticket refused") || reason.starts_with("claim refused") {
                    reason
                } else {
                    format!("ticket refused: {reason}")
                };
            say(&reason);
            idle(c, code)
        }
        RunEnd::Infra(reason) if crate::hold::was_held() => {
            // A held run whose coordinator is gone: the hold's end powers off anyway.
            say(&format!("run error after the hold: {reason}; powering off"));
            power_off(c, code)
        }
        RunEnd::Infra(reason) => {
            say(&format!("run error: {reason}"));
            idle(c, code)
        }
    }
}

/// GETs `url` until the coordinator answers: connection errors (no link, no DHCP
/// lease yet, coordinator restarting), 5xx and 429 are retried with backoff,
/// forever; any other 4xx is final. Returns the ticket and the reply's `Date` (unix
/// seconds, if it had a valid one).
fn fetch_with_retries(url: &str) -> Result<(Vec<u8>, Option<u64>), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build();
    let start = Instant::now();
    // Jittered: a rack of machines that boot together spreads its retries.
    let mut backoff = crate::client::Backoff::new(Duration::from_millis(250), MAX_BACKOFF);
    let mut next_note = Duration::ZERO;
    for attempt in 1u64.. {
        match agent.get(url).call() {
            Ok(resp) => {
                let date = resp.header("Date").and_then(crate::clock::parse_date);
                let mut bytes = Vec::new();
                resp.into_reader()
                    .take(kiln_protocol::MAX_TICKET_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("reading the ticket from {url}: {e}"))?;
                if attempt > 1 {
                    say(&format!(
                        "coordinator reached after {:.1}s",
                        start.elapsed().as_secs_f64()
                    ));
                }
                return Ok((bytes, date));
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let line = body.lines().next().unwrap_or("").trim();
                if !(code >= 500 || code == 429) {
                    return Err(format!(
                        "coordinator refused the ticket request ({code}): {line}"
                    ));
                }
                // Busy or restarting: as a connection error, try again.
                if start.elapsed() >= next_note {
                    say(&format!(
                        "coordinator answered {code} (try {attempt}): {line}"
                    ));
                    next_note = start.elapsed() + Duration::from_secs(10);
                }
            }
            Err(e) => {
                if start.elapsed() >= next_note {
                    say(&format!("waiting for the network (try {attempt}): {e}"));
                    next_note = start.elapsed() + Duration::from_secs(10);
                }
            }
        }
        std::thread::sleep(backoff.next_delay());
    }
    unreachable!("the retry loop only ends by returning")
}

/// `sync`, then power off; returns only when that is impossible or not wanted.
fn power_off(c: &BootConfig, code: i32) -> i32 {
    if c.no_poweroff {
        return code;
    }
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => {
            say(&format!("power off failed: {e}"));
            idle(c, EXIT_INFRA.max(code))
        }
    }
}

/// `sync`, then reboot (`run release --reboot`); returns only when impossible or not wanted.
fn reboot(c: &BootConfig, code: i32) -> i32 {
    if c.no_poweroff {
        return code;
    }
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => {
            say(&format!("reboot failed: {e}"));
            power_off(c, code)
        }
    }
}

/// Leaves the machine on and doing nothing (an operator reads the console). As PID 1
/// the agent must never exit: the kernel would panic.
fn idle(c: &BootConfig, code: i32) -> i32 {
    if c.no_poweroff || std::process::id() != 1 {
        return code;
    }
    say("idle; the machine stays on");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_names_url_run_and_bootif() {
        let run = "0123456789abcdef0123456789abcdef";
        let a = parse_cmdline(&format!(
            "initrd=initrd kiln.url=http://10.0.2.2:7373/ kiln.run={run} BOOTIF=01-52-54-00-12-34-56 console=ttyS0\n"
        ))
        .unwrap();
        assert_eq!(a.url.as_deref(), Some("http://10.0.2.2:7373"));
        assert_eq!(a.run, Some(run.parse().unwrap()));
        assert_eq!(a.bootif, Some("52:54:00:12:34:56".parse().unwrap()));
        let host = HostInfo {
            hostname: "h".into(),
            macs: vec![],
            serial: None,
        };
        assert_eq!(
            ticket_url(&a, &host).unwrap(),
            format!("http://10.0.2.2:7373/v1/runs/{run}/ticket")
        );
        let b = BootArgs { run: None, ..a };
        assert_eq!(
            ticket_url(&b, &host).unwrap(),
            "http://10.0.2.2:7373/v1/hosts/52:54:00:12:34:56/ticket"
        );
    }

    #[test]
    fn bad_cmdlines_are_one_line_reasons() {
        assert!(parse_cmdline("quiet").unwrap_err().contains("no kiln.url="));
        let off = parse_cmdline("kiln.offline=/dev/vdb").unwrap();
        assert_eq!((off.url, off.offline.as_deref()), (None, Some("/dev/vdb")));
        assert!(
            parse_cmdline("kiln.url=ftp://x")
                .unwrap_err()
                .contains("not an http")
        );
        let e = parse_cmdline("kiln.url=http://x:1 kiln.run=zz").unwrap_err();
        assert!(e.contains("not a run id"), "{e}");
        // A garbled BOOTIF is ignored, not fatal.
        assert_eq!(
            parse_cmdline("kiln.url=http://x:1 BOOTIF=9")
                .unwrap()
                .bootif,
            None
        );
    }

    /// Answers each connection with the next canned response; returns the URL and
    /// the request heads, which end once every answer is given.
    fn serve(answers: Vec<String>) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::Write;
        let handlers = answers
            .into_iter()
            .map(|a| {
                Box::new(move |_: &str, s: &mut std::net::TcpStream| {
                    let _ = s.write_all(a.as_bytes());
                }) as crate::test_http::Handler
            })
            .collect();
        let (url, rx) = crate::test_http::serve(handlers);
        (format!("{url}/v1/hosts/x/ticket"), rx)
    }

    fn answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn the_tickets_date_comes_back_with_it() {
        let (url, _) = serve(vec![format!(
            "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Length: 1\r\nConnection: close\r\n\r\nT"
        )]);
        assert_eq!(
            fetch_with_retries(&url).unwrap(),
            (b"T".to_vec(), Some(1_704_067_200))
        );
    }

    fn ticket(issued_at: u64, not_after: u64, key: &kiln_protocol::SecretKey) -> Vec<u8> {
        let t = kiln_protocol::Ticket {
            version: kiln_protocol::VERSION,
            run: RunId([7; 16]),
            issued_at,
            not_after,
            host: kiln_protocol::HostBinding {
                name: "here".into(),
                macs: vec!["52:54:00:00:00:01".parse().unwrap()],
                serial: None,
                spec: Default::default(),
                agent_key: None,
            },
            coordinator: None,
            plan: kiln_protocol::Plan {
                name: "p".into(),
                stages: vec![],
                fail_fast: false,
                timeout_s: 0,
                hold: Default::default(),
            },
        };
        kiln_protocol::SignedTicket::sign(&t, key).to_file()
    }

    /// The clock step runs on verified ticket times only, with the setter given (the
    /// host's clock is never touched by tests). The test clock is "dead" relative to
    /// a ticket issued in the future.
    #[test]
    fn boot_sets_a_clock_behind_a_verified_tickets_issued_at() {
        let key = kiln_protocol::SecretKey::from_seed([3; 32]);
        let trusted = [key.public()];
        let now = now_s();
        let set = std::cell::RefCell::new(Vec::new());
        let record = |t: u64| {
            set.borrow_mut().push(t);
            Ok(())
        };
        let future = ticket(now + 1000, now + 5000, &key);
        let c = set_clock(&future, &trusted, Some(now + 1500), &record)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.to_s, c.source),
            (now + 1500, crate::clock::Source::CoordinatorDate)
        );
        assert_eq!(set.borrow().as_slice(), [now + 1500]);
        // A current ticket: nothing to set.
        let current = ticket(now - 10, now + 5000, &key);
        assert_eq!(
            set_clock(&current, &trusted, Some(now), &record).unwrap(),
            None
        );
        // An untrusted signature: the clock is not touched (check_ticket refuses).
        let other = [kiln_protocol::SecretKey::from_seed([4; 32]).public()];
        assert_eq!(
            set_clock(&future, &other, Some(now + 1500), &record).unwrap(),
            None
        );
        // Expired by the coordinator's Date: refused, not set.
        let e = set_clock(&future, &trusted, Some(now + 6000), &record).unwrap_err();
        assert!(
            e.contains("expired") && e.contains("coordinator's clock"),
            "{e}"
        );
        assert_eq!(set.borrow().len(), 1);
    }

    #[test]
    fn a_busy_coordinator_is_asked_again_and_a_refusal_is_final() {
        let (url, n) = serve(vec![
            answer("503 Service Unavailable", "busy"),
            answer("429 Too Many Requests", "slow down"),
            answer("200 OK", "TICKET"),
        ]);
        assert_eq!(
            fetch_with_retries(&url).unwrap(),
            (b"TICKET".to_vec(), None)
        );
        assert_eq!(n.iter().count(), 3);

        let (url, n) = serve(vec![answer(
            "404 Not Found",
            "no pending run for this host",
        )]);
        let e = fetch_with_retries(&url).unwrap_err();
        assert!(e.contains("(404): no pending run"), "{e}");
        assert_eq!(n.iter().count(), 1);
    }
}
