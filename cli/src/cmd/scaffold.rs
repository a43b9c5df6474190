//! `loongctl plugins init DIR --kind …` (a package that runs as it is) and
//! `loongctl plugins doctor DIR` (a diagnosis that runs none of it). Both work without a
//! daemon.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context};
use loong_ipc::package;
use loong_profiles::plugin::{self, check_package, Bridge, ManifestSource, PluginManifest};

use crate::{
    exit,
    text::{esc, needs_escape, Esc},
    Failure,
};

/// What `init` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A WASM plugin (host ABI v0): the echo module and its WebAssembly text.
    Wasm,
    /// A JSON-lines program (`process_stdio`): a Python script that answers each line.
    Stdio,
    /// An MCP server (`mcp_stdio`): a dependency-free Python server with one tool.
    Mcp,
    /// An HTTP connector (`http_json`) and a small local service to post to.
    Http,
}

const ECHO_WASM: &[u8] = include_bytes!("../../../examples/plugins/echo/plugin.wasm");
const ECHO_WAT: &str = include_str!("../../../examples/plugins/echo/plugin.wat");

const STDIO_PY: &str = r#""""A Loong process_stdio plugin: one JSON object per line in, one per line out."""
import json
import sys

for line in sys.stdin:
    frame = json.loads(line)
    answer = {"hello": frame.get("payload")}
    sys.stdout.write(json.dumps({"id": frame["id"], "payload": answer, "version": 1}) + "\n")
    sys.stdout.flush()
"#;

const MCP_PY: &str = r#""""A minimal MCP server over stdio (JSON-RPC 2.0, one message per line), no dependencies."""
import json
import sys

TOOLS = [{
    "name": "hello",
    "description": "Greets whoever is named",
    "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}},
}]


