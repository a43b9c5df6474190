//! `loongd.toml`: the daemon's own configuration.
//!
//! Written with every key commented out (showing its default) on first start. Unknown keys
//! and out-of-range values are errors naming the file, the line and the key.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use loong_ipc::frame::{DEFAULT_MAX_FRAME_BYTES, HARD_MAX_FRAME_BYTES};
use serde::Deserialize;

/// Operator connections served at once by default.
pub const DEFAULT_MAX_CLIENTS: u32 = 256;
/// The most operator connections the setting may allow.
pub const MAX_MAX_CLIENTS: u32 = 65_536;
/// Default: once a frame's first byte arrives, the rest must come within this many ms.
pub const DEFAULT_FRAME_READ_TIMEOUT_MS: u64 = 5_000;
/// Default: a new connection must send its hello within this many ms.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Default: a connection with no frame for this many ms is closed.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 600_000;
/// Default requests in flight per connection.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// The most requests in flight the setting may allow.
pub const MAX_MAX_IN_FLIGHT: u32 = 4_096;
/// Bounds on every timeout setting, in ms: at least 10 ms, at most one day.
pub const TIMEOUT_RANGE_MS: (u64, u64) = (10, 86_400_000);
/// The largest configuration file loongd reads.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The commented defaults written on first start.
pub const DEFAULT_CONFIG_TEXT: &str = r#"# loongd configuration. Every key is optional: the commented values are the defaults.
# An unknown key is an error, so a typo never goes unnoticed.

[control]
# A Unix group whose members may use the control socket, besides loongd's own uid and root.
# allowed_group = "loong"
# Operator connections served at once (1..=65536).
# max_clients = 256

[ipc]
# Largest frame body in bytes (1..=16777216).
# max_frame_bytes = 1048576
# Once a frame's first byte arrives, the whole frame must arrive within this many ms.
# frame_read_timeout_ms = 5000
# A new connection must send its hello within this many ms.
# handshake_timeout_ms = 5000
# A connection with no frame for this many ms is closed.
# idle_timeout_ms = 600000
# Requests in flight per connection (1..=4096).
# max_in_flight = 64

[sandbox]
# Run a tier even where this host cannot enforce it (every such run is logged and audited).
# allow_degraded = false
# The uid and gid sandboxes run as when loongd is root.
# uid = 65534
# gid = 65534
# loongd not root: each sandbox runs as its own id from loongd's user's subordinate range
# (/etc/subuid, /etc/subgid, mapped with newuidmap from Debian's uidmap); without one every
# sandbox is refused, naming what to add. true runs them as loongd's own uid instead
# (degraded: an escape owns loongd's state; audited at start, shown by `loongctl doctor`).
# rootless_own_uid = false
# Output (stdout + stderr) relayed from one `sandbox run` before the program is killed.
# max_output_bytes = 67108864
# loongd as root: keep one sandbox built ahead for the runs of the shape asked for lately
# (its namespaces entered and its /proc and /tmp mounted before the run is asked for; checked
# again when the run comes). A run served by one can tell when its sandbox was built, soon
# after the last run of the same shape: false builds every sandbox for its run.
# spare = true

[workers]
# WASM worker processes kept in the pool: calls run at once, one per worker (1..=64).
# wasm_pool_size = 2
# Keep one spare WASM worker started ahead of need (counted in the pool's size), so the first
# call after a start, a reload or `workers kill` does not wait for a spawn.
# wasm_spare = true
# Agent worker processes (`loongctl ask` and the channels' turns): turns run at once, one per
# worker; a turn waiting for an approval holds its worker (1..=64). Workers start on demand,
# each about 11 MiB resident (256 MiB at most, its cgroup's memory.max).
# agent_pool_size = 4

[kernel_calls]
# Calls a worker makes through loongd while it serves a call (a plugin's call_tool).
# Deepest chain of nested calls below an operator's call (1..=16).
# max_depth = 4
# Kernel calls one worker may have in flight at once (1..=64).
# max_in_flight = 8
# Nested calls made on behalf of one root call, in all (1..=10000).
# max_calls = 64
# Wall time one root call's nested calls may run for, ms (10..=86400000).
# max_wall_ms = 60000

[builtins]
# The built-in tools, each in its own balanced-tier worker whose sandbox grants exactly these
# paths (absolute). file.read reads under read_roots and write_roots; file.write and
# file.edit change files under write_roots; shell.exec runs `sh -c` in workspace, with the
# network only to shell_net ("host:port"). A tool with nothing granted is listed as failed.
# read_roots = []
# write_roots = []
# workspace = "/srv/loong/work"
# shell_net = []
# web.fetch: GET http:// URLs (decided as net.egress on HOST:PORT); loopback, private and
# link-local answers are refused unless fetch_allow_private.
# fetch = false
# fetch_allow_private = false
# programmatic_tool_call: run plans of tool calls in a restricted plan worker, each call
# decided and audited as a nested call of the plan's (docs/programmatic.md).
# plans = false
# Each call's deadline, and the cap on what one call reads or prints.
# timeout_ms = 10000
# max_output_bytes = 1048576

