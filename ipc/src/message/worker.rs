//! The worker protocol: loongd (the caller, [`PeerKind::Kernel`](super::handshake::PeerKind))
//! → a worker process (the callee), on the socketpair the worker inherits as fd 3.
//!
//! A worker runs one call at a time; loongd keeps a pool of workers for concurrency. Every
//! plugin failure is a typed [`PluginFailure`] in an `Ok` answer, so that loongd can tell
//! "the plugin misbehaved and the worker is fine" from "the worker itself failed" (a
//! [`RemoteError`](super::envelope::RemoteError), a broken connection, or a dead process).
//!
//! Modules travel in the `Load` request, so a WASM worker needs no file-system grant at
//! all. A module is bounded by [`MAX_WIRE_MODULE_BYTES`], which fits one frame of the
//! worker connection's limit ([`WORKER_MAX_FRAME_BYTES`]).

use serde::{Deserialize, Serialize};

use super::{check_len, BoundError};

/// The frame limit on worker connections: a module travels in one frame.
pub const WORKER_MAX_FRAME_BYTES: u32 = crate::frame::HARD_MAX_FRAME_BYTES;
/// The largest module a `Load` carries (the frame limit less room for the other fields).
pub const MAX_WIRE_MODULE_BYTES: usize = 15 * 1024 * 1024;
/// Bound on a plugin id.
pub const MAX_PLUGIN_ID_BYTES: usize = 64;
/// The largest compiled module (wasmtime's serialized artifact) a worker answers or a `Load`
/// carries; a `Load` carries one only while module and artifact together fit
/// [`MAX_WIRE_MODULE_BYTES`].
pub const MAX_COMPILED_MODULE_BYTES: usize = 8 * 1024 * 1024;
/// Bound on a digest or an engine key in a [`CompiledModule`].
pub const MAX_COMPILED_KEY_BYTES: usize = 128;
/// Bound on a config key or value, and on an import prefix or entry point name.
pub const MAX_CONFIG_TEXT_BYTES: usize = 1024;
/// Bound on the config entries, guest-readable keys and blocked prefixes of one plugin.
pub const MAX_CONFIG_ENTRIES: usize = 256;
/// Bound on a call's input and output bytes.
pub const MAX_CALL_BYTES: usize = 1024 * 1024;
/// Bound on the log lines one call returns, and on each line.
pub const MAX_LOG_LINES: usize = 64;
/// Bound on one returned log line.
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Bound on [`PluginFailure::message`].
pub const MAX_FAILURE_MESSAGE_BYTES: usize = 4096;
/// Bound on each path of a [`DecidedFile`] (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Bound on the extra trust anchors an HTTP worker is given ([`HttpSpec::trust`]).
pub const MAX_TRUST_CERTS: usize = 4096;
/// Bound on one DER certificate in [`HttpSpec::trust`].
pub const MAX_CERT_BYTES: usize = 64 * 1024;
/// Bound on all of [`HttpSpec::trust`] together (well inside one worker frame).
pub const MAX_TRUST_BYTES: usize = 8 * 1024 * 1024;
/// Bound on the request headers one call of an HTTP worker carries ([`WorkerRequest::Invoke`]).
pub const MAX_CALL_HEADERS: usize = 32;
/// Bound on one such header's name and value together.
pub const MAX_CALL_HEADER_BYTES: usize = 16 * 1024;
/// Bound on a [`ServeSpec`]'s service and name.
pub const MAX_SERVICE_NAME_BYTES: usize = 64;
/// Bound on a [`ServeSpec`]'s config (the service's own config, as JSON).
pub const MAX_SERVE_CONFIG_BYTES: usize = 64 * 1024;
/// Bound on the secrets one [`ServeSpec`] carries.
pub const MAX_SERVE_SECRETS: usize = 32;
/// Bound on one such secret's name and value together.
pub const MAX_SERVE_SECRET_BYTES: usize = 16 * 1024;

