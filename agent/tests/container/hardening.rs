//! What the hardened defaults look like from inside the container.
use kiln_protocol::Outcome;

use crate::support::*;

/// Prints one `KEY=value` line per property the test checks.
const PROBE: &str = r#"echo "UID=$(id -u) GID=$(id -g)"
if touch /etc/probe 2>/dev/null; then echo ROOTFS=rw; else echo ROOTFS=ro; fi
if touch /workspace/probe 2>/dev/null; then echo WORKSPACE=rw; else echo WORKSPACE=ro; fi
echo "TESTFILE=$(cat /workspace/hello.txt)"
echo t > /tmp/t && echo "TMP=$(cat /tmp/t)"
echo "CAPEFF=$(grep CapEff /proc/self/status | cut -f2)"
echo "CAPBND=$(grep CapBnd /proc/self/status | cut -f2)"
echo "NNP=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "IFACES=$(ls /sys/class/net | tr '\n' ' ')"
if wget -q -T 3 -O /dev/null http://192.0.2.1/ 2>/tmp/err; then echo NET=reached; else echo "NET=failed $(cat /tmp/err)"; fi
echo "PIDS=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
echo "MEM=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "PWD=$(pwd)"
"#;

fn probe(
    e: Eng,
    name: &str,
    spec: kiln_protocol::ContainerSpec,
) -> std::collections::BTreeMap<String, String> {
    let (c, sink, _d) = ctx(name, spec);
    std::fs::write(c.dir.join("hello.txt"), "from the bundle").unwrap();
    let r = smol::block_on(run(&c));
    assert_eq!(r.outcome, Outcome::Passed, "{r:?}: {:?}", sink.lines());
    assert!(e.containers_of(name).is_empty());
    sink.lines()
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn defaults_read_only_unprivileged_no_caps_no_network_limited(e: Eng) {
    let p = probe(e, "hard-default", e.spec(&[IMAGE_A], PROBE));
    assert_eq!(p["UID"], "65534 GID=65534", "{p:?}");
    assert_eq!(p["ROOTFS"], "ro");
    assert_eq!(p["WORKSPACE"], "ro");
    assert_eq!(p["TESTFILE"], "from the bundle");
    assert_eq!(p["TMP"], "t");
    assert_eq!(p["CAPEFF"], "0000000000000000");
    assert_eq!(p["CAPBND"], "0000000000000000");
    assert_eq!(p["NNP"], "1");
    assert_eq!(p["IFACES"], "lo");
    assert!(p["NET"].starts_with("failed"), "{p:?}");
    assert_eq!(p["PIDS"], "128");
    assert_eq!(p["MEM"], (256u64 << 20).to_string());
    assert_eq!(p["PWD"], "/workspace");
}

fn relaxations_take_effect_only_when_asked(e: Eng) {
    let mut s = e.spec(&[IMAGE_A], PROBE);
    s.read_only = false;
    s.user = Some("0:0".into());
    s.cap_add = vec!["CHOWN".into()];
    s.pids_limit = 0;
    s.workdir = Some("/tmp".into());
    let p = probe(e, "hard-relaxed", s);
    assert_eq!(p["UID"], "0 GID=0", "{p:?}");
    assert_eq!(p["ROOTFS"], "rw");
    // CAP_CHOWN is bit 0; nothing else came back.
    assert_eq!(p["CAPBND"], "0000000000000001");
    assert_eq!(p["IFACES"], "lo");
    assert_ne!(p["PIDS"], "128");
    assert_eq!(p["PWD"], "/tmp");
}

on_both_engines!(
    defaults_read_only_unprivileged_no_caps_no_network_limited,
    relaxations_take_effect_only_when_asked,
);
