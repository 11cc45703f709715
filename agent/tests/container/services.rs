//! Services beside a cell: reached by name once healthy, on an internal network with
//! no way out; a never-healthy service is an `error` with its log tail; nothing of a
//! cell is left (passed, failed, timed out, aborted); `keep_failed` keeps exactly the
//! failed cell and `kiln-agent gc` removes it.
use kiln_agent::stages::Stop;
use kiln_protocol::{ContainerSpec, HealthSpec, ImageRef, Outcome, ServiceSpec};
use smol::future::FutureExt;
use std::io::Write;
use std::net::TcpListener;

use crate::support::*;

/// busybox httpd serving one file from /tmp (the root is read-only), on port 8080.
fn web(health: Option<HealthSpec>) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        image: ImageRef::Registry(IMAGE_A.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && echo web-started && exec httpd -f -p 8080 -h /tmp/www".into(),
        ],
        env: vec![],
        secrets: vec![],
        health,
    }
}

fn http_health() -> HealthSpec {
    HealthSpec {
        command: vec![
            "wget".into(),
            "-q".into(),
            "-O".into(),
            "/dev/null".into(),
            "http://127.0.0.1:8080/".into(),
        ],
        interval_ms: 100,
        timeout_ms: 2000,
        retries: 50,
        start_period_ms: 0,
    }
}

fn with_services(e: Eng, script: &str, services: Vec<ServiceSpec>) -> ContainerSpec {
    let mut s = e.spec(&[IMAGE_A], script);
    s.services = services;
    s
}

/// This host's IPv4 addresses other than loopback.
fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .filter(|a| !a.starts_with("127."))
        .map(str::to_string)
        .collect()
}

/// Names of the engine's networks of stage `name` in the test run.
fn networks_of(e: Eng, name: &str) -> Vec<String> {
    let prefix = format!("kiln-07070707-{name}-");
    e.cmd(&["network", "ls", "--format", "{{.Name}}"])
        .expect("network ls")
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn nothing_left(e: Eng, name: &str) {
    assert!(
        e.containers_of(name).is_empty(),
        "{:?}",
        e.containers_of(name)
    );
    assert!(
        networks_of(e, name).is_empty(),
        "{:?}",
        networks_of(e, name)
    );
}

fn a_healthy_service_is_reached_by_name_and_nothing_outside(e: Eng) {
    let name = "svc-web";
    // A listener on every host address: the cell must reach none of them.
    let listener = TcpListener::bind("0.0.0.0:0").expect("listener");
    let port = listener.local_addr().unwrap().port();
    let addrs = host_addresses();
    assert!(!addrs.is_empty(), "this host has a non-loopback address");
    // Every connection is answered and counted.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut c = c;
            let _ = c.write_all(b"hi\n");
        }
    });
    // The listener answers the host itself (so a silence from the cell means the
    // cell was cut off, not that nothing listened).
    for a in &addrs {
        let mut c = std::net::TcpStream::connect((a.as_str(), port)).expect("host reaches itself");
        let mut b = [0u8; 3];
        std::io::Read::read_exact(&mut c, &mut b).expect("the listener answers");
    }
    let from_host = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(from_host, addrs.len());
    let script = format!(
        "wget -q -O- http://web:8080/ || echo web-unreachable; \
         gw=$(ip route | awk '/default/ {{print $3}}'); \
         for a in {} $gw 1.1.1.1; do \
           timeout 3 nc -w 1 $a {port} </dev/null 2>/dev/null | grep -q hi && echo reached $a; \
         done; echo probes-done",
        addrs.join(" ")
    );
    let spec = with_services(e, &script, vec![web(Some(http_health()))]);
    let (c, sink, _d) = ctx(name, spec);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    let lines = sink.lines();
    assert!(lines.contains(&"hello-from-web".to_string()), "{lines:?}");
    assert!(lines.contains(&"probes-done".to_string()), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("reached ")),
        "the cell reached outside its network: {lines:?}"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        from_host,
        "a connection from the cell came in"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("service web is healthy")),
        "{lines:?}"
    );
    // The service's log is a part of the cell.
    let p = part(&sink, "service web");
    assert_eq!(p.1, Outcome::Passed);
    assert!(p.3.contains(&"web-started".to_string()), "{p:?}");
    nothing_left(e, name);
}

fn a_never_healthy_service_is_an_error_with_its_log_tail(e: Eng) {
    let name = "svc-sick";
    let sick = ServiceSpec {
        name: "sick".into(),
        image: ImageRef::Registry(IMAGE_A.into()),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo sick-starting; echo cannot-serve-anything >&2; exec sleep 300".into(),
        ],
        env: vec![],
        secrets: vec![],
        health: Some(HealthSpec {
            command: vec!["sh".into(), "-c".into(), "echo not yet; exit 1".into()],
            interval_ms: 100,
            timeout_ms: 2000,
            retries: 3,
            start_period_ms: 0,
        }),
    };
    let spec = with_services(e, "echo the-test-ran", vec![web(Some(http_health())), sick]);
    let (c, sink, _d) = ctx(name, spec);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Error, "{r:?}");
    assert!(
        r.detail
            .starts_with("service sick never became healthy (3 checks; last: exit 1: not yet)"),
        "{r:?}"
    );
    let p = part(&sink, "service sick");
    assert_eq!(p.1, Outcome::Error, "{p:?}");
    assert!(
        p.3.contains(&"cannot-serve-anything".to_string()),
        "its log tail: {p:?}"
    );
    assert_eq!(part(&sink, "service web").1, Outcome::Passed);
    assert!(!sink.lines().contains(&"the-test-ran".to_string()));
    nothing_left(e, name);
}

