//! The engine, plugin loading and the per-call store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel,
    PoolingAllocationConfig, Store, Trap, ValType,
};

use crate::abi::{self, HostState, HostStop, OutputRefusal};
use crate::{
    ALWAYS_BLOCKED_IMPORT_PREFIXES, COMPILE_TIMEOUT, EPOCH_IDLE_TICKS, EPOCH_TICK_MS, HOST_MODULE,
    KEEP_RESIDENT_BYTES, MAX_INPUT_BYTES, MAX_MEMORY_BYTES_CEILING, MAX_MODULE_BYTES_CEILING,
    MAX_OUTPUT_BYTES_CEILING, MAX_TABLES, MAX_TIMEOUT_MS, POOL_SLOTS,
};

/// The limits one plugin runs under; every value is clamped to its ceiling
/// when the plugin is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall-clock deadline per call.
    pub timeout_ms: u64,
    /// Linear-memory cap per call.
    pub max_memory_bytes: usize,
    /// Cap on the bytes a call may write with `write_output`.
    pub max_output_bytes: usize,
    /// Fuel per call, or `None` for no instruction budget.
    pub fuel: Option<u64>,
    /// Module size cap, checked before compilation.
    pub max_module_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            timeout_ms: crate::DEFAULT_TIMEOUT_MS,
            max_memory_bytes: crate::DEFAULT_MAX_MEMORY_BYTES,
            max_output_bytes: crate::DEFAULT_MAX_OUTPUT_BYTES,
            fuel: None,
            max_module_bytes: crate::DEFAULT_MAX_MODULE_BYTES,
        }
    }
}

/// Everything needed to load one plugin.
#[derive(Debug, Clone, Default)]
pub struct PluginSpec {
    /// The plugin's id, used in error messages.
    pub plugin_id: String,
    /// The module's bytes (a WebAssembly binary).
    pub module: Vec<u8>,
    /// The exported entry function (public Loong's default is `run`).
    pub entrypoint: String,
    /// Limits per call.
    pub limits: PluginLimits,
    /// The plugin's configuration; only `guest_readable_config_keys` reach the guest.
    pub config: BTreeMap<String, String>,
    /// The config keys the guest may read.
    pub guest_readable_config_keys: Vec<String>,
    /// Expected sha256 of `module`, lowercase hex, when pinned.
    pub sha256: Option<String>,
    /// Import module prefixes refused in addition to the ones always refused.
    pub blocked_import_prefixes: Vec<String>,
    /// Public Loong's request envelope the guest reads around the caller's input, or `None`
    /// for the caller's input as given.
    pub envelope: Option<RequestEnvelope>,
    /// This module compiled earlier, checked before it is mapped (see [`crate::artifact`]).
    pub compiled: Option<loong_ipc::CompiledModule>,
    /// Answer the compiled module when it is compiled afresh.
    pub want_compiled: bool,
}

/// A load's plugin and what became of its compiled module.
#[derive(Debug)]
pub struct Load {
    pub plugin: LoadedPlugin,
    /// The module's sha256 (hex).
    pub sha256: String,
    pub compiled_use: loong_ipc::CompiledUse,
    /// The module compiled afresh, when asked for.
    pub compiled: Option<loong_ipc::CompiledModule>,
}

/// Who a call is addressed to, in public Loong's request envelope: the guest reads
/// `{"provider_id", "channel_id", "operation", "payload"}` with the caller's input as
/// `payload` and [`ENVELOPE_OPERATION`] as `operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEnvelope {
    pub provider_id: String,
    /// `null` in the envelope when `None`.
    pub channel_id: Option<String>,
}

/// The envelope's `operation`: a call here invokes the plugin as one tool and names no
/// operation of its own, so it is public Loong's plugin call, `invoke`.
pub const ENVELOPE_OPERATION: &str = "invoke";