/// What loongd asks a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum WorkerRequest {
    /// Compile and keep a plugin; answered by [`WorkerResponse::Loaded`] or
    /// [`WorkerResponse::Failed`]. Loading an id again replaces it.
    Load(Box<WasmPlugin>),
    /// Call a loaded plugin's entry point; answered by [`WorkerResponse::Output`] or
    /// [`WorkerResponse::Failed`].
    Invoke {
        /// The plugin.
        plugin_id: String,
        /// The JSON input (at most [`MAX_CALL_BYTES`]).
        input: Vec<u8>,
        /// For a built-in file tool: the file the call was decided on, which is the only one
        /// the worker may open; `None` for every other call.
        decided: Option<DecidedFile>,
        /// For an `http_json` connector's call: the request headers its manifest declares,
        /// with every `${secret:NAME}` already replaced by loongd (at most
        /// [`MAX_CALL_HEADERS`]); empty for every other call. A value's `Debug` form is
        /// redacted, so no log line that prints a request carries a secret.
        headers: Vec<(String, super::control::SecretValue)>,
        /// Whether the machine had CPUs to spare when loongd sent the call (its spin gate,
        /// [`crate::spin::cpus_to_spare`]). A worker cannot read the machine's load itself
        /// (its sandbox does not grant `/proc`), so after answering it polls for the next
        /// request, for its own adaptive window, only when the call said so; otherwise it
        /// sleeps at once.
        cpus_to_spare: bool,
    },
    /// Drop a plugin; answered by [`WorkerResponse::Unloaded`].
    Unload { plugin_id: String },
    /// The worker's own figures; answered by [`WorkerResponse::Stats`].
    Stats,
    /// Start (or restart) a foreign program in a stdio worker and list its tools; answered by
    /// [`WorkerResponse::Described`] or [`WorkerResponse::Failed`]. `Invoke` then names a
    /// tool of it (an MCP tool's own name, or the plugin id for a JSON-lines program).
    Start(Box<PeerSpec>),
    /// Configure an HTTP worker for one `http_json` connector; answered by
    /// [`WorkerResponse::Described`] (one tool, the plugin id). Each `Invoke` then uses the
    /// connected socket loongd passes on the worker's second descriptor (fd 4) just before.
    Connector(Box<HttpSpec>),
    /// Configure a built-in tool's worker (`file.read`, `file.write`, `file.edit`,
    /// `shell.exec`); answered by [`WorkerResponse::Described`] (that one tool).
    Builtin(Box<BuiltinSpec>),
    /// Serve a service (the gateway, a channel) until loongd withdraws this request with a
    /// `Cancel` (then drain and stop) or closes the socket; answered only when the service
    /// stops: [`WorkerResponse::Stopped`], or [`WorkerResponse::Failed`] when it could not
    /// start. While serving, the worker originates work as kernel calls on behalf of this
    /// request (`gateway_*`, `channel_*`).
    Serve(Box<ServeSpec>),
}

/// What a service worker serves ([`WorkerRequest::Serve`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ServeSpec {
    /// `gateway` or `channel` (at most [`MAX_SERVICE_NAME_BYTES`]).
    pub service: String,
    /// The channel's account, or `gateway` (at most [`MAX_SERVICE_NAME_BYTES`]).
    pub name: String,
    /// The service's own config as JSON (at most [`MAX_SERVE_CONFIG_BYTES`]).
    pub config_json: String,
    /// Secrets the service needs (a channel's bot token), by name; a value's `Debug` form is
    /// redacted (at most [`MAX_SERVE_SECRETS`] of [`MAX_SERVE_SECRET_BYTES`]).
    pub secrets: Vec<(String, super::control::SecretValue)>,
}

impl ServeSpec {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("service", &self.service, MAX_SERVICE_NAME_BYTES)?;
        check_len("name", &self.name, MAX_SERVICE_NAME_BYTES)?;
        check_len("config_json", &self.config_json, MAX_SERVE_CONFIG_BYTES)?;
        if self.secrets.len() > MAX_SERVE_SECRETS {
            return Err(BoundError {
                field: "secrets",
                len: self.secrets.len(),
                max: MAX_SERVE_SECRETS,
            });
        }
        for (name, value) in &self.secrets {
            let len = name.len() + value.expose().len();
            if len > MAX_SERVE_SECRET_BYTES {
                return Err(BoundError {
                    field: "secret",
                    len,
                    max: MAX_SERVE_SECRET_BYTES,
                });
            }
        }
        Ok(())
    }
}

/// A built-in tool as loongd configures its worker. The worker's sandbox grants exactly the
/// roots named here (landlock and the mount namespace are the boundary); a file tool holds
/// them open and opens each call's [`DecidedFile`] beneath one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BuiltinSpec {
    /// `file.read`, `file.write`, `file.edit` or `shell.exec`.
    pub tool: String,
    /// Directories the tool works under (read-only for `file.read`, read-write otherwise;
    /// `shell.exec`'s first one is its working directory).
    pub roots: Vec<String>,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
}