fn stopped_cells_with_services_leave_nothing(e: Eng) {
    for (name, why, want) in [
        ("svc-timeout", Stop::Timeout, Outcome::TimedOut),
        (
            "svc-abort",
            Stop::Abort("operator".into()),
            Outcome::Aborted,
        ),
    ] {
        let spec = with_services(e, "echo test-sleeping; sleep 300", vec![web(None)]);
        let (c, sink, _d) = ctx(name, spec);
        let stop = c.stop.clone();
        let r = smol::block_on(run(&c).or(async {
            log_line(&sink, "test-sleeping").await;
            assert_eq!(
                e.containers_of(name).len(),
                2,
                "the test and its service run"
            );
            assert_eq!(networks_of(e, name).len(), 1);
            stop.fire(why.clone());
            std::future::pending().await
        }));
        assert_eq!(r.outcome, want, "{r:?}");
        nothing_left(e, name);
    }
    // A failed cell, without keep_failed: nothing kept.
    let name = "svc-failed";
    let (c, _sink, _d) = ctx(name, with_services(e, "exit 1", vec![web(None)]));
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    nothing_left(e, name);
}

fn keep_failed_keeps_exactly_the_failed_cell_until_gc(e: Eng) {
    let name = "svc-keep";
    // From an earlier, failed test run.
    let _ = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["gc", "--runtime", e.program(), "--stage", name])
        .output();
    let mut spec = with_services(
        e,
        "[ \"$N\" = 1 ] || { echo failing-on-purpose; exit 1; }",
        vec![web(None)],
    );
    spec.axes = vec![("N".into(), vec!["1".into(), "2".into()])];
    spec.fail_fast = false;
    spec.keep_failed = true;
    let (c, sink, _d) = ctx(name, spec.clone());
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let failed = part(&sink, &format!("{IMAGE_A} N=2"));
    let passed = part(&sink, &format!("{IMAGE_A} N=1"));
    assert_eq!(passed.1, Outcome::Passed);
    let mut left = e.containers_of(name);
    left.sort();
    let test = format!("kiln-07070707-{name}-1-1-localhost_kiln-test-a_1_N_2");
    assert_eq!(
        left,
        [test.clone(), format!("{test}-svc-web")],
        "exactly the failed cell"
    );
    assert!(
        failed.2.starts_with(&format!(
            "exit 1; kept {test} and services {test}-svc-web (look inside: `{} logs {test}`",
            e.program()
        )),
        "{failed:?}"
    );
    assert_eq!(networks_of(e, name), [format!("{test}-net")]);
    for c in &left {
        let state = e
            .cmd(&["inspect", "--format", "{{.State.Running}}", c])
            .unwrap();
        assert_eq!(state.trim(), "false", "{c} is stopped");
    }
    let logs = e.cmd(&["logs", &test]).unwrap();
    assert!(logs.contains("failing-on-purpose"), "{logs}");

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["gc", "--runtime", e.program()])
        .output()
        .expect("kiln-agent gc");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("removed container {test}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("removed network {test}-net\n")),
        "{out}"
    );
    nothing_left(e, name);

    // Kept again, then the stage's next run removes what the last one kept.
    let (c, _sink, _d) = ctx(name, spec.clone());
    smol::block_on(run(&c));
    assert_eq!(e.containers_of(name).len(), 2);
    let mut next = spec;
    next.axes = vec![("N".into(), vec!["1".into()])];
    let (c, _sink, _d) = ctx(name, next);
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
    nothing_left(e, name);
}

fn a_service_built_from_the_test_folder(e: Eng) {
    let name = "svc-built";
    let mut svc = web(Some(http_health()));
    svc.image = ImageRef::Build(kiln_protocol::BuildSpec {
        file: "service/Containerfile".into(),
        context: "service".into(),
        args: vec![],
        no_cache: false,
    });
    svc.command = vec![
        "httpd".into(),
        "-f".into(),
        "-p".into(),
        "8080".into(),
        "-h".into(),
        "/www".into(),
    ];
    let spec = with_services(e, "wget -q -O- http://web:8080/", vec![svc]);
    let (c, sink, _d) = ctx(name, spec);
    std::fs::create_dir_all(c.dir.join("service/www")).unwrap();
    std::fs::write(
        c.dir.join("service/Containerfile"),
        format!("FROM {IMAGE_A}\nCOPY www /www\n"),
    )
    .unwrap();
    std::fs::write(c.dir.join("service/www/index.html"), "built-service-page\n").unwrap();
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    assert!(sink.lines().contains(&"built-service-page".to_string()));
    let b = part(&sink, "build");
    assert!(
        b.2.starts_with("built localhost/kiln-build/svc-built:") || b.2.starts_with("reused "),
        "{b:?}"
    );
    let tag = b.2.split_whitespace().nth(1).unwrap().to_string();
    let _ = e.cmd(&["rmi", "--force", &tag]);
    nothing_left(e, name);
}

on_both_engines!(
    a_service_built_from_the_test_folder,
    a_healthy_service_is_reached_by_name_and_nothing_outside,
    a_never_healthy_service_is_an_error_with_its_log_tail,
    stopped_cells_with_services_leave_nothing,
    keep_failed_keeps_exactly_the_failed_cell_until_gc,
);
