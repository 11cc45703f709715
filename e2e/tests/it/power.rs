//! `host power` against real BMCs: ipmi_sim through ipmitool, sushy-emulator over
//! HTTPS, and a Wake-on-LAN packet caught on a UDP socket.
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use crate::bmc::{self, IPMI_PASSWORD, IpmiSim, RF_PASSWORD, RF_SYSTEM, Sushy};
use crate::common::{Out, fresh_state, kc, wait_until, write};

fn set_secret(state: &Path, dir: &Path, name: &str, value: &str) {
    let f = write(dir, &format!("{name}.secret"), &format!("{value}\n"));
    let o = kc(
        state,
        &["secret", "set", name, "--file", f.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    std::fs::remove_file(f).unwrap();
}

fn power(state: &Path, host: &str, action: &str) -> Out {
    kc(state, &["host", "power", host, action])
}

/// The "machine" behind ipmi_sim: a process that writes its pid and sleeps.
fn machine_cmd(dir: &Path) -> String {
    format!(
        "sh -c 'echo $$ > {}/machine.pid; exec sleep 3600'",
        dir.display()
    )
}

fn machine_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("machine.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn ipmi_status_on_off_drive_the_simulated_bmc() {
    let (tmp, state) = fresh_state();
    let dir = tmp.path().join("bmc");
    let Some(sim) = IpmiSim::start(&dir, &machine_cmd(&dir)) else {
        return;
    };
    set_secret(&state, tmp.path(), "bmc1", IPMI_PASSWORD);
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "n1",
            "--mac",
            "52:54:00:00:10:01",
            "--power",
            &sim.url(),
            "--power-secret",
            "bmc1",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let list = kc(&state, &["host", "list"]);
    assert!(list.stdout.contains("not read"), "{}", list.stdout);

    let o = power(&state, "n1", "status");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("n1 status: off"), "{}", o.stdout);

    let o = power(&state, "n1", "on");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().count(), 1, "{}", o.stdout);
    wait_until(Duration::from_secs(20), "the machine to start", || {
        machine_pid(&dir).is_some_and(bmc::alive)
    });
    let pid = machine_pid(&dir).unwrap();
    let o = power(&state, "n1", "status");
    assert!(o.stdout.starts_with("n1 status: on"), "{}", o.stdout);
    let list = kc(&state, &["host", "list"]);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("n1 ") && l.contains(" on ") && l.contains("ago")),
        "{}",
        list.stdout
    );

    let o = power(&state, "n1", "off");
    assert_eq!(o.code, 0, "{}", o.stderr);
    wait_until(Duration::from_secs(20), "the machine to stop", || {
        !bmc::alive(pid)
    });
    let o = power(&state, "n1", "status");
    assert!(o.stdout.starts_with("n1 status: off"), "{}", o.stdout);

    // A cycle of a machine that is off powers it on.
    let o = power(&state, "n1", "cycle");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("was off"), "{}", o.stdout);
    wait_until(
        Duration::from_secs(20),
        "the machine to start again",
        || machine_pid(&dir).is_some_and(|p| p != pid && bmc::alive(p)),
    );

    // The password is nowhere the coordinator wrote.
    let hosts = std::fs::read_to_string(state.join("hosts.toml")).unwrap();
    assert!(!hosts.contains(IPMI_PASSWORD), "{hosts}");
    drop(sim);
}

