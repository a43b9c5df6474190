//! The control API: loongctl (or any operator client) → loongd, on the control socket.

use serde::{Deserialize, Serialize};

/// Bound on each text field of [`StatusReport`].
pub const MAX_STATUS_TEXT_BYTES: usize = 4096;
/// The most audit records one answer carries.
pub const MAX_AUDIT_PAGE: u32 = 1000;
/// An audit answer stops adding records past this many bytes of detail (page with
/// `after_seq`).
pub const MAX_AUDIT_PAGE_BYTES: usize = 512 * 1024;
/// The most items one page of a list carries, and the default.
pub const MAX_PAGE_ITEMS: u32 = 500;
/// A page stops adding items once its encoded items pass this many bytes (it always carries
/// at least one), so every answer fits the default frame limit whatever its items hold.
pub const MAX_PAGE_BYTES: usize = 512 * 1024;

/// Which part of a list to return: the items whose key (the list's own: a token's or an
/// approval's id, a plugin's id, a worker's number, …) sorts after `after`, at most `limit`
/// of them (1 to [`MAX_PAGE_ITEMS`]; 0 means the most), and fewer when
/// [`MAX_PAGE_BYTES`] is reached. An empty page is the end of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Page {
    /// The key of the last item already seen (`None`: from the start).
    pub after: Option<String>,
    pub limit: u32,
}

impl Page {
    /// The number of items this page may carry.
    pub fn items(&self) -> usize {
        match self.limit {
            0 => MAX_PAGE_ITEMS as usize,
            n => n.min(MAX_PAGE_ITEMS) as usize,
        }
    }
}

/// Bound on the text of a policy file sent for checking.
pub const MAX_POLICY_TEXT_BYTES: usize = 1 << 20;

/// What every bearer secret starts with (a public token id starts with `tok_`), so a client
/// can tell one given where an id belongs and refuse to send it on.
pub const BEARER_SECRET_PREFIX: &str = "loong_";

/// A capability token's bearer secret on the wire. Its `Debug` form is redacted, so no log
/// line, error or panic message that prints a request or an answer carries it; the text is
/// reached only through [`BearerSecret::expose`], where it is used.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct BearerSecret(String);

impl BearerSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> BearerSecret {
        BearerSecret(secret.into())
    }

    /// The secret's text, for checking it or handing it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerSecret(<redacted>)")
    }
}

/// A secret's value on the wire (`secrets set`). Like [`BearerSecret`], its `Debug` form is
/// redacted, so no log line or error that prints a request carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(value.into())
    }

    /// The value, where it is stored.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A secret as `secrets list` shows it: its name and when it was set, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SecretView {
    pub name: String,
    pub set_ms: u64,
    /// The endpoint hosts (`HOST`, `HOST:PORT`) it may be sent to (empty, from an older
    /// store: none).
    pub hosts: Vec<String>,
}