def answer(msg):
    method = msg.get("method")
    if method == "initialize":
        return {"protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hello", "version": "0.1.0"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        name = msg["params"].get("arguments", {}).get("name", "world")
        return {"content": [{"type": "text", "text": f"hello, {name}"}], "isError": False}
    if method == "ping":
        return {}
    return None


for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue  # a notification
    result = answer(msg)
    if result is None:
        reply = {"jsonrpc": "2.0", "id": msg["id"],
                 "error": {"code": -32601, "message": "method not found"}}
    else:
        reply = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

const HTTP_SERVE_PY: &str = r#""""A local service for the http_json connector to post to: python3 serve.py [PORT]."""
import http.server
import json
import sys


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out = json.dumps({"ok": True, "got": json.loads(body or b"null")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
http.server.HTTPServer(("127.0.0.1", port), Hook).serve_forever()
"#;

/// A plugin id from a directory name: lowercase, `[a-z0-9-_.]`, not leading `.`.
fn id_from(dir: &Path) -> Result<String, Failure> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage(format!("{}: name the package directory", dir.display())))?;
    let id: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = id.trim_start_matches('.').to_string();
    if id.is_empty() || id.len() > 64 {
        return Err(usage(format!(
            "{name:?} does not make a plugin id (1 to 64 of a-z 0-9 - _ .)"
        )));
    }
    Ok(id)
}

fn usage(m: String) -> Failure {
    Failure {
        code: exit::USAGE,
        error: anyhow!(m),
    }
}

/// A kind's manifest metadata and sandbox block, its files, and the command that calls it.
type Scaffold = (
    serde_json::Value,
    serde_json::Value,
    Vec<(&'static str, &'static [u8])>,
    String,
);

/// `plugins init DIR --kind KIND`.
pub(crate) fn init(dir: &Path, kind: Kind) -> Result<u8, Failure> {
    if dir.exists()
        && fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(usage(format!(
            "{} exists and is not empty; init writes a new package",
            dir.display()
        )));
    }
    let id = id_from(dir)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = |input: serde_json::Value| serde_json::json!({ "input": input }).to_string();
    let (metadata, sandbox, files, run): Scaffold = match kind {
        Kind::Wasm => (
            serde_json::json!({"bridge_kind": "wasm", "component": "plugin.wasm",
                "entrypoint": "run", "health_check_json": probe(serde_json::json!({"probe": true}))}),
            // The echo module writes back what it reads: the caller's input as given
            // ("bare"), not public Loong's request envelope (the default for a manifest that
            // does not say).
            serde_json::json!({"input": "bare", "tier": "restricted", "timeout_ms": 2000,
                "max_memory_bytes": 16_777_216, "max_output_bytes": 262_144}),
            vec![("plugin.wasm", ECHO_WASM), ("plugin.wat", ECHO_WAT.as_bytes())],
            format!("loongctl invoke {id} --input '{{\"hello\":\"loong\"}}'"),
        ),
        Kind::Stdio => (
            serde_json::json!({"bridge_kind": "process_stdio", "command": "/usr/bin/python3",
                "args_json": "[\"${PLUGIN_DIR}/plugin.py\"]",
                "health_check_json": probe(serde_json::json!({"probe": true}))}),
            serde_json::json!({"tier": "balanced", "timeout_ms": 5000}),
            vec![("plugin.py", STDIO_PY.as_bytes())],
            format!("loongctl invoke {id} --input '{{\"name\":\"loong\"}}'"),
        ),
        Kind::Mcp => (
            serde_json::json!({"bridge_kind": "mcp_stdio", "command": "/usr/bin/python3",
                "args_json": "[\"${PLUGIN_DIR}/server.py\"]",
                "health_check_json": serde_json::json!({"tool": "hello", "input": {"name": "probe"}}).to_string()}),
            serde_json::json!({"tier": "balanced", "timeout_ms": 5000}),
            vec![("server.py", MCP_PY.as_bytes())],
            format!("loongctl invoke {id}/hello --input '{{\"name\":\"loong\"}}'"),
        ),
        Kind::Http => (
            serde_json::json!({"bridge_kind": "http_json", "endpoint": "http://127.0.0.1:8080/hook",
                "response_contract_json": "{\"required\": [\"ok\"]}"}),
            serde_json::json!({"tier": "balanced", "timeout_ms": 5000,
                "allow_private_network": true}),
            vec![("serve.py", HTTP_SERVE_PY.as_bytes())],
            format!("python3 {}/serve.py 8080 &  # the service it posts to\nloongctl invoke {id} --input '{{\"hello\":\"loong\"}}'", dir.display()),
        ),
    };
    let capabilities: Vec<&str> = match kind {
        Kind::Http => vec!["invoke_connector", "network_egress"],
        _ => vec!["invoke_tool"],
    };
    let manifest = serde_json::json!({
        "api_version": "v1alpha1",
        "plugin_id": id,
        "version": "0.1.0",
        "summary": format!("{id}: a {} plugin made by loongctl plugins init", kind_name(kind)),
        "capabilities": capabilities,
        "tags": [kind_name(kind)],
        "input_examples": [{"hello": "loong"}],
        "metadata": metadata,
        "sandbox": sandbox,
    });
    let mut all: Vec<(PathBuf, Vec<u8>)> = vec![(
        dir.join("loong.plugin.json"),
        serde_json::to_vec_pretty(&manifest).map_err(|e| anyhow!(e))?,
    )];
    all.extend(files.into_iter().map(|(n, b)| (dir.join(n), b.to_vec())));
    let readme = format!(
        "# {id}\n\nA {} plugin for Loong, made by `loongctl plugins init`.\n\n```sh\nloongctl plugins doctor {dir}\nloongctl plugins install {dir}\n{run}\n```\n\nEdit `loong.plugin.json` (its fields: docs/plugins.md and docs/bridges.md), then\n`loongctl plugins upgrade {dir}`.\n",
        kind_name(kind),
        dir = dir.display()
    );
    all.push((dir.join("README.md"), readme.into_bytes()));
    for (path, bytes) in &all {
        fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created {} ({} plugin {id}):",
        dir.display(),
        kind_name(kind)
    );
    for (path, _) in &all {
        println!("  {}", path.display());
    }
    println!(
        "next: loongctl plugins doctor {0} && loongctl plugins install {0}",
        dir.display()
    );
    Ok(exit::OK)
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Wasm => "wasm",
        Kind::Stdio => "process_stdio",
        Kind::Mcp => "mcp_stdio",
        Kind::Http => "http_json",
    }
}

