//! Temperature sensors: hwmon (`temp*_input`) and thermal zones, read in millidegrees
//! and kept as per-sensor maxima while a load runs.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::stages::hardware::collect::attr;

/// A readable temperature sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Sensor {
    /// `k10temp/Tctl`, `nvme/Composite`, `thermal_zone0/x86_pkg_temp`.
    pub name: String,
    /// The file holding millidegrees Celsius.
    pub path: PathBuf,
}

/// Every temperature sensor under `sys`, sorted by name.
pub fn sensors(sys: &Path) -> Vec<Sensor> {
    let mut out = Vec::new();
    let list = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for hw in list(&sys.join("class/hwmon")) {
        let chip = attr(&hw.join("name"));
        let chip = if chip.is_empty() {
            file_name(&hw)
        } else {
            chip
        };
        for f in list(&hw) {
            let fname = file_name(&f);
            let Some(n) = fname
                .strip_prefix("temp")
                .and_then(|s| s.strip_suffix("_input"))
            else {
                continue;
            };
            let label = attr(&hw.join(format!("temp{n}_label")));
            let label = if label.is_empty() {
                format!("temp{n}")
            } else {
                label
            };
            out.push(Sensor {
                name: format!("{chip}/{label}"),
                path: f,
            });
        }
    }
    for tz in list(&sys.join("class/thermal")) {
        let zone = file_name(&tz);
        if zone.starts_with("thermal_zone") && tz.join("temp").exists() {
            out.push(Sensor {
                name: format!("{zone}/{}", attr(&tz.join("type"))),
                path: tz.join("temp"),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One sensor's reading in °C; `None` when unreadable or implausible.
pub fn read_c(s: &Sensor) -> Option<f64> {
    let milli: i64 = attr(&s.path).parse().ok()?;
    let c = milli as f64 / 1000.0;
    // Sensors report -273 or 255 when they have nothing; keep plausible values only.
    (-40.0..=200.0).contains(&c).then_some(c)
}

/// Per-sensor maxima over repeated samples.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    /// Sensor name → highest °C seen.
    pub max: BTreeMap<String, f64>,
    /// Samples taken.
    pub samples: u32,
}

impl Peaks {
    /// Reads every sensor once and keeps the maxima.
    pub fn sample(&mut self, sensors: &[Sensor]) {
        for s in sensors {
            if let Some(c) = read_c(s) {
                let e = self.max.entry(s.name.clone()).or_insert(c);
                *e = e.max(c);
            }
        }
        self.samples += 1;
    }

    /// The hottest reading of any sensor.
    pub fn hottest(&self) -> Option<(&str, f64)> {
        self.max
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(n, c)| (n.as_str(), *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwmon_and_thermal_zones() {
        let d = tempfile::tempdir().unwrap();
        let put = |rel: &str, v: &str| {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        put("class/hwmon/hwmon0/name", "k10temp\n");
        put("class/hwmon/hwmon0/temp1_input", "45250\n");
        put("class/hwmon/hwmon0/temp1_label", "Tctl\n");
        put("class/hwmon/hwmon1/name", "nvme\n");
        put("class/hwmon/hwmon1/temp1_input", "-273150\n");
        put("class/thermal/thermal_zone0/type", "x86_pkg_temp\n");
        put("class/thermal/thermal_zone0/temp", "51000\n");
        put("class/thermal/cooling_device0/type", "Processor\n");
        let s = sensors(d.path());
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["k10temp/Tctl", "nvme/temp1", "thermal_zone0/x86_pkg_temp"]
        );
        let mut p = Peaks::default();
        p.sample(&s);
        put("class/hwmon/hwmon0/temp1_input", "61000\n");
        p.sample(&s);
        put("class/hwmon/hwmon0/temp1_input", "50000\n");
        p.sample(&s);
        assert_eq!(p.max["k10temp/Tctl"], 61.0);
        assert!(
            !p.max.contains_key("nvme/temp1"),
            "implausible reading dropped"
        );
        assert_eq!(p.hottest(), Some(("k10temp/Tctl", 61.0)));
        assert_eq!(p.samples, 3);
    }
}