/// What an operator client asks loongd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ControlRequest {
    /// Report the daemon's identity and state; answered by [`ControlResponse::Status`].
    Status,
    /// Shut down gracefully: stop accepting, finish requests in flight, remove the socket;
    /// answered by [`ControlResponse::ShuttingDown`] before the daemon exits.
    Shutdown,
    /// Report which confinement mechanisms this host has and which tiers it can enforce;
    /// answered by [`ControlResponse::Doctor`].
    Doctor,
    /// Run a program in a sandbox. Its stdin arrives as `Call::Stream` chunks, its output
    /// leaves as `Reply::Stream` chunks, and [`ControlResponse::SandboxExited`] ends it.
    SandboxRun(Box<SandboxRunRequest>),
    /// Check a policy file's text; answered by [`ControlResponse::PolicyReport`].
    PolicyCheck {
        /// The file's name, for the report.
        file: String,
        /// Its contents (at most [`MAX_POLICY_TEXT_BYTES`]).
        text: String,
    },
    /// Audit records matching a query; answered by [`ControlResponse::AuditRecords`].
    AuditQuery(AuditQuery),
    /// One audit record; answered by [`ControlResponse::AuditRecords`] (empty when absent).
    AuditShow {
        /// Its sequence number.
        seq: u64,
    },
    /// Verify the whole audit trail; answered by [`ControlResponse::AuditVerified`].
    AuditVerify,
    /// Records counted per group (`kind`, `pack`, `agent`, `token`); answered by
    /// [`ControlResponse::AuditSummary`].
    AuditSummary {
        group_by: String,
    },
    /// The records about one capability token, oldest first, a page at a time (the page's
    /// key is the record's sequence number); answered by [`ControlResponse::AuditRecords`].
    AuditTokenTrail {
        token: String,
        page: Page,
    },
    /// Issue a capability token; answered by [`ControlResponse::Tokens`] (the new one).
    TokenIssue {
        pack: String,
        agent: String,
        /// `CAP` or `CAP:SCOPE` each, within the pack's grants.
        grants: Vec<String>,
        ttl_ms: i64,
    },
    /// Tokens by id, a page at a time; answered by [`ControlResponse::Tokens`].
    TokenList(Page),
    /// Revoke one token; answered by [`ControlResponse::Revoked`].
    TokenRevoke {
        id: String,
    },
    /// Revoke every token of a pack by bumping its generation; answered by
    /// [`ControlResponse::Revoked`].
    TokenRevokeGeneration {
        pack: String,
    },
    /// Packs by id, a page at a time; answered by [`ControlResponse::Packs`].
    PackList(Page),
    /// Add a trust anchor (an ed25519 public key, 64 hex digits); answered by
    /// [`ControlResponse::Keys`].
    KeyAdd {
        name: String,
        tier: String,
        public: String,
    },
    /// Trust anchors by id, a page at a time; answered by [`ControlResponse::Keys`].
    KeyList(Page),
    /// Revoke a trust anchor; answered by [`ControlResponse::Keys`].
    KeyRevoke {
        id: String,
    },
    /// Replace a key by a new one it signed; answered by [`ControlResponse::Keys`] (the new key).
    KeyRotate {
        old_id: String,
        new_public: String,
        /// The old key's signature over the rotation message, hex.
        signature: String,
    },
    /// Approval requests by id, a page at a time; answered by [`ControlResponse::Approvals`].
    ApprovalList(Page),
    /// Approve or deny a pending request; answered by [`ControlResponse::Approvals`].
    ApprovalResolve {
        id: String,
        approve: bool,
        /// With an approval: also open a full-access window.
        full_access: Option<FullAccess>,
        /// The bearer secret of a token that grants `control.approvals` to resolve under
        /// (`None`: the operator's authority).
        token: Option<BearerSecret>,
    },
    /// Decide a request without carrying it out (audited like any decision); answered by
    /// [`ControlResponse::Decided`].
    PolicyDecide {
        /// The bearer secret to decide under (`None`: the operator's pack).
        token: Option<BearerSecret>,
        cap: String,
        target: Option<String>,
    },
    /// Call a tool (a plugin) through the decision pipeline and a confined worker; answered
    /// by [`ControlResponse::Invoked`].
    Invoke(InvokeRequest),
    /// Discovered plugins by id with their state, a page at a time; answered by
    /// [`ControlResponse::Plugins`].
    PluginList(Page),
    /// Discover plugins again (`HOME/plugins`); answered by [`ControlResponse::Plugins`] (the
    /// first page; [`ControlRequest::PluginList`] gives the rest).
    PluginReload,
    /// Worker processes by number, a page at a time (the key is the number in decimal);
    /// answered by [`ControlResponse::Workers`].
    WorkerList(Page),
    /// Kill one worker (its call in flight fails; it is replaced); answered by
    /// [`ControlResponse::Workers`] (the killed one).
    WorkerKill {
        id: u64,
    },
    /// Search the tools (active and deferred plugins); answered by
    /// [`ControlResponse::ToolHits`]. Audited.
    ToolSearch(ToolSearchRequest),
    /// Install a plugin package from a directory on loongd's host, or upgrade the installed
    /// plugin of the same id (with a health check, rolled back on failure); answered by
    /// [`ControlResponse::Plugins`] (the plugin as installed). Audited.
    PluginInstall {
        path: String,
        upgrade_only: bool,
        /// A ceiling the operator puts on the plugin's trust tier.
        trust: Option<String>,
    },
    /// Enable, disable or remove an installed plugin; answered by
    /// [`ControlResponse::Plugins`]. Audited.
    PluginEnable {
        id: String,
    },
    PluginDisable {
        id: String,
    },
    PluginRemove {
        id: String,
    },
    /// Re-hash every installed plugin against the lockfile; answered by
    /// [`ControlResponse::LockReport`].
    PluginVerifyLock,
    /// The daemon's metrics; answered by [`ControlResponse::Metrics`].
    Metrics,
    /// Set (or replace) a secret an `http_json` manifest names as `${secret:NAME}`; answered
    /// by [`ControlResponse::Secrets`] (that one, without its value).
    SecretSet {
        name: String,
        value: SecretValue,
        /// The only endpoint hosts (`HOST`, `HOST:PORT`) it may be sent to; at least one.
        hosts: Vec<String>,
    },
    /// Every secret's name and when it was set; answered by [`ControlResponse::Secrets`].
    SecretList,
    /// Remove a secret; answered by [`ControlResponse::Secrets`] (the one removed).
    SecretRemove {
        name: String,
    },
    /// One agent turn (`loongctl ask`); answered by [`ControlResponse::Asked`].
    Ask(AskRequest),
    /// The sessions kept in the agent's memory, a page at a time (by id); answered by
    /// [`ControlResponse::MemorySessions`]. Decided as `memory.read`.
    MemoryList(Page),
    /// One session's messages, oldest first; answered by [`ControlResponse::MemoryMessages`].
    /// Decided as `memory.read`.
    MemoryShow {
        session: String,
    },
    /// Forget one session; answered by [`ControlResponse::MemoryCleared`]. Decided as
    /// `memory.write`.
    MemoryClear {
        session: String,
    },
    /// Start the gateway (`[gateway]`) under loongd's supervision; answered by
    /// [`ControlResponse::Gateway`].
    GatewayRun,
    /// The gateway's state; answered by [`ControlResponse::Gateway`].
    GatewayStatus,
    /// Stop the gateway, its open streams drained for at most `drain_ms` (default
    /// `[gateway] drain_ms`); answered by [`ControlResponse::Gateway`].
    GatewayStop {
        drain_ms: Option<u64>,
    },
    /// Add a chat channel (its secrets, token and state); answered by
    /// [`ControlResponse::Channels`] (the one added). Audited.
    ChannelAdd(Box<ChannelAddRequest>),
    /// Every channel; answered by [`ControlResponse::Channels`].
    ChannelList,
    /// One channel with its counts and its poller's state; answered by
    /// [`ControlResponse::Channels`].
    ChannelStatus {
        name: String,
    },
    /// Remove a channel, its secrets, its token and its state; answered by
    /// [`ControlResponse::Channels`] (the one removed). Audited.
    ChannelRemove {
        name: String,
    },
    /// Restart a channel under a new token generation: its worker stops (drained), a new
    /// token is issued and the old one revoked (what the old generation asked is refused),
    /// and the worker starts again; answered by [`ControlResponse::Channels`]. Audited.
    ChannelRestart {
        name: String,
    },
    /// One plugin with every tool's name and input schema; answered by
    /// [`ControlResponse::Plugins`] (that one).
    PluginShow {
        id: String,
    },
}