[browser]
# The browser tools (browser.open, .extract, .click, .type, .wait, .screenshot, .close): a
# headless Chromium per session, in a balanced-tier worker whose only network is the egress
# broker, admitting exactly the HOST:PORT the session's browser.open was decided on
# (browser.control:HOST or browser.control:HOST:PORT; docs/bridges.md).
# enabled = false
# The Chromium binary (default: `chromium`, `chromium-headless-shell` or
# `chromium-browser` on PATH).
# chromium = "/usr/lib/chromium/chromium"
# Sessions open at once (1..=64), and how long one may sit unused before it is closed, ms.
# max_sessions = 4
# Sessions one caller (a token, or the operator's uid) may hold at once (1..=64; at most
# max_sessions applies), so that one caller cannot take every session.
# max_sessions_per_caller = 2
# idle_timeout_ms = 300000

[plugins]
# Refuse a WASM plugin whose module is pinned neither by its manifest
# (metadata.component_sha256 or sandbox.sha256) nor below (audited as plugin.refused).
# require_wasm_pin = false
# http_json connectors (by plugin id) whose endpoint may be a loopback, private or link-local
# address although their manifest does not set sandbox.allow_private_network: for a package
# written for public Loong that posts to a bridge on this host, installed unchanged.
# private_endpoints = ["whatsapp-personal-baileys-bridge"]
# The operator's pin of a plugin's module, by plugin id: its sha256 must be this (and agree
# with the manifest's pin, if any). Accepted as the manifest's pins are: "sha256:HEX" too.
# [plugins.wasm_sha256]
# echo = "sha256:…"

[egress]
# The DNS server loongd asks, once per connection, for the names that web.fetch, connectors
# and network grants reach (UDP, then TCP). Absent: the name servers of /etc/resolv.conf
# (their search domains are never applied). Every address of an answer is checked; see
# docs/SECURITY.md.
# resolver = "127.0.0.53:53"
# The deadline of one lookup, ms (100..=60000).
# lookup_timeout_ms = 5000
# A sandbox with a network grant reaches the network only through loongd's egress broker
# (docs/SECURITY.md, "The network boundary"). Per sandbox: connections open at once
# (1..=4096), and bytes moved over its life, both ways (a plugin's: per hour, across its
# worker's restarts; a connection that crosses it is closed, later ones are refused). A
# plugin's manifest may lower both for itself (sandbox.egress), never raise them.
# max_connections = 64
# max_bytes = 1073741824
# Connections open at once for all sandboxes together (1..=65536).
# max_total_connections = 1024
# A relayed connection silent both ways this long is ended (ms, 100..=86400000).
# idle_timeout_ms = 300000
# New connections one sandbox may open per second, and at once above that rate (a token
# bucket; each 1..=100000); one more is refused (429 through the proxy).
# connections_per_second = 50
# connections_burst = 200
# A PEM file of CA certificates trusted for https:// connectors and web.fetch beside the
# public roots and the system store (an internal CA).
# ca_bundle = "/etc/loong/ca.pem"

[audit]
# Also append every audit record as one JSON line to this file (for a SIEM).
# jsonl_file = "/var/log/loong/audit.jsonl"
# What a failed write to it does: "open" logs it and lets the effect proceed; "closed"
# refuses the effect (the record stays in the trail).
# jsonl_failure = "open"
# Also send every record to syslog (RFC 5424 on a unix datagram socket).
# syslog = false
# syslog_socket = "/dev/log"
# syslog_failure = "open"
# The latest signed checkpoint is also written here (atomically), and loongd's start and
# `loongctl audit verify` check the database against it, so a trail cut back together with
# its checkpoints is caught. Put it on another file system than the home. Default: HOME/audit.witness.
# witness_file = "/var/lib/loong-witness/audit.witness"
# "full": every commit waits for an fsync, so a record survives a power loss. "normal": a
# commit survives loongd crashing but the last moments may be lost with the machine; a tool
# call then waits for no fsync.
# sync = "full"

[policy]
# A risk profile to use instead of the bundled one.
# risk_profile = "/etc/loong/risk.toml"
# Refuse it (and refuse to start) unless its sha256 is this.
# risk_profile_sha256 = "…"
# Refuse it unless FILE.sig holds a signature by an active key of the keyring (`loongctl keys`).
# A FILE.sig that is present is always checked.
# risk_profile_signed = false

[approvals]
# How long a request that needs approval waits for an operator before it is denied, in ms.
# timeout_ms = 300000
# The most requests one token may have pending at once; past it, its next request is denied
# without asking, naming the token (the operator's own requests are not counted).
# max_pending_per_token = 32

[channels]
# The most turns one chat channel starts a minute (a compromised channel worker makes
# messages up at will; past it, the channel's messages wait, none lost).
# turns_per_minute = 30
# The most channel turns running at once, over every channel (1..=64), and of one channel
# (1..=64). A chat's turns always run one at a time, in order. Never more than
# `[workers] agent_pool_size` - 1 (at least 1) run at once, so a `loongctl ask` finds a
# worker while every channel turn waits for an approval.
# max_turns_at_once = 3
# max_turns_at_once_per_channel = 2

[log]
# The tracing filter (RUST_LOG syntax). The LOONG_LOG environment variable overrides it.
# level = "info"

[metrics]
# Serve GET /metrics (OpenMetrics text, as `loongctl metrics` prints it) without
# authentication, on a loopback address or a Unix socket; anything else is refused.
# listen = "127.0.0.1:9464"
# listen = "unix:/run/loong/metrics.sock"

