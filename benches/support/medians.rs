//! Reading back the medians criterion wrote in this run, for the benches that
//! print a summary of ratios after criterion. Included with
//! `#[path = "support/medians.rs"] mod medians;`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

/// Where criterion writes its results (same rules as criterion 0.5, minus `cargo metadata`).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // The bench binary lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// Median point estimate (ns) of every subject measured by this run (stale files are ignored).
pub fn read_medians(group: &str, started: SystemTime) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(dir) = criterion_dir() else { return out };
    let Ok(entries) = std::fs::read_dir(dir.join(group)) else { return out };
    for entry in entries.flatten() {
        let path = entry.path().join("new").join("estimates.json");
        let fresh = std::fs::metadata(&path).and_then(|m| m.modified()).map(|t| t >= started).unwrap_or(false);
        if !fresh {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(median) = json["median"]["point_estimate"].as_f64() {
            out.insert(entry.file_name().to_string_lossy().into_owned(), median);
        }
    }
    out
}
