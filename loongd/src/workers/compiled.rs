//! The compiled-module cache: WASM modules as wasmtime's serialized artifacts (native code),
//! so that a worker maps a module it would otherwise compile.
//!
//! - An artifact is made by a worker, never by loongd (which links no wasmtime), and loongd
//!   takes one only from a worker it had asked, which had served no call: no guest code had
//!   run in it, and compilation runs none ([`accept`]). Anything else is a protocol violation.
//! - It is stored under the home ([`CACHE_DIR`], loongd's own, mode 0700), one file per module
//!   digest, with the engine key, the artifact's digest and a tag in its first line. The tag
//!   is keyed by a secret this run of loongd drew at its start and never wrote anywhere, so a
//!   file is taken only when this run wrote it: one written by anyone else (with write access
//!   to the home while loongd was stopped, say) is never mapped, whatever digests it carries.
//!   The directory is emptied at start, since no earlier file can hold.
//! - It is given only with a `Load` of the module of the same digest, after loongd checked the
//!   tag and the bytes against the digest stored with them ([`Store::get`]); the worker checks
//!   digest, module and engine key again, and wasmtime its version and configuration. A
//!   refused artifact is never fatal: the module is compiled afresh and its artifact replaces
//!   it.
//!
//! The call path knows nothing of it beyond [`prepare`] and [`accept`]: both see every kind's
//! requests and touch only a WASM `Load`.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use loong_ipc::{
    message::worker::{MAX_COMPILED_MODULE_BYTES, MAX_WIRE_MODULE_BYTES},
    CompiledModule, WorkerRequest,
};
use sha2::{Digest, Sha256};

/// Where the artifacts live, under the home.
pub const CACHE_DIR: &str = "cache/wasm";
/// Bytes of a stored file's first line (four keys and three tabs).
const MAX_HEADER_BYTES: usize = 512;
/// Bytes the store holds at most (every file together): past it a new artifact is not kept
/// (its module is compiled at each load), so loads of many modules cannot fill the disk.
pub const MAX_STORE_BYTES: u64 = 1024 * 1024 * 1024;
/// Bytes of a run's secret key for the stored files' tags.
const KEY_BYTES: usize = 32;
/// What a tag is about, so that it means nothing elsewhere.
const TAG_CONTEXT: &[u8] = b"loong compiled module v1\0";

/// Why an artifact from a worker is not taken (the worker broke the protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("answered a compiled module after it had served a call (guest code had run in it)")]
    Served,
    #[error("answered a compiled module it was not asked for")]
    NotAsked,
    #[error("answered a compiled module for module {given}, not the {asked} it loaded")]
    OtherModule { given: String, asked: String },
    #[error("answered a compiled module whose digest is not {claimed}")]
    Digest { claimed: String },
    #[error("answered a compiled module out of bounds: {0}")]
    Bounds(String),
}

/// Why a stored artifact is not sent (the file is removed and the module compiled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreRefusal {
    #[error("reading {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path} is over {cap} bytes")]
    TooLarge { path: PathBuf, cap: u64 },
    #[error("{path} has no header line")]
    NoHeader { path: PathBuf },
    #[error("{path} is for module {module}")]
    OtherModule { path: PathBuf, module: String },
    #[error("{path} does not match its digest (corrupted or truncated)")]
    Corrupted { path: PathBuf },
    #[error("{path} was not written by this run of loongd (its tag does not hold)")]
    Untagged { path: PathBuf },
}