[gateway]
# Loong as an MCP server (streamable HTTP, /mcp) and an OpenAI/Anthropic-compatible endpoint
# (docs/gateway.md). Start it with loongd, or with `loongctl gateway run`.
# enabled = false
# listen = "127.0.0.1:7878"                # or an absolute path of a Unix socket
# allowed_hosts = []                       # Host values answered; default: loopback names
# allowed_origins = []                     # browser Origins allowed; default: loopback ones
# max_body_bytes = 4194304                 # 413 past it
# max_streams_per_token = 64               # 429 past it
# requests_per_second = 200                # per token, sustained; 429 with Retry-After
# burst = 400
# drain_ms = 10000                         # how long a stop waits for open streams

# The agent (`loongctl ask`; docs/agent.md): a provider and the agent that uses it. The
# key is a secret reference, never the key itself.
# [providers.main]
# kind = "openai"                          # or "anthropic"
# base_url = "http://127.0.0.1:8080/v1"
# model = "qwen2.5-7b-instruct"
# api_key = "${secret:main_key}"
# [agent]
# provider = "main"
# max_steps = 16
# turn_budget_secs = 300
"#;

/// Default cap on the output relayed from one sandboxed run (64 MiB).
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// The parsed configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The control socket.
    pub control: ControlConfig,
    /// Framing and timeouts, on every connection.
    pub ipc: IpcConfig,
    /// Sandboxes.
    pub sandbox: SandboxConfig,
    /// The audit trail's SIEM lane.
    pub audit: AuditConfig,
    /// Policy data from outside the bundle.
    pub policy: PolicyConfig,
    /// Approvals.
    pub approvals: ApprovalsConfig,
    /// The chat channels (`[channels]`, docs/channels.md).
    pub channels: ChannelsConfig,
    /// The worker pool.
    pub workers: WorkersConfig,
    /// Bounds on kernel calls (nested tool calls).
    pub kernel_calls: KernelCallsConfig,
    /// The built-in tools' grants.
    pub builtins: BuiltinsConfig,
    /// The browser tools.
    pub browser: BrowserConfig,
    /// What a plugin must satisfy to load: the operator's module pins.
    pub plugins: PluginsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Metrics.
    pub metrics: MetricsConfig,
    /// How loongd reaches the network: its resolver, the egress broker's limits, and the
    /// trust anchors of `https://` endpoints.
    pub egress: EgressConfig,
    /// The gateway (`[gateway]`, docs/gateway.md).
    pub gateway: GatewayConfig,
    /// `[providers.NAME]`, read by [`loong_agent_wire::config::parse`] into [`Config::agent`].
    #[serde(rename = "providers")]
    pub providers_section: Section,
    /// `[agent]`, read likewise.
    #[serde(rename = "agent")]
    pub agent_section: Section,
    /// The providers and the agent, checked (docs/agent.md).
    #[serde(skip)]
    pub agent: loong_agent_wire::config::Settings,
}

/// A section another parser reads (its keys are checked there, never ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section;

impl<'de> Deserialize<'de> for Section {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Section)
    }
}

/// The default deadline of one lookup (`[egress] lookup_timeout_ms`).
pub const DEFAULT_LOOKUP_TIMEOUT_MS: u64 = 5_000;
/// The bounds of `[egress] lookup_timeout_ms`.
pub const LOOKUP_TIMEOUT_RANGE_MS: (u64, u64) = (100, 60_000);

/// Where the gateway listens by default.
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:7878";
/// The largest request body the gateway reads, by default (413 past it).
pub const DEFAULT_GATEWAY_MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// The most `[gateway] max_body_bytes` may allow.
pub const MAX_GATEWAY_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Requests and streams one token may have open at once, by default (429 past it).
pub const DEFAULT_GATEWAY_STREAMS_PER_TOKEN: u32 = 64;
/// Requests one token may make per second, sustained, by default (429 past it).
pub const DEFAULT_GATEWAY_REQUESTS_PER_SECOND: u32 = 200;
/// Requests one token may make at once above its rate, by default.
pub const DEFAULT_GATEWAY_BURST: u32 = 400;
/// The most `[gateway]` may allow of streams per token, requests per second and burst.
pub const MAX_GATEWAY_RATE: u32 = 100_000;
/// How long `gateway stop` (and loongd's stop) waits for open streams to drain, by default.
pub const DEFAULT_GATEWAY_DRAIN_MS: u64 = 10_000;

/// `[gateway]`: Loong as an MCP server over streamable HTTP and an OpenAI/Anthropic-compatible
/// endpoint, served by the gateway worker on a listener loongd binds (docs/gateway.md).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Start the gateway with loongd (else `loongctl gateway run` starts it).
    pub enabled: bool,
    /// `HOST:PORT`, or an absolute path for a Unix socket.
    #[serde(deserialize_with = "gateway_listen")]
    pub listen: GatewayListen,
    /// `Host` values (`name` or `name:port`) the gateway answers; default: loopback names.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values (`scheme://host[:port]`) a browser request may carry; default: none
    /// (a request with an `Origin` is refused unless its origin is a loopback one).
    pub allowed_origins: Vec<String>,
    /// The largest request body read, bytes (413 past it).
    #[serde(deserialize_with = "gateway_body")]
    pub max_body_bytes: u64,
    /// Requests and streams one token may have open at once (429 past it).
    #[serde(deserialize_with = "gateway_rate")]
    pub max_streams_per_token: u32,
    /// Requests one token may make per second, sustained (429 with Retry-After past it).
    #[serde(deserialize_with = "gateway_rate")]
    pub requests_per_second: u32,
    /// Requests one token may make at once above its rate.
    #[serde(deserialize_with = "gateway_rate")]
    pub burst: u32,
    /// How long a stop waits for open streams to drain, ms.
    #[serde(deserialize_with = "gateway_drain")]
    pub drain_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            enabled: false,
            listen: GatewayListen::Tcp(
                DEFAULT_GATEWAY_LISTEN
                    .parse()
                    .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 7878))),
            ),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: DEFAULT_GATEWAY_MAX_BODY_BYTES,
            max_streams_per_token: DEFAULT_GATEWAY_STREAMS_PER_TOKEN,
            requests_per_second: DEFAULT_GATEWAY_REQUESTS_PER_SECOND,
            burst: DEFAULT_GATEWAY_BURST,
            drain_ms: DEFAULT_GATEWAY_DRAIN_MS,
        }
    }
}

