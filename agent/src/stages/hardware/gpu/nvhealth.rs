//! nvidia-smi's health queries beside the main reading: each GPU's PCIe link (trained
//! generation and width against what GPU and slot allow), the clock-cut reasons that
//! are active (hardware slowdown, power brake, thermal), and memory row remapping.
//! They are separate runs from [`super::nvsmi::QUERY`], so a driver that lacks one of
//! these fields costs this check only, never the stage.
use super::nvsmi::{normalize_bus_id, num, value};

/// PCIe link, clock-cut reasons and how busy the GPU is, per GPU. The
/// `clocks_throttle_reasons` names are the ones every driver knows (newer drivers call
/// them `clocks_event_reasons` too).
pub const LINK_QUERY: &str = "index,pcie.link.gen.current,pcie.link.gen.max,\
pcie.link.width.current,pcie.link.width.max,clocks_throttle_reasons.hw_slowdown,\
clocks_throttle_reasons.hw_thermal_slowdown,clocks_throttle_reasons.hw_power_brake_slowdown,\
clocks_throttle_reasons.sw_thermal_slowdown,utilization.gpu";

/// Memory row remapping (Ampere and later), per GPU.
pub const REMAP_QUERY: &str = "gpu_bus_id,remapped_rows.correctable,remapped_rows.uncorrectable,\
remapped_rows.pending,remapped_rows.failure";

/// A clock-cut reason nvidia-smi reports as active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Throttle {
    /// Hardware slowdown (clocks halved or worse): heat, power brake, or a power spike.
    HwSlowdown,
    /// Hardware slowdown for temperature.
    HwThermal,
    /// Hardware slowdown asserted from outside, typically by the power supply.
    HwPowerBrake,
    /// The driver cutting clocks above the maximum operating temperature.
    SwThermal,
}

impl Throttle {
    /// As nvidia-smi -q names it.
    pub fn label(self) -> &'static str {
        match self {
            Throttle::HwSlowdown => "HW slowdown",
            Throttle::HwThermal => "HW thermal slowdown",
            Throttle::HwPowerBrake => "HW power brake slowdown",
            Throttle::SwThermal => "SW thermal slowdown",
        }
    }

    /// Whether the hardware cut the clocks (a defect under load), rather than the driver.
    pub fn is_hardware(self) -> bool {
        !matches!(self, Throttle::SwThermal)
    }
}

/// One [`LINK_QUERY`] line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    /// nvidia-smi's index.
    pub index: u32,
    /// Trained PCIe generation (drops when idle).
    pub generation: Option<u32>,
    /// Highest generation GPU and slot allow.
    pub generation_max: Option<u32>,
    /// Trained lane count (may drop when idle).
    pub width: Option<u32>,
    /// Most lanes GPU and slot allow.
    pub width_max: Option<u32>,
    /// Clock-cut reasons active now.
    pub throttles: Vec<Throttle>,
    /// How busy the GPU was over the driver's last sample period, percent.
    pub utilization: Option<u32>,
}

/// One [`REMAP_QUERY`] line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remap {
    /// PCI address, normalized to `0000:17:00.0`.
    pub bus_id: String,
    /// Rows remapped after repeated correctable errors.
    pub correctable: Option<u64>,
    /// Rows remapped after an uncorrectable error.
    pub uncorrectable: Option<u64>,
    /// A remap waits for the next GPU reset.
    pub pending: Option<bool>,
    /// A remap failed at some point in the GPU's life: it has run out of spare rows.
    pub failure: Option<bool>,
}