impl BuiltinSpec {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("tool", &self.tool, MAX_PLUGIN_ID_BYTES)?;
        if self.roots.len() > MAX_CONFIG_ENTRIES {
            return Err(BoundError {
                field: "roots",
                len: self.roots.len(),
                max: MAX_CONFIG_ENTRIES,
            });
        }
        for r in &self.roots {
            check_len("root", r, MAX_CONFIG_TEXT_BYTES)?;
        }
        Ok(())
    }
}

/// The file a built-in file tool's call was decided on. loongd resolved the caller's path
/// (every symlink and `..`) and checked it against the caller's grants; the worker opens
/// exactly `path`, walking down from a descriptor of `scope` with the kernel refusing any
/// symlink, magic link or escape on the way (`openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`), so that what is opened is what was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DecidedFile {
    /// The resolved absolute path (at most [`MAX_PATH_BYTES`]).
    pub path: String,
    /// The directory the decision confines the call to: the narrowest of the caller's
    /// token grant and pack grant that cover `path` (`/` when neither narrows it); the
    /// worker narrows it further to the tool's own root (at most [`MAX_PATH_BYTES`]).
    pub scope: String,
}

impl DecidedFile {
    /// Checks both paths against their bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("decided path", &self.path, MAX_PATH_BYTES)?;
        check_len("decided scope", &self.scope, MAX_PATH_BYTES)
    }
}

/// An `http_json` connector as loongd sends it to an HTTP worker. The worker has no network
/// of its own: loongd connects to the endpoint's pinned address for each call and hands the
/// worker that one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HttpSpec {
    pub plugin_id: String,
    /// The `Host` header: the endpoint's host, with its port when not 80.
    pub host: String,
    /// The request target (path and query).
    pub path: String,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
    /// Keys the answer (a JSON object) must have, when a contract is declared.
    pub required_keys: Option<Vec<String>>,
    /// Whether keys beyond `required_keys` are allowed.
    pub allow_other_keys: bool,
    /// The built-in `web.fetch`: each call's input is `{host, path, tls, server_name}` (set
    /// by loongd from the URL it decided on and connected to), the request a GET, and the
    /// answer the page.
    pub fetch: bool,
    /// The endpoint is `https://`: the worker runs TLS over the passed socket, verifying the
    /// server as `server_name`, and never falls back to plain HTTP.
    pub tls: bool,
    /// The name the server's certificate must carry, and the SNI sent (the endpoint's host).
    pub server_name: String,
    /// Trust anchors beside the public roots compiled into the worker: the host's system
    /// store and the operator's `[egress] ca_bundle`, as DER certificates (loongd reads them;
    /// the worker has no file system). At most [`MAX_TRUST_CERTS`] of [`MAX_CERT_BYTES`].
    pub trust: Vec<Vec<u8>>,
}

impl HttpSpec {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("plugin_id", &self.plugin_id, MAX_PLUGIN_ID_BYTES)?;
        check_len("host", &self.host, MAX_CONFIG_TEXT_BYTES)?;
        check_len("path", &self.path, MAX_CONFIG_TEXT_BYTES)?;
        check_len("server_name", &self.server_name, MAX_CONFIG_TEXT_BYTES)?;
        if self.trust.len() > MAX_TRUST_CERTS {
            return Err(BoundError {
                field: "trust",
                len: self.trust.len(),
                max: MAX_TRUST_CERTS,
            });
        }
        if let Some(c) = self.trust.iter().find(|c| c.len() > MAX_CERT_BYTES) {
            return Err(BoundError {
                field: "trust certificate",
                len: c.len(),
                max: MAX_CERT_BYTES,
            });
        }
        let total: usize = self.trust.iter().map(Vec::len).sum();
        if total > MAX_TRUST_BYTES {
            return Err(BoundError {
                field: "trust",
                len: total,
                max: MAX_TRUST_BYTES,
            });
        }
        if let Some(keys) = &self.required_keys {
            if keys.len() > MAX_CONFIG_ENTRIES {
                return Err(BoundError {
                    field: "required_keys",
                    len: keys.len(),
                    max: MAX_CONFIG_ENTRIES,
                });
            }
            for k in keys {
                check_len("required key", k, MAX_CONFIG_TEXT_BYTES)?;
            }
        }
        Ok(())
    }
}

