//! Fuzzes the plugin manifest parser, which loongd runs on every package's
//! `loong.plugin.json` and on manifests embedded in its source files (foreign bytes, up to `MAX_MANIFEST_BYTES`): any bytes give a manifest
//! or a list of problems, never a panic. Run with `cargo +nightly fuzz run manifest` from
//! `policy-profiles/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loong_profiles::plugin::{embedded_block, ManifestSource, PluginManifest, MAX_MANIFEST_BYTES};

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return;
    }
    // A directory that does not exist: the parser resolves the module path against it and
    // must not depend on what is on disk to stay panic-free.
    let path = std::path::Path::new("/nonexistent/fuzz/loong.plugin.json");
    let _ = PluginManifest::parse(path, data);
    // The same bytes as a source file that may embed a manifest between marker lines.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(Some(json)) = embedded_block(text) {
            let source = ManifestSource::EmbeddedSource("plugin.py".into());
            let _ = PluginManifest::parse_from(path, json.as_bytes(), source);
        }
    }
});