/// `plugins doctor DIR`: what would stop this package, found without running any of it. The
/// manifest and module checks are loongd's own ([`check_package`], which its install and
/// discovery call too), so a package refused here is refused there with the same message.
pub(crate) fn doctor(dir: &Path) -> Result<u8, Failure> {
    let mut problems: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    match check_package(dir) {
        Err(e) => problems.extend(e.lines()),
        Ok((m, module)) => describe(dir, &m, module.as_deref(), &mut notes),
    }
    // What the found manifest's text says, shown escaped if it hides control characters.
    if let Ok((_, text, _)) = plugin::find_manifest(dir) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
            control_characters(&v, "", &mut warnings);
        }
    }
    // What install's staging copy refuses in the tree itself, in its words.
    problems.extend(package::tree_problems(dir).iter().map(|e| e.to_string()));
    match package::digest(dir) {
        Err(e) => problems.push(e.to_string()),
        Ok(d) => {
            notes.push(format!(
                "package: {} files, {} bytes, digest {}",
                d.files.len(),
                d.files.iter().map(|f| f.bytes).sum::<u64>(),
                d.digest
            ));
            let sig_path = dir.join(package::SIGNATURE_FILE);
            match fs::read(&sig_path) {
                Err(_) => notes.push(
                    "unsigned: installs as unverified (a bridge that runs native code then waits for `plugins enable`)".into(),
                ),
                Ok(bytes) => match package::PackageSignature::parse(&bytes) {
                    Err(e) => problems.push(format!("{}: {e}", sig_path.display())),
                    // The signed list is not authenticated here (no keyring): its names are
                    // not shown; `plugins verify DIR` checks the signature and names them.
                    Ok(sig) if sig.digest != d.digest => problems.push(format!(
                        "{}: the package changed after it was signed; sign it again, or see which files with `loongctl plugins verify {}`",
                        sig_path.display(),
                        dir.display()
                    )),
                    Ok(sig) => notes.push(format!(
                        "signed by key {}; loongd checks the key against its keyring at install",
                        sig.key_id
                    )),
                },
            }
        }
    }
    // One line each: a line break in a manifest's text (a plugin_id, a granted path) is shown,
    // never a fresh "ok" or "FAIL" line of its own.
    for n in &notes {
        println!("  ok    {}", esc(n));
    }
    for w in &warnings {
        // Built from escaped text only.
        println!("  WARN  {w}");
    }
    for p in &problems {
        println!("  FAIL  {}", esc(p));
    }
    if problems.is_empty() {
        println!(
            "{}: no problem found (nothing was run)",
            Esc(&dir.display().to_string())
        );
        Ok(exit::OK)
    } else {
        println!(
            "{}: {} problem(s)",
            Esc(&dir.display().to_string()),
            problems.len()
        );
        Ok(exit::USAGE)
    }
}

/// What a package that passed the checks will be, and what loongd alone decides about it.
fn describe(dir: &Path, m: &PluginManifest, module: Option<&[u8]>, notes: &mut Vec<String>) {
    match &m.source {
        ManifestSource::Package => notes.push(format!("manifest {}", plugin::MANIFEST_FILE)),
        ManifestSource::EmbeddedSource(file) => notes.push(format!(
            "manifest embedded in {} (between {} and {}); a {} would take precedence",
            file.display(),
            plugin::START_MARKER,
            plugin::END_MARKER,
            plugin::MANIFEST_FILE
        )),
    }
    let expected = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if m.plugin_id != expected {
        notes.push(format!(
            "plugin_id {:?} differs from the directory name {expected:?}: install places it in plugins/{}",
            m.plugin_id, m.plugin_id
        ));
    }
    if let Some(claimed) = m.catalog.claimed_trust {
        notes.push(format!(
            "trust_tier {:?} is a claim: the tier is what a signature in loongd's keyring proves, lowered to the claim, never raised by it",
            claimed.as_str()
        ));
    }
    match &m.bridge {
        Bridge::Wasm => {
            notes.push(format!(
                "module {}: {} bytes{}",
                m.component.display(),
                module.map_or(0, <[u8]>::len),
                if m.sha256.is_some() {
                    format!(", matching the pin in {}", m.sha256_field)
                } else {
                    String::new()
                }
            ));
            notes.push(
                "loongd.toml may pin it too ([plugins.wasm_sha256], require_wasm_pin): loongd checks those at install and load".into(),
            );
        }
        Bridge::Foreign(_) => {
            notes.push("a bridge that runs native code: unsigned, it installs disabled".into())
        }
        Bridge::Http(h) => notes.push(format!(
            "loongd resolves {} when it loads the connector and refuses a loopback, private or link-local address unless sandbox.allow_private_network or loongd.toml [plugins] private_endpoints allows it",
            h.host
        )),
    }
}