impl RequestEnvelope {
    /// The envelope's bytes up to `payload`'s value; the payload and a closing `}` follow.
    fn prefix(&self) -> Vec<u8> {
        let text = |v: &str| serde_json::Value::from(v).to_string();
        let channel = self
            .channel_id
            .as_deref()
            .map_or_else(|| "null".to_owned(), text);
        format!(
            "{{\"provider_id\":{},\"channel_id\":{channel},\"operation\":{},\"payload\":",
            text(&self.provider_id),
            text(ENVELOPE_OPERATION),
        )
        .into_bytes()
    }
}

impl From<loong_ipc::WasmPlugin> for PluginSpec {
    /// The wire form loongd sends; sizes that do not fit `usize` saturate and are then
    /// clamped to the engine's ceilings at load.
    fn from(w: loong_ipc::WasmPlugin) -> Self {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        PluginSpec {
            plugin_id: w.plugin_id,
            module: w.module,
            entrypoint: w.entrypoint,
            limits: PluginLimits {
                timeout_ms: w.timeout_ms,
                max_memory_bytes: size(w.max_memory_bytes),
                max_output_bytes: size(w.max_output_bytes),
                fuel: w.fuel,
                max_module_bytes: size(w.max_module_bytes),
            },
            config: w.config.into_iter().collect(),
            guest_readable_config_keys: w.guest_readable_config_keys,
            sha256: w.sha256,
            compiled: w.compiled,
            want_compiled: w.want_compiled,
            blocked_import_prefixes: w.blocked_import_prefixes,
            envelope: match w.input {
                loong_ipc::GuestInput::Envelope {
                    provider_id,
                    channel_id,
                } => Some(RequestEnvelope {
                    provider_id,
                    channel_id,
                }),
                loong_ipc::GuestInput::Bare => None,
            },
        }
    }
}

/// Why a plugin could not be loaded. Each message names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {plugin}: module is {size} bytes, over the cap of {cap} bytes")]
    TooLarge {
        plugin: String,
        size: usize,
        cap: usize,
    },
    #[error("plugin {plugin}: module sha256 is {actual}, but the manifest pins {expected}")]
    DigestMismatch {
        plugin: String,
        expected: String,
        actual: String,
    },
    #[error("plugin {plugin}: the sha256 pin {pin:?} is not 64 hex digits")]
    BadDigestPin { plugin: String, pin: String },
    #[error("plugin {plugin}: not a valid WebAssembly module: {reason}")]
    Invalid { plugin: String, reason: String },
    #[error("plugin {plugin}: import {module}::{name} is refused: {reason}")]
    ImportRefused {
        plugin: String,
        module: String,
        name: String,
        reason: String,
    },
    #[error("plugin {plugin}: {reason}")]
    Entrypoint { plugin: String, reason: String },
    #[error("plugin {plugin}: {limit} must be greater than zero")]
    ZeroLimit { plugin: String, limit: &'static str },
    #[error("plugin {plugin}: the module has {reason}")]
    Shape { plugin: String, reason: String },
    #[error(
        "plugin {plugin}: compiling the module took longer than {} ms; it is refused (a \
         smaller module, or fewer or smaller functions, compiles in time)",
        timeout.as_millis()
    )]
    CompileTimeout { plugin: String, timeout: Duration },
}

impl LoadError {
    /// Whether the worker that saw this error must be replaced: a compilation past its
    /// deadline is still running on a thread nothing can stop, and only the worker's death
    /// ends it.
    pub fn poisons_worker(&self) -> bool {
        matches!(self, LoadError::CompileTimeout { .. })
    }
}