/// What `loongctl gateway status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct GatewayView {
    pub running: bool,
    /// `[gateway] listen`: `HOST:PORT` or a Unix socket's path.
    pub listen: String,
    /// When it was started (ms since the epoch; 0: not running).
    pub started_ms: u64,
    pub uptime_ms: u64,
    /// HTTP requests its current worker answered, and requests and streams open now.
    pub requests: u64,
    pub open_streams: u64,
    /// Workers started again after one ended.
    pub restarts: u32,
    /// The worker serving now, and its pid (0: none).
    pub worker: u64,
    pub pid: u32,
    /// Why the last worker ended.
    pub last_exit: Option<String>,
}

/// Bound on a channel's name (letters, digits, `_`, `-`).
pub const MAX_CHANNEL_NAME_BYTES: usize = 64;
/// The most chat ids in a channel's allowlist or operator list.
pub const MAX_CHANNEL_CHATS: usize = 256;

/// A chat platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ChannelKind {
    Telegram,
    Feishu,
}

impl ChannelKind {
    /// Its name in the CLI, the tables and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Telegram => "telegram",
            ChannelKind::Feishu => "feishu",
        }
    }
}

/// `channels add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ChannelAddRequest {
    pub name: String,
    pub kind: ChannelKind,
    /// The platform's API base URL (`None`: the platform's public host).
    pub api_base: Option<String>,
    /// Chats whose messages are taken (Telegram; empty: none is).
    pub allowed_chats: Vec<String>,
    /// Chats offered approvals (Telegram).
    pub operator_chats: Vec<String>,
    /// The app id (Feishu).
    pub app_id: Option<String>,
    /// The platform secrets by role: `bot_token` (Telegram); `app_secret`, `encrypt_key`,
    /// `verification_token` (Feishu).
    pub secrets: Vec<(String, SecretValue)>,
    /// The pack the channel's token is issued within (`None`: the bundled `channel` pack,
    /// whose turns may call no tool). It must grant what a channel's turn needs.
    pub pack: Option<String>,
}

