//! The restricted-tier WASM plugin engine.
//!
//! This crate runs untrusted WebAssembly core modules that speak Loong's
//! host ABI v0 (module `"loong"`: `input_len`, `read_input`, `config_len`,
//! `read_config`, `write_output`, `log`, `abort`), the ABI public Loong
//! plugins are written against, and its extension `call_tool` and `read_result`
//! (a tool call through loongd, under the authority of the call chain). It is the engine half of
//! `loong-worker-wasm`: the worker process wraps it in the shared worker
//! runtime and OS confinement; this crate owns what only wasmtime can
//! enforce:
//!
//! - a module size cap and an optional sha256 pin, checked before the module
//!   is compiled, then a cheap parse that refuses 64-bit memories and tables
//!   (host ABI v0 is 32-bit), more than [`MAX_FUNCTIONS`] functions and any
//!   function body over [`MAX_FUNCTION_BODY_BYTES`]; compilation itself runs
//!   under [`COMPILE_TIMEOUT`];
//! - an import policy: only the `"loong"` host functions link; WASI and
//!   blocked import prefixes are refused at load with the reason;
//! - per call, a fresh `Store` with memory, table and instance limits, an
//!   epoch deadline for `timeout_ms`, optional fuel, a cap on output bytes
//!   and bounded logs.
//!
//! One [`WasmEngine`] holds one wasmtime `Engine` and one `Linker`, built
//! once; each [`LoadedPlugin`] caches an `InstancePre`, so a call costs a
//! `Store`, an instantiation and the guest's own work.

mod abi;
mod artifact;
mod engine;
mod precheck;

pub use abi::{ToolCallError, ToolCaller};
pub use artifact::{engine_key, ArtifactRefusal};
pub use engine::{
    Invocation, InvokeError, Load, LoadError, LoadedPlugin, PluginLimits, PluginSpec,
    RequestEnvelope, WasmEngine, ENVELOPE_OPERATION,
};

/// The host ABI version this engine implements.
pub const HOST_ABI_VERSION: u32 = 0;
/// The import module every host function lives in.
pub const HOST_MODULE: &str = "loong";

/// Default module size cap (public Loong's medium-balanced scan profile).
pub const DEFAULT_MAX_MODULE_BYTES: usize = 2 * 1024 * 1024;
/// No manifest may raise the module size cap above this.
pub const MAX_MODULE_BYTES_CEILING: usize = 32 * 1024 * 1024;
/// Functions (imported and defined) a module may have: compilation is work in proportion to
/// them (a module of 60,000 empty functions took over 30 s of CPU to compile). Generous for
/// plugins compiled from Rust or C, whose modules are capped at a few MiB anyway.
pub const MAX_FUNCTIONS: usize = 10_000;
/// Bytes one function body may have: a single huge body can make compilation superlinear.
pub const MAX_FUNCTION_BODY_BYTES: usize = 512 * 1024;
/// How long compiling one module may take before the load is refused and the worker, whose
/// compiler thread cannot be stopped, is replaced. Shorter than loongd's load deadline, so the
/// refusal says why.
pub const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Default cap on a call's output.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// No manifest may raise the output cap above this (the IPC frame limit).
pub const MAX_OUTPUT_BYTES_CEILING: usize = 1024 * 1024;
/// Default linear-memory cap per call.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 16 * 1024 * 1024;
/// No manifest may raise the memory cap above this.
pub const MAX_MEMORY_BYTES_CEILING: usize = 512 * 1024 * 1024;
/// Default wall-clock deadline per call.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// No manifest may raise the deadline above this.
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// Largest input a call accepts.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Longest tool name `call_tool` takes (`PLUGIN/TOOL` included).
pub const MAX_TOOL_NAME_BYTES: usize = loong_ipc::message::kernel::MAX_KERNEL_TOOL_BYTES;
/// Largest result `call_tool` keeps for `read_result`.
pub const MAX_TOOL_RESULT_BYTES: usize = loong_ipc::message::kernel::MAX_KERNEL_ANSWER_BYTES;
/// Longest config key the guest may ask for.
pub const MAX_CONFIG_KEY_BYTES: usize = 1024;
/// Longest single log entry kept.
pub const MAX_LOG_ENTRY_BYTES: usize = 4 * 1024;
/// Total log bytes kept per call.
pub const MAX_LOG_TOTAL_BYTES: usize = 16 * 1024;
/// Log entries kept per call.
pub const MAX_LOG_ENTRIES: usize = 64;
/// Tables and instances a module may create per call.
pub const MAX_TABLES: usize = 4;
/// Instances per store (the plugin itself; core modules cannot create more).
pub const MAX_INSTANCES: usize = 1;
/// Largest table, in elements.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Instances (and memories, and tables) one engine runs at once; a call past
/// this many concurrent calls on one engine fails instead of allocating more.
pub const POOL_SLOTS: u32 = 64;
/// Bytes of each pooled memory and table kept resident between calls.
pub const KEEP_RESIDENT_BYTES: usize = 128 * 1024;
/// How often the epoch ticker advances; deadlines are rounded up to it.
pub const EPOCH_TICK_MS: u64 = 5;
/// Ticks the epoch ticker goes on with after the last tick that saw a call (100 ms), before
/// it sleeps until a call begins: calls less than that apart never find it asleep.
pub const EPOCH_IDLE_TICKS: u32 = 20;
/// Import module prefixes refused for every plugin.
pub const ALWAYS_BLOCKED_IMPORT_PREFIXES: &[&str] = &["wasi"];

#[cfg(test)]
mod tests;