/// Where the gateway listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayListen {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for GatewayListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayListen::Tcp(a) => write!(f, "{a}"),
            GatewayListen::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

fn gateway_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<GatewayListen, D::Error> {
    let s = String::deserialize(d)?;
    if s.starts_with('/') {
        return Ok(GatewayListen::Unix(s.into()));
    }
    s.parse().map(GatewayListen::Tcp).map_err(|_| {
        serde::de::Error::custom(format!(
            "{s} is neither HOST:PORT (an IP address) nor an absolute path of a Unix socket; use e.g. 127.0.0.1:7878"
        ))
    })
}

fn gateway_body<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, 1024, MAX_GATEWAY_MAX_BODY_BYTES, "bytes")
}

fn gateway_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_GATEWAY_RATE, "")
}

fn gateway_drain<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, 0, 600_000, "ms")
}

/// `[egress]`: loongd's resolver, and what one sandbox with a network grant may use of the
/// broker.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// The DNS server to ask (`None`: the system's, from /etc/resolv.conf).
    #[serde(deserialize_with = "resolver_addr")]
    pub resolver: Option<std::net::SocketAddr>,
    /// The deadline of one lookup, ms.
    #[serde(deserialize_with = "lookup_timeout_ms")]
    pub lookup_timeout_ms: u64,
    /// Connections one sandbox may have open at once.
    #[serde(deserialize_with = "egress_connections")]
    pub max_connections: u64,
    /// Bytes one sandbox may move through the broker over its life, both ways.
    #[serde(deserialize_with = "egress_bytes")]
    pub max_bytes: u64,
    /// Connections open at once for all sandboxes together.
    #[serde(deserialize_with = "egress_total")]
    pub max_total_connections: u64,
    /// How long a relayed connection may carry no byte either way before the broker ends it.
    #[serde(deserialize_with = "egress_idle")]
    pub idle_timeout_ms: u64,
    /// New connections one sandbox may open per second, on average.
    #[serde(deserialize_with = "egress_rate")]
    pub connections_per_second: u32,
    /// New connections one sandbox may open at once above that rate (the bucket's size).
    #[serde(deserialize_with = "egress_burst")]
    pub connections_burst: u32,
    /// A PEM file of CA certificates trusted for `https://` endpoints and `web.fetch`,
    /// beside the public roots and the system store (an internal CA, a test CA). Read at
    /// start; one that does not parse stops loongd.
    #[serde(deserialize_with = "absolute_path")]
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            resolver: None,
            lookup_timeout_ms: DEFAULT_LOOKUP_TIMEOUT_MS,
            max_connections: DEFAULT_EGRESS_CONNECTIONS,
            max_bytes: DEFAULT_EGRESS_BYTES,
            max_total_connections: DEFAULT_EGRESS_TOTAL_CONNECTIONS,
            idle_timeout_ms: DEFAULT_EGRESS_IDLE_TIMEOUT_MS,
            connections_per_second: DEFAULT_EGRESS_CONNECTIONS_PER_SECOND,
            connections_burst: DEFAULT_EGRESS_CONNECTIONS_BURST,
            ca_bundle: None,
        }
    }
}

fn resolver_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "egress.resolver {:?} is not IP:PORT; write e.g. \"127.0.0.53:53\" or \"[::1]:53\"",
            s.chars().take(80).collect::<String>()
        ))
    })
}
fn lookup_timeout_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(
        d,
        LOOKUP_TIMEOUT_RANGE_MS.0,
        LOOKUP_TIMEOUT_RANGE_MS.1,
        "ms",
    )
}

/// The connections one sandbox may have open through the broker at once, by default
/// (`[egress] max_connections`).
pub const DEFAULT_EGRESS_CONNECTIONS: u64 = 64;
/// The bytes one sandbox may move through the broker over its life, both ways, by default
/// (`[egress] max_bytes`).
pub const DEFAULT_EGRESS_BYTES: u64 = 1 << 30;
/// The most connections `[egress] max_connections` may allow one sandbox.
pub const MAX_EGRESS_CONNECTIONS: u64 = 4096;

fn egress_connections<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, 1, MAX_EGRESS_CONNECTIONS, "connections")
}

