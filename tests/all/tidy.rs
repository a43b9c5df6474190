//! Repository invariants, checked like any other behaviour: every Rust file opens with a
//! `//!` line, `unsafe` appears only in `sandbox/` and the one function that maps a compiled
//! WASM module, and crates depend in the documented
//! direction (loong-ipc on no project crate, loongctl on loong-ipc only, workers on
//! loong-ipc, loong-sandbox and the shared worker runtime only, nothing on loongd or a
//! worker), and loongd's modules name each other without a cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
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
    // The one exception outside sandbox/: mapping a compiled WASM module
    // (`Module::deserialize`), confined to one function; docs/SECURITY.md says why.
    let artifact = root().join("workers/wasm/src/artifact.rs");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&sandbox) && **f != artifact)
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
        "`{KEYWORD}` outside sandbox/ and workers/wasm/src/artifact.rs: {offenders:?}"
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
        "loong-agent-wire",
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
    // manifest and package checks (one check path), not a copy of them; and
    // loong-agent-wire for the same reason: `onboard` and `doctor --fix` check loongd.toml's
    // [providers]/[agent] with loongd's own parser (no HTTP client is in that crate).
    assert_eq!(
        project_deps(&r.join("cli/Cargo.toml")),
        vec![
            "loong-ipc".to_string(),
            "loong-profiles".to_string(),
            "loong-agent-wire".to_string()
        ],
        "loongctl depends on loong-ipc, loong-profiles and loong-agent-wire only"
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
        "workers/agent",
        "workers/channel",
        "agent-wire",
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
    // trait: only the worker binary that wraps it (`src/main.rs`) chooses the wire, so no
    // other file of it names a project crate, and the package depends on none but the
    // worker's own.
    for dep in project_deps(&r.join("workers/plan/Cargo.toml")) {
        assert!(
            dep == "loong-ipc" || dep == "loong-worker-runtime",
            "workers/plan depends on {dep}"
        );
    }
    let mut library = Vec::new();
    rust_files(&r.join("workers/plan/src"), &mut library);
    assert!(library.len() > 5, "the plan library is read: {library:?}");
    for f in library.iter().filter(|f| !f.ends_with("src/main.rs")) {
        let src = fs::read_to_string(f).expect("read");
        assert!(
            !src.contains("loong_ipc") && !src.contains("loong_worker_runtime"),
            "{} names a project crate; only the worker binary (src/main.rs) may",
            f.display()
        );
    }
    // The agent's provider clients and loop are a library that names no project crate but
    // the shared agent-wire: the tools it runs come through its `ToolRunner` trait, and only
    // the worker binary (`src/main.rs`) chooses the wire to the kernel.
    assert_eq!(
        project_deps(&r.join("workers/agent/Cargo.toml")),
        vec![
            "loong-agent-wire".to_string(),
            "loong-ipc".to_string(),
            "loong-worker-runtime".to_string(),
        ],
        "workers/agent depends on the worker's crates and agent-wire only"
    );
    let mut library = Vec::new();
    rust_files(&r.join("workers/agent/src"), &mut library);
    assert!(library.len() > 5, "the agent library is read: {library:?}");
    for f in library.iter().filter(|f| !f.ends_with("src/main.rs")) {
        let src = fs::read_to_string(f).expect("read");
        assert!(
            !src.contains("loong_ipc") && !src.contains("loong_worker_runtime"),
            "{} names a project crate; only the worker binary (src/main.rs) may",
            f.display()
        );
    }
    // The channel clients are a library too: only the worker binary (`src/main.rs` and its
    // `src/kernel_link.rs`) may name the wire to the kernel.
    let mut library = Vec::new();
    rust_files(&r.join("workers/channel/src"), &mut library);
    assert!(
        library.len() > 5,
        "the channel library is read: {library:?}"
    );
    let binary = |f: &Path| f.ends_with("src/main.rs") || f.ends_with("src/kernel_link.rs");
    for f in library.iter().filter(|f| !binary(f)) {
        let src = fs::read_to_string(f).expect("read");
        assert!(
            !src.contains("loong_ipc") && !src.contains("loong_worker_runtime"),
            "{} names a project crate; only the worker binary (src/main.rs) may",
            f.display()
        );
    }
    // What loongd and the agent worker share links no HTTP client and no project crate.
    assert_eq!(
        project_deps(&r.join("agent-wire/Cargo.toml")),
        Vec::<String>::new(),
        "agent-wire depends on no project crate"
    );
    assert_eq!(
        project_deps(&r.join("loongd/Cargo.toml"))
            .iter()
            .filter(|d| d.starts_with("loong-agent"))
            .count(),
        1,
        "loongd reads the agent's configuration through agent-wire"
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

/// The one TLS stack is rustls with the ring provider: no OpenSSL, no native-tls, no aws-lc
/// (which needs a C toolchain and cmake) anywhere in the lock file.
#[test]
fn the_only_tls_stack_is_rustls_with_ring() {
    let lock = fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let names: BTreeSet<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .collect();
    for banned in [
        "aws-lc-rs",
        "aws-lc-sys",
        "openssl",
        "openssl-sys",
        "native-tls",
    ] {
        assert!(!names.contains(banned), "Cargo.lock has {banned}");
    }
    // Positive control: the check reads package names.
    assert!(
        names.contains("rustls") && names.contains("ring"),
        "{names:?}"
    );
}

/// `text` with comments removed and string and character literals blanked, so that only code
/// is read for module paths.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_str, mut block) = (false, 0u32);
    while let Some(c) = chars.next() {
        if block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block += 1;
            }
            continue;
        }
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block = 1;
            }
            _ => out.push(c),
        }
    }
    out
}

