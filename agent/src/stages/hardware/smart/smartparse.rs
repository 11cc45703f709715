//! Reading `smartctl -j` output (ATA, NVMe, SCSI) into the figures the `smart` stage
//! judges, and decoding smartctl's bit-mask exit status (smartctl(8) RETURN VALUES).
use kiln_protocol::{Outcome, SmartSpec};
use serde_json::Value;

/// What one exit-status bit means and what it does to the disk's outcome.
pub const EXIT_BITS: [(&str, Outcome); 8] = [
    ("command line did not parse", Outcome::Error),
    ("device open failed or did not identify", Outcome::Error),
    (
        "a SMART or ATA command failed, or a SMART checksum was wrong",
        Outcome::Warning,
    ),
    ("SMART status check returned DISK FAILING", Outcome::Failed),
    ("prefail attributes at or below threshold", Outcome::Failed),
    (
        "some attributes were at or below threshold in the past",
        Outcome::Warning,
    ),
    ("the device error log has records", Outcome::Warning),
    ("the self-test log has errors", Outcome::Failed),
];

/// The set bits of a smartctl exit status: (bit, meaning, outcome).
pub fn decode_exit(code: i32) -> Vec<(u8, &'static str, Outcome)> {
    (0..8u8)
        .filter(|b| code & (1 << b) != 0)
        .map(|b| (b, EXIT_BITS[b as usize].0, EXIT_BITS[b as usize].1))
        .collect()
}

/// The figures of one disk's SMART report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmartReport {
    /// `ata`, `nvme`, `scsi` (from `device.protocol`, lowercase).
    pub protocol: String,
    /// Model.
    pub model: String,
    /// Serial.
    pub serial: String,
    /// Overall health: `Some(true)` passed, `Some(false)` failing, `None` unknown.
    pub passed: Option<bool>,
    /// Current temperature, °C.
    pub temperature_c: Option<u64>,
    /// Power-on hours.
    pub power_on_hours: Option<u64>,
    /// Reallocated sectors (ATA 5) or grown defects (SCSI).
    pub reallocated: Option<u64>,
    /// Current pending sectors (ATA 197).
    pub pending: Option<u64>,
    /// Offline uncorrectable sectors (ATA 198).
    pub uncorrectable: Option<u64>,
    /// NVMe media and data integrity errors.
    pub media_errors: Option<u64>,
    /// NVMe critical warning bits.
    pub critical_warning: Option<u64>,
    /// NVMe percentage used (wear).
    pub percentage_used: Option<u64>,
    /// smartctl's own messages (`smartctl.messages[].string`).
    pub messages: Vec<String>,
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn ata_raw(doc: &Value, id: u64) -> Option<u64> {
    doc["ata_smart_attributes"]["table"]
        .as_array()?
        .iter()
        .find(|a| a["id"].as_u64() == Some(id))
        // The low 48 bits are the count; vendors pack extra data above.
        .and_then(|a| a["raw"]["value"].as_u64())
        .map(|v| v & 0xFFFF_FFFF_FFFF)
}