/// A channel as `channels list|status` shows it; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ChannelView {
    pub name: String,
    pub kind: ChannelKind,
    pub api_base: String,
    pub allowed_chats: Vec<String>,
    pub operator_chats: Vec<String>,
    pub app_id: Option<String>,
    /// The channel's token (public id).
    pub token_id: String,
    /// The pack its token is issued within.
    pub pack: String,
    /// The channel's token generation: 1 when added, one more at each `channels restart`.
    pub generation: u64,
    /// The names of its secrets in the secret store.
    pub secret_names: Vec<String>,
    /// Messages waiting for a turn, in a turn, answered, ignored.
    pub pending: u64,
    pub running: u64,
    pub answered: u64,
    pub ignored: u64,
    /// Answers not yet sent, and sent.
    pub unsent: u64,
    pub sent: u64,
    /// Telegram's next `getUpdates` offset.
    pub offset: Option<i64>,
    /// The poller's last `409 Conflict`, with what to do (while polls keep conflicting).
    pub conflict: Option<String>,
    /// The poller's last failure (while polls keep failing).
    pub last_error: Option<String>,
    /// A webhook channel's (Feishu's) URL on the gateway, to enter in the platform's console
    /// (behind the operator's public https name); `None` for a polling channel.
    pub webhook: Option<String>,
    /// Webhook requests refused (a bad signature, a stale timestamp, a replay, a body that
    /// does not parse) since loongd started.
    pub refused: u64,
}

/// Bound on [`AskRequest::prompt`].
pub const MAX_ASK_PROMPT_BYTES: usize = 256 * 1024;
/// Bound on a session id (letters, digits, `_`, `-`, `.`).
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// An agent turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AskRequest {
    /// What the user says (at most [`MAX_ASK_PROMPT_BYTES`]).
    pub prompt: String,
    /// The conversation it continues and is kept in (`None`: a turn without memory).
    pub session: Option<String>,
    /// The bearer secret of the token the turn's tool calls are decided under (`None`: the
    /// operator's pack).
    pub token: Option<BearerSecret>,
}

/// One tool call an agent turn made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AskToolCall {
    pub name: String,
    /// The arguments, as the model wrote them.
    pub arguments: String,
    /// What the model was answered.
    pub result: String,
    pub is_error: bool,
}

/// An answered agent turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AskResult {
    pub answer: String,
    pub session: Option<String>,
    /// The turn's correlation id: the root of its tool calls' chain in the trail.
    pub correlation: String,
    pub tool_calls: Vec<AskToolCall>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Model round trips.
    pub steps: u32,
    /// `answered`, `max_steps` or `budget`.
    pub stop: String,
    /// The provider of each round trip.
    pub providers: Vec<String>,
}

/// One session in the agent's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MemorySession {
    pub session: String,
    /// Messages kept.
    pub messages: u64,
    /// When it last changed, Unix seconds.
    pub updated_unix: i64,
}

