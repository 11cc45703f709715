//! The stages on this machine with the real tools: stress-ng for a few seconds,
//! iperf3 against a loopback server, smartctl on a loop device (which it cannot
//! identify), and the GPU stage where there is no NVIDIA driver.
use kiln_protocol::{CpuStressSpec, GpuSpec, NetworkSpec, Outcome, SmartSpec, StageKind};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::testutil::{Loop, ctx_for, have, measure, parts};

#[test]
fn cpu_stress_reports_ops_and_fails_below_minimum() {
    if !have("stress-ng") {
        return;
    }
    let mut s = CpuStressSpec {
        duration_s: 2,
        workers: 1,
        min_ops_per_s: None,
        max_temperature_c: None,
    };
    let (c, sink, _d) = ctx_for(StageKind::CpuStress(s.clone()));
    let r = smol::block_on(super::cpu::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    let ops = measure(&sink, "cpu.bogo_ops_per_s").expect("ops/s measured");
    eprintln!("stress-ng 1 worker 2 s: {ops:.1} bogo ops/s");
    assert!(ops > 0.0);
    assert!(
        sink.lines().iter().any(|l| l.contains("dispatching hogs")),
        "stress-ng output streamed"
    );
    assert_eq!(sink.blobs.lock().unwrap().len(), 1, "stress-ng.yaml stored");
    s.min_ops_per_s = Some(ops * 1e6);
    let (c, _sink, _d) = ctx_for(StageKind::CpuStress(s.clone()));
    let r = smol::block_on(super::cpu::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(r.detail.contains("below"), "{}", r.detail);
}

/// An `iperf3 -s` on a free loopback port, ready once it says it listens.
struct Server(Child, u16);

impl Server {
    fn start() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("iperf3")
            .args([
                "-s",
                "-B",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--forceflush",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            let l = lines.next().expect("iperf3 server exited").unwrap();
            if l.contains("Server listening") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server(child, port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn network_both_ways_against_loopback_iperf3() {
    if !have("iperf3") {
        return;
    }
    let srv = Server::start();
    let mut s = NetworkSpec {
        server: "127.0.0.1".into(),
        port: srv.1,
        duration_s: 1,
        min_mbps: Some(1.0),
    };
    let (c, sink, _d) = ctx_for(StageKind::Network(s.clone()));
    let r = smol::block_on(super::network::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?} {:?}", sink.lines());
    let tx = measure(&sink, "net.tx_mbps").unwrap();
    let rx = measure(&sink, "net.rx_mbps").unwrap();
    eprintln!("iperf3 loopback: tx {tx:.0} Mbit/s, rx {rx:.0} Mbit/s");
    assert!(tx > 1.0 && rx > 1.0);
    s.min_mbps = Some(1e9);
    let (c, _sink, _d) = ctx_for(StageKind::Network(s.clone()));
    let r = smol::block_on(super::network::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
}

#[test]
fn network_without_a_server_is_an_error() {
    if !have("iperf3") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = NetworkSpec {
        server: "127.0.0.1".into(),
        port,
        duration_s: 1,
        min_mbps: None,
    };
    let (c, _sink, _d) = ctx_for(StageKind::Network(s.clone()));
    let r = smol::block_on(super::network::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    assert!(r.detail.contains("Connection refused"), "{}", r.detail);
}

#[test]
fn smart_on_a_loop_device_is_an_error_part() {
    if !have("smartctl") || !have("losetup") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(lo) = Loop::new(&d.path().join("s"), 8 << 20) else {
        return;
    };
    let s = SmartSpec {
        devices: vec![lo.dev.clone()],
        ..Default::default()
    };
    let (c, sink, _d) = ctx_for(StageKind::Smart(s.clone()));
    let r = smol::block_on(super::smart::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    let p = parts(&sink);
    assert_eq!(p[0].1, Outcome::Error);
    assert!(p[0].2.contains("exit bit 0"), "{p:?}");
    assert!(
        sink.lines()
            .iter()
            .any(|l| l.contains("Unable to detect device type")),
        "{:?}",
        sink.lines()
    );
}

#[test]
fn gpu_without_nvidia_is_skipped() {
    if super::tools::find("nvidia-smi").is_some() {
        kiln_testkit::skip("this machine has nvidia-smi (the test needs a host without it)");
        return;
    }
    let s = GpuSpec {
        duration_s: 0,
        max_temperature_c: None,
    };
    let (c, _sink, _d) = ctx_for(StageKind::Gpu(s.clone()));
    let r = smol::block_on(super::gpu::run(&c, &s));
    assert_eq!(r.outcome, Outcome::Skipped, "{r:?}");
    assert!(r.detail.contains("nvidia-smi not found"), "{}", r.detail);
}