/// How a stdio worker talks to its foreign program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum PeerProtocol {
    /// One JSON object per line each way: `{method, id, payload, version}`.
    JsonLines,
    /// MCP over stdio: JSON-RPC 2.0, one message per line.
    Mcp,
}

/// Checks the headers of an HTTP worker's call against [`MAX_CALL_HEADERS`] and
/// [`MAX_CALL_HEADER_BYTES`].
pub fn check_call_headers(
    headers: &[(String, super::control::SecretValue)],
) -> Result<(), BoundError> {
    if headers.len() > MAX_CALL_HEADERS {
        return Err(BoundError {
            field: "headers",
            len: headers.len(),
            max: MAX_CALL_HEADERS,
        });
    }
    for (name, value) in headers {
        if name.len() + value.expose().len() > MAX_CALL_HEADER_BYTES {
            return Err(BoundError {
                field: "header",
                len: name.len() + value.expose().len(),
                max: MAX_CALL_HEADER_BYTES,
            });
        }
    }
    Ok(())
}

/// A foreign program as loongd sends it to a stdio worker. The program runs inside the
/// worker's own sandbox, so its grants are the worker's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PeerSpec {
    pub plugin_id: String,
    pub protocol: PeerProtocol,
    /// The program (an absolute path, resolved by loongd).
    pub command: String,
    pub args: Vec<String>,
    /// The working directory (a granted directory, or `/tmp`).
    pub cwd: String,
    /// Per-call deadline.
    pub timeout_ms: u64,
    /// Longest line accepted from the program.
    pub max_line_bytes: u64,
    /// Largest output of one call.
    pub max_output_bytes: u64,
}

impl PeerSpec {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("plugin_id", &self.plugin_id, MAX_PLUGIN_ID_BYTES)?;
        check_len("command", &self.command, MAX_CONFIG_TEXT_BYTES)?;
        check_len("cwd", &self.cwd, MAX_CONFIG_TEXT_BYTES)?;
        if self.args.len() > MAX_CONFIG_ENTRIES {
            return Err(BoundError {
                field: "args",
                len: self.args.len(),
                max: MAX_CONFIG_ENTRIES,
            });
        }
        for a in &self.args {
            check_len("argument", a, MAX_CONFIG_TEXT_BYTES)?;
        }
        Ok(())
    }
}

/// One tool a foreign program offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ToolInfo {
    /// At most [`MAX_TOOL_NAME_BYTES`].
    pub name: String,
    /// Cut to [`MAX_TOOL_DESCRIPTION_BYTES`].
    pub description: String,
    /// The JSON schema of its arguments as compact JSON text (an MCP server's
    /// `inputSchema`, checked by [`crate::schema::check_input_schema`]); `None` when the
    /// program gave none.
    pub input_schema: Option<String>,
}

/// Bound on the tools one program lists.
pub const MAX_TOOLS: usize = 256;
/// Bound on a tool's name.
pub const MAX_TOOL_NAME_BYTES: usize = 128;
/// Bound on a tool's description (longer ones are cut).
pub const MAX_TOOL_DESCRIPTION_BYTES: usize = 1024;

/// Checks a tool list against its bounds (a worker's answer is not trusted).
pub fn check_tools(tools: &[ToolInfo]) -> Result<(), BoundError> {
    if tools.len() > MAX_TOOLS {
        return Err(BoundError {
            field: "tools",
            len: tools.len(),
            max: MAX_TOOLS,
        });
    }
    let mut schemas = 0usize;
    for t in tools {
        check_len("tool name", &t.name, MAX_TOOL_NAME_BYTES)?;
        check_len(
            "tool description",
            &t.description,
            MAX_TOOL_DESCRIPTION_BYTES,
        )?;
        if let Some(s) = &t.input_schema {
            check_len(
                "tool input schema",
                s,
                crate::schema::MAX_INPUT_SCHEMA_BYTES,
            )?;
            schemas += s.len();
        }
    }
    if schemas > crate::schema::MAX_INPUT_SCHEMAS_TOTAL_BYTES {
        return Err(BoundError {
            field: "tool input schemas",
            len: schemas,
            max: crate::schema::MAX_INPUT_SCHEMAS_TOTAL_BYTES,
        });
    }
    Ok(())
}