/// The artifacts, one file per module digest.
pub(crate) struct Store {
    dir: PathBuf,
    /// This run's secret for the files' tags (`None`: no randomness, nothing is kept).
    key: Option<[u8; KEY_BYTES]>,
    /// Bytes held at most ([`MAX_STORE_BYTES`]).
    budget: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Store {
    /// The store under `home`, for this run: a fresh secret, and the files of earlier runs
    /// (which no longer hold) removed, with a symbolic link at `cache` or `cache/wasm`.
    pub(crate) fn new(home: &Path) -> Store {
        let dir = home.join(CACHE_DIR);
        if let Some(parent) = dir.parent() {
            if std::fs::symlink_metadata(parent).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(parent);
            }
        }
        // Not followed when it is a symbolic link: the link alone is removed.
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, dir = %dir.display(), "emptying the compiled-module cache failed");
            }
        }
        let mut key = [0u8; KEY_BYTES];
        let key = match getrandom::getrandom(&mut key) {
            Ok(()) => Some(key),
            Err(e) => {
                tracing::warn!(error = %e, "no key for the compiled-module cache: it is off");
                None
            }
        };
        Store {
            dir,
            key,
            budget: MAX_STORE_BYTES,
        }
    }

    /// Bytes held by the files other than `except`.
    fn held(&self, except: &Path) -> std::io::Result<u64> {
        let mut held = 0u64;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.path() == except {
                continue;
            }
            held = held.saturating_add(entry.metadata()?.len());
        }
        Ok(held)
    }

    /// The tag of a stored file's keys under this run's secret (nested, as HMAC is, so that
    /// no tag extends to another), or `None` when the store is off.
    fn tag(&self, module_sha256: &str, engine: &str, sha256: &str) -> Option<String> {
        let key = self.key.as_ref()?;
        let inner = Sha256::new()
            .chain_update(key)
            .chain_update(TAG_CONTEXT)
            .chain_update(module_sha256)
            .chain_update(b"\0")
            .chain_update(engine)
            .chain_update(b"\0")
            .chain_update(sha256)
            .finalize();
        let outer = Sha256::new()
            .chain_update(key)
            .chain_update(inner)
            .finalize();
        Some(hex::encode(outer))
    }

    fn path(&self, module_sha256: &str) -> Option<PathBuf> {
        is_digest(module_sha256).then(|| self.dir.join(format!("{module_sha256}.cwasm")))
    }

    /// The artifact stored for `module_sha256`: `Ok(None)` when there is none, `Err(why)` when
    /// the file does not hold (unreadable, malformed, for another module, or its bytes do not
    /// match the digest stored with them: corrupted or truncated). A refused file is removed.
    pub(crate) fn get(&self, module_sha256: &str) -> Result<Option<CompiledModule>, StoreRefusal> {
        let Some(path) = self.path(module_sha256).filter(|_| self.key.is_some()) else {
            return Ok(None);
        };
        let cap = (MAX_COMPILED_MODULE_BYTES + MAX_HEADER_BYTES) as u64;
        let text = match crate::home::read_bounded(&path, cap) {
            Ok(crate::home::Bounded::Read(b)) => b,
            Ok(crate::home::Bounded::TooLarge(_)) => {
                return self.refuse(StoreRefusal::TooLarge { path, cap })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return self.refuse(StoreRefusal::Unreadable {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let parsed = text
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&n| n <= MAX_HEADER_BYTES)
            .and_then(|n| {
                let header = std::str::from_utf8(&text[..n]).ok()?;
                let mut parts = header.split('\t');
                let (module, engine, sha256, tag) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() {
                    return None;
                }
                let c = CompiledModule {
                    module_sha256: module.to_owned(),
                    engine: engine.to_owned(),
                    sha256: sha256.to_owned(),
                    bytes: text[n + 1..].to_vec(),
                };
                Some((c, tag.to_owned()))
            });
        let Some((c, tag)) = parsed else {
            return self.refuse(StoreRefusal::NoHeader { path });
        };
        if c.module_sha256 != module_sha256 {
            return self.refuse(StoreRefusal::OtherModule {
                path,
                module: c.module_sha256,
            });
        }
        let expected = self.tag(&c.module_sha256, &c.engine, &c.sha256);
        let holds = expected.is_some_and(|t| {
            t.len() == tag.len()
                && t.bytes()
                    .zip(tag.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !holds {
            return self.refuse(StoreRefusal::Untagged { path });
        }
        if hex::encode(Sha256::digest(&c.bytes)) != c.sha256 {
            return self.refuse(StoreRefusal::Corrupted { path });
        }
        Ok(Some(c))
    }

    fn refuse(&self, why: StoreRefusal) -> Result<Option<CompiledModule>, StoreRefusal> {
        let path = match &why {
            StoreRefusal::Unreadable { path, .. }
            | StoreRefusal::TooLarge { path, .. }
            | StoreRefusal::NoHeader { path }
            | StoreRefusal::OtherModule { path, .. }
            | StoreRefusal::Corrupted { path }
            | StoreRefusal::Untagged { path } => path,
        };
        let _ = std::fs::remove_file(path);
        Err(why)
    }

    /// Stores `c` (taken through [`accept`]), replacing any artifact of its module: written
    /// to a temporary file and renamed, so a reader never sees half of one.
    pub(crate) fn put(&self, c: &CompiledModule) -> std::io::Result<()> {
        let (Some(path), Some(tag)) = (
            self.path(&c.module_sha256),
            self.tag(&c.module_sha256, &c.engine, &c.sha256),
        ) else {
            return Ok(());
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let size = (c.bytes.len() + MAX_HEADER_BYTES) as u64;
        if self.held(&path)?.saturating_add(size) > self.budget {
            return Err(std::io::Error::other(format!(
                "the compiled-module cache {} holds its {} bytes: not kept",
                self.dir.display(),
                self.budget
            )));
        }
        // Unique per write: two loads of one module may store at once.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".{}.{}.{n}.tmp",
            c.module_sha256,
            std::process::id()
        ));
        // Never through a file already there (a link planted while loongd was stopped).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let written = writeln!(f, "{}\t{}\t{}\t{tag}", c.module_sha256, c.engine, c.sha256)
            .and_then(|()| f.write_all(&c.bytes));
        drop(f);
        let stored = written.and_then(|()| std::fs::rename(&tmp, &path));
        if stored.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        stored
    }
}

/// What [`prepare`] did to a request.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// The module's sha256, for a WASM `Load`.
    pub module_sha256: Option<String>,
    /// Whether the worker was asked for the module's artifact.
    pub asked: bool,
    /// Why a stored artifact was not sent.
    pub refused: Option<String>,
}

/// Adds to a WASM `Load` the stored artifact of its module (when it holds and fits the
/// frame beside the module), and asks for the artifact when the worker has `served` nothing.
/// Other requests pass unchanged. Blocking (hashing and a file read): run it off the runtime.
pub(crate) fn prepare(
    store: &Store,
    mut req: WorkerRequest,
    served: bool,
) -> (WorkerRequest, Prepared) {
    let WorkerRequest::Load(w) = &mut req else {
        return (req, Prepared::default());
    };
    let digest = hex::encode(Sha256::digest(&w.module));
    let mut prepared = Prepared {
        asked: !served,
        ..Prepared::default()
    };
    match store.get(&digest) {
        Ok(Some(c)) if w.module.len().saturating_add(c.bytes.len()) <= MAX_WIRE_MODULE_BYTES => {
            w.compiled = Some(c);
        }
        Ok(_) => {}
        Err(why) => prepared.refused = Some(why.to_string()),
    }
    w.want_compiled = prepared.asked;
    prepared.module_sha256 = Some(digest);
    (req, prepared)
}

/// Takes the artifact a worker answered with a load, or says why it must not be: loongd asked
/// for it (so the worker had served nothing), it is for the module that was loaded, its bytes
/// match its digest, and it is within bounds.
pub(crate) fn accept(
    prepared: &Prepared,
    served: bool,
    c: CompiledModule,
) -> Result<CompiledModule, Refusal> {
    if served {
        return Err(Refusal::Served);
    }
    if !prepared.asked {
        return Err(Refusal::NotAsked);
    }
    if prepared.module_sha256.as_deref() != Some(c.module_sha256.as_str()) {
        return Err(Refusal::OtherModule {
            given: c.module_sha256,
            asked: prepared.module_sha256.clone().unwrap_or_default(),
        });
    }
    c.check_bounds()
        .map_err(|e| Refusal::Bounds(e.to_string()))?;
    if !c.engine.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Refusal::Bounds(format!(
            "engine key {:?} is not printable ASCII",
            c.engine
        )));
    }
    if hex::encode(Sha256::digest(&c.bytes)) != c.sha256 {
        return Err(Refusal::Digest { claimed: c.sha256 });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(module: &str, bytes: &[u8]) -> CompiledModule {
        CompiledModule {
            module_sha256: module.into(),
            engine: "e1".into(),
            sha256: hex::encode(Sha256::digest(bytes)),
            bytes: bytes.to_vec(),
        }
    }

    fn asked(module: &str) -> Prepared {
        Prepared {
            module_sha256: Some(module.into()),
            asked: true,
            refused: None,
        }
    }

    /// Only a worker that was asked and had served nothing gives an artifact, and only for
    /// the module it loaded, with bytes that match its digest.
    #[test]
    fn an_artifact_is_taken_only_from_a_worker_that_ran_no_guest_code() {
        let m = "a".repeat(64);
        assert_eq!(
            accept(&asked(&m), false, artifact(&m, b"code")),
            Ok(artifact(&m, b"code"))
        );
        assert_eq!(
            accept(&asked(&m), true, artifact(&m, b"code")),
            Err(Refusal::Served)
        );
        let not_asked = Prepared {
            asked: false,
            ..asked(&m)
        };
        assert_eq!(
            accept(&not_asked, false, artifact(&m, b"code")),
            Err(Refusal::NotAsked)
        );
        let other = "b".repeat(64);
        assert!(matches!(
            accept(&asked(&m), false, artifact(&other, b"code")),
            Err(Refusal::OtherModule { .. })
        ));
        let mut forged = artifact(&m, b"code");
        forged.bytes.push(0);
        assert!(matches!(
            accept(&asked(&m), false, forged),
            Err(Refusal::Digest { .. })
        ));
        let big = artifact(&m, &vec![0; MAX_COMPILED_MODULE_BYTES + 1]);
        assert!(matches!(
            accept(&asked(&m), false, big),
            Err(Refusal::Bounds(_))
        ));
    }

    /// A stored artifact comes back whole; a corrupted, truncated, misnamed or malformed file
    /// is refused (and removed), and a missing one is a miss.
    #[test]
    fn the_store_gives_back_only_what_matches_its_digest() {
        let home = tempfile::tempdir().expect("home");
        let store = Store::new(home.path());
        let m = hex::encode(Sha256::digest(b"module"));
        assert_eq!(store.get(&m), Ok(None));
        let c = artifact(&m, b"compiled code");
        store.put(&c).expect("put");
        assert_eq!(store.get(&m), Ok(Some(c.clone())));
        let path = store.path(&m).expect("path");
        let whole = std::fs::read(&path).expect("read");

        let mut corrupted = whole.clone();
        let last = corrupted.len() - 1;
        corrupted[last] ^= 1;
        let truncated = whole[..whole.len() - 3].to_vec();
        let misnamed = {
            let other = artifact(&"c".repeat(64), b"compiled code");
            let mut t = format!(
                "{}\t{}\t{}\n",
                other.module_sha256, other.engine, other.sha256
            )
            .into_bytes();
            t.extend_from_slice(&other.bytes);
            t
        };
        for (what, bytes) in [
            ("corrupted", corrupted),
            ("truncated", truncated),
            ("misnamed", misnamed),
            ("malformed", b"no header".to_vec()),
        ] {
            std::fs::write(&path, bytes).expect("write");
            assert!(store.get(&m).is_err(), "{what}");
            assert!(!path.exists(), "{what}: the refused file is removed");
            assert_eq!(store.get(&m), Ok(None), "{what}");
        }
        // Not a digest: never a path.
        assert_eq!(store.get("../x"), Ok(None));
    }

    /// A file is taken only from the run that wrote it: the same bytes, digests and all, put
    /// back after loongd restarted (a new store on the same home) are refused and removed,
    /// and so is a file whose digests a forger made consistent; the run that wrote it takes
    /// it (the control).
    #[test]
    fn a_file_not_written_by_this_run_is_never_taken() {
        let home = tempfile::tempdir().expect("home");
        let m = hex::encode(Sha256::digest(b"module"));
        let c = artifact(&m, b"compiled code");
        let first = Store::new(home.path());
        first.put(&c).expect("put");
        assert_eq!(first.get(&m), Ok(Some(c.clone())), "the control");
        let path = first.path(&m).expect("path");
        let written = std::fs::read(&path).expect("read");

        let second = Store::new(home.path());
        assert!(
            !path.exists(),
            "an earlier run's files are removed at start"
        );
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, &written).expect("put back");
        assert!(matches!(second.get(&m), Err(StoreRefusal::Untagged { .. })));
        assert!(!path.exists(), "the refused file is removed");

        let forged = artifact(&m, b"other code");
        let mut text = format!(
            "{}\t{}\t{}\t{}\n",
            m,
            forged.engine,
            forged.sha256,
            "0".repeat(64)
        )
        .into_bytes();
        text.extend_from_slice(&forged.bytes);
        std::fs::write(&path, &text).expect("forge");
        assert!(second.get(&m).is_err(), "forged");
        let mut old_format = format!("{}\t{}\t{}\n", m, forged.engine, forged.sha256).into_bytes();
        old_format.extend_from_slice(&forged.bytes);
        std::fs::write(&path, &old_format).expect("forge");
        assert!(second.get(&m).is_err(), "forged without a tag");

        second.put(&c).expect("put");
        assert_eq!(second.get(&m), Ok(Some(c.clone())), "the control");
    }

    /// A symbolic link planted at `cache` (to a directory someone else can write) is removed
    /// at start, not followed, and what it pointed at is left alone; the store then keeps its
    /// files in a directory of its own (mode 0700).
    #[test]
    fn a_link_planted_at_the_cache_is_removed_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("home");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::fs::create_dir_all(elsewhere.path().join("wasm")).expect("dir");
        let planted = elsewhere.path().join("wasm/x.cwasm");
        std::fs::write(&planted, b"kept").expect("file");
        std::os::unix::fs::symlink(elsewhere.path(), home.path().join("cache")).expect("link");
        let store = Store::new(home.path());
        assert!(planted.exists(), "the link was followed");
        let m = hex::encode(Sha256::digest(b"module"));
        store.put(&artifact(&m, b"code")).expect("put");
        let cache = std::fs::symlink_metadata(home.path().join("cache")).expect("cache");
        assert!(cache.is_dir(), "the link is gone");
        let mode = std::fs::metadata(&store.dir)
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(store.get(&m), Ok(Some(artifact(&m, b"code"))));
    }

    /// Past its budget the store keeps no new artifact (the disk is not filled by loads of
    /// many modules), while one it holds may still be replaced; below it, it keeps one (the
    /// control).
    #[test]
    fn the_store_keeps_no_artifact_past_its_budget() {
        let home = tempfile::tempdir().expect("home");
        let mut store = Store::new(home.path());
        // One file held (about 300 bytes) beside one new one (counted with its largest
        // header, 612 bytes) fits; two held beside a third do not.
        store.budget = 1012;
        let module = |n: u8| hex::encode(Sha256::digest([n]));
        let (a, b, c) = (module(1), module(2), module(3));
        store.put(&artifact(&a, &[0; 100])).expect("the control: a");
        store.put(&artifact(&b, &[0; 100])).expect("the control: b");
        assert!(
            store.put(&artifact(&c, &[0; 100])).is_err(),
            "over the budget"
        );
        assert_eq!(store.get(&c), Ok(None));
        store.put(&artifact(&a, &[1; 100])).expect("a replaced");
        assert_eq!(store.get(&a), Ok(Some(artifact(&a, &[1; 100]))));
        let files = std::fs::read_dir(&store.dir).expect("dir").count();
        assert_eq!(files, 2, "no temporary file is left behind");
    }

    /// An engine key that would break the stored file's header line is refused.
    #[test]
    fn an_engine_key_with_a_separator_is_refused() {
        let m = "a".repeat(64);
        let mut c = artifact(&m, b"code");
        c.engine = "e1\tx".into();
        assert!(matches!(
            accept(&asked(&m), false, c),
            Err(Refusal::Bounds(_))
        ));
    }

    /// A WASM load is given the stored artifact and asked for one only while the worker has
    /// served nothing; other requests pass unchanged.
    #[test]
    fn prepare_adds_the_artifact_to_a_wasm_load_only() {
        let home = tempfile::tempdir().expect("home");
        let store = Store::new(home.path());
        let module = b"\0asm\x01\0\0\0".to_vec();
        let m = hex::encode(Sha256::digest(&module));
        let load = || {
            WorkerRequest::Load(Box::new(loong_ipc::WasmPlugin {
                plugin_id: "p".into(),
                module: module.clone(),
                entrypoint: "run".into(),
                timeout_ms: 1,
                max_memory_bytes: 1,
                max_output_bytes: 1,
                max_module_bytes: 1 << 20,
                fuel: None,
                config: Vec::new(),
                guest_readable_config_keys: Vec::new(),
                sha256: None,
                blocked_import_prefixes: Vec::new(),
                input: loong_ipc::GuestInput::Bare,
                compiled: None,
                want_compiled: false,
            }))
        };
        let (req, p) = prepare(&store, load(), false);
        let WorkerRequest::Load(w) = req else {
            panic!("not a load")
        };
        assert!(w.compiled.is_none() && w.want_compiled && p.asked);
        assert_eq!(p.module_sha256.as_deref(), Some(m.as_str()));

        store.put(&artifact(&m, b"code")).expect("put");
        let (req, p) = prepare(&store, load(), true);
        let WorkerRequest::Load(w) = req else {
            panic!("not a load")
        };
        assert_eq!(w.compiled, Some(artifact(&m, b"code")));
        assert!(!w.want_compiled && !p.asked);

        let (req, p) = prepare(&store, WorkerRequest::Stats, false);
        assert_eq!(req, WorkerRequest::Stats);
        assert!(p.module_sha256.is_none() && !p.asked);
    }
}
