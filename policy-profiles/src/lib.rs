//! `loong-profiles`: Loong's policy data (tier profiles, packs, risk, the denylist) and plugin
//! manifests, parsed and validated.
//!
//! Every problem in a file is reported in one run, each with the file, the line and the field,
//! so an operator fixes a profile in one pass. The bundled profiles live in
//! `policy-profiles/tiers/` and are compiled into loongd.

mod doc;
pub mod exec;
pub mod pack;
pub mod plugin;
pub mod risk;
mod tier;

use std::{collections::BTreeMap, fmt};

use loong_sandbox::{Tier, TierProfile};

pub use tier::parse_tier;

/// The bundled restricted profile.
pub const RESTRICTED: &str = include_str!("../tiers/restricted.toml");
/// The bundled balanced profile.
pub const BALANCED: &str = include_str!("../tiers/balanced.toml");
/// The bundled trusted profile.
pub const TRUSTED: &str = include_str!("../tiers/trusted.toml");

/// The bundled operator pack.
pub const OPERATOR_PACK: &str = include_str!("../packs/operator.toml");
/// The bundled example pack.
pub const DOCS_READER_PACK: &str = include_str!("../packs/docs-reader.toml");
/// The bundled pack every chat channel's token is issued within.
pub const CHANNEL_PACK: &str = include_str!("../packs/channel.toml");
/// The bundled risk profile.
pub const RISK: &str = include_str!("../risk/default.toml");
/// The bundled denylist.
pub const DENYLIST: &str = include_str!("../denylist.toml");
/// The bundled list of programs that run other programs or code.
pub const EXEC_WRAPPERS: &str = include_str!("../exec-wrappers.toml");

/// The bundled packs, parsed.
pub fn bundled_packs() -> Result<Vec<pack::Pack>, Vec<Problem>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (file, text) in [
        ("packs/operator.toml", OPERATOR_PACK),
        ("packs/docs-reader.toml", DOCS_READER_PACK),
        ("packs/channel.toml", CHANNEL_PACK),
    ] {
        match pack::parse_pack(text, file) {
            Ok(p) => out.push(p),
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as the caller named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The field (dotted path; empty for syntax errors).
    pub field: String,
    /// What is wrong and, where knowable, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.field, self.message
            )
        }
    }
}

