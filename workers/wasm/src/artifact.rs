//! Compiled modules: wasmtime's serialized artifacts (native code), made by a worker that has
//! run no guest code and mapped only by a worker loading the same module on the same engine.
//!
//! The one `unsafe` call outside `sandbox/src/sys.rs` is here ([`map`]); docs/SECURITY.md
//! says why it is sound and which checks come first.

use std::hash::{Hash, Hasher};

use loong_ipc::message::worker::MAX_COMPILED_MODULE_BYTES;
use loong_ipc::CompiledModule;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// Why a compiled module was refused (the module is then compiled afresh).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactRefusal {
    #[error("the compiled module was made by engine {given}, not this worker's {ours}")]
    OtherEngine { given: String, ours: String },
    #[error("the compiled module is for module {given}, not this one ({actual})")]
    OtherModule { given: String, actual: String },
    #[error(
        "the compiled module's digest is {actual}, not the {expected} it was stored with (corrupted or truncated)"
    )]
    Corrupted { expected: String, actual: String },
    #[error("the compiled module is {size} bytes, over the cap of {cap}")]
    TooLarge { size: usize, cap: usize },
    #[error("wasmtime refused the compiled module: {0}")]
    Refused(String),
}

/// Feeds `Hash` into sha256, so the key is the same in every process of one build.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// The key of `engine`'s artifacts: this crate's version and a digest of wasmtime's
/// compatibility hash, which covers wasmtime's own version, the target, the compiler's
/// settings and every configuration that changes the code it makes.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = h.0.finalize();
    format!(
        "loong-worker-wasm-{}/{}",
        env!("CARGO_PKG_VERSION"),
        hex::encode(&digest[..16])
    )
}

/// `module`'s artifact, keyed by `module_sha256` and `engine_key`, or `None` when it cannot
/// be serialized or is over [`MAX_COMPILED_MODULE_BYTES`] (it is then compiled each time).
pub(crate) fn produce(
    module: &Module,
    engine_key: &str,
    module_sha256: &str,
) -> Option<CompiledModule> {
    let bytes = module.serialize().ok()?;
    if bytes.len() > MAX_COMPILED_MODULE_BYTES {
        return None;
    }
    Some(CompiledModule {
        module_sha256: module_sha256.to_owned(),
        engine: engine_key.to_owned(),
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
    })
}

/// Maps `compiled` as the module whose sha256 is `module_sha256`, after checking that it was
/// made for exactly that module by exactly this engine (`engine_key`) and that its bytes are
/// the ones stored (their digest).
#[allow(unsafe_code)]
pub(crate) fn map(
    engine: &Engine,
    engine_key: &str,
    module_sha256: &str,
    compiled: &CompiledModule,
) -> Result<Module, ArtifactRefusal> {
    if compiled.engine != engine_key {
        return Err(ArtifactRefusal::OtherEngine {
            given: compiled.engine.clone(),
            ours: engine_key.to_owned(),
        });
    }
    if compiled.module_sha256 != module_sha256 {
        return Err(ArtifactRefusal::OtherModule {
            given: compiled.module_sha256.clone(),
            actual: module_sha256.to_owned(),
        });
    }
    if compiled.bytes.len() > MAX_COMPILED_MODULE_BYTES {
        return Err(ArtifactRefusal::TooLarge {
            size: compiled.bytes.len(),
            cap: MAX_COMPILED_MODULE_BYTES,
        });
    }
    let actual = hex::encode(Sha256::digest(&compiled.bytes));
    if actual != compiled.sha256 {
        return Err(ArtifactRefusal::Corrupted {
            expected: compiled.sha256.clone(),
            actual,
        });
    }
    // SAFETY: `Module::deserialize` trusts its bytes to be an artifact this wasmtime made
    // (it checks the version and configuration header, not the code). These bytes are: loongd
    // stores only an artifact answered by a worker that had served no call, so no guest code
    // had run in it, and compilation runs none; it gives it only to a worker loading the
    // module of the same digest (checked again above, with the engine key and the bytes'
    // digest), so a module whose compiler output were hostile could only reach workers that
    // would compile that same module themselves.
    let module = unsafe { Module::deserialize(engine, &compiled.bytes) };
    module.map_err(|e| ArtifactRefusal::Refused(format!("{e:#}")))
}