/// Why a call failed. The plugin stays loaded; the next call starts afresh.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    #[error("input is {size} bytes, over the limit of {limit} bytes")]
    InputTooLarge { size: usize, limit: usize },
    #[error(
        "input is not JSON, so it cannot be the request envelope's payload: {reason}; send \
         JSON, or declare sandbox.input \"bare\""
    )]
    InputNotJson { reason: String },
    #[error(
        "plugin imports loong::{import}, which needs the guest's memory, but exports no \
         memory named \"memory\"; export it"
    )]
    MemoryNotExported { import: String },
    #[error("plugin ran past its deadline of {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("plugin used up its fuel budget of {fuel}")]
    FuelExhausted { fuel: u64 },
    #[error("plugin asked for {requested} bytes of memory, over its limit of {limit} bytes")]
    MemoryLimit { requested: usize, limit: usize },
    #[error(
        "plugin grew a table past the limit of {} elements",
        crate::MAX_TABLE_ELEMENTS
    )]
    TableLimit,
    #[error("plugin output exceeds the cap of {cap} bytes")]
    OutputTooLarge { cap: usize },
    #[error("plugin called write_output more than once; a call writes its output once")]
    OutputWrittenTwice,
    #[error(
        "plugin's write_output named bytes outside its memory (or a negative length) and \
         wrote no output after it"
    )]
    OutputUnreadable,
    #[error("plugin called abort({code})")]
    Aborted { code: i32 },
    #[error("plugin exited with code {code}")]
    ExitCode { code: i32 },
    #[error("plugin trapped: {message}")]
    Trap { message: String },
    #[error("plugin output is not JSON: {reason}")]
    OutputNotJson { reason: String },
}

/// The result of a successful call.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The JSON the plugin wrote.
    pub output: serde_json::Value,
    /// The log entries kept.
    pub logs: Vec<String>,
    /// Log entries dropped by the log bounds.
    pub logs_dropped: u32,
    /// Wall time of the call (instantiation included).
    pub wall: Duration,
    /// Fuel consumed, when the plugin has a fuel budget.
    pub fuel_consumed: Option<u64>,
    /// The largest linear memory the call reached.
    pub peak_memory_bytes: usize,
}

/// The epoch ticker and the calls that need it. The ticker advances the engine's epoch every
/// [`EPOCH_TICK_MS`] while calls run, and for [`EPOCH_IDLE_TICKS`] after the last tick that saw
/// a call running or begun since the one before, then sleeps until a call begins: an idle
/// worker (the pool's spare among them) is not woken 200 times a second for nothing. Every call
/// wakes a sleeping ticker before its deadline is set and before its guest runs, so the
/// deadline is counted from the call's start as before.
#[derive(Debug, Default)]
struct Clock {
    /// Calls begun so far: a call too short for a tick to see it running still counts.
    began: AtomicU64,
    /// Calls under way ([`Clock::begin`] to the end of their [`Running`]).
    running: AtomicUsize,
    /// The ticker sleeps until a call begins (set and cleared under `lock`).
    parked: AtomicBool,
    /// The engine and every plugin loaded in it are gone: the ticker ends.
    stop: AtomicBool,
    /// Epochs advanced so far.
    ticks: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Clock {
    /// A call begins: the ticker ticks until it ends, woken first if it sleeps. Each call
    /// checks, not only the first of several at once: none runs its guest on another's wake.
    fn begin(&self) -> Running<'_> {
        // Sequentially consistent with the ticker's own order (`parked` set, then `running`
        // and `began` read): either the ticker sees this call and does not sleep, or this call
        // sees the ticker parked and wakes it, under the lock the ticker holds until it waits.
        self.began.fetch_add(1, Ordering::SeqCst);
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.rouse();
        }
        Running(self)
    }

    /// Wakes a sleeping ticker, under the lock it holds until it waits (no lost wake-up).
    fn rouse(&self) {
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_one();
    }

    /// The ticker's loop: tick while calls run or ran lately, sleep while none does.
    fn tick(&self, engine: wasmtime::EngineWeak) {
        let mut idle = 0u32;
        let mut seen = self.began.load(Ordering::SeqCst);
        while !self.stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
            let began = self.began.load(Ordering::SeqCst);
            if self.running.load(Ordering::SeqCst) > 0 || began != seen {
                (seen, idle) = (began, 0);
                continue;
            }
            idle += 1;
            if idle < EPOCH_IDLE_TICKS {
                continue;
            }
            let mut held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.parked.store(true, Ordering::SeqCst);
            while self.running.load(Ordering::SeqCst) == 0
                && self.began.load(Ordering::SeqCst) == seen
                && !self.stop.load(Ordering::SeqCst)
            {
                held = self.wake.wait(held).unwrap_or_else(PoisonError::into_inner);
            }
            self.parked.store(false, Ordering::SeqCst);
            (seen, idle) = (self.began.load(Ordering::SeqCst), 0);
        }
    }
}

