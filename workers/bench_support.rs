//! What the end-to-end benches (`wasm/benches/e2e.rs`, `stdio/benches/mcp.rs`,
//! `loongd/benches/control.rs`) share; each includes this file by path.
//!
//! A bench reports each figure of docs/performance.md twice: a line for the reader, and a
//! line `@figure {json}` that `scripts/bench` collects from every bench into its summary
//! table (the figure, its median and p99, the floor measured in the same run and the ratio
//! to it, and the goal). A new bench prints its figures with [`figure`] and is in the table.

#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

/// The `p` quantile (0 to 1) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// The directory of the binaries to drive: `LOONG_BIN_DIR` when set (`scripts/bench` sets it
/// to the binaries as the package builds them, in a directory cargo never writes), else those
/// this bench was built with (`target/release` or `target/fast`: the bench runs from
/// `<profile>/deps/`); when it holds loongd, loongctl, loong-spawn and `worker`.
pub fn release_dir(worker: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("LOONG_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .to_path_buf(),
    };
    ["loongd", "loongctl", "loong-spawn", worker]
        .iter()
        .all(|b| dir.join(b).exists())
        .then_some(dir)
}

/// One figure for the summary table.
#[derive(Debug, Clone, Default)]
pub struct Figure<'a> {
    /// What was measured, as docs/performance.md names it.
    pub name: &'a str,
    /// The median (or the rate, for a throughput).
    pub value: f64,
    /// `µs`, `ms` or `calls/s`.
    pub unit: &'a str,
    /// The 99th percentile, in `unit`, when the figure is a latency.
    pub p99: Option<f64>,
    /// The floor it is compared with, measured in the same run: its name and value in `unit`.
    pub floor: Option<(&'a str, f64)>,
    /// The goal, as the issue states it (`≤ 1.3×`, `≥ 20000 calls/s`).
    pub goal: &'a str,
}

/// Prints `f` as a line `@figure {json}` for `scripts/bench`.
pub fn figure(f: &Figure<'_>) {
    let ratio = f.floor.map(|(_, v)| f.value / v);
    println!(
        "@figure {}",
        serde_json::json!({
            "name": f.name, "value": f.value, "unit": f.unit, "p99": f.p99,
            "floor_name": f.floor.map(|(n, _)| n), "floor": f.floor.map(|(_, v)| v),
            "ratio": ratio, "goal": f.goal,
        })
    );
}

/// Microseconds in `d`.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