/// The three bundled tier profiles, parsed.
pub fn bundled() -> Result<BTreeMap<Tier, TierProfile>, Vec<Problem>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, text) in [
        ("tiers/restricted.toml", RESTRICTED),
        ("tiers/balanced.toml", BALANCED),
        ("tiers/trusted.toml", TRUSTED),
    ] {
        match parse_tier(text, file) {
            Ok(p) => {
                out.insert(p.tier, p);
            }
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Checks any policy file Loong knows (a tier profile, a pack, a denylist or the list of
/// programs that run programs, told apart by their keys); returns every problem (empty when
/// it is valid).
pub fn check(text: &str, file: &str) -> Vec<Problem> {
    let has = |key: &str| text.lines().any(|l| l.trim_start().starts_with(key));
    if has("[program.") {
        exec::parse_runners(text, file).err().unwrap_or_default()
    } else if has("threshold") {
        risk::parse_risk(text, file).err().unwrap_or_default()
    } else if has("grants") || has("domain") {
        pack::parse_pack(text, file).err().unwrap_or_default()
    } else if has("programs") || has("hosts") || (has("paths") && !has("tier")) {
        pack::parse_denylist(text, file).err().unwrap_or_default()
    } else {
        parse_tier(text, file).err().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_profiles_are_valid() {
        let p = bundled().unwrap_or_else(|ps| panic!("bundled profiles have problems: {ps:#?}"));
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[&Tier::Restricted].seccomp_mode,
            loong_sandbox::SeccompMode::Allowlist
        );
        assert_eq!(
            p[&Tier::Balanced].seccomp_mode,
            loong_sandbox::SeccompMode::Denylist
        );
        assert!(p[&Tier::Restricted]
            .syscalls
            .iter()
            .any(|s| s.name == "execve"));
        // Every profile compiles to BPF.
        for prof in p.values() {
            loong_sandbox::seccomp::compile(prof, false).expect("compiles");
        }
        let packs =
            bundled_packs().unwrap_or_else(|ps| panic!("bundled packs have problems: {ps:#?}"));
        assert_eq!(packs[0].id, "operator");
        assert!(
            pack::Capability::ALL
                .iter()
                .all(|c| packs[0].allows(*c, None)),
            "the operator pack grants everything"
        );
        pack::parse_denylist(DENYLIST, "denylist.toml").expect("bundled denylist is valid");
    }
}

#[cfg(test)]
mod fuzz_corpus {
    /// The cargo-fuzz seed corpus (`fuzz/corpus/parse`) through every parser, as the fuzz
    /// target does, so the corpus is exercised on every test run; each must report its
    /// problems, not panic.
    #[test]
    fn seed_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("seed corpus present") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("utf-8 seed");
            let _ = crate::parse_tier(&text, "seed");
            let _ = crate::pack::parse_pack(&text, "seed");
            let _ = crate::pack::parse_denylist(&text, "seed");
            let _ = crate::risk::parse_risk(&text, "seed");
            let _ = crate::exec::parse_runners(&text, "seed");
            let _ = crate::check(&text, "seed");
            seen += 1;
        }
        assert!(seen >= 10, "seed corpus has only {seen} entries");
        // The invalid seeds really are invalid: the replay is not vacuous.
        let bad = std::fs::read_to_string(dir.join("bad-pack.toml")).expect("seed");
        assert!(crate::check(&bad, "bad-pack.toml").len() >= 3);
    }

    /// The manifest target's seed corpus (`fuzz/corpus/manifest`, seeded from the example
    /// plugins and every bridge kind, plus broken ones) through the manifest parser as the
    /// fuzz target calls it: the valid seeds parse, every other one is refused with its
    /// problems, and none panics.
    #[test]
    fn manifest_seed_corpus_replays() {
        use crate::plugin::{PluginManifest, MAX_MANIFEST_BYTES};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/manifest");
        let path = std::path::Path::new("/nonexistent/fuzz/loong.plugin.json");
        let mut parsed = Vec::new();
        let mut refused = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("seed corpus present") {
            let seed = entry.expect("entry").path();
            let bytes = std::fs::read(&seed).expect("seed");
            assert!(
                bytes.len() as u64 <= MAX_MANIFEST_BYTES,
                "{}",
                seed.display()
            );
            let name = seed
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            // A source file (not .json) is read as the fuzz target reads it too: the
            // manifest embedded between its marker lines.
            let outcome = if name.ends_with(".json") {
                PluginManifest::parse(path, &bytes).map(|_| ())
            } else {
                let text = String::from_utf8(bytes).expect("a UTF-8 source seed");
                match crate::plugin::embedded_block(&text) {
                    Ok(Some(json)) => PluginManifest::parse_from(
                        path,
                        json.as_bytes(),
                        crate::plugin::ManifestSource::EmbeddedSource("seed".into()),
                    )
                    .map(|_| ()),
                    Ok(None) | Err(_) => {
                        Err(crate::plugin::ManifestError::NoManifest { dir: seed.clone() })
                    }
                }
            };
            match outcome {
                Ok(()) => parsed.push(name),
                Err(_) => refused.push(name),
            }
        }
        parsed.sort();
        assert_eq!(
            parsed,
            [
                "example-config-reader.json",
                "example-echo.json",
                "example-json-transform.json",
                "http-json.json",
                "mcp-stdio.json",
                "process-stdio.json",
                "upstream-stdio-echo.py",
                "upstream-whatsapp.json"
            ],
            "refused: {refused:?}"
        );
        assert!(refused.len() >= 6, "too few broken seeds: {refused:?}");
    }
}