/// A WASM plugin as loongd sends it: the module's bytes and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WasmPlugin {
    pub plugin_id: String,
    /// The module (at most [`MAX_WIRE_MODULE_BYTES`]).
    pub module: Vec<u8>,
    /// The exported entry function.
    pub entrypoint: String,
    pub timeout_ms: u64,
    pub max_memory_bytes: u64,
    pub max_output_bytes: u64,
    pub max_module_bytes: u64,
    /// Fuel per call, when metered.
    pub fuel: Option<u64>,
    /// The plugin's configuration; only `guest_readable_config_keys` reach the guest.
    pub config: Vec<(String, String)>,
    pub guest_readable_config_keys: Vec<String>,
    /// The module's pinned sha256 (hex), when the manifest pins one.
    pub sha256: Option<String>,
    pub blocked_import_prefixes: Vec<String>,
    /// What the guest reads with `read_input`: the caller's input, or public Loong's request
    /// envelope around it.
    pub input: GuestInput,
    /// The module compiled earlier by a worker that had run no guest code, for this module's
    /// digest; the worker checks it and compiles afresh when it does not hold.
    pub compiled: Option<CompiledModule>,
    /// Answer the compiled module when it is compiled afresh (loongd asks only a worker that
    /// has served no call).
    pub want_compiled: bool,
}

/// A compiled module: wasmtime's serialized artifact, native code, keyed by the module's
/// digest and the engine (wasmtime's version and configuration) that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CompiledModule {
    /// The sha256 (hex) of the module it was compiled from.
    pub module_sha256: String,
    /// The engine that compiled it (at most [`MAX_COMPILED_KEY_BYTES`]); no other engine
    /// maps it.
    pub engine: String,
    /// The artifact's sha256 (hex), checked before it is mapped.
    pub sha256: String,
    /// The artifact (at most [`MAX_COMPILED_MODULE_BYTES`]).
    pub bytes: Vec<u8>,
}

impl CompiledModule {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("module_sha256", &self.module_sha256, MAX_COMPILED_KEY_BYTES)?;
        check_len("engine", &self.engine, MAX_COMPILED_KEY_BYTES)?;
        check_len("sha256", &self.sha256, MAX_COMPILED_KEY_BYTES)?;
        if self.bytes.len() > MAX_COMPILED_MODULE_BYTES {
            return Err(BoundError {
                field: "compiled module",
                len: self.bytes.len(),
                max: MAX_COMPILED_MODULE_BYTES,
            });
        }
        Ok(())
    }
}

/// What became of the compiled module a `Load` carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum CompiledUse {
    /// None was given: the module was compiled.
    Compiled,
    /// The given one was checked and mapped; nothing was compiled.
    Mapped,
    /// The given one was refused (why); the module was compiled afresh.
    Refused(String),
}

/// What a WASM guest reads with `read_input` (the manifest's `sandbox.input`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum GuestInput {
    /// Public Loong's request envelope, `{"provider_id", "channel_id", "operation",
    /// "payload"}`, with the caller's input as `payload` (the default).
    Envelope {
        /// The manifest's `provider_id` (at most [`MAX_CONFIG_TEXT_BYTES`]).
        provider_id: String,
        /// The manifest's `channel_id`, when it names one (at most [`MAX_CONFIG_TEXT_BYTES`]).
        channel_id: Option<String>,
    },
    /// The caller's input as given (`sandbox.input = "bare"`).
    Bare,
}