/// The most control-character warnings `plugins doctor` lists for one manifest.
const MAX_TEXT_WARNINGS: usize = 20;

/// A warning for every text of the manifest (keys and string values, at any depth) that holds
/// characters a terminal would obey rather than show: they reach the operator's views (loongctl
/// escapes them there) and mean someone is trying to hide what the plugin says it is.
fn control_characters(v: &serde_json::Value, at: &str, warnings: &mut Vec<String>) {
    fn flag(warnings: &mut Vec<String>, field: &str, text: &str) {
        if warnings.len() < MAX_TEXT_WARNINGS && text.chars().any(needs_escape) {
            warnings.push(format!(
                "{}: control or invisible format characters in {}; they are shown escaped",
                esc(field),
                esc(text)
            ));
        }
    }
    match v {
        serde_json::Value::String(s) => flag(warnings, at, s),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                control_characters(item, &format!("{at}[{i}]"), warnings);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                let field = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                flag(warnings, &field, k);
                control_characters(item, &field, warnings);
            }
        }
        _ => {}
    }
}

/// A package unpacked from an archive into a private directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct Unpacked {
    root: PathBuf,
    /// The package directory: the root, or its single top-level directory.
    pub dir: PathBuf,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Whether `path` names an archive `plugins install` unpacks (`.tar`, `.tar.gz`, `.tgz`).