/// Identifiers, `::` and single punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    word.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(word);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The paths a `use` tree names, from `toks[*at]` up to its end (`;`, `,` or `}` not
/// consumed), each prefixed with `prefix`.
fn use_tree(toks: &[String], at: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while *at < toks.len() {
        let t = toks[*at].as_str();
        match t {
            "{" => {
                *at += 1;
                while *at < toks.len() && toks[*at] != "}" {
                    use_tree(toks, at, &path, out);
                    if *at < toks.len() && toks[*at] == "," {
                        *at += 1;
                    }
                }
                *at += 1;
                return;
            }
            "::" => *at += 1,
            ";" | "," | "}" => break,
            "as" => *at += 2,
            "*" => *at += 1,
            // `use a::{self, …}` names `a` itself.
            "self" if !path.is_empty() => *at += 1,
            _ => {
                path.push(t.to_string());
                *at += 1;
            }
        }
    }
    out.push(path);
}

/// Every module path (from the crate root) that a file of module `module` names: through
/// `use` trees and through paths in code that start at `crate`, `super`, `self` or a child
/// module.
fn named_paths(code: &str, module: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    let mut toks = tokens(code);
    // A file's unit tests (`#[cfg(test)] mod …`, last by convention) are not part of its
    // module's dependencies.
    let test_mod = ["#", "[", "cfg", "(", "test", ")", "]", "mod"];
    if let Some(at) = toks.windows(test_mod.len()).position(|w| w == test_mod) {
        toks.truncate(at);
    }
    let mut raw: Vec<Vec<String>> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == "use" {
            i += 1;
            let mut found = Vec::new();
            use_tree(&toks, &mut i, &[], &mut found);
            raw.extend(found);
        } else if is_ident(&toks[i]) && toks.get(i + 1).is_some_and(|t| t == "::") {
            let mut path = vec![toks[i].clone()];
            let mut j = i + 1;
            while toks.get(j).is_some_and(|t| t == "::")
                && toks.get(j + 1).is_some_and(|t| is_ident(t))
            {
                path.push(toks[j + 1].clone());
                j += 2;
            }
            raw.push(path);
            i = j;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for path in raw {
        let Some(first) = path.first() else { continue };
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "super" | "self" => module.to_vec(),
            _ => {
                let mut child = module.to_vec();
                child.push(first.clone());
                if !modules.contains(&child) {
                    continue;
                }
                module.to_vec()
            }
        };
        let mut rest = path.iter().peekable();
        if first == "crate" || first == "self" {
            rest.next();
        }
        while rest.peek().is_some_and(|s| *s == "super") {
            rest.next();
            base.pop();
        }
        base.extend(rest.cloned());
        // The longest prefix that is a module.
        while !base.is_empty() && !modules.contains(&base) {
            base.pop();
        }
        out.push(base);
    }
    out
}

/// Where a module counts in the graph: each file of the control API on its own (its files
/// must not name each other in a circle), every other module as the top-level concern it is
/// part of (a module and its children are one concern, free to name each other).
fn concern(module: &[String]) -> Vec<String> {
    match module.first().map(String::as_str) {
        Some("control") => module.to_vec(),
        _ => module.iter().take(1).cloned().collect(),
    }
}