/// How long a relayed connection may be silent both ways, by default (`[egress]
/// idle_timeout_ms`).
pub const DEFAULT_EGRESS_IDLE_TIMEOUT_MS: u64 = 300_000;
/// The bounds of `[egress] idle_timeout_ms` (a tenth of a second to a day).
pub const EGRESS_IDLE_TIMEOUT_RANGE_MS: (u64, u64) = (100, 86_400_000);
/// New connections one sandbox may open per second, by default (`[egress]
/// connections_per_second`): a page load's worth each second.
pub const DEFAULT_EGRESS_CONNECTIONS_PER_SECOND: u32 = 50;
/// New connections one sandbox may open at once above the rate, by default (`[egress]
/// connections_burst`).
pub const DEFAULT_EGRESS_CONNECTIONS_BURST: u32 = 200;
/// The most `[egress] connections_per_second` and `connections_burst` may be.
pub const MAX_EGRESS_CONNECTION_RATE: u32 = 100_000;

fn egress_idle<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(
        d,
        EGRESS_IDLE_TIMEOUT_RANGE_MS.0,
        EGRESS_IDLE_TIMEOUT_RANGE_MS.1,
        "ms",
    )
}
fn egress_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_EGRESS_CONNECTION_RATE, "connections per second")
}
fn egress_burst<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_EGRESS_CONNECTION_RATE, "connections")
}

/// The connections the broker holds open for all sandboxes together, by default
/// (`[egress] max_total_connections`).
pub const DEFAULT_EGRESS_TOTAL_CONNECTIONS: u64 = 1024;
/// The most connections `[egress] max_total_connections` may allow all sandboxes together.
pub const MAX_EGRESS_TOTAL_CONNECTIONS: u64 = 65_536;

fn egress_total<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, 1, MAX_EGRESS_TOTAL_CONNECTIONS, "connections")
}

fn egress_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, 1, u64::MAX >> 1, "bytes")
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub jsonl_file: Option<std::path::PathBuf>,
    #[serde(deserialize_with = "failure_mode")]
    pub jsonl_failure: String,
    pub syslog: bool,
    pub syslog_socket: std::path::PathBuf,
    #[serde(deserialize_with = "failure_mode")]
    pub syslog_failure: String,
    /// `full` (every commit fsynced) or `normal` (commits survive a loongd crash, not a power
    /// loss).
    #[serde(deserialize_with = "durability")]
    pub sync: String,
    /// Where the latest signed checkpoint is also written (default: `HOME/audit.witness`).
    pub witness_file: Option<std::path::PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            jsonl_file: None,
            jsonl_failure: "open".into(),
            syslog: false,
            syslog_socket: "/dev/log".into(),
            syslog_failure: "open".into(),
            sync: "full".into(),
            witness_file: None,
        }
    }
}

impl AuditConfig {
    /// The trail's durability.
    pub fn durability(&self) -> crate::audit::Durability {
        if self.sync == "normal" {
            crate::audit::Durability::Normal
        } else {
            crate::audit::Durability::Full
        }
    }

    /// The witness file for a trail in `home`.
    pub fn witness(&self, home: &std::path::Path) -> std::path::PathBuf {
        self.witness_file
            .clone()
            .unwrap_or_else(|| home.join(crate::audit::witness::DEFAULT_WITNESS_FILE))
    }

    /// The SIEM transports this configures.
    pub fn siem(&self) -> crate::audit::siem::SiemConfig {
        use crate::audit::siem::FailureMode;
        let mode = |m: &str| {
            if m == "closed" {
                FailureMode::Closed
            } else {
                FailureMode::Open
            }
        };
        crate::audit::siem::SiemConfig {
            jsonl: self
                .jsonl_file
                .clone()
                .map(|p| (p, mode(&self.jsonl_failure))),
            syslog: self
                .syslog
                .then(|| (self.syslog_socket.clone(), mode(&self.syslog_failure))),
        }
    }
}

fn durability<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = String::deserialize(d)?;
    if v != "full" && v != "normal" {
        return Err(serde::de::Error::custom(format!(
            "`{v}` is not \"full\" or \"normal\""
        )));
    }
    Ok(v)
}
fn failure_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = String::deserialize(d)?;
    if v != "open" && v != "closed" {
        return Err(serde::de::Error::custom(format!(
            "`{v}` is not \"open\" or \"closed\""
        )));
    }
    Ok(v)
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub risk_profile: Option<std::path::PathBuf>,
    pub risk_profile_sha256: Option<String>,
    pub risk_profile_signed: bool,
}

/// `[approvals]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// How long a request waits for an approval, ms.
    #[serde(deserialize_with = "timeout_ms")]
    pub timeout_ms: u64,
    /// The most requests one token (by its public id) may have pending at once.
    #[serde(deserialize_with = "max_pending_per_token")]
    pub max_pending_per_token: u32,
}

/// The requests one token may have pending at once, by default: enough for an agent's
/// parallel tool calls and a gateway client's sessions, few enough that a holder who asks
/// and goes away cannot bury an operator's queue.
pub const DEFAULT_MAX_PENDING_APPROVALS_PER_TOKEN: u32 = 32;
/// The most `[approvals] max_pending_per_token` may be.
pub const MAX_MAX_PENDING_APPROVALS_PER_TOKEN: u32 = 10_000;

fn max_pending_per_token<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_MAX_PENDING_APPROVALS_PER_TOKEN, "approvals")
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout_ms: 300_000,
            max_pending_per_token: DEFAULT_MAX_PENDING_APPROVALS_PER_TOKEN,
        }
    }
}

