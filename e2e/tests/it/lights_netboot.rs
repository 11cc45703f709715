//! Lights-out, the whole path: `ticket issue --boot` for a host behind ipmi_sim, whose
//! "power on" starts a real qemu guest (TCG) that netboots the kiln image through
//! iPXE from the coordinator; the agent runs the ticket; the coordinator reads the
//! power state back through IPMI after the run and switches the host off; the qemu
//! process is gone. And a guest that cannot netboot: one power cycle, then
//! `error: never booted`, then IPMI powers it off (ipmi_sim kills qemu).
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

use crate::bmc::{self, IPMI_PASSWORD, IpmiSim};
use crate::common::{Coordinator, kc, wait_until, write};
use crate::image::{image, register, trusted_state};
use crate::qemu::{Qemu, guest_url};

const VM_MAC: &str = "52:54:00:6b:10:01";
/// TCG is slow and the CPUs are shared: generous limits, never timed asserts.
const BOOT_LIMIT: Duration = Duration::from_secs(900);

/// The qemu command line ipmi_sim runs on power-on: the harness's own, its serial
/// port a TCP server on `sol_port` that ipmi_sim's serial-over-LAN connects to (qemu
/// waits for it before it starts the machine, as a real serial port loses nothing),
/// its pid into `machine.pid`.
fn vm_startcmd(dir: &Path, builder: crate::qemu::QemuBuilder, sol_port: u16) -> String {
    let mut args = builder.command_line();
    if let Some(i) = args.iter().position(|a| a == "stdio") {
        args[i] = format!("tcp:127.0.0.1:{sol_port},server=on,wait=on");
    }
    assert!(
        args.iter().all(|a| !a.contains(['\'', '"', ' '])),
        "{args:?}"
    );
    format!(
        "sh -c 'echo $$ > {}/machine.pid; exec qemu-system-x86_64 {}'",
        dir.display(),
        args.join(" ")
    )
}