/// Reads a `smartctl -j -a` document. Missing fields stay `None`; wrong JSON is an
/// error.
pub fn parse(text: &str) -> Result<SmartReport, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("smartctl JSON: {e}"))?;
    if !doc.is_object() {
        return Err("smartctl JSON is not an object".into());
    }
    let nv = &doc["nvme_smart_health_information_log"];
    let s = |v: &Value| v.as_str().unwrap_or("").trim().to_string();
    Ok(SmartReport {
        protocol: s(&doc["device"]["protocol"]).to_ascii_lowercase(),
        model: s(&doc["model_name"]),
        serial: s(&doc["serial_number"]),
        passed: doc["smart_status"]["passed"].as_bool(),
        temperature_c: u(&doc["temperature"]["current"]).or(u(&nv["temperature"])),
        power_on_hours: u(&doc["power_on_time"]["hours"]).or(u(&nv["power_on_hours"])),
        reallocated: ata_raw(&doc, 5).or(u(&doc["scsi_grown_defect_list"])),
        pending: ata_raw(&doc, 197),
        uncorrectable: ata_raw(&doc, 198),
        media_errors: u(&nv["media_errors"]),
        critical_warning: u(&nv["critical_warning"]),
        percentage_used: u(&nv["percentage_used"]),
        messages: doc["smartctl"]["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["string"].as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Problems of a report against the plan's thresholds: (outcome, text).
pub fn judge(spec: &SmartSpec, r: &SmartReport) -> Vec<(Outcome, String)> {
    let mut out = Vec::new();
    if r.passed == Some(false) {
        out.push((Outcome::Failed, "SMART overall health: FAILED".to_string()));
    }
    if let Some(w) = r.critical_warning.filter(|w| *w != 0) {
        out.push((Outcome::Failed, format!("NVMe critical warning 0x{w:02x}")));
    }
    let mut over = |what: &str, v: Option<u64>, max: Option<u64>| {
        if let (Some(v), Some(max)) = (v, max)
            && v > max
        {
            out.push((Outcome::Failed, format!("{what} {v} > {max}")));
        }
    };
    over(
        "temperature °C",
        r.temperature_c,
        spec.max_temperature_c.map(u64::from),
    );
    over("reallocated sectors", r.reallocated, spec.max_reallocated);
    over("pending sectors", r.pending, spec.max_pending);
    over("media errors", r.media_errors, spec.max_media_errors);
    out
}

/// Where a self-test stands, from `smartctl -j -c -l selftest`.
#[derive(Debug, Clone, PartialEq)]
pub enum SelfTest {
    /// Running; percent remaining when known.
    Running(Option<u64>),
    /// Finished; passed or not, with smartctl's words.
    Done(bool, String),
    /// The device (or this smartctl) reports no self-test support.
    Unsupported,
}

/// Reads a self-test poll.
pub fn self_test(text: &str) -> Result<SelfTest, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("smartctl JSON: {e}"))?;
    let ata = &doc["ata_smart_data"]["self_test"]["status"];
    if let Some(v) = ata["value"].as_u64() {
        let words = ata["string"].as_str().unwrap_or("").to_string();
        if v >> 4 == 0xF {
            return Ok(SelfTest::Running(
                ata["remaining_percent"].as_u64().or(Some((v & 0xF) * 10)),
            ));
        }
        let passed = ata["passed"].as_bool().unwrap_or(v == 0);
        return Ok(SelfTest::Done(passed, words));
    }
    let nv = &doc["nvme_self_test_log"];
    if nv.is_object() {
        if nv["current_self_test_operation"]["value"]
            .as_u64()
            .unwrap_or(0)
            != 0
        {
            let done = nv["current_self_test_completion_percent"].as_u64();
            return Ok(SelfTest::Running(done.map(|d| 100 - d.min(100))));
        }
        let last = &nv["table"][0]["self_test_result"];
        return Ok(match last["value"].as_u64() {
            Some(v) => SelfTest::Done(v == 0, last["string"].as_str().unwrap_or("").to_string()),
            None => SelfTest::Unsupported,
        });
    }
    Ok(SelfTest::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        crate::stages::hardware::testutil::fixture("smartctl", name)
    }

    /// Every capture in the folder reads without error and names its device.
    #[test]
    fn every_capture_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hardware/smartctl");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let r = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if !p.to_string_lossy().contains("scan") {
                assert!(
                    ["ata", "nvme", "scsi"].contains(&r.protocol.as_str()),
                    "{}: {r:?}",
                    p.display()
                );
            }
            self_test(&text).unwrap();
            n += 1;
        }
        assert!(n >= 10);
    }

    #[test]
    fn qemu_nvme() {
        let r = parse(&fixture("qemu-nvme-a.json")).unwrap();
        assert_eq!(
            (r.protocol.as_str(), r.model.as_str(), r.serial.as_str()),
            ("nvme", "QEMU NVMe Ctrl", "NVME-SER-1")
        );
        assert_eq!(r.passed, Some(true));
        assert_eq!(
            (r.temperature_c, r.power_on_hours, r.media_errors),
            (Some(50), Some(0), Some(0))
        );
        assert_eq!(r.reallocated, None);
        assert!(judge(&SmartSpec::default(), &r).is_empty());
    }

    #[test]
    fn qemu_ata() {
        let r = parse(&fixture("qemu-ata-a.json")).unwrap();
        assert_eq!(
            (r.protocol.as_str(), r.model.as_str(), r.serial.as_str()),
            ("ata", "KilnDisk", "ATA-SER-1")
        );
        assert_eq!(
            (r.temperature_c, r.reallocated, r.pending),
            (Some(31), Some(0), None)
        );
        assert_eq!(r.power_on_hours, Some(1));
    }

    #[test]
    fn failing_ata_against_thresholds() {
        let r = parse(&fixture("synthetic-ata-failing.json")).unwrap();
        assert_eq!(
            (r.passed, r.reallocated, r.pending, r.uncorrectable),
            (Some(false), Some(24), Some(8), Some(2))
        );
        assert_eq!(r.messages.len(), 1);
        let spec = SmartSpec {
            max_reallocated: Some(10),
            max_pending: Some(0),
            ..Default::default()
        };
        let p = judge(&spec, &r);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().all(|(o, _)| *o == Outcome::Failed));
    }

    #[test]
    fn nvme_media_errors_and_heat() {
        let r = parse(&fixture("synthetic-nvme-media-errors.json")).unwrap();
        let spec = SmartSpec {
            max_media_errors: Some(0),
            max_temperature_c: Some(70),
            ..Default::default()
        };
        let p = judge(&spec, &r);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            judge(&SmartSpec::default(), &r).is_empty(),
            "no thresholds, healthy status"
        );
    }

    #[test]
    fn exit_bits() {
        assert!(decode_exit(0).is_empty());
        let d = decode_exit(0x18);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), [3, 4]);
        assert!(d.iter().all(|x| x.2 == Outcome::Failed));
        assert_eq!(decode_exit(2)[0].2, Outcome::Error);
        assert_eq!(decode_exit(64)[0].2, Outcome::Warning);
        assert_eq!(decode_exit(0xFF).len(), 8);
    }

    #[test]
    fn self_test_states() {
        assert_eq!(
            self_test(&fixture("synthetic-ata-selftest-running.json")).unwrap(),
            SelfTest::Running(Some(90))
        );
        assert_eq!(
            self_test(&fixture("qemu-ata-after-short-test.json")).unwrap(),
            SelfTest::Done(true, "completed without error".into())
        );
        assert!(matches!(
            self_test(&fixture("synthetic-ata-selftest-read-failure.json")).unwrap(),
            SelfTest::Done(false, _)
        ));
        assert_eq!(
            self_test(&fixture("synthetic-nvme74-selftest-running.json")).unwrap(),
            SelfTest::Running(Some(60))
        );
        assert!(matches!(
            self_test(&fixture("synthetic-nvme74-selftest-done.json")).unwrap(),
            SelfTest::Done(true, _)
        ));
        assert_eq!(
            self_test(&fixture("qemu-nvme-t-short-7.3.json")).unwrap(),
            SelfTest::Unsupported
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("[1,2]").is_err());
        assert!(parse("{\"smartctl\":").is_err());
        assert_eq!(parse("{}").unwrap(), SmartReport::default());
    }
}