/// A call under way, for the ticker ([`Clock::begin`]).
#[must_use = "the ticker counts the call only while its `Running` lives"]
struct Running<'a>(&'a Clock);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The epoch ticker's handle, shared by the engine and every plugin loaded in it: the ticker
/// stops when the last of them is dropped (a plugin that outlived its engine would otherwise
/// run with its epoch frozen).
#[derive(Debug)]
struct Ticker {
    clock: Arc<Clock>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.clock.stop.store(true, Ordering::SeqCst);
        self.clock.rouse();
    }
}

/// One wasmtime engine with its linker. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<HostState>,
    compile_timeout: Duration,
    /// The key of the artifacts this engine makes and maps.
    engine_key: String,
    /// The compiler thread's queue (see [`WasmEngine::compile`]).
    compiler: Mutex<mpsc::Sender<CompileJob>>,
    ticker: Arc<Ticker>,
}

/// A module's bytes and where its compiled form goes.
type CompileJob = (Vec<u8>, mpsc::SyncSender<wasmtime::Result<Module>>);

/// Starts the thread that compiles modules, one at a time, until the engine is dropped. It
/// exists from the start, like the ticker: a confined worker's task limit leaves no room to
/// start threads per load.
fn start_compiler(engine: &Engine) -> wasmtime::Result<mpsc::Sender<CompileJob>> {
    let (tx, rx) = mpsc::channel::<CompileJob>();
    let engine = engine.clone();
    // Unnamed: naming a thread takes `prctl`, which the restricted tier refuses.
    thread::Builder::new()
        .spawn(move || {
            while let Ok((bytes, reply)) = rx.recv() {
                let _ = reply.send(Module::from_binary(&engine, &bytes));
            }
        })
        .map_err(|e| wasmtime::format_err!("cannot start the compiler thread: {e}"))?;
    Ok(tx)
}

impl WasmEngine {
    /// Builds the engine (epoch interruption and fuel metering on) and the
    /// host ABI linker, and starts the epoch ticker thread.
    pub fn new() -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .max_memories_per_module(1)
            .max_tables_per_module(MAX_TABLES as u32)
            .table_elements(crate::MAX_TABLE_ELEMENTS)
            .max_memory_size(MAX_MEMORY_BYTES_CEILING)
            // Slots are reset with memset below these sizes instead of madvise, which keeps
            // small plugins' calls off the page-fault path.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
        let mut config = Config::new();
        // The pooling allocator keeps instantiation to about a microsecond: the
        // slots are reserved once per engine, and one engine serves a worker.
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Data segments are copied in at instantiation, not mapped from a memfd image: a
        // confined worker may not call memfd_create, and plugins' data is small.
        config.memory_init_cow(false);
        config
            .epoch_interruption(true)
            .consume_fuel(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Host ABI v0 passes 32-bit pointers (the precheck names the refusal first).
            .wasm_memory64(false);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        abi::link(&mut linker)?;
        let clock = Arc::new(Clock::default());
        let weak = engine.weak();
        let ticking = clock.clone();
        // Unnamed: naming a thread takes `prctl`, which the restricted tier refuses.
        thread::Builder::new()
            .spawn(move || ticking.tick(weak))
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker: {e}"))?;
        let compiler = Mutex::new(start_compiler(&engine)?);
        Ok(Self {
            engine_key: crate::artifact::engine_key(&engine),
            engine,
            linker,
            compile_timeout: COMPILE_TIMEOUT,
            compiler,
            ticker: Arc::new(Ticker { clock }),
        })
    }

