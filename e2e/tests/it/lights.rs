//! Lights-out runs (`ticket issue --boot`) through `serve`'s power loop: the boot
//! watchdog, lost agents, power-off after the run, waves, and a restart while a host
//! boots. The BMC is ipmi_sim; its "machine" is a process it starts (a sleeper, or a
//! real kiln-agent); the waves test uses a counting fake BMC (an `ipmitool` stand-in
//! script) because it needs ten of them.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bmc::{self, IPMI_PASSWORD, IpmiSim};
use crate::common::{Coordinator, bin, fresh_state, kc, wait_until, write};
use crate::runs::s;

struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let (tmp, state) = fresh_state();
        let f = write(tmp.path(), "bmc.secret", &format!("{IPMI_PASSWORD}\n"));
        let o = kc(&state, &["secret", "set", "bmc", "--file", s(&f)]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        std::fs::remove_file(f).unwrap();
        Fx {
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            state,
        }
    }

    /// Adds host `name` (this machine's MAC when `local`, so an agent here can claim
    /// its tickets) powered through `url`.
    fn host(&self, name: &str, mac: &str, url: &str, extra: &[&str]) {
        let mut args = vec![
            "host",
            "add",
            name,
            "--mac",
            mac,
            "--power",
            url,
            "--power-secret",
            "bmc",
        ];
        args.extend(extra);
        let o = kc(&self.state, &args);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }

    fn issue(&self, host: &str, plan: &Path, url: &str) -> String {
        let o = kc(
            &self.state,
            &[
                "ticket",
                "issue",
                "--plan",
                s(plan),
                "--host",
                host,
                "--url",
                url,
                "--boot",
            ],
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        o.stdout.trim().to_string()
    }

    fn show(&self, run: &str) -> Value {
        let o = kc(&self.state, &["run", "show", run, "--json"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    }

    fn power_log(&self, run: &str) -> String {
        std::fs::read_to_string(self.state.join("runs").join(run).join("power.log"))
            .unwrap_or_default()
    }

    /// The power actions recorded for a run, as `action:ok`.
    fn actions(&self, run: &str) -> Vec<String> {
        self.show(run)["power"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == "action")
            .map(|r| format!("{}:{}", r["action"].as_str().unwrap(), r["ok"]))
            .collect()
    }

    fn phase(&self, run: &str) -> String {
        self.show(run)["power"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn sleeper(dir: &Path) -> String {
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

const PLAN: &str = "name = \"lights\"\n[[stage]]\nname = \"hello\"\nkind = \"exec\"\n\
                    command = [\"sh\", \"-c\", \"echo hello from the agent\"]\n";

#[test]
fn a_host_that_never_claims_gets_one_power_cycle_then_error_never_booted() {
    let fx = Fx::new();
    let bmc_dir = fx.dir.join("bmc");
    let Some(sim) = IpmiSim::start(&bmc_dir, &sleeper(&bmc_dir)) else {
        return;
    };
    fx.host(
        "n1",
        "52:54:00:00:30:01",
        &sim.url(),
        &["--boot-timeout", "2s"],
    );
    // --boot on a host without power control is refused before anything is issued.
    let o = kc(
        &fx.state,
        &["host", "add", "bare", "--mac", "52:54:00:00:30:02"],
    );
    assert_eq!(o.code, 0);
    let plan = write(&fx.dir, "plan.toml", PLAN);
    let o = kc(
        &fx.state,
        &[
            "ticket",
            "issue",
            "--plan",
            s(&plan),
            "--host",
            "bare",
            "--boot",
        ],
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("no power control"), "{}", o.stderr);

    let server = Coordinator::start(&fx.state);
    let run = fx.issue("n1", &plan, &server.url);
    let mut states = Vec::new();
    wait_until(
        Duration::from_secs(60),
        "the run to end never booted",
        || {
            let v = fx.show(&run);
            let st = v["state"].as_str().unwrap().to_string();
            if states.last() != Some(&st) {
                states.push(st.clone());
            }
            st == "finished"
        },
    );
    assert!(states.contains(&"booting".to_string()), "{states:?}");
    let v = fx.show(&run);
    assert_eq!(v["outcome"], "error", "{v}");
    assert_eq!(v["exit_status"], 3);
    let err = v["power"]["error"].as_str().unwrap();
    assert!(err.starts_with("never booted"), "{err}");
    // Then the host is powered off and the machine is gone.
    wait_until(Duration::from_secs(30), "the host to be released", || {
        fx.phase(&run) == "released"
    });
    let pid = machine_pid(&bmc_dir).expect("the BMC started the machine");
    wait_until(Duration::from_secs(20), "the machine to stop", || {
        !bmc::alive(pid)
    });
    let acts = fx.actions(&run);
    // pxe (ipmi_sim with no VM attached refuses it: a warning, the boot goes on),
    // status, on; the watchdog's pxe + cycle; status + off after the run.
    assert!(acts.iter().any(|a| a == "on:true"), "{acts:?}");
    assert!(acts.iter().any(|a| a == "cycle:true"), "{acts:?}");
    assert!(acts.iter().any(|a| a == "off:true"), "{acts:?}");
    let text = kc(&fx.state, &["run", "show", &run]).stdout;
    assert!(text.contains("error    never booted"), "{text}");
    // run watch shows the power steps and ends with the run, exit 3.
    let w = kc(&fx.state, &["run", "watch", &run]);
    assert_eq!(w.code, 3, "{w:?}");
    assert!(w.stdout.contains("== power: power on: ok"), "{}", w.stdout);
    assert!(
        w.stdout.contains("ended: error: never booted"),
        "{}",
        w.stdout
    );
    assert!(text.contains("power on: ok"), "{text}");
    let page = ureq::get(&format!("{}/runs/{run}", server.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        page.contains("never booted") && page.contains("power on"),
        "{page}"
    );
    // Nowhere the coordinator writes holds the password.
    for text in [fx.power_log(&run), text, page, fx.show(&run).to_string()] {
        assert!(!text.contains(IPMI_PASSWORD));
    }
    drop(sim);
}

/// ipmi_sim's "machine": a real kiln-agent that runs the ticket whose path the test
/// writes to `ticket.path` (it waits for it), then stays up like a booted host.
fn agent_machine(fx: &Fx, bmc_dir: &Path) -> String {
    let script = write(
        bmc_dir,
        "machine.sh",
        &format!(
            "#!/bin/sh\necho $$ > {d}/machine.pid\n\
             while [ ! -s {d}/ticket.path ]; do sleep 0.05; done\n\
             {agent} run --ticket \"$(cat {d}/ticket.path)\" --trust {trust} --work {d}/work \
             > {d}/agent.out 2>&1\necho $? > {d}/agent.exit\nexec sleep 3600\n",
            d = bmc_dir.display(),
            agent = bin("kiln-agent").display(),
            trust = fx.state.join("key/coordinator.pub").display(),
        ),
    );
    format!("sh {}", script.display())
}

#[test]
fn a_booted_agent_runs_the_plan_and_the_host_is_powered_off_after() {
    let fx = Fx::new();
    let bmc_dir = fx.dir.join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let Some(sim) = IpmiSim::start(&bmc_dir, &agent_machine(&fx, &bmc_dir)) else {
        return;
    };
    let mac = crate::common::local_mac().expect("a MAC");
    fx.host("here", &mac, &sim.url(), &[]);
    let server = Coordinator::start(&fx.state);
    let plan = write(&fx.dir, "plan.toml", PLAN);
    let run = fx.issue("here", &plan, &server.url);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    std::fs::write(bmc_dir.join("ticket.path"), s(&ticket)).unwrap();
    wait_until(Duration::from_secs(120), "the run to pass", || {
        fx.show(&run)["outcome"] == "passed"
    });
    wait_until(Duration::from_secs(30), "the host to be released", || {
        fx.phase(&run) == "released"
    });
    let pid = machine_pid(&bmc_dir).unwrap();
    wait_until(Duration::from_secs(20), "the machine to stop", || {
        !bmc::alive(pid)
    });
    let v = fx.show(&run);
    assert_eq!(v["state"], "finished");
    assert!(v["power"]["error"].is_null(), "{v}");
    let acts = fx.actions(&run);
    assert!(acts.iter().any(|a| a == "on:true"), "{acts:?}");
    assert!(acts.iter().any(|a| a == "off:true"), "{acts:?}");
    let log = fx.power_log(&run);
    assert!(log.contains("\"detail\":\"powered off"), "{log}");
    // The agent's frames are its own: events.log holds no coordinator record.
    let logs = kc(&fx.state, &["run", "logs", &run]).stdout;
    assert!(logs.contains("hello from the agent"), "{logs}");

    // power_off = false keeps the host on after the run.
    let _ = std::fs::remove_file(bmc_dir.join("ticket.path"));
    let _ = std::fs::remove_dir_all(bmc_dir.join("work"));
    let keep = write(&fx.dir, "keep.toml", &format!("power_off = false\n{PLAN}"));
    let run2 = fx.issue("here", &keep, &server.url);
    let ticket2 = fx.state.join("runs").join(&run2).join("ticket.kiln");
    std::fs::write(bmc_dir.join("ticket.path"), s(&ticket2)).unwrap();
    wait_until(
        Duration::from_secs(120),
        "the second run to be released",
        || fx.phase(&run2) == "released",
    );
    assert_eq!(fx.show(&run2)["outcome"], "passed");
    assert!(
        fx.power_log(&run2).contains("kept on"),
        "{}",
        fx.power_log(&run2)
    );
    assert!(!fx.actions(&run2).iter().any(|a| a.starts_with("off")));
    let (ok, out) = sim.ipmitool(&["chassis", "power", "status"]);
    assert!(ok && out.contains("on"), "{out}");
    drop(sim);
}

#[test]
fn a_silent_agent_is_lost_and_a_late_one_is_refused_and_recorded() {
    let fx = Fx::new();
    let bmc_dir = fx.dir.join("bmc");
    std::fs::create_dir_all(&bmc_dir).unwrap();
    let Some(sim) = IpmiSim::start(&bmc_dir, &agent_machine(&fx, &bmc_dir)) else {
        return;
    };
    let mac = crate::common::local_mac().expect("a MAC");
    fx.host("here", &mac, &sim.url(), &["--lost-after", "3s"]);
    let server = Coordinator::start(&fx.state);
    let marker = fx.dir.join("working");
    let plan = write(
        &fx.dir,
        "plan.toml",
        &format!(
            "name = \"long\"\n[[stage]]\nname = \"work\"\nkind = \"exec\"\n\
             command = [\"sh\", \"-c\", \"echo step one; echo step two; touch {}; sleep 600\"]\n",
            marker.display()
        ),
    );
    let run = fx.issue("here", &plan, &server.url);
    let ticket = fx.state.join("runs").join(&run).join("ticket.kiln");
    std::fs::write(bmc_dir.join("ticket.path"), s(&ticket)).unwrap();
    wait_until(Duration::from_secs(120), "the stage to report", || {
        marker.exists()
            && kc(&fx.state, &["run", "logs", &run])
                .stdout
                .contains("step two")
    });
    // The machine dies: SIGKILL the agent and its stage (the whole process group
    // of the machine script would be the VM; here: every process of this run).
    let frames_before = std::fs::metadata(fx.state.join("runs").join(&run).join("events.log"))
        .unwrap()
        .len();
    let agent_pids: Vec<u32> = bmc::cmdlines()
        .into_iter()
        .filter(|(_, c)| c.contains(s(&ticket)) && c.contains("kiln-agent"))
        .map(|(p, _)| p)
        .collect();
    assert!(!agent_pids.is_empty());
    for p in &agent_pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    // Its stage's process, orphaned by the kill, goes too (a dead machine runs
    // nothing).
    kill_matching(&marker.display().to_string());
    wait_until(Duration::from_secs(60), "the run to end agent lost", || {
        fx.show(&run)["state"] == "finished"
    });
    let v = fx.show(&run);
    assert_eq!(v["outcome"], "error");
    let err = v["power"]["error"].as_str().unwrap();
    assert!(err.starts_with("agent lost"), "{err}");
    assert!(err.contains("step two"), "its last lines: {err}");
    wait_until(Duration::from_secs(30), "the host to be released", || {
        fx.phase(&run) == "released"
    });

    // The agent comes back (same work folder, same spool): refused, recorded, and
    // nothing it sends is stored.
    let late = Command::new(bin("kiln-agent"))
        .args(["run", "--ticket", s(&ticket), "--trust"])
        .arg(fx.state.join("key/coordinator.pub"))
        .arg("--work")
        .arg(bmc_dir.join("work"))
        .output()
        .unwrap();
    assert_ne!(late.status.code(), Some(0));
    let log = fx.power_log(&run);
    assert!(log.contains("late_agent"), "{log}");
    let frames_after = std::fs::metadata(fx.state.join("runs").join(&run).join("events.log"))
        .unwrap()
        .len();
    assert_eq!(
        frames_before, frames_after,
        "a late agent's frames were stored"
    );
    assert_eq!(fx.show(&run)["outcome"], "error");
    kill_matching(&marker.display().to_string());
    drop(server);
    drop(sim);
}

/// SIGKILLs each process (by pid) whose command line holds `needle`, a path unique
/// to this test.
fn kill_matching(needle: &str) {
    for (pid, cmd) in bmc::cmdlines() {
        if cmd.contains(needle) && pid != std::process::id() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn a_restarted_coordinator_resumes_watching_a_booting_host() {
    let fx = Fx::new();
    let bmc_dir = fx.dir.join("bmc");
    let Some(sim) = IpmiSim::start(&bmc_dir, &sleeper(&bmc_dir)) else {
        return;
    };
    fx.host(
        "n1",
        "52:54:00:00:40:01",
        &sim.url(),
        &["--boot-timeout", "3s"],
    );
    let plan = write(&fx.dir, "plan.toml", PLAN);
    let mut server = Coordinator::start(&fx.state);
    let run = fx.issue("n1", &plan, &server.url);
    wait_until(Duration::from_secs(30), "the host to boot", || {
        fx.show(&run)["state"] == "booting"
    });
    server.kill();
    // Restarted on the same state folder: the watchdog's clock is the booting
    // record's, so it still fires; the host is not powered on a second time.
    let _server = Coordinator::start(&fx.state);
    wait_until(
        Duration::from_secs(60),
        "the watchdog to end the run",
        || fx.show(&run)["state"] == "finished",
    );
    let v = fx.show(&run);
    assert!(
        v["power"]["error"]
            .as_str()
            .unwrap()
            .starts_with("never booted"),
        "{v}"
    );
    let log = fx.power_log(&run);
    assert_eq!(log.matches("\"event\":\"powering\"").count(), 1, "{log}");
    assert_eq!(
        fx.actions(&run)
            .iter()
            .filter(|a| a.starts_with("on:"))
            .count(),
        1,
        "{:?}",
        fx.actions(&run)
    );
    drop(sim);
}

/// A counting fake BMC: an `ipmitool` stand-in that keeps one power state per port
/// and logs when each call starts and ends (ten real BMCs are more than a test
/// machine runs).
fn fake_ipmitool(dir: &Path) -> PathBuf {
    let p = write(
        dir,
        "fake-ipmitool",
        &format!(
            r#"#!/bin/sh
d={d}
port=
while [ $# -gt 0 ]; do
  case "$1" in
    -p) port=$2; shift 2;;
    -I|-C|-H|-U|-L|-N|-R) shift 2;;
    -E) shift;;
    *) break;;
  esac
done
cmd="$*"
echo "$(date +%s%N) start $port $cmd" >> $d/calls.log
sleep 0.1
case "$cmd" in
  "chassis power status") if [ -e $d/on.$port ]; then echo "Chassis Power is on"; else echo "Chassis Power is off"; fi;;
  "chassis power on"|"chassis power cycle") touch $d/on.$port; echo "Chassis Power Control: Up/On";;
  "chassis power off") rm -f $d/on.$port; echo "Chassis Power Control: Down/Off";;
  "chassis bootdev pxe") echo "Set Boot Device to pxe";;
esac
echo "$(date +%s%N) end $port $cmd" >> $d/calls.log
"#,
            d = dir.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn waves_power_at_most_n_hosts_at_once() {
    let fx = Fx::new();
    let fake_dir = fx.dir.join("fake");
    std::fs::create_dir_all(&fake_dir).unwrap();
    let fake = fake_ipmitool(&fake_dir);
    for i in 0..10 {
        fx.host(
            &format!("n{i}"),
            &format!("52:54:00:00:50:{i:02x}"),
            &format!("ipmi://admin@127.0.0.1:{}", 7000 + i),
            &["--boot-timeout", "1s"],
        );
    }
    let plan = write(&fx.dir, "plan.toml", PLAN);
    let server = Coordinator::start_env(
        &fx.state,
        &["--power-concurrency", "3"],
        &[("KILN_IPMITOOL", s(&fake))],
    );
    let runs: Vec<String> = (0..10)
        .map(|i| fx.issue(&format!("n{i}"), &plan, &server.url))
        .collect();
    let mut max_starting = 0;
    let mut saw_queue_place = false;
    wait_until(Duration::from_secs(180), "every run to be released", || {
        let o = kc(&fx.state, &["runs", "--json"]);
        let list: Value = serde_json::from_str(&o.stdout).unwrap();
        let starting = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "powering" || r["state"] == "booting")
            .count();
        max_starting = max_starting.max(starting);
        if !saw_queue_place {
            saw_queue_place = runs.iter().any(|r| {
                fx.show(r)["power"]["queue_position"]
                    .as_u64()
                    .is_some_and(|n| n > 1)
            });
        }
        runs.iter().all(|r| fx.phase(r) == "released")
    });
    assert!(
        max_starting <= 3,
        "{max_starting} runs powering/booting at once"
    );
    assert!(saw_queue_place, "no queued run showed its place");
    // The BMCs' view: from a host's boot override to its power-off, at most three
    // hosts at once.
    let calls = std::fs::read_to_string(fake_dir.join("calls.log")).unwrap();
    let mut spans: std::collections::BTreeMap<String, (u128, u128)> = Default::default();
    for l in calls.lines() {
        let mut w = l.splitn(4, ' ');
        let (t, edge, port, cmd) = (
            w.next().unwrap().parse::<u128>().unwrap(),
            w.next().unwrap(),
            w.next().unwrap().to_string(),
            w.next().unwrap_or(""),
        );
        let e = spans.entry(port).or_insert((u128::MAX, 0));
        if edge == "start" && cmd == "chassis bootdev pxe" {
            e.0 = e.0.min(t);
        }
        if edge == "end" && cmd == "chassis power off" {
            e.1 = e.1.max(t);
        }
    }
    assert_eq!(spans.len(), 10, "{calls}");
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for (a, b) in spans.values() {
        assert!(*a < *b, "a host was never powered off: {calls}");
        edges.push((*a, 1));
        edges.push((*b, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 3, "hosts powered at once, as the BMCs saw it");
}

#[test]
fn a_wrong_bmc_password_ends_the_run_naming_the_bmc_and_nowhere_the_password() {
    let fx = Fx::new();
    let wrong = "kiln-WRONG-lights-pw-3b7";
    let f = write(&fx.dir, "wrong.secret", &format!("{wrong}\n"));
    assert_eq!(
        kc(&fx.state, &["secret", "set", "bmc", "--file", s(&f)]).code,
        0
    );
    std::fs::remove_file(f).unwrap();
    let bmc_dir = fx.dir.join("bmc");
    let Some(sim) = IpmiSim::start(&bmc_dir, &sleeper(&bmc_dir)) else {
        return;
    };
    fx.host("n1", "52:54:00:00:60:01", &sim.url(), &[]);
    let server = Coordinator::start(&fx.state);
    let plan = write(&fx.dir, "plan.toml", PLAN);
    let run = fx.issue("n1", &plan, &server.url);
    wait_until(Duration::from_secs(60), "the run to end", || {
        fx.show(&run)["state"] == "finished"
    });
    let v = fx.show(&run);
    assert_eq!(v["outcome"], "error");
    let err = v["power"]["error"].as_str().unwrap();
    assert!(
        err.starts_with("power on failed") && err.contains(&sim.url()),
        "{err}"
    );
    assert!(
        machine_pid(&bmc_dir).is_none(),
        "powered on with a wrong password"
    );
    let page = ureq::get(&format!("{}/runs/{run}", server.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let text = kc(&fx.state, &["run", "show", &run]).stdout;
    let events =
        std::fs::read(fx.state.join("runs").join(&run).join("events.log")).unwrap_or_default();
    for t in [fx.power_log(&run), page, text, v.to_string()] {
        assert!(!t.contains(wrong), "{t}");
    }
    assert!(!String::from_utf8_lossy(&events).contains(wrong));
    drop(sim);
}

#[test]
fn a_redfish_host_is_booted_cycled_and_switched_off_by_the_power_loop() {
    let fx = Fx::new();
    let Some(rf) = crate::bmc::Sushy::start(&fx.dir.join("rf"), "52:54:00:00:70:01") else {
        return;
    };
    let f = write(
        &fx.dir,
        "rf.secret",
        &format!("{}\n", crate::bmc::RF_PASSWORD),
    );
    assert_eq!(
        kc(&fx.state, &["secret", "set", "rf", "--file", s(&f)]).code,
        0
    );
    std::fs::remove_file(f).unwrap();
    let o = kc(
        &fx.state,
        &[
            "host",
            "add",
            "r1",
            "--mac",
            "52:54:00:00:70:01",
            "--power",
            &rf.url(),
            "--power-secret",
            "rf",
            "--power-ca",
            s(&rf.cert),
            "--boot-timeout",
            "3s",
            "--auto-boot",
            "yes",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let server = Coordinator::start(&fx.state);
    let plan = write(&fx.dir, "plan.toml", PLAN);
    // --auto-boot yes: no --boot needed.
    let o = kc(
        &fx.state,
        &[
            "ticket",
            "issue",
            "--plan",
            s(&plan),
            "--host",
            "r1",
            "--url",
            &server.url,
        ],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let run = o.stdout.trim().to_string();
    wait_until(Duration::from_secs(120), "the host to be released", || {
        fx.phase(&run) == "released"
    });
    let v = fx.show(&run);
    assert!(
        v["power"]["error"]
            .as_str()
            .unwrap()
            .starts_with("never booted"),
        "{v}"
    );
    let acts = fx.actions(&run);
    for want in ["pxe:true", "on:true", "cycle:true"] {
        assert!(acts.iter().any(|a| a == want), "{want}: {acts:?}");
    }
    let sys = rf.system().unwrap();
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
    assert!(!fx.power_log(&run).contains(crate::bmc::RF_PASSWORD));
}

#[test]
fn two_runs_never_power_one_host_at_once() {
    let fx = Fx::new();
    let fake_dir = fx.dir.join("fake");
    std::fs::create_dir_all(&fake_dir).unwrap();
    let fake = fake_ipmitool(&fake_dir);
    fx.host(
        "n1",
        "52:54:00:00:80:01",
        "ipmi://admin@127.0.0.1:7100",
        &["--boot-timeout", "1s"],
    );
    let plan = write(&fx.dir, "plan.toml", PLAN);
    let server = Coordinator::start_env(&fx.state, &[], &[("KILN_IPMITOOL", s(&fake))]);
    let first = fx.issue("n1", &plan, &server.url);
    let second = fx.issue("n1", &plan, &server.url);
    // Issued in the same second, they are queued by run id: either may go first.
    let mut one_waited = false;
    wait_until(Duration::from_secs(120), "both runs to be released", || {
        let (a, b) = (fx.phase(&first), fx.phase(&second));
        if (a == "booting" && b == "queued") || (b == "booting" && a == "queued") {
            one_waited = true;
        }
        a == "released" && b == "released"
    });
    assert!(one_waited, "neither run waited for the other");
    let at = |run: &str, ev: &str| -> u64 {
        let v = fx.show(run);
        v["power"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["event"] == ev)
            .unwrap()["at_ms"]
            .as_u64()
            .unwrap()
    };
    let (early, late) = if at(&first, "powering") <= at(&second, "powering") {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert!(
        at(late, "powering") >= at(early, "released"),
        "the second run powered the host before the first let go of it"
    );
}
