//! Hardware stages end to end: in a qemu guest booted from the netboot image
//! (`guest`), and the GPU stage with a fake `nvidia-smi` (`gpu`: there is no GPU here).
use serde_json::Value;
use std::path::{Path, PathBuf};

mod gpu;
mod guest;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(super) fn stage<'a>(show: &'a Value, name: &str) -> &'a Value {
    show["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {show}"))
}

pub(super) fn measure(st: &Value, name: &str) -> Option<f64> {
    st["measurements"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["value"]
        .as_f64()
}

pub(super) fn part<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["parts"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no part {name} in {}", st["parts"]))
}