    /// Epochs the ticker has advanced so far, and whether it sleeps now (for the tests).
    #[cfg(test)]
    pub(crate) fn ticker(&self) -> (u64, bool) {
        let clock = &self.ticker.clock;
        (
            clock.ticks.load(Ordering::Relaxed),
            clock.parked.load(Ordering::SeqCst),
        )
    }

    /// Advances the epoch `n` times at once: a test that failed ends the runaway guest it
    /// left running.
    #[cfg(test)]
    pub(crate) fn advance_epoch(&self, n: u32) {
        for _ in 0..n {
            self.engine.increment_epoch();
        }
    }

    /// The same engine with another compile deadline (the tests shorten it).
    pub fn with_compile_timeout(mut self, timeout: Duration) -> Self {
        self.compile_timeout = timeout;
        self
    }

    /// Compiles `bytes` on the compiler thread, waiting at most the compile deadline. Past
    /// it the compilation cannot be stopped (it has no cancellation point): the error says so
    /// ([`LoadError::poisons_worker`]) and the worker is replaced.
    fn compile(&self, plugin: &str, bytes: &[u8]) -> Result<Module, LoadError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let sent = self
            .compiler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send((bytes.to_vec(), reply));
        if sent.is_err() {
            return Err(LoadError::Invalid {
                plugin: plugin.to_owned(),
                reason: "the compiler thread is gone".to_owned(),
            });
        }
        match answer.recv_timeout(self.compile_timeout) {
            Ok(compiled) => compiled.map_err(|e| LoadError::Invalid {
                plugin: plugin.to_owned(),
                reason: format!("{e:#}"),
            }),
            Err(_) => Err(LoadError::CompileTimeout {
                plugin: plugin.to_owned(),
                timeout: self.compile_timeout,
            }),
        }
    }

    /// The key of the artifacts this engine makes and maps.
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    /// Checks, compiles and links one plugin. Nothing from the module runs.
    pub fn load(&self, spec: PluginSpec) -> Result<LoadedPlugin, LoadError> {
        self.load_with_cache(spec).map(|l| l.plugin)
    }

    /// As [`WasmEngine::load`], mapping `spec.compiled` instead of compiling when it holds
    /// for this module and engine (a refused one is compiled afresh, and the refusal told),
    /// and answering the module's artifact when `spec.want_compiled` and it was compiled.
    pub fn load_with_cache(&self, spec: PluginSpec) -> Result<Load, LoadError> {
        let plugin = spec.plugin_id.clone();
        let limits = clamp(&plugin, spec.limits)?;
        if spec.module.len() > limits.max_module_bytes {
            return Err(LoadError::TooLarge {
                plugin,
                size: spec.module.len(),
                cap: limits.max_module_bytes,
            });
        }
        let actual = hex::encode(Sha256::digest(&spec.module));
        if let Some(pin) = &spec.sha256 {
            let pin = pin.trim().to_ascii_lowercase();
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LoadError::BadDigestPin { plugin, pin });
            }
            if actual != pin {
                return Err(LoadError::DigestMismatch {
                    plugin,
                    expected: pin,
                    actual,
                });
            }
        }
        crate::precheck::precheck(&plugin, &spec.module)?;
        let mapped = spec
            .compiled
            .as_ref()
            .map(|c| crate::artifact::map(&self.engine, &self.engine_key, &actual, c));
        let (module, compiled_use) = match mapped {
            Some(Ok(module)) => (module, loong_ipc::CompiledUse::Mapped),
            Some(Err(why)) => (
                self.compile(&plugin, &spec.module)?,
                loong_ipc::CompiledUse::Refused(why.to_string()),
            ),
            None => (
                self.compile(&plugin, &spec.module)?,
                loong_ipc::CompiledUse::Compiled,
            ),
        };
        check_imports(&plugin, &module, &spec.blocked_import_prefixes)?;
        let entrypoint = if spec.entrypoint.is_empty() {
            "run".to_owned()
        } else {
            spec.entrypoint
        };
        let returns_code = check_entrypoint(&plugin, &module, &entrypoint)?;
        let needs_memory = memory_import_without_memory(&module);
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Invalid {
                plugin: plugin.clone(),
                reason: format!("{e:#}"),
            })?;
        let config = spec
            .guest_readable_config_keys
            .iter()
            .filter_map(|key| Some((key.clone(), spec.config.get(key)?.clone())))
            .collect();
        let compiled = (spec.want_compiled && compiled_use != loong_ipc::CompiledUse::Mapped)
            .then(|| crate::artifact::produce(&module, &self.engine_key, &actual))
            .flatten();
        let plugin = LoadedPlugin {
            plugin_id: plugin,
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            pre,
            entrypoint,
            returns_code,
            limits,
            config: Arc::new(config),
            envelope_prefix: spec.envelope.as_ref().map(RequestEnvelope::prefix),
            needs_memory,
        };
        Ok(Load {
            plugin,
            sha256: actual,
            compiled_use,
            compiled,
        })
    }
}