fn fields(line: &str, n: usize) -> Result<Vec<&str>, String> {
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    match f.len() == n {
        true => Ok(f),
        false => Err(format!("unexpected nvidia-smi line: {line:?}")),
    }
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// `pcie.link.width` values are plain numbers with `nounits`, `16x` without.
fn lanes(s: &str) -> Option<u32> {
    num(value(s)?.trim_end_matches(['x', 'X']))
}

fn yes_no(s: &str) -> Option<bool> {
    match value(s)?.to_ascii_lowercase().as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// Parses a [`LINK_QUERY`] run (`--format=csv,noheader,nounits`).
pub fn parse_links(text: &str) -> Result<Vec<Link>, String> {
    const REASONS: [Throttle; 4] = [
        Throttle::HwSlowdown,
        Throttle::HwThermal,
        Throttle::HwPowerBrake,
        Throttle::SwThermal,
    ];
    lines(text)
        .map(|line| {
            let f = fields(line, 10)?;
            Ok(Link {
                index: num(f[0]).ok_or_else(|| format!("bad gpu index in {line:?}"))?,
                generation: num(f[1]),
                generation_max: num(f[2]),
                width: lanes(f[3]),
                width_max: lanes(f[4]),
                utilization: num(f[9]),
                throttles: REASONS
                    .iter()
                    .zip(&f[5..9])
                    .filter(|(_, v)| v.eq_ignore_ascii_case("active"))
                    .map(|(t, _)| *t)
                    .collect(),
            })
        })
        .collect()
}

/// Parses a [`REMAP_QUERY`] run (`--format=csv,noheader,nounits`).
pub fn parse_remaps(text: &str) -> Result<Vec<Remap>, String> {
    lines(text)
        .map(|line| {
            let f = fields(line, 5)?;
            Ok(Remap {
                bus_id: normalize_bus_id(f[0]),
                correctable: num(f[1]),
                uncorrectable: num(f[2]),
                pending: yes_no(f[3]),
                failure: yes_no(f[4]),
            })
        })
        .collect()
}

/// argv of a `--query-gpu` run of `query`.
pub fn gpu_argv(smi: &str, query: &str) -> Vec<String> {
    vec![
        smi.into(),
        format!("--query-gpu={query}"),
        "--format=csv,noheader,nounits".into(),
    ]
}

/// argv of the [`REMAP_QUERY`] run.
pub fn remap_argv(smi: &str) -> Vec<String> {
    vec![
        smi.into(),
        format!("--query-remapped-rows={REMAP_QUERY}"),
        "--format=csv,noheader,nounits".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        crate::stages::hardware::testutil::fixture("nvidia-smi", name)
    }

    /// Real captures on an H200 and an H100 (fixtures' README).
    #[test]
    fn real_captures() {
        let l = parse_links(&fixture("h200-real-link.txt")).unwrap();
        assert_eq!(
            l,
            [Link {
                index: 0,
                generation: Some(5),
                generation_max: Some(5),
                width: Some(16),
                width_max: Some(16),
                throttles: vec![],
                utilization: Some(0),
            }]
        );
        assert_eq!(
            parse_remaps(&fixture("h200-real-remap.txt")).unwrap(),
            parse_remaps(&fixture("h100-real-remap.txt")).unwrap()
        );
        let r = parse_remaps(&fixture("h100-real-remap.txt")).unwrap();
        assert_eq!(
            r,
            [Remap {
                bus_id: "0000:00:06.0".into(),
                correctable: Some(0),
                uncorrectable: Some(0),
                pending: Some(false),
                failure: Some(false),
            }]
        );
    }

    #[test]
    fn active_reasons_degraded_links_and_remaps() {
        let l = parse_links(
            "0, 3, 5, 8, 16, Active, Not Active, Active, Not Active, 100\n\
             1, [N/A], [N/A], 16x, 16x, Not Active, Not Active, Not Active, Active, [N/A]\n",
        )
        .unwrap();
        assert_eq!(
            (l[0].generation, l[0].width, l[0].width_max),
            (Some(3), Some(8), Some(16))
        );
        assert_eq!(
            l[0].throttles,
            [Throttle::HwSlowdown, Throttle::HwPowerBrake]
        );
        assert_eq!((l[1].generation, l[1].width), (None, Some(16)));
        assert_eq!(l[1].throttles, [Throttle::SwThermal]);
        assert_eq!((l[0].utilization, l[1].utilization), (Some(100), None));
        let r = parse_remaps(
            "00000000:2A:00.0, 3, 1, Yes, No\n00000000:2B:00.0, [N/A], [N/A], [N/A], [N/A]\n",
        )
        .unwrap();
        assert_eq!(r[0].bus_id, "0000:2a:00.0");
        assert_eq!(
            (r[0].uncorrectable, r[0].pending, r[0].failure),
            (Some(1), Some(true), Some(false))
        );
        assert_eq!(
            r[1],
            Remap {
                bus_id: "0000:2b:00.0".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn other_output_is_an_error_not_a_panic() {
        for text in [
            "0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 81559, 40, 300, 0, 1980",
            "Field \"pcie.link.gen.max\" is not a valid field to query.",
            "x, 5, 5, 16, 16, a, b, c, d, 0",
            "0, 5, 5, 16, 16, Not Active, Not Active, Not Active, Not Active",
            ",,,,,,,,,,,,,,,,",
        ] {
            assert!(parse_links(text).is_err(), "{text:?}");
            assert!(parse_remaps(text).is_err(), "{text:?}");
        }
        assert!(parse_links("").unwrap().is_empty());
    }
}