/// `[channels]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// The most turns one channel starts a minute.
    #[serde(deserialize_with = "turns_per_minute")]
    pub turns_per_minute: u32,
    /// The most channel turns running at once, over every channel.
    #[serde(deserialize_with = "turns_at_once")]
    pub max_turns_at_once: u32,
    /// The most turns of one channel running at once (a chat's run one at a time).
    #[serde(deserialize_with = "turns_at_once")]
    pub max_turns_at_once_per_channel: u32,
}

/// The channel turns running at once, over every channel, by default: below the agent
/// pool's default size, so an operator's `ask` finds a worker while each channel turn waits
/// for an approval.
pub const DEFAULT_CHANNEL_TURNS_AT_ONCE: u32 = 3;
/// The turns of one channel running at once, by default.
pub const DEFAULT_CHANNEL_TURNS_AT_ONCE_PER_CHANNEL: u32 = 2;
/// The most `[channels] max_turns_at_once` (and `_per_channel`) may be.
pub const MAX_CHANNEL_TURNS_AT_ONCE: u32 = 64;

fn turns_at_once<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_CHANNEL_TURNS_AT_ONCE, "turns")
}

/// The turns one channel starts a minute, by default.
pub const DEFAULT_CHANNEL_TURNS_PER_MINUTE: u32 = 30;
/// The most `[channels] turns_per_minute` may be.
pub const MAX_CHANNEL_TURNS_PER_MINUTE: u32 = 60_000;

fn turns_per_minute<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_CHANNEL_TURNS_PER_MINUTE, "turns a minute")
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            turns_per_minute: DEFAULT_CHANNEL_TURNS_PER_MINUTE,
            max_turns_at_once: DEFAULT_CHANNEL_TURNS_AT_ONCE,
            max_turns_at_once_per_channel: DEFAULT_CHANNEL_TURNS_AT_ONCE_PER_CHANNEL,
        }
    }
}

/// `[sandbox]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Permit tiers the host cannot fully enforce.
    pub allow_degraded: bool,
    /// uid of sandboxes when loongd is root (never 0).
    #[serde(deserialize_with = "not_root")]
    pub uid: u32,
    /// gid of sandboxes when loongd is root (never 0).
    #[serde(deserialize_with = "not_root")]
    pub gid: u32,
    /// loongd not root and without subordinate ids: run sandboxes as loongd's own uid
    /// (degraded) instead of refusing them.
    pub rootless_own_uid: bool,
    /// Output cap per run.
    pub max_output_bytes: u64,
    /// Root mode: keep a sandbox built ahead for the runs of the shape asked for lately
    /// (`loong-sandbox`'s spare; docs/SECURITY.md, "Sandboxes built ahead").
    pub spare: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            allow_degraded: false,
            uid: 65534,
            gid: 65534,
            rootless_own_uid: false,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            spare: true,
        }
    }
}

/// `[workers]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// WASM workers in the pool (and so WASM calls at once).
    #[serde(deserialize_with = "pool_size")]
    pub wasm_pool_size: u32,
    /// Keep one spare WASM worker started ahead of need (within the pool's size), so the
    /// first call after loongd starts, a reload or a kill does not wait for a spawn.
    pub wasm_spare: bool,
    /// Agent workers in the agent's pool (and so agent turns at once).
    #[serde(deserialize_with = "pool_size")]
    pub agent_pool_size: u32,
}

/// The largest WASM pool (and agent pool).
pub const MAX_WASM_POOL_SIZE: u32 = 64;
/// Agent workers by default: an `ask` and a few chats' turns run at once, and a turn
/// waiting for an approval holds none of the others. Each is started on demand and costs
/// about 11 MiB resident while it lives (docs/agent.md).
pub const DEFAULT_AGENT_POOL_SIZE: u32 = 4;

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            wasm_pool_size: 2,
            wasm_spare: true,
            agent_pool_size: DEFAULT_AGENT_POOL_SIZE,
        }
    }
}

/// Default deepest chain of nested calls.
pub const DEFAULT_MAX_CALL_DEPTH: u32 = 4;
/// The deepest the setting may allow.
pub const MAX_MAX_CALL_DEPTH: u32 = 16;
/// Default kernel calls in flight per worker.
pub const DEFAULT_MAX_KERNEL_IN_FLIGHT: u32 = 8;
/// The most the setting may allow.
pub const MAX_MAX_KERNEL_IN_FLIGHT: u32 = 64;
/// Default nested calls per root call.
pub const DEFAULT_MAX_CHAIN_CALLS: u32 = 64;
/// The most the setting may allow.
pub const MAX_MAX_CHAIN_CALLS: u32 = 10_000;
/// Default wall time of a root call's nested calls, ms.
pub const DEFAULT_MAX_CHAIN_WALL_MS: u64 = 60_000;

/// `[kernel_calls]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KernelCallsConfig {
    /// Deepest chain of nested calls below a root call.
    #[serde(deserialize_with = "call_depth")]
    pub max_depth: u32,
    /// Kernel calls one worker may have in flight.
    #[serde(deserialize_with = "kernel_in_flight")]
    pub max_in_flight: u32,
    /// Nested calls on behalf of one root call.
    #[serde(deserialize_with = "chain_calls")]
    pub max_calls: u32,
    /// Wall time of one root call's nested calls, ms.
    #[serde(deserialize_with = "timeout_ms")]
    pub max_wall_ms: u64,
}