/// The first `"loong"` import that uses guest memory, when the module exports no memory
/// named `memory` (public Loong fails each call of such a module after instantiation).
fn memory_import_without_memory(module: &Module) -> Option<String> {
    if matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return None;
    }
    module
        .imports()
        .find(|i| i.module() == HOST_MODULE && abi::uses_guest_memory(i.name()))
        .map(|i| i.name().to_owned())
}

fn clamp(plugin: &str, mut limits: PluginLimits) -> Result<PluginLimits, LoadError> {
    let zero = |limit| LoadError::ZeroLimit {
        plugin: plugin.to_owned(),
        limit,
    };
    if limits.timeout_ms == 0 {
        return Err(zero("timeout_ms"));
    }
    if limits.max_memory_bytes == 0 {
        return Err(zero("max_memory_bytes"));
    }
    if limits.max_module_bytes == 0 {
        return Err(zero("max_module_bytes"));
    }
    if limits.fuel == Some(0) {
        return Err(zero("fuel"));
    }
    limits.timeout_ms = limits.timeout_ms.min(MAX_TIMEOUT_MS);
    limits.max_memory_bytes = limits.max_memory_bytes.min(MAX_MEMORY_BYTES_CEILING);
    limits.max_output_bytes = limits.max_output_bytes.min(MAX_OUTPUT_BYTES_CEILING);
    limits.max_module_bytes = limits.max_module_bytes.min(MAX_MODULE_BYTES_CEILING);
    Ok(limits)
}

fn check_imports(plugin: &str, module: &Module, extra_blocked: &[String]) -> Result<(), LoadError> {
    for import in module.imports() {
        let refuse = |reason: String| LoadError::ImportRefused {
            plugin: plugin.to_owned(),
            module: import.module().to_owned(),
            name: import.name().to_owned(),
            reason,
        };
        let blocked = ALWAYS_BLOCKED_IMPORT_PREFIXES
            .iter()
            .copied()
            .chain(extra_blocked.iter().map(String::as_str))
            .find(|prefix| !prefix.is_empty() && import.module().starts_with(prefix));
        if let Some(prefix) = blocked {
            let why = if prefix == "wasi" {
                "WASI is not provided to plugins (blocked prefix \"wasi\")".to_owned()
            } else {
                format!("import prefix {prefix:?} is blocked")
            };
            return Err(refuse(why));
        }
        if import.module() != HOST_MODULE {
            return Err(refuse(format!(
                "only the {HOST_MODULE:?} host module is provided"
            )));
        }
        if !abi::HOST_FUNCTIONS.contains(&import.name()) {
            return Err(refuse(format!(
                "host ABI v{} has no such function",
                crate::HOST_ABI_VERSION
            )));
        }
        if !matches!(import.ty(), ExternType::Func(_)) {
            return Err(refuse("host ABI imports are functions".to_owned()));
        }
    }
    Ok(())
}