/// One kept message of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MemoryMessage {
    pub seq: u64,
    /// `user`, `assistant` or `tool_result`.
    pub role: String,
    /// The message as JSON.
    pub json: String,
}

/// One installed plugin checked against its lock entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LockCheck {
    pub id: String,
    pub version: String,
    /// The digest in the lockfile.
    pub locked: String,
    /// What differs: files changed, added or removed, or the package missing (empty: none).
    pub drift: Vec<String>,
}

/// Bound on a search query.
pub const MAX_SEARCH_QUERY_BYTES: usize = 1024;
/// The most hits one search returns, and the default.
pub const MAX_SEARCH_LIMIT: u32 = 100;
pub const DEFAULT_SEARCH_LIMIT: u32 = 10;

/// A tool search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ToolSearchRequest {
    /// Words matched against names, tags, summaries and descriptions (empty: every tool).
    pub query: String,
    /// Only tools at least this trusted: `official`, `verified-community` or `unverified`.
    pub trust: Option<String>,
    /// At most this many hits (1 to [`MAX_SEARCH_LIMIT`]).
    pub limit: u32,
}

/// One tool found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ToolHit {
    /// What `invoke` takes.
    pub name: String,
    pub plugin: String,
    pub summary: String,
    /// The MCP tool's own description, when there is one.
    pub description: String,
    pub tags: Vec<String>,
    /// Example inputs and outputs, as JSON text.
    pub input_examples: Vec<String>,
    pub output_examples: Vec<String>,
    /// The trust tier loongd grants (what is proved, not what the manifest claims).
    pub trust: String,
    /// What the manifest claims, if anything.
    pub claimed_trust: Option<String>,
    /// `active` or `deferred`.
    pub state: String,
    pub bridge_kind: String,
    pub score: u32,
}

/// Bound on [`InvokeRequest::input`].
pub const MAX_INVOKE_INPUT_BYTES: usize = 1024 * 1024;

/// A tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InvokeRequest {
    /// The tool: a plugin id.
    pub tool: String,
    /// The JSON input (at most [`MAX_INVOKE_INPUT_BYTES`]).
    pub input: String,
    /// The bearer secret of the token the call is decided under (`None`: the operator's
    /// authority).
    pub token: Option<BearerSecret>,
}

/// A completed tool call and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InvokeResult {
    pub tool: String,
    /// The JSON the tool returned.
    pub output: String,
    /// The worker that ran it.
    pub worker: u64,
    pub logs: Vec<String>,
    /// Wall time in loongd, from decision to answer, µs.
    pub wall_us: u64,
    /// Wall time inside the worker, µs.
    pub worker_wall_us: u64,
    /// CPU time of the worker's thread during the call, µs.
    pub cpu_us: u64,
    pub fuel_consumed: Option<u64>,
    pub peak_memory_bytes: u64,
}

/// A plugin as `loongctl plugins list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PluginView {
    pub id: String,
    pub version: String,
    pub summary: String,
    pub bridge_kind: String,
    /// `ready` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The module's sha256, once a worker loaded it.
    pub sha256: Option<String>,
    /// The plugin's directory.
    pub path: String,
    /// The tools it offers (`PLUGIN_ID/TOOL` for an MCP server; its own id otherwise): every
    /// one in the answer to [`ControlRequest::PluginShow`], an install or an enable; the first
    /// [`MAX_LISTED_TOOLS`] in a page of [`ControlRequest::PluginList`] (`tool_count` says
    /// how many there are).
    pub tools: Vec<String>,
    /// The JSON schema of each tool's input, in the order of `tools`, as compact JSON text
    /// (`{"type":"object"}` when the plugin gives none; each bounded by
    /// [`crate::schema::MAX_INPUT_SCHEMA_BYTES`]); empty in a page of
    /// [`ControlRequest::PluginList`].
    pub input_schemas: Vec<String>,
    /// The effective trust tier: the lowest of what the manifest claims and what its
    /// signature proves (`unverified` when unsigned).
    pub trust: String,
    /// The signing key (`ID (NAME)`), when the package is signed by a trust anchor.
    pub signer: Option<String>,
    /// The package digest in the lockfile, for an installed plugin.
    pub lock_digest: Option<String>,
    /// How many tools it offers (`tools` may list only the first of them).
    pub tool_count: u32,
}