impl Default for KernelCallsConfig {
    fn default() -> Self {
        KernelCallsConfig {
            max_depth: DEFAULT_MAX_CALL_DEPTH,
            max_in_flight: DEFAULT_MAX_KERNEL_IN_FLIGHT,
            max_calls: DEFAULT_MAX_CHAIN_CALLS,
            max_wall_ms: DEFAULT_MAX_CHAIN_WALL_MS,
        }
    }
}

fn call_depth<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_MAX_CALL_DEPTH, "calls")
}
fn kernel_in_flight<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_MAX_KERNEL_IN_FLIGHT, "calls")
}
fn chain_calls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_MAX_CHAIN_CALLS, "calls")
}

/// `[builtins]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinsConfig {
    #[serde(deserialize_with = "absolute_paths")]
    pub read_roots: Vec<std::path::PathBuf>,
    #[serde(deserialize_with = "absolute_paths")]
    pub write_roots: Vec<std::path::PathBuf>,
    #[serde(deserialize_with = "absolute_path")]
    pub workspace: Option<std::path::PathBuf>,
    #[serde(deserialize_with = "net_grants")]
    pub shell_net: Vec<String>,
    pub fetch: bool,
    pub fetch_allow_private: bool,
    /// Offer `programmatic_tool_call`.
    pub plans: bool,
    #[serde(deserialize_with = "timeout_ms")]
    pub timeout_ms: u64,
    #[serde(deserialize_with = "output_bytes")]
    pub max_output_bytes: u64,
}

/// `[browser]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrowserConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "absolute_path")]
    pub chromium: Option<std::path::PathBuf>,
    #[serde(deserialize_with = "browser_sessions")]
    pub max_sessions: u32,
    #[serde(deserialize_with = "browser_sessions")]
    pub max_sessions_per_caller: u32,
    #[serde(deserialize_with = "timeout_ms")]
    pub idle_timeout_ms: u64,
}

/// Defaults and bounds of `[browser]`.
pub const DEFAULT_BROWSER_SESSIONS: u32 = 4;
/// Sessions one caller may hold by default: half the default total, so two callers at least
/// always find room.
pub const DEFAULT_BROWSER_SESSIONS_PER_CALLER: u32 = 2;
pub const MAX_BROWSER_SESSIONS: u32 = 64;
pub const DEFAULT_BROWSER_IDLE_MS: u64 = 300_000;

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            enabled: false,
            chromium: None,
            max_sessions: DEFAULT_BROWSER_SESSIONS,
            max_sessions_per_caller: DEFAULT_BROWSER_SESSIONS_PER_CALLER,
            idle_timeout_ms: DEFAULT_BROWSER_IDLE_MS,
        }
    }
}

fn browser_sessions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_BROWSER_SESSIONS, "sessions")
}

/// `[plugins]`: the operator's pins of WASM modules.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Refuse a WASM plugin whose module is pinned neither by its manifest nor here.
    pub require_wasm_pin: bool,
    /// Plugin id → the sha256 its module must have (normalised: lowercase hex).
    #[serde(deserialize_with = "wasm_pins")]
    pub wasm_sha256: std::collections::BTreeMap<String, String>,
    /// Plugin ids whose `http_json` endpoint may be a loopback, private or link-local address
    /// (the operator's `sandbox.allow_private_network` for a manifest that does not set it).
    #[serde(deserialize_with = "private_endpoints")]
    pub private_endpoints: Vec<String>,
}

/// The most plugin ids `[plugins] private_endpoints` may name.
pub const MAX_PRIVATE_ENDPOINTS: usize = 4096;

fn private_endpoints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.len() > MAX_PRIVATE_ENDPOINTS {
        return Err(serde::de::Error::custom(format!(
            "plugins.private_endpoints names {} plugins, over {MAX_PRIVATE_ENDPOINTS}",
            v.len()
        )));
    }
    Ok(v)
}

/// The most operator pins `[plugins.wasm_sha256]` may hold.
pub const MAX_OPERATOR_PINS: usize = 4096;

fn wasm_pins<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let v = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    if v.len() > MAX_OPERATOR_PINS {
        return Err(serde::de::Error::custom(format!(
            "plugins.wasm_sha256 holds {} pins, over {MAX_OPERATOR_PINS}",
            v.len()
        )));
    }
    v.into_iter()
        .map(|(id, pin)| {
            match loong_profiles::plugin::normalize_sha256_pin(&pin) {
                Some(digest) => Ok((id, digest)),
                None => Err(serde::de::Error::custom(format!(
                    "plugins.wasm_sha256.{id}: {:?} is not a sha256 digest: write 64 hex digits, optionally prefixed with sha256:",
                    pin.chars().take(80).collect::<String>()
                ))),
            }
        })
        .collect()
}

/// Defaults of `[builtins]`.
pub const DEFAULT_BUILTIN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_BUILTIN_OUTPUT_BYTES: u64 = 1024 * 1024;

impl Default for BuiltinsConfig {
    fn default() -> Self {
        BuiltinsConfig {
            read_roots: Vec::new(),
            write_roots: Vec::new(),
            workspace: None,
            shell_net: Vec::new(),
            fetch: false,
            fetch_allow_private: false,
            plans: false,
            timeout_ms: DEFAULT_BUILTIN_TIMEOUT_MS,
            max_output_bytes: DEFAULT_BUILTIN_OUTPUT_BYTES,
        }
    }
}