/// Checks the entry export; `true` when it returns an exit code.
fn check_entrypoint(plugin: &str, module: &Module, entrypoint: &str) -> Result<bool, LoadError> {
    let err = |reason: String| LoadError::Entrypoint {
        plugin: plugin.to_owned(),
        reason,
    };
    let Some(ExternType::Func(ty)) = module.get_export(entrypoint) else {
        return Err(err(format!(
            "the module exports no function {entrypoint:?}; set metadata.entrypoint"
        )));
    };
    if ty.params().len() != 0 {
        return Err(err(format!("{entrypoint:?} must take no parameters")));
    }
    let results: Vec<ValType> = ty.results().collect();
    match results.as_slice() {
        [] => Ok(false),
        [ValType::I32] => Ok(true),
        _ => Err(err(format!("{entrypoint:?} must return i32 or nothing"))),
    }
}

/// A compiled, linked plugin, ready to be called many times.
pub struct LoadedPlugin {
    plugin_id: String,
    engine: Engine,
    /// The engine's epoch ticker, which each call keeps ticking while it runs.
    ticker: Arc<Ticker>,
    pre: InstancePre<HostState>,
    entrypoint: String,
    returns_code: bool,
    limits: PluginLimits,
    config: abi::GuestConfig,
    /// The request envelope's bytes before the payload, when the guest reads the envelope.
    envelope_prefix: Option<Vec<u8>>,
    /// A memory-using host import of a module with no exported memory: each call fails.
    needs_memory: Option<String>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("plugin_id", &self.plugin_id)
            .field("entrypoint", &self.entrypoint)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The plugin's id.
    pub fn plugin_id(&self) -> &str {
        &self.plugin_id
    }