#[test]
fn a_wrong_ipmi_password_is_a_clear_error_and_never_on_a_command_line() {
    let (tmp, state) = fresh_state();
    let dir = tmp.path().join("bmc");
    let Some(sim) = IpmiSim::start(&dir, &machine_cmd(&dir)) else {
        return;
    };
    let wrong = "kiln-WRONG-pw-55d1";
    set_secret(&state, tmp.path(), "bmc1", wrong);
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "n1",
            "--mac",
            "52:54:00:00:10:02",
            "--power",
            &sim.url(),
            "--power-secret",
            "bmc1",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = power(&state, "n1", "on");
    assert_eq!(o.code, 3, "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains(&sim.url()), "{}", o.stderr);
    assert!(o.stderr.contains("Unable to establish"), "{}", o.stderr);
    assert!(!o.stderr.contains(wrong) && !o.stdout.contains(wrong));
    assert!(
        machine_pid(&dir).is_none(),
        "a refused session powered it on"
    );

    // A BMC that never answers (a socket that reads nothing): the client runs for
    // a while, so every process's command line can be read while it does.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "ipmi://admin@127.0.0.1:{}",
        silent.local_addr().unwrap().port()
    );
    let o = kc(&state, &["host", "set", "n1", "--power", &url]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut child = std::process::Command::new(crate::common::bin("kiln-coordinator"))
        .arg("--state")
        .arg(&state)
        .args(["host", "power", "n1", "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut saw_client = false;
    while child.try_wait().unwrap().is_none() {
        for (pid, line) in bmc::cmdlines() {
            assert!(
                !line.contains(wrong),
                "the password is on pid {pid}'s command line: {line}"
            );
            if line.contains("lanplus") && line.contains(&url[url.rfind(':').unwrap() + 1..]) {
                saw_client = true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let o: Out = child.wait_with_output().unwrap().into();
    assert!(saw_client, "never saw the BMC client running");
    assert_eq!(o.code, 3, "{o:?}");
    assert!(o.stderr.contains(&url), "{}", o.stderr);
    assert!(!o.stderr.contains(wrong));
}

#[test]
fn redfish_resets_and_a_one_time_pxe_boot_reach_the_emulator() {
    let (tmp, state) = fresh_state();
    let Some(rf) = Sushy::start(&tmp.path().join("rf"), "52:54:00:00:20:01") else {
        return;
    };
    set_secret(&state, tmp.path(), "rf1", RF_PASSWORD);
    let base = [
        "host",
        "add",
        "r1",
        "--mac",
        "52:54:00:00:20:01",
        "--power",
        &rf.url(),
        "--power-secret",
        "rf1",
    ];
    // Neither a pinned certificate nor --power-insecure: refused at once.
    let o = kc(&state, &base);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--power-ca") && o.stderr.contains("--power-insecure"));

    // Pinned to a certificate the BMC does not present: refused on connect.
    let mut args = base.to_vec();
    args.extend(["--power-ca", rf.other_cert.to_str().unwrap()]);
    let o = kc(&state, &args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = power(&state, "r1", "status");
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains(&rf.url()) && o.stderr.contains("pinned"),
        "{}",
        o.stderr
    );

    // --power-insecure accepts it.
    let o = kc(&state, &["host", "set", "r1", "--power-insecure"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = power(&state, "r1", "status");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("r1 status: off"), "{}", o.stdout);

    // Pinned to the BMC's own certificate: every action.
    let o = kc(
        &state,
        &["host", "set", "r1", "--power-ca", rf.cert.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let power_state = || {
        rf.system().unwrap()["PowerState"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let o = power(&state, "r1", "pxe");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let sys = rf.system().unwrap();
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");

    let o = power(&state, "r1", "on");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("Reset On"), "{}", o.stdout);
    // The fake driver applies a reset 1-11 s later, as real hardware does.
    wait_until(Duration::from_secs(30), "the system to be on", || {
        power_state() == "On"
    });
    let o = power(&state, "r1", "status");
    assert!(o.stdout.starts_with("r1 status: on"), "{}", o.stdout);

    let o = power(&state, "r1", "cycle");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("ForceRestart"), "{}", o.stdout);
    // ForceRestart: off at once, on again once applied.
    assert_eq!(power_state(), "Off");
    wait_until(Duration::from_secs(30), "the restart to finish", || {
        power_state() == "On"
    });

    let o = power(&state, "r1", "off");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("ForceOff"), "{}", o.stdout);
    wait_until(Duration::from_secs(30), "the system to be off", || {
        power_state() == "Off"
    });

    // A wrong password: HTTP 401, named, the password not echoed.
    set_secret(&state, tmp.path(), "rf1", "kiln-WRONG-rf-9d");
    let o = power(&state, "r1", "on");
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains("401") && o.stderr.contains(&rf.url()),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("kiln-WRONG-rf-9d"));
    let _ = RF_SYSTEM;
}

#[test]
fn wake_on_lan_sends_the_magic_packet() {
    let (_tmp, state) = fresh_state();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "w1",
            "--mac",
            "52:54:00:ab:cd:ef",
            "--power",
            &format!("wol://127.0.0.1:{port}"),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = power(&state, "w1", "on");
    assert_eq!(o.code, 0, "{}", o.stderr);
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = rx.recv_from(&mut buf).expect("no magic packet");
    let mut want = vec![0xffu8; 6];
    for _ in 0..16 {
        want.extend([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
    }
    assert_eq!(&buf[..n], &want[..]);
    // Off is not something Wake-on-LAN can do: refused (2), said plainly.
    let o = power(&state, "w1", "off");
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("cannot power"), "{}", o.stderr);
}

/// Figures, printed (never asserted): `host power … status|on|off` through the
/// coordinator against ipmitool run by hand, ten rounds each, on ipmi_sim.
#[test]
fn bench_power_actions_against_ipmitool_by_hand() {
    let (tmp, state) = fresh_state();
    let dir = tmp.path().join("bmc");
    let Some(sim) = IpmiSim::start(&dir, &machine_cmd(&dir)) else {
        return;
    };
    set_secret(&state, tmp.path(), "bmc1", IPMI_PASSWORD);
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "n1",
            "--mac",
            "52:54:00:00:10:09",
            "--power",
            &sim.url(),
            "--power-secret",
            "bmc1",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for action in ["status", "on", "off"] {
        let mut ours = Vec::new();
        let mut by_hand = Vec::new();
        for _ in 0..10 {
            let t = std::time::Instant::now();
            let o = power(&state, "n1", action);
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(o.code, 0, "{}", o.stderr);
            let t = std::time::Instant::now();
            let (ok, _) = sim.ipmitool(&["chassis", "power", action]);
            by_hand.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(ok);
        }
        eprintln!(
            "power {action}: kiln-coordinator host power {:.1} ms median, ipmitool by hand \
             {:.1} ms median (10 rounds, ipmi_sim on loopback)",
            median(ours),
            median(by_hand)
        );
    }
}