fn absolute(p: std::path::PathBuf) -> Result<std::path::PathBuf, String> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("{}: give an absolute path", p.display()))
    }
}
fn absolute_paths<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<std::path::PathBuf>, D::Error> {
    let v = Vec::<std::path::PathBuf>::deserialize(d)?;
    if v.len() > loong_sandbox::spec::MAX_GRANTS {
        return Err(serde::de::Error::custom("too many paths"));
    }
    v.into_iter()
        .map(|p| absolute(p).map_err(serde::de::Error::custom))
        .collect()
}
fn absolute_path<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    absolute(std::path::PathBuf::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
fn net_grants<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for g in &v {
        g.parse::<loong_sandbox::NetGrant>()
            .map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}
fn output_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(
        d,
        1,
        loong_ipc::message::worker::MAX_CALL_BYTES as u64,
        "bytes",
    )
}

/// `[control]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// A group whose members may connect.
    pub allowed_group: Option<String>,
    /// Operator connections served at once.
    #[serde(deserialize_with = "max_clients")]
    pub max_clients: u32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            allowed_group: None,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }
}

/// `[ipc]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IpcConfig {
    /// Largest frame body.
    #[serde(deserialize_with = "frame_bytes")]
    pub max_frame_bytes: u32,
    /// Frame deadline from first byte to last, ms.
    #[serde(deserialize_with = "timeout_ms")]
    pub frame_read_timeout_ms: u64,
    /// Deadline for the hello, ms.
    #[serde(deserialize_with = "timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Idle connections are closed after this many ms.
    #[serde(deserialize_with = "timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Requests in flight per connection.
    #[serde(deserialize_with = "max_in_flight")]
    pub max_in_flight: u32,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            frame_read_timeout_ms: DEFAULT_FRAME_READ_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl IpcConfig {
    /// The frame deadline.
    pub fn frame_read_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_read_timeout_ms)
    }
    /// The hello deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The tracing filter.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

pub use crate::metrics::MetricsListen;

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (`None`: only `loongctl metrics`).
    #[serde(deserialize_with = "metrics_listen")]
    pub listen: Option<MetricsListen>,
}

fn metrics_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<MetricsListen>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

fn ranged<'de, D, T>(d: D, lo: T, hi: T, unit: &str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + std::fmt::Display + Copy,
{
    let v = T::deserialize(d)?;
    if v < lo || v > hi {
        return Err(serde::de::Error::custom(format!(
            "{v} is outside {lo}..={hi} {unit}"
        )));
    }
    Ok(v)
}

fn max_clients<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_MAX_CLIENTS, "connections")
}
fn pool_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_WASM_POOL_SIZE, "workers")
}
fn frame_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, HARD_MAX_FRAME_BYTES, "bytes")
}
fn timeout_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, TIMEOUT_RANGE_MS.0, TIMEOUT_RANGE_MS.1, "ms")
}
fn not_root<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom(
            "0 is root: a sandbox never keeps root; choose an unprivileged id",
        ));
    }
    Ok(v)
}
fn max_in_flight<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, 1, MAX_MAX_IN_FLIGHT, "requests")
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is too large to be a configuration.
    #[error("{}: {len} bytes is above the {MAX_CONFIG_BYTES}-byte limit for a configuration file", path.display())]
    TooLarge { path: PathBuf, len: u64 },
    /// The file does not parse, has an unknown key or a value out of range.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The agent workers a channel turn never takes: `loongctl ask` (and the gateway's turns)
/// find one while every channel turn waits for an approval.
pub const AGENT_WORKERS_KEPT_FROM_CHANNELS: u32 = 1;

impl Config {
    /// The channel turns that run at once: `[channels] max_turns_at_once`, but no more than
    /// the agent's pool serves beside [`AGENT_WORKERS_KEPT_FROM_CHANNELS`] (at least one). A
    /// turn claimed past the pool would wait for a worker a turn waiting for an approval
    /// holds, and fail at the pool's queue deadline with the failure text sent, where a
    /// message not claimed waits in the inbox, none lost.
    pub fn channel_turns_at_once(&self) -> u32 {
        let served = self
            .workers
            .agent_pool_size
            .saturating_sub(AGENT_WORKERS_KEPT_FROM_CHANNELS)
            .max(1);
        self.channels.max_turns_at_once.min(served)
    }

    /// The channel turns that may wait for approvals at once, of one channel and of all
    /// channels: one fewer than the turns that run at once (at least one), so a turn slot
    /// is always left for the chats whose turns ask for none.
    pub fn channel_approvals_waiting(&self) -> (u32, u32) {
        let kept = |at_once: u32| at_once.saturating_sub(1).max(1);
        let in_all = self.channel_turns_at_once();
        let per_channel = self.channels.max_turns_at_once_per_channel.min(in_all);
        (kept(per_channel), kept(in_all))
    }

    /// Parses configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        config.agent = loong_agent_wire::config::parse(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: 1,
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Loads `path`, first writing the commented defaults there (mode 0600) if it does not
    /// exist.
    pub fn load_or_init(path: &Path) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(DEFAULT_CONFIG_TEXT.as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), "wrote default configuration");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let bytes = match crate::home::read_bounded(path, MAX_CONFIG_BYTES).map_err(io)? {
            crate::home::Bounded::Read(b) => b,
            crate::home::Bounded::TooLarge(len) => {
                return Err(ConfigError::TooLarge {
                    path: path.to_path_buf(),
                    len,
                })
            }
        };
        let text = String::from_utf8(bytes)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Config::parse(&text, path)
    }
}

#[cfg(test)]
mod tests;