    /// The limits in force (after clamping).
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// What the guest reads for the caller's `input`: the input, or the request envelope
    /// around it. The bound on input applies to what the guest reads, envelope included.
    fn guest_input(&self, input: &[u8]) -> Result<Arc<[u8]>, InvokeError> {
        let too_large = |size| InvokeError::InputTooLarge {
            size,
            limit: MAX_INPUT_BYTES,
        };
        if input.len() > MAX_INPUT_BYTES {
            return Err(too_large(input.len()));
        }
        let Some(prefix) = &self.envelope_prefix else {
            return Ok(Arc::from(input));
        };
        // Checked as JSON (without building it) so that the envelope is JSON too; spliced
        // as given, so the guest reads the caller's bytes. UTF-8 is checked first and whole:
        // serde_json skips a string it ignores without decoding it, so bytes that are not
        // UTF-8 (an overlong `"` a lenient guest decoder would read as a quote, ending the
        // payload early and adding top-level keys after it) would reach the guest.
        let text = std::str::from_utf8(input).map_err(|e| InvokeError::InputNotJson {
            reason: format!("not UTF-8: {e}"),
        })?;
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| {
            InvokeError::InputNotJson {
                reason: e.to_string(),
            }
        })?;
        let size = prefix.len() + input.len() + 1;
        if size > MAX_INPUT_BYTES {
            return Err(too_large(size));
        }
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(prefix);
        bytes.extend_from_slice(input);
        bytes.push(b'}');
        Ok(Arc::from(bytes))
    }

    /// Runs one call in a fresh store: `input` is the caller's JSON input. The guest's
    /// `call_tool` is answered as denied.
    pub fn invoke(&self, input: &[u8]) -> Result<Invocation, InvokeError> {
        self.invoke_with(input, None)
    }

    /// Runs one call in a fresh store, the guest's `call_tool` going to `kernel`.
    pub fn invoke_with(
        &self,
        input: &[u8],
        kernel: Option<Box<dyn crate::ToolCaller>>,
    ) -> Result<Invocation, InvokeError> {
        let input = self.guest_input(input)?;
        // Before the deadline is set and any guest code runs: a sleeping ticker ticks again.
        let _running = self.ticker.clock.begin();
        let started = Instant::now();
        let limits = &self.limits;
        let mut store = Store::new(
            &self.engine,
            HostState {
                kernel,
                last_result: None,
                deadline: started + Duration::from_millis(limits.timeout_ms),
                input,
                config: self.config.clone(),
                output: None,
                output_refused: None,
                max_output: limits.max_output_bytes,
                logs: Vec::new(),
                log_bytes: 0,
                logs_dropped: 0,
                max_memory: limits.max_memory_bytes,
                peak_memory: 0,
                stop: None,
            },
        );
        store.limiter(|state| state);
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        store.set_fuel(fuel).map_err(|e| self.trap(&store, e))?;
        store.set_epoch_deadline(limits.timeout_ms.div_ceil(EPOCH_TICK_MS) + 1);
        store.epoch_deadline_trap();

        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.trap(&store, e))?;
        if let Some(import) = &self.needs_memory {
            return Err(InvokeError::MemoryNotExported {
                import: import.clone(),
            });
        }
        let code = if self.returns_code {
            let run = instance
                .get_typed_func::<(), i32>(&mut store, &self.entrypoint)
                .map_err(|e| self.trap(&store, e))?;
            run.call(&mut store, ()).map_err(|e| self.trap(&store, e))?
        } else {
            let run = instance
                .get_typed_func::<(), ()>(&mut store, &self.entrypoint)
                .map_err(|e| self.trap(&store, e))?;
            run.call(&mut store, ()).map_err(|e| self.trap(&store, e))?;
            0
        };
        self.finish(store, code, started)
    }

    /// What a call that ran to its end answers, in public Loong's order: a refused write, then
    /// the output's JSON (`null` when the guest wrote none), then the exit code.
    fn finish(
        &self,
        store: Store<HostState>,
        code: i32,
        started: Instant,
    ) -> Result<Invocation, InvokeError> {
        match store.data().output_refused {
            Some(OutputRefusal::TooLarge) => {
                return Err(InvokeError::OutputTooLarge {
                    cap: self.limits.max_output_bytes,
                })
            }
            Some(OutputRefusal::Twice) => return Err(InvokeError::OutputWrittenTwice),
            Some(OutputRefusal::Unreadable) => return Err(InvokeError::OutputUnreadable),
            None => {}
        }
        let fuel_consumed = match self.limits.fuel {
            Some(budget) => store.get_fuel().ok().map(|left| budget - left),
            None => None,
        };
        let wall = started.elapsed();
        let state = store.into_data();
        let output = match &state.output {
            None => serde_json::Value::Null,
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| InvokeError::OutputNotJson {
                    reason: e.to_string(),
                })?
            }
        };
        if code != 0 {
            return Err(InvokeError::ExitCode { code });
        }
        Ok(Invocation {
            output,
            logs: state.logs,
            logs_dropped: state.logs_dropped,
            wall,
            fuel_consumed,
            peak_memory_bytes: state.peak_memory,
        })
    }

    /// Turns a wasmtime error into the call's typed error: what the host
    /// stopped first, then the trap code, then the message.
    fn trap(&self, store: &Store<HostState>, error: wasmtime::Error) -> InvokeError {
        match store.data().stop {
            Some(HostStop::MemoryLimit { requested }) => {
                return InvokeError::MemoryLimit {
                    requested,
                    limit: self.limits.max_memory_bytes,
                }
            }
            Some(HostStop::TableLimit) => return InvokeError::TableLimit,
            Some(HostStop::Abort { code }) => return InvokeError::Aborted { code },
            Some(HostStop::Deadline) => {
                return InvokeError::Timeout {
                    timeout_ms: self.limits.timeout_ms,
                }
            }
            None => {}
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => InvokeError::Timeout {
                timeout_ms: self.limits.timeout_ms,
            },
            Some(Trap::OutOfFuel) => InvokeError::FuelExhausted {
                fuel: self.limits.fuel.unwrap_or(u64::MAX),
            },
            _ => InvokeError::Trap {
                message: format!("{error:#}"),
            },
        }
    }
}