impl WasmPlugin {
    /// Checks every variable-size field against its bound.
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        check_len("plugin_id", &self.plugin_id, MAX_PLUGIN_ID_BYTES)?;
        check_len("entrypoint", &self.entrypoint, MAX_CONFIG_TEXT_BYTES)?;
        let compiled = self.compiled.as_ref().map_or(0, |c| c.bytes.len());
        if self.module.len().saturating_add(compiled) > MAX_WIRE_MODULE_BYTES {
            return Err(BoundError {
                field: "module",
                len: self.module.len().saturating_add(compiled),
                max: MAX_WIRE_MODULE_BYTES,
            });
        }
        if let Some(c) = &self.compiled {
            c.check_bounds()?;
        }
        let count = |field, len| {
            if len > MAX_CONFIG_ENTRIES {
                return Err(BoundError {
                    field,
                    len,
                    max: MAX_CONFIG_ENTRIES,
                });
            }
            Ok(())
        };
        count("config", self.config.len())?;
        count(
            "guest_readable_config_keys",
            self.guest_readable_config_keys.len(),
        )?;
        count(
            "blocked_import_prefixes",
            self.blocked_import_prefixes.len(),
        )?;
        for (k, v) in &self.config {
            check_len("config key", k, MAX_CONFIG_TEXT_BYTES)?;
            check_len("config value", v, MAX_CONFIG_TEXT_BYTES)?;
        }
        for k in self
            .guest_readable_config_keys
            .iter()
            .chain(&self.blocked_import_prefixes)
            .chain(&self.sha256)
        {
            check_len("config key", k, MAX_CONFIG_TEXT_BYTES)?;
        }
        if let GuestInput::Envelope {
            provider_id,
            channel_id,
        } = &self.input
        {
            check_len("provider_id", provider_id, MAX_CONFIG_TEXT_BYTES)?;
            if let Some(c) = channel_id {
                check_len("channel_id", c, MAX_CONFIG_TEXT_BYTES)?;
            }
        }
        Ok(())
    }
}

/// What a worker answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum WorkerResponse {
    /// The plugin compiled and is ready.
    Loaded {
        plugin_id: String,
        /// The module's sha256 (hex), as the worker computed it.
        sha256: String,
        /// What became of the compiled module the `Load` carried.
        compiled_use: CompiledUse,
        /// The module compiled afresh, when the `Load` asked for it.
        compiled: Option<CompiledModule>,
    },
    /// A call's result.
    Output(CallOutput),
    /// The plugin refused to load or the call failed; the worker is fine.
    Failed(PluginFailure),
    /// The plugin is gone (or was never loaded).
    Unloaded,
    /// The worker's figures.
    Stats(WorkerStats),
    /// A foreign program started; its tools.
    Described(Vec<ToolInfo>),
    /// A service ([`WorkerRequest::Serve`]) stopped: loongd withdrew it and it drained.
    Stopped,
}

impl WorkerResponse {
    /// The variant's name, for messages (never its possibly large contents).
    pub fn name(&self) -> &'static str {
        match self {
            WorkerResponse::Loaded { .. } => "Loaded",
            WorkerResponse::Output(_) => "Output",
            WorkerResponse::Failed(_) => "Failed",
            WorkerResponse::Unloaded => "Unloaded",
            WorkerResponse::Stats(_) => "Stats",
            WorkerResponse::Described(_) => "Described",
            WorkerResponse::Stopped => "Stopped",
        }
    }
}

/// A successful call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CallOutput {
    /// The JSON the plugin wrote (at most [`MAX_CALL_BYTES`]).
    pub output: Vec<u8>,
    /// Log lines kept (at most [`MAX_LOG_LINES`] of [`MAX_LOG_LINE_BYTES`]).
    pub logs: Vec<String>,
    pub logs_dropped: u32,
    /// Wall time inside the worker, µs.
    pub wall_us: u64,
    /// CPU time of the worker's thread during the call, µs.
    pub cpu_us: u64,
    pub fuel_consumed: Option<u64>,
    pub peak_memory_bytes: u64,
}

impl CallOutput {
    /// Checks the output and logs against their bounds (a worker's answer is not trusted).
    pub fn check_bounds(&self) -> Result<(), BoundError> {
        if self.output.len() > MAX_CALL_BYTES {
            return Err(BoundError {
                field: "output",
                len: self.output.len(),
                max: MAX_CALL_BYTES,
            });
        }
        if self.logs.len() > MAX_LOG_LINES {
            return Err(BoundError {
                field: "logs",
                len: self.logs.len(),
                max: MAX_LOG_LINES,
            });
        }
        for line in &self.logs {
            check_len("log line", line, MAX_LOG_LINE_BYTES)?;
        }
        Ok(())
    }
}

/// Why a plugin failed to load or a call failed, with the worker intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PluginFailure {
    pub kind: FailureKind,
    /// What happened, naming the plugin (at most [`MAX_FAILURE_MESSAGE_BYTES`]).
    pub message: String,
    /// For [`FailureKind::PlanFailed`]: the plan's typed error.
    pub plan: Option<super::outcome::PlanFailed>,
}