pub(crate) fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Unpacks a plugin archive: only regular files and directories with relative, plain paths,
/// within the package bounds; anything else refuses the whole archive, naming the entry.
pub(crate) fn unpack(archive: &Path) -> Result<Unpacked, Failure> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let file = fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let name = archive.to_string_lossy();
    let reader: Box<dyn std::io::Read> = if name.ends_with(".tar") {
        Box::new(file)
    } else {
        Box::new(flate2::read::GzDecoder::new(file))
    };
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(|e| anyhow!("no randomness: {e}"))?;
    let root = std::env::temp_dir().join(format!("loong-unpack-{}", hex::encode(suffix)));
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&root)
        .with_context(|| format!("creating {}", root.display()))?;
    let unpacked = Unpacked {
        root: root.clone(),
        dir: root.clone(),
    };
    let refuse =
        |entry: &str, why: &str| usage(format!("{}: entry {entry:?}: {why}", archive.display()));
    let mut files = 0usize;
    let mut entries = 0usize;
    let mut total = 0u64;
    let mut tar = tar::Archive::new(reader);
    for entry in tar
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let path = entry
            .path()
            .with_context(|| format!("reading {}", archive.display()))?
            .into_owned();
        let shown = path.display().to_string();
        if path.is_absolute()
            || !path.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            return Err(refuse(&shown, "a path must be relative, without .."));
        }
        // Every entry counts (directories too), and no path nests deeper than a package may
        // (its levels, a top-level directory and the file's own name): a hostile archive
        // cannot fill the disk with directories before loongd's bounds would refuse them.
        entries += 1;
        if entries > package::MAX_PACKAGE_ENTRIES
            || path.components().count() > package::MAX_PACKAGE_DEPTH + 2
        {
            return Err(refuse(&shown, "the archive is over the package bounds"));
        }
        let to = root.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&to)
                    .with_context(|| format!("creating {}", to.display()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                files += 1;
                total += entry.header().size().unwrap_or(u64::MAX);
                if files > package::MAX_PACKAGE_FILES || total > package::MAX_PACKAGE_BYTES {
                    return Err(refuse(&shown, "the archive is over the package bounds"));
                }
                if let Some(parent) = to.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                let exec = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if exec { 0o755 } else { 0o644 })
                    .open(&to)
                    .map_err(|e| refuse(&shown, &e.to_string()))?;
                let limit = package::MAX_PACKAGE_BYTES;
                std::io::copy(&mut std::io::Read::take(&mut entry, limit), &mut out)
                    .with_context(|| format!("writing {}", to.display()))?;
            }
            other => {
                return Err(refuse(
                    &shown,
                    &format!("{other:?} entries are not allowed (only files and directories)"),
                ))
            }
        }
    }
    // A single top-level directory is the package.
    let top: Vec<PathBuf> = fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let manifest = "loong.plugin.json";
    // A manifest is found as install finds it: loong.plugin.json, or a source file embedding
    // one (public Loong's examples are a single such file), or an OpenClaw manifest (which
    // install then refuses by name).
    let dir = match top.as_slice() {
        // A single top-level directory first: the search reaches into it from the top too,
        // and the package is the directory, not the archive's top.
        [only] if only.is_dir() && plugin::holds_manifest(only) => only.clone(),
        _ if plugin::holds_manifest(&root) => root.clone(),
        [only] if only.is_dir() => {
            return Err(usage(format!(
            "{}: its one top-level directory {}/ holds no {manifest} (nor a source file embedding a manifest); an archive holds one package",
            archive.display(),
            package::shown(&only.file_name().unwrap_or_default().to_string_lossy())
        )))
        }
        _ => {
            let mut names: Vec<String> = top
                .iter()
                .map(|p| package::shown(&p.file_name().unwrap_or_default().to_string_lossy()))
                .collect();
            names.sort();
            return Err(usage(format!(
                "{}: an archive holds one package: {manifest} at its top, or one top-level directory holding it; this one has {} top-level entries ({}) and no {manifest} at its top",
                archive.display(),
                names.len(),
                names.join(", ")
            )));
        }
    };
    let mut unpacked = unpacked;
    unpacked.dir = dir;
    Ok(unpacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plugins doctor`'s problems for a manifest in a fresh directory holding a module.
    fn doctor_problems(caps: &str, kind: &str) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!(
            "loongctl-doctor-{}-{}",
            std::process::id(),
            kind.trim()
        ));
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("p.wasm"), b"\0asm\x01\0\0\0").expect("module");
        let endpoint = if kind.trim().to_ascii_lowercase().starts_with("http") {
            r#", "endpoint": "http://127.0.0.1:8080/h""#
        } else {
            ""
        };
        let text = format!(
            r#"{{"api_version": "v1alpha1", "plugin_id": "p", "version": "1",
            "capabilities": [{caps}],
            "metadata": {{"bridge_kind": "{kind}", "component": "p.wasm",
                "command": "/bin/sh"{endpoint}}}}}"#
        );
        fs::write(dir.join("loong.plugin.json"), text).expect("manifest");
        let problems = match check_package(&dir) {
            Ok(_) => Vec::new(),
            Err(e) => e.lines(),
        };
        let _ = fs::remove_dir_all(&dir);
        problems
    }

    #[test]
    fn doctor_reads_public_loongs_capability_spelling_and_bridge_aliases_as_loongd_does() {
        let ours = r#""invoke_connector", "network_egress""#;
        let upstream = r#""InvokeConnector", "NetworkEgress""#;
        for kind in [
            "wasm",
            "wasm_component",
            "process_stdio",
            "stdio",
            "mcp_stdio",
            "mcp",
            "mcp_server",
            "http_json",
            "http",
            " HTTP ",
        ] {
            assert_eq!(doctor_problems(ours, kind), Vec::<String>::new(), "{kind}");
            assert_eq!(
                doctor_problems(upstream, kind),
                Vec::<String>::new(),
                "{kind}"
            );
        }
        let dotted = r#""fs.read", "fs.write""#;
        assert_eq!(doctor_problems(dotted, "wasm"), Vec::<String>::new());
        let bad = doctor_problems(r#""invokeConnector""#, "wasm");
        assert!(
            bad.len() == 1 && bad[0].contains("\"invokeConnector\" is unknown"),
            "{bad:?}"
        );
        let bad = doctor_problems(r#""ScheduleTask""#, "wasm");
        assert!(
            bad.len() == 1
                && bad[0].contains("`ScheduleTask`")
                && bad[0].contains("does not honour"),
            "{bad:?}"
        );
        for kind in [
            "native_ffi",
            "ffi",
            "acp",
            "acp_bridge",
            "acpx",
            "acp_runtime",
            "unknown",
        ] {
            let bad = doctor_problems(upstream, kind);
            assert!(
                bad.len() == 1
                    && bad[0].contains(&format!("bridge_kind `{kind}`"))
                    && bad[0].contains("does not run"),
                "{kind}: {bad:?}"
            );
        }
        let bad = doctor_problems(upstream, "carrier_pigeon");
        assert!(
            bad.len() == 1 && bad[0].contains("\"carrier_pigeon\" is unknown"),
            "{bad:?}"
        );
    }
}