/// The most tool names a plugin carries in a page of [`ControlRequest::PluginList`]: a page
/// of MCP servers of hundreds of tools each would otherwise carry every name (and schema)
/// of every one; [`ControlRequest::PluginShow`] gives them all.
pub const MAX_LISTED_TOOLS: usize = 16;

/// A worker process as `loongctl workers list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WorkerView {
    pub id: u64,
    pub pid: u32,
    /// `wasm`.
    pub kind: String,
    pub tier: String,
    /// `idle` or `busy`.
    pub state: String,
    /// The tool it is running, when busy.
    pub tool: Option<String>,
    pub calls: u64,
    pub started_ms: i64,
}

/// A one-time full-access window: requests that need approval are approved while it lasts
/// and has uses left. The denylist still applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FullAccess {
    pub ttl_ms: i64,
    pub uses: u32,
    /// Only this pack (`None`: every pack).
    pub pack: Option<String>,
}

/// A trust anchor as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub public: String,
    pub added_ms: i64,
    /// `active`, `revoked` or `replaced`.
    pub state: String,
    pub replaced_by: Option<String>,
}

/// An approval request as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ApprovalView {
    pub id: String,
    pub created_ms: i64,
    pub deadline_ms: i64,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    pub actor: String,
    pub pack: String,
    pub capability: String,
    pub target: String,
    pub score: u32,
    pub reasons: String,
    pub resolver: Option<String>,
    /// The public id of the token the request was made under (`None`: the operator).
    pub token: Option<String>,
    /// That token's agent.
    pub agent: Option<String>,
    /// For `process.exec`: the program and every argument, as they would run.
    pub argv: Vec<String>,
    /// For a tool call: the tool.
    pub tool: Option<String>,
    /// For a tool call: the start of its input, at most [`MAX_INPUT_PREVIEW_BYTES`].
    pub input_preview: Option<String>,
    /// For a tool call: the sha256 of its whole input, in hex.
    pub input_sha256: Option<String>,
    /// For a tool call: the size of its whole input (more than the preview when it was cut).
    pub input_bytes: Option<u64>,
    /// Why loongd decided it (a denial because its token died while it waited).
    pub note: Option<String>,
    /// For a nested call (a kernel call): the plugin or built-in whose worker asked for it.
    pub caller: Option<String>,
    /// For a nested call: the call chain it belongs to.
    pub chain: Option<ApprovalChain>,
}

/// The call chain of an approval asked for by a nested call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ApprovalChain {
    /// The root call's correlation id.
    pub root: String,
    /// The call that made the nested call.
    pub parent: String,
    /// How deep the nested call is (1: called by the root call's worker).
    pub depth: u32,
}

/// Bound on [`ApprovalView::input_preview`].
pub const MAX_INPUT_PREVIEW_BYTES: usize = 1024;

/// A capability token as the CLI shows it: its public id, never its secret (but see
/// `secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TokenView {
    pub id: String,
    pub pack: String,
    pub agent: String,
    pub grants: Vec<String>,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub generation: u64,
    /// `active`, `expired`, `revoked` or `stale` (its pack's generation moved on).
    pub state: String,
    /// The bearer secret: only in the answer to [`ControlRequest::TokenIssue`], the one time
    /// it is shown; loongd keeps only its hash.
    pub secret: Option<BearerSecret>,
}

/// A pack as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PackView {
    pub id: String,
    pub domain: String,
    pub version: String,
    pub summary: String,
    pub grants: Vec<String>,
    pub connectors: Vec<String>,
    pub approval: String,
    pub generation: u64,
}

/// A decision as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DecisionView {
    pub allowed: bool,
    /// Allowed once approved.
    pub needs_approval: bool,
    /// Why not, when denied.
    pub reason: Option<String>,
    /// The pack the request was decided in.
    pub pack: String,
}