/// Classes of [`PluginFailure`]; they name audit records and loongctl's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum FailureKind {
    /// The module was refused at load (size, digest, imports, entry point, validity).
    LoadRefused,
    /// No plugin of that id is loaded in this worker.
    NotLoaded,
    InputTooLarge,
    Timeout,
    FuelExhausted,
    MemoryLimit,
    TableLimit,
    OutputTooLarge,
    Aborted,
    ExitCode,
    Trap,
    OutputNotJson,
    /// A WASM plugin's envelope could not be built: the caller's input is not JSON.
    InputNotJson,
    /// A WASM module imports a host function that uses guest memory but exports no `memory`.
    MemoryNotExported,
    /// `write_output` was refused and the guest did not write again: a second write, bytes
    /// outside the guest's memory, or a negative length.
    OutputRefused,
    /// A foreign program could not be started or refused the handshake.
    PeerStartFailed,
    /// A foreign program wrote a line that is not the expected JSON.
    PeerMalformed,
    /// A foreign program wrote a line over the limit.
    PeerLineTooLarge,
    /// A foreign program answered with an id no call is waiting for.
    PeerWrongId,
    /// A foreign program exited during a call.
    PeerExited,
    /// The tool ran and reported an error (an MCP `isError` result, a JSON-RPC error, or a
    /// JSON-lines `error` answer).
    ToolError,
    /// No such tool in this program.
    UnknownTool,
    /// loongd could not connect to a connector's endpoint.
    ConnectFailed,
    /// The endpoint answered with a redirect, which a connector never follows.
    RedirectRefused,
    /// The endpoint's answer broke the declared response contract, or was not HTTP.
    ContractViolation,
    /// A fetch's host resolved to an address it may not reach (loopback, private, …).
    AddressRefused,
    /// A `programmatic_tool_call` plan was refused or stopped; the failure's `plan` says how.
    PlanFailed,
    /// The TLS handshake with an `https://` endpoint failed: the certificate was not trusted
    /// (unknown issuer, a name mismatch, expired, …) or the server did not speak TLS. The
    /// message names the host and the reason.
    TlsFailed,
}

impl FailureKind {
    /// A stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::LoadRefused => "load_refused",
            FailureKind::NotLoaded => "not_loaded",
            FailureKind::InputTooLarge => "input_too_large",
            FailureKind::Timeout => "timeout",
            FailureKind::FuelExhausted => "fuel_exhausted",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::TableLimit => "table_limit",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::Aborted => "aborted",
            FailureKind::ExitCode => "exit_code",
            FailureKind::Trap => "trap",
            FailureKind::OutputNotJson => "output_not_json",
            FailureKind::InputNotJson => "input_not_json",
            FailureKind::MemoryNotExported => "memory_not_exported",
            FailureKind::OutputRefused => "output_refused",
            FailureKind::PeerStartFailed => "peer_start_failed",
            FailureKind::PeerMalformed => "peer_malformed",
            FailureKind::PeerLineTooLarge => "peer_line_too_large",
            FailureKind::PeerWrongId => "peer_wrong_id",
            FailureKind::PeerExited => "peer_exited",
            FailureKind::ToolError => "tool_error",
            FailureKind::UnknownTool => "unknown_tool",
            FailureKind::ConnectFailed => "connect_failed",
            FailureKind::RedirectRefused => "redirect_refused",
            FailureKind::ContractViolation => "contract_violation",
            FailureKind::AddressRefused => "address_refused",
            FailureKind::PlanFailed => "plan_failed",
            FailureKind::TlsFailed => "tls_failed",
        }
    }
}

impl PluginFailure {
    /// A failure of `kind`, its message cut to the bound on a character boundary.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> PluginFailure {
        PluginFailure {
            kind,
            message: super::truncated(message.into(), MAX_FAILURE_MESSAGE_BYTES),
            plan: None,
        }
    }

    /// A failed plan: kind [`FailureKind::PlanFailed`], the plan's message.
    pub fn plan(plan: super::outcome::PlanFailed) -> PluginFailure {
        let plan = plan.bounded();
        let mut f = PluginFailure::new(FailureKind::PlanFailed, plan.message.clone());
        f.plan = Some(plan);
        f
    }
}

