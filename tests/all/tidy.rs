//! Repository invariants, checked like any other behaviour: every Rust file opens with a
//! `//!` line, `unsafe` appears only in `sandbox/`, and crates depend in the documented
//! direction (loong-ipc on no project crate, loongctl on loong-ipc only, workers on
//! loong-ipc, loong-sandbox and the shared worker runtime only, nothing on loongd or a
//! worker).

use std::{
    fs,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        // Public Loong's files copied verbatim (tests/fixtures/upstream/README.md): not ours.
        if p.ends_with("tests/fixtures/upstream") {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    assert!(files.len() > 10, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).is_ok_and(|t| t.trim_start().starts_with("//!")))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

/// The keyword, spelled so that this file does not contain it.
const KEYWORD: &str = concat!("un", "safe");

#[test]
fn unsafe_only_in_sandbox() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    let sandbox = root().join("sandbox");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&sandbox))
        .flat_map(|f| {
            let text = fs::read_to_string(f).unwrap_or_default();
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    let code = l.split("//").next().unwrap_or("");
                    code.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|w| w == KEYWORD)
                })
                .map(|(i, _)| format!("{}:{}", f.display(), i + 1))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "`{KEYWORD}` outside sandbox/: {offenders:?}"
    );
}

/// The project crates a manifest depends on (any dependency section).
fn project_deps(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).expect("manifest");
    let crates = [
        "loong-ipc",
        "loong-sandbox",
        "loong-profiles",
        "loongd",
        "loongctl",
        "loong-worker",
    ];
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l.contains("dependencies");
            continue;
        }
        if in_deps {
            if let Some(name) = l.split(['=', '.', ' ']).next() {
                if crates.iter().any(|c| {
                    name == *c || (c.ends_with('-') || *c == "loong-worker") && name.starts_with(c)
                }) {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn crate_dependency_direction() {
    let r = root();
    assert_eq!(
        project_deps(&r.join("ipc/Cargo.toml")),
        Vec::<String>::new(),
        "loong-ipc depends on no project crate"
    );
    // loongctl links loong-profiles for one reason: `plugins doctor` runs loongd's own
    // manifest and package checks (one check path), not a copy of them.
    assert_eq!(
        project_deps(&r.join("cli/Cargo.toml")),
        vec!["loong-ipc".to_string(), "loong-profiles".to_string()],
        "loongctl depends on loong-ipc and loong-profiles only"
    );
    for m in [
        "loongd",
        "cli",
        "ipc",
        "tests",
        "sandbox",
        "policy-profiles",
        "workers/runtime",
        "workers/wasm",
        "workers/stdio",
        "workers/http",
        "workers/builtin",
        "workers/plan",
    ] {
        let manifest = r.join(m).join("Cargo.toml");
        if manifest.exists() && m != "loongd" {
            assert!(
                !project_deps(&manifest).contains(&"loongd".to_string()),
                "{m} must not depend on loongd"
            );
        }
    }
    // Workers depend on loong-ipc and loong-sandbox only, and loongd on no worker:
    // untrusted modules are compiled inside a worker, never in the kernel.
    for worker in [
        "workers/runtime",
        "workers/wasm",
        "workers/stdio",
        "workers/http",
        "workers/builtin",
    ] {
        let deps = project_deps(&r.join(worker).join("Cargo.toml"));
        assert!(
            deps.contains(&"loong-ipc".to_string()),
            "{worker}: {deps:?}"
        );
        for dep in deps {
            assert!(
                dep == "loong-ipc" || dep == "loong-sandbox" || dep == "loong-worker-runtime",
                "{worker} depends on {dep}"
            );
        }
    }
    // The plan interpreter is a library that talks to the kernel only through its `Kernel`
    // trait: it depends on no project crate, so the worker that wraps it chooses the wire.
    assert_eq!(
        project_deps(&r.join("workers/plan/Cargo.toml")),
        Vec::<String>::new(),
        "loong-worker-plan depends on no project crate"
    );
    assert!(
        !project_deps(&r.join("loongd/Cargo.toml"))
            .iter()
            .any(|d| d.starts_with("loong-worker")),
        "loongd must not link a worker (wasmtime stays out of the kernel)"
    );
    // The check itself must be able to see a dependency.
    assert!(project_deps(&r.join("loongd/Cargo.toml")).contains(&"loong-ipc".to_string()));
}
