//! What the two end-to-end benches (`wasm/benches/e2e.rs`, `stdio/benches/mcp.rs`) share;
//! each includes this file by path.

use std::{path::PathBuf, time::Duration};

/// The `p` quantile (0 to 1) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// The release directory, when it holds loongd, loongctl, loong-spawn and `worker`: the
/// bench runs from `target/release/deps/`.
pub fn release_dir(worker: &str) -> Option<PathBuf> {
    let dir = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .to_path_buf();
    ["loongd", "loongctl", "loong-spawn", worker]
        .iter()
        .all(|b| dir.join(b).exists())
        .then_some(dir)
}