/// A worker's own figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WorkerStats {
    /// Resident memory of the worker process, KiB.
    pub rss_kib: u64,
    /// Plugins loaded.
    pub loaded: Vec<String>,
    /// Calls answered since start.
    pub calls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_answer_is_checked_against_its_bounds() {
        let ok = CallOutput {
            output: b"{}".to_vec(),
            logs: vec!["fine".into()],
            logs_dropped: 0,
            wall_us: 1,
            cpu_us: 0,
            fuel_consumed: None,
            peak_memory_bytes: 0,
        };
        assert_eq!(ok.check_bounds(), Ok(()));
        let mut big = ok.clone();
        big.output = vec![b' '; MAX_CALL_BYTES + 1];
        assert_eq!(big.check_bounds().map_err(|e| e.field), Err("output"));
        let mut chatty = ok.clone();
        chatty.logs = vec![String::new(); MAX_LOG_LINES + 1];
        assert_eq!(chatty.check_bounds().map_err(|e| e.field), Err("logs"));
        let mut long = ok;
        long.logs = vec!["x".repeat(MAX_LOG_LINE_BYTES + 1)];
        assert_eq!(long.check_bounds().map_err(|e| e.field), Err("log line"));
    }

    #[test]
    fn a_serve_is_checked_against_its_bounds() {
        let mut s = ServeSpec {
            service: "gateway".into(),
            name: "gateway".into(),
            config_json: "{}".into(),
            secrets: vec![("bot".into(), super::super::control::SecretValue::new("x"))],
        };
        assert_eq!(s.check_bounds(), Ok(()));
        s.config_json = "x".repeat(MAX_SERVE_CONFIG_BYTES + 1);
        assert_eq!(s.check_bounds().map_err(|e| e.field), Err("config_json"));
        s.config_json = "{}".into();
        s.name = "n".repeat(MAX_SERVICE_NAME_BYTES + 1);
        assert_eq!(s.check_bounds().map_err(|e| e.field), Err("name"));
        s.name = "gateway".into();
        s.secrets = vec![
            (
                "k".into(),
                super::super::control::SecretValue::new("v".repeat(MAX_SERVE_SECRET_BYTES))
            );
            1
        ];
        assert_eq!(s.check_bounds().map_err(|e| e.field), Err("secret"));
        s.secrets =
            vec![("k".into(), super::super::control::SecretValue::new("v")); MAX_SERVE_SECRETS + 1];
        assert_eq!(s.check_bounds().map_err(|e| e.field), Err("secrets"));
        // The secret's value never shows in a log line that prints the request.
        s.secrets.truncate(1);
        assert!(!format!("{s:?}").contains("\"v\""), "{s:?}");
    }

    #[test]
    fn a_load_is_checked_against_its_bounds() {
        let mut p = WasmPlugin {
            plugin_id: "echo".into(),
            module: vec![0; 8],
            entrypoint: "run".into(),
            timeout_ms: 1,
            max_memory_bytes: 1,
            max_output_bytes: 1,
            max_module_bytes: 8,
            fuel: None,
            config: vec![("k".into(), "v".into())],
            guest_readable_config_keys: vec!["k".into()],
            sha256: None,
            blocked_import_prefixes: Vec::new(),
            input: GuestInput::Bare,
            compiled: None,
            want_compiled: false,
        };
        assert_eq!(p.check_bounds(), Ok(()));
        p.plugin_id = "x".repeat(MAX_PLUGIN_ID_BYTES + 1);
        assert_eq!(p.check_bounds().map_err(|e| e.field), Err("plugin_id"));
        p.plugin_id = "echo".into();
        p.config = vec![(String::new(), String::new()); MAX_CONFIG_ENTRIES + 1];
        assert_eq!(p.check_bounds().map_err(|e| e.field), Err("config"));
        p.config = Vec::new();
        p.input = GuestInput::Envelope {
            provider_id: "x".repeat(MAX_CONFIG_TEXT_BYTES + 1),
            channel_id: None,
        };
        assert_eq!(p.check_bounds().map_err(|e| e.field), Err("provider_id"));
        p.input = GuestInput::Envelope {
            provider_id: "p".into(),
            channel_id: Some("x".repeat(MAX_CONFIG_TEXT_BYTES + 1)),
        };
        assert_eq!(p.check_bounds().map_err(|e| e.field), Err("channel_id"));
        p.input = GuestInput::Envelope {
            provider_id: "p".into(),
            channel_id: Some("c".into()),
        };
        assert_eq!(p.check_bounds(), Ok(()));
    }
}