/// The concerns of loongd and the concerns each one names (the crate root, which holds the
/// shared `Kernel`, is left out: every module names it).
fn loongd_module_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = root().join("loongd/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |f: &Path| -> Vec<String> {
        let rel = f.strip_prefix(&src).expect("beneath src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts
            .last()
            .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
        {
            parts.pop();
        }
        parts
    };
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let module = module_of(f);
        if module.is_empty() {
            continue;
        }
        let code = code_only(&fs::read_to_string(f).expect("read"));
        let node = concern(&module);
        let named: Vec<Vec<String>> = named_paths(&code, &module, &modules)
            .into_iter()
            .filter(|m| !m.is_empty())
            .map(|m| concern(&m))
            .filter(|m| *m != node)
            .collect();
        graph
            .entry(node)
            .or_insert_with(BTreeSet::new)
            .extend(named);
    }
    graph
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        n: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|m| m == n).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..].iter().map(|m| m.join("::")).collect();
                cycle.push(n.join("::"));
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut state, &mut Vec::new()))
}

/// loongd's concerns, and the files of its control API, name each other without a cycle:
/// the control API translates and calls down into the effect path, the registry and the
/// supervisor; nothing below names the control API (ARCHITECTURE.md, "Layers of loongd").
#[test]
fn loongd_modules_form_no_cycle() {
    let graph = loongd_module_graph();
    // The graph is read, not empty: the control API names the effect path, and a module
    // that names its parent is seen.
    let control = vec!["control".to_string(), "tools_api".to_string()];
    assert!(
        graph
            .get(&control)
            .is_some_and(|n| n.contains(&vec!["effects".to_string()])),
        "{graph:?}"
    );
    let mut with_cycle = graph.clone();
    with_cycle
        .entry(vec!["effects".to_string()])
        .or_default()
        .insert(control);
    assert!(
        find_cycle(&with_cycle).is_some(),
        "a cycle added is not found"
    );
    assert_eq!(find_cycle(&graph), None, "{graph:#?}");
}

/// The signatures of the public functions (any visibility but private) of a source file,
/// up to their body, with comments and strings removed and test modules cut off.
fn public_signatures(text: &str) -> Vec<String> {
    let code = code_only(text);
    let code = code.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("pub") {
        let after = &rest[at..];
        let end = after.find(['{', ';']).unwrap_or(after.len());
        let head = &after[..end];
        let is_fn = head
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .take(4)
            .any(|w| w == "fn");
        let word_start = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if is_fn && word_start {
            out.push(head.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        rest = &after[3..];
    }
    out
}

/// Errors that cross a module boundary are types with messages, never a bare `String`
/// (issue 16: "no non-test function that crosses a module boundary returns
/// `Result<_, String>`").
#[test]
fn no_public_function_returns_a_string_error() {
    let mut files = Vec::new();
    for dir in [
        "ipc",
        "sandbox",
        "policy-profiles",
        "agent-wire",
        "workers",
        "loongd",
        "cli",
    ] {
        rust_files(&root().join(dir), &mut files);
    }
    let string_error = |sig: &str| {
        sig.split("Result<").skip(1).any(|r| {
            let mut depth = 1;
            let mut last_arg = String::new();
            for c in r.chars() {
                match c {
                    '<' => depth += 1,
                    '>' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => last_arg.clear(),
                    c => last_arg.push(c),
                }
            }
            last_arg.trim() == "String"
        })
    };
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            !f.components()
                .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "benches")
        })
        .flat_map(|f| {
            let text = fs::read_to_string(f).unwrap_or_default();
            public_signatures(&text)
                .into_iter()
                .filter(|s| string_error(s))
                .map(|s| format!("{}: {s}", f.display()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "public functions returning Result<_, String> (give the error a type): {offenders:#?}"
    );
    // The control: the check finds one in a signature written that way.
    let sample = "pub(crate) fn f(x: u8) -> Result<Vec<(u8, u8)>, String> { todo!() }";
    assert!(public_signatures(sample).iter().any(|s| string_error(s)));
    let typed = "pub fn g() -> Result<Vec<(String, String)>, HeaderError> { todo!() }";
    assert!(!public_signatures(typed).iter().any(|s| string_error(s)));
}