fn machine_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("machine.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn show(state: &Path, run: &str) -> Value {
    let o = kc(state, &["run", "show", run, "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_str(&o.stdout).unwrap()
}

fn setup(tmp: &Path, kernel: &Path, initrd: &Path) -> std::path::PathBuf {
    let state = trusted_state(tmp);
    register(&state, kernel, initrd);
    let f = write(tmp, "bmc.secret", &format!("{IPMI_PASSWORD}\n"));
    assert_eq!(
        kc(
            &state,
            &["secret", "set", "bmc", "--file", f.to_str().unwrap()]
        )
        .code,
        0
    );
    std::fs::remove_file(f).unwrap();
    state
}

fn plan(dir: &Path) -> std::path::PathBuf {
    write(
        dir,
        "plan.toml",
        "name = \"lights-netboot\"\ntimeout = \"10m\"\n[[stage]]\nname = \"hello\"\n\
         kind = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo hello from $(uname -r)\"]\n",
    )
}

#[test]
fn a_netbooted_host_runs_its_ticket_through_ipmi_and_ends_powered_off() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = setup(tmp.path(), &kernel, &initrd);
    let server = Coordinator::start(&state);
    let bmc_dir = tmp.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let vm = Qemu::builder("lights1")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac(VM_MAC)
        .smbios_serial("KILN-LIGHTS-1");
    let sol = bmc::free_tcp_port();
    let Some(sim) = IpmiSim::start_with_sol(&bmc_dir, &vm_startcmd(&bmc_dir, vm, sol), Some(sol))
    else {
        return;
    };
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "node1",
            "--mac",
            VM_MAC,
            "--image",
            "kiln",
            "--power",
            &sim.url(),
            "--power-secret",
            "bmc",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let plan = plan(tmp.path());
    let o = kc(
        &state,
        &[
            "ticket",
            "issue",
            "--plan",
            plan.to_str().unwrap(),
            "--host",
            "node1",
            "--boot",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = o.stdout.trim().to_string();
    wait_until(BOOT_LIMIT, "the run to finish", || {
        show(&state, &run)["state"] == "finished"
    });
    let v = show(&state, &run);
    let console = kc(&state, &["run", "logs", &run, "--console"]).stdout;
    assert_eq!(v["outcome"], "passed", "{v:#}\nconsole:\n{console}");
    wait_until(Duration::from_secs(120), "the host to be released", || {
        show(&state, &run)["power"]["phase"] == "released"
    });
    let pid = machine_pid(&bmc_dir).expect("ipmi_sim started qemu");
    wait_until(Duration::from_secs(60), "qemu to be gone", || {
        !bmc::alive(pid)
    });
    let (ok, out) = sim.ipmitool(&["chassis", "power", "status"]);
    assert!(ok && out.contains("off"), "{out}");

    let v = show(&state, &run);
    let recs = v["power"]["records"].as_array().unwrap();
    let find = |ev: &str| recs.iter().find(|r| r["event"] == ev).cloned();
    let acts: Vec<String> = recs
        .iter()
        .filter(|r| r["event"] == "action")
        .map(|r| format!("{}:{}", r["action"].as_str().unwrap(), r["ok"]))
        .collect();
    assert!(acts.contains(&"on:true".to_string()), "{acts:?}");
    // The boot override: accepted, or refused with a warning and the boot went on.
    assert!(
        acts.contains(&"pxe:true".to_string())
            || recs.iter().any(|r| r["event"] == "warning"
                && r["detail"].as_str().unwrap().contains("boot override")),
        "{recs:?}"
    );
    let released = find("released").unwrap();
    let how = released["detail"].as_str().unwrap();
    // The agent powers a netbooted machine off itself after a finished run; the
    // coordinator reads that back through IPMI (or switches it off if still on).
    assert!(
        how.starts_with("already off") || how.starts_with("powered off"),
        "{how}"
    );
    // The console, read through IPMI serial-over-LAN from power-on to the claim:
    // the kernel's first line and the agent's start.
    assert!(console.contains("Linux version"), "{console}");
    assert!(console.contains("kiln: agent"), "{console}");
    eprintln!(
        "console lines captured before the claim: {} (the agent's start line {})",
        console.lines().count(),
        if console.contains("kiln: agent") {
            "seen"
        } else {
            "not seen"
        }
    );
    let logs = kc(&state, &["run", "logs", &run]).stdout;
    assert!(logs.contains("hello from 6."), "{logs}");

    // Figures (printed, never asserted).
    let powering = find("powering").unwrap()["at_ms"].as_u64().unwrap();
    let booting = find("booting").unwrap()["at_ms"].as_u64().unwrap();
    let claim = v["claim"]["at_ms"].as_u64().unwrap();
    eprintln!(
        "lights-out netboot (TCG): queue -> powered on {:.2}s, power-on -> claim {:.1}s, \
         released: {how}",
        (booting - powering) as f64 / 1000.0,
        claim.saturating_sub(booting) as f64 / 1000.0,
    );
    drop(sim);
}

#[test]
fn a_host_that_cannot_netboot_is_cycled_once_then_never_booted_and_powered_off() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = setup(tmp.path(), &kernel, &initrd);
    let server = Coordinator::start(&state);
    let bmc_dir = tmp.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    // No network card and an empty disk: the firmware finds nothing to boot.
    let disk = tmp.path().join("empty.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // The firmware's text screen goes to the serial port (`graphics=off`: SeaBIOS's
    // serial graphics adapter), as a server's console redirection does.
    let vm = Qemu::builder("nonic")
        .no_network()
        .disk(&disk, crate::qemu::Bus::Ide)
        .args(&["-machine", "graphics=off"]);
    let sol = bmc::free_tcp_port();
    let Some(sim) = IpmiSim::start_with_sol(&bmc_dir, &vm_startcmd(&bmc_dir, vm, sol), Some(sol))
    else {
        return;
    };
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "node2",
            "--mac",
            "52:54:00:6b:10:02",
            "--image",
            "kiln",
            "--power",
            &sim.url(),
            "--power-secret",
            "bmc",
            "--boot-timeout",
            "20s",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let plan = plan(tmp.path());
    let o = kc(
        &state,
        &[
            "ticket",
            "issue",
            "--plan",
            plan.to_str().unwrap(),
            "--host",
            "node2",
            "--boot",
            "--url",
            &server.url,
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = o.stdout.trim().to_string();
    wait_until(Duration::from_secs(30), "qemu to start", || {
        machine_pid(&bmc_dir).is_some_and(bmc::alive)
    });
    wait_until(
        Duration::from_secs(180),
        "the watchdog to end the run",
        || show(&state, &run)["state"] == "finished",
    );
    let v = show(&state, &run);
    assert_eq!(v["outcome"], "error");
    assert!(
        v["power"]["error"]
            .as_str()
            .unwrap()
            .starts_with("never booted"),
        "{v:#}"
    );
    wait_until(Duration::from_secs(60), "the host to be released", || {
        show(&state, &run)["power"]["phase"] == "released"
    });
    let pid = machine_pid(&bmc_dir).unwrap();
    wait_until(Duration::from_secs(60), "ipmi_sim to stop qemu", || {
        !bmc::alive(pid)
    });
    // A run the coordinator ended boots nothing, should the machine come up later.
    let script = ureq::get(&format!("{}/ipxe/52-54-00-6b-10-02", server.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(script.contains("nothing pending"), "{script}");
    let recs = v["power"]["records"].as_array().unwrap().clone();
    let acts: Vec<String> = recs
        .iter()
        .filter(|r| r["event"] == "action")
        .map(|r| format!("{}:{}", r["action"].as_str().unwrap(), r["ok"]))
        .collect();
    assert!(acts.contains(&"cycle:true".to_string()), "{acts:?}");
    let released = show(&state, &run)["power"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["event"] == "released")
        .cloned()
        .unwrap();
    // Powered off once its console had been read after the run's end (the window
    // from the end to the power-off is captured too).
    let how = released["detail"].as_str().unwrap();
    assert!(how.starts_with("powered off"), "{released}");
    assert!(how.contains("its console read for"), "{released}");
    let console = kc(&state, &["run", "logs", &run, "--console"]).stdout;
    assert!(console.contains("No bootable device"), "{console}");
    // The error's detail ends with the console's last lines.
    let err = v["power"]["error"].as_str().unwrap();
    assert!(err.contains("No bootable device"), "{err}");
    eprintln!("never booted: {err}");
    drop(sim);
}

#[test]
fn a_guest_killed_mid_stage_ends_agent_lost_with_its_last_lines() {
    let Some((kernel, initrd)) = image() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = setup(tmp.path(), &kernel, &initrd);
    let server = Coordinator::start(&state);
    let bmc_dir = tmp.path().join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let vm = Qemu::builder("lost1")
        .netboot(&format!("{}/boot.ipxe", guest_url(&server.url)))
        .mac("52:54:00:6b:10:03")
        .smbios_serial("KILN-LIGHTS-3");
    let sol = bmc::free_tcp_port();
    let Some(sim) = IpmiSim::start_with_sol(&bmc_dir, &vm_startcmd(&bmc_dir, vm, sol), Some(sol))
    else {
        return;
    };
    let o = kc(
        &state,
        &[
            "host",
            "add",
            "node3",
            "--mac",
            "52:54:00:6b:10:03",
            "--image",
            "kiln",
            "--power",
            &sim.url(),
            "--power-secret",
            "bmc",
            "--lost-after",
            "5s",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let plan = write(
        tmp.path(),
        "long.toml",
        "name = \"long\"\n[[stage]]\nname = \"work\"\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"echo working on it; echo still working; sleep 600\"]\n",
    );
    let o = kc(
        &state,
        &[
            "ticket",
            "issue",
            "--plan",
            plan.to_str().unwrap(),
            "--host",
            "node3",
            "--boot",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = o.stdout.trim().to_string();
    wait_until(BOOT_LIMIT, "the stage to report", || {
        kc(&state, &["run", "logs", &run])
            .stdout
            .contains("still working")
    });
    // The machine dies mid-stage: SIGKILL qemu.
    let pid = machine_pid(&bmc_dir).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    wait_until(
        Duration::from_secs(120),
        "the run to end agent lost",
        || show(&state, &run)["state"] == "finished",
    );
    let v = show(&state, &run);
    assert_eq!(v["outcome"], "error", "{v:#}");
    let err = v["power"]["error"].as_str().unwrap();
    assert!(
        err.starts_with("agent lost") && err.contains("still working"),
        "{err}"
    );
    wait_until(Duration::from_secs(60), "the host to be released", || {
        show(&state, &run)["power"]["phase"] == "released"
    });
    eprintln!("agent lost: {err}");
    drop(sim);
}