/// Which audit records to return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditQuery {
    /// Only this kind (`sandbox.exited`, …).
    pub kind: Option<String>,
    /// Only records at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only records at or before this time (Unix ms).
    pub until_ms: Option<i64>,
    /// Only records after this sequence number (paging, oldest first).
    pub after_seq: Option<u64>,
    /// At most this many (capped at [`MAX_AUDIT_PAGE`]).
    pub limit: u32,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

/// One audit record as the CLI shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditRecordView {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: String,
    pub actor: String,
    pub correlation: String,
    /// JSON text.
    pub detail: String,
    /// The record's chain hash, hex.
    pub hash: String,
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuditVerifyReport {
    pub records: u64,
    pub checkpoints: u64,
    /// The first bad sequence number, if any.
    pub first_bad_seq: Option<u64>,
    /// What is wrong there.
    pub problem: Option<String>,
}

/// `loongctl sandbox run`'s request. Paths are absolute (loongctl resolves them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SandboxRunRequest {
    /// `restricted`, `balanced` or `trusted`.
    pub tier: String,
    /// The program and its arguments.
    pub program: String,
    pub args: Vec<String>,
    /// Read-only grants.
    pub read: Vec<String>,
    /// Read-write grants.
    pub write: Vec<String>,
    /// `HOST:PORT` network grants.
    pub allow_net: Vec<String>,
    /// Wall-clock limit in ms.
    pub timeout_ms: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_secs: Option<u64>,
    /// Environment entries passed in (names validated by loongd).
    pub env: Vec<(String, String)>,
    /// Run even where the host cannot enforce the tier (audited).
    pub allow_degraded: bool,
    /// Largest output (stdout + stderr) relayed before the program is killed.
    pub max_output_bytes: Option<u64>,
    /// The bearer secret of the token the run is decided under (`None`: the operator's own
    /// authority).
    pub token: Option<BearerSecret>,
}

/// loongd's answers on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ControlResponse {
    /// The answer to [`ControlRequest::Status`].
    Status(StatusReport),
    /// The answer to [`ControlRequest::Shutdown`]: the daemon is going down.
    ShuttingDown,
    /// The answer to [`ControlRequest::Doctor`].
    Doctor(DoctorReport),
    /// The end of [`ControlRequest::SandboxRun`].
    SandboxExited(SandboxExit),
    /// The answer to [`ControlRequest::PolicyCheck`]: every problem, one line each.
    PolicyReport { problems: Vec<String> },
    /// Audit records.
    AuditRecords(Vec<AuditRecordView>),
    /// The answer to [`ControlRequest::AuditVerify`].
    AuditVerified(AuditVerifyReport),
    /// Tokens.
    Tokens(Vec<TokenView>),
    /// The answer to a revocation: how many tokens it touched (a generation bump reports the
    /// new generation).
    Revoked {
        existed: bool,
        generation: Option<u64>,
    },
    /// Packs.
    Packs(Vec<PackView>),
    /// The answer to [`ControlRequest::PolicyDecide`].
    Decided(DecisionView),
    /// Approval requests.
    Approvals(Vec<ApprovalView>),
    /// Trust anchors.
    Keys(Vec<KeyView>),
    /// `(group, records, decisions allowed, decisions denied)`, largest first.
    AuditSummary(Vec<(String, u64, u64, u64)>),
    /// The answer to [`ControlRequest::Invoke`].
    Invoked(InvokeResult),
    /// Plugins.
    Plugins(Vec<PluginView>),
    /// Workers.
    Workers(Vec<WorkerView>),
    /// Tools found, best first.
    ToolHits(Vec<ToolHit>),
    /// The installed plugins against the lockfile.
    LockReport(Vec<LockCheck>),
    /// The answer to [`ControlRequest::Metrics`]: OpenMetrics text (it ends with `# EOF`).
    Metrics(String),
    /// Secrets by name (the answer to `SecretSet`, `SecretList` and `SecretRemove`), never
    /// with their values.
    Secrets(Vec<SecretView>),
    /// The answer to [`ControlRequest::Ask`].
    Asked(AskResult),
    /// The answer to [`ControlRequest::MemoryList`].
    MemorySessions(Vec<MemorySession>),
    /// The answer to [`ControlRequest::MemoryShow`].
    MemoryMessages(Vec<MemoryMessage>),
    /// The answer to [`ControlRequest::MemoryClear`]: how many messages were forgotten.
    MemoryCleared { session: String, removed: u64 },
    /// The gateway's state.
    Gateway(GatewayView),
    /// Channels (the answer to `ChannelAdd`, `ChannelList`, `ChannelStatus`, `ChannelRemove`).
    Channels(Vec<ChannelView>),
}

/// The daemon's state as `loongctl status` shows it.
///
/// Paths are sent as text (lossily converted when they are not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StatusReport {
    /// loongd's version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its process id.
    pub pid: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Its home (state directory).
    pub home: String,
    /// The control socket's path.
    pub socket_path: String,
    /// Clients connected to the control socket, this one included.
    pub connected_clients: u32,
}

/// One confinement mechanism on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MechanismReport {
    pub name: String,
    pub available: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// Whether a tier can be fully enforced here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TierReport {
    pub tier: String,
    pub enforceable: bool,
    /// Mechanisms the tier needs that are missing.
    pub missing: Vec<String>,
}

/// `loongctl doctor`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DoctorReport {
    pub mechanisms: Vec<MechanismReport>,
    pub tiers: Vec<TierReport>,
    /// The kernel's landlock ABI (0 when absent).
    pub landlock_abi: i32,
    /// Whether loongd runs as root.
    pub root: bool,
    /// Why the sandbox is unusable altogether (for example, the helper is missing).
    pub error: Option<String>,
    /// Sandboxes the egress broker serves now (each with a network grant).
    #[serde(default)]
    pub egress_sandboxes: u64,
    /// Connections open through the egress broker now.
    #[serde(default)]
    pub egress_open: u64,
    /// Whose ids sandboxes run as: `root`, `rootless with subordinate ids`, `rootless
    /// degraded (loongd's own uid)` or `rootless without subordinate ids (sandboxes refused)`.
    #[serde(default)]
    pub ids_mode: String,
    /// The subordinate ranges in use, or why there are none.
    #[serde(default)]
    pub ids_detail: Option<String>,
    /// What the running mode lacks.
    #[serde(default)]
    pub ids_lacks: Vec<String>,
    /// loongd is not root and has no subordinate ids: sandboxes are refused, or run as
    /// loongd's own uid (degraded).
    #[serde(default)]
    pub ids_own_uid: bool,
}

/// How a sandboxed program ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SandboxExit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when it was killed (9 after a timeout or an output flood, 31 for seccomp).
    pub signal: Option<i32>,
    /// The shell's view: the code, or 128 + the signal.
    pub shell_code: i32,
    /// Killed at the wall-clock limit.
    pub timed_out: bool,
    /// Killed for exceeding the output limit.
    pub output_limit_exceeded: bool,
    /// The kernel OOM-killed a process of the sandbox.
    pub oom_killed: bool,
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
    /// Mechanisms the tier needs that this run went without (degraded mode).
    pub degraded: Vec<String>,
}

/// The bytes a key rotation signs: the new public key, under the key it replaces. Both loongctl
/// (which signs) and loongd (which verifies) build it here.
pub fn rotation_message(new_public: &[u8; 32]) -> Vec<u8> {
    let mut m = b"loong-key-rotation-v1\0".to_vec();
    m.extend_from_slice(new_public);
    m
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn a_bearer_secret_never_shows_in_debug_output_and_encodes_as_its_text() {
        let secret = "loong_00ff00ff";
        let req = ControlRequest::Invoke(InvokeRequest {
            tool: "echo".into(),
            input: "{}".into(),
            token: Some(BearerSecret::new(secret)),
        });
        let shown = format!("{req:?} {req:#?}");
        assert!(
            !shown.contains(secret) && shown.contains("<redacted>"),
            "{shown}"
        );
        // On the wire it is the plain string it always was.
        let plain = postcard::to_allocvec(&Some(secret.to_string())).expect("encode");
        let wrapped = postcard::to_allocvec(&Some(BearerSecret::new(secret))).expect("encode");
        assert_eq!(plain, wrapped);
        assert_eq!(BearerSecret::new(secret).expose(), secret);
    }
}
