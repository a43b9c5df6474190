//! The audit trail: an append-only, hash-chained record stream in SQLite (WAL), with
//! checkpoints signed by the daemon's own ed25519 key, verifiable offline.
//!
//! Every record's hash is `sha256(previous hash ‖ canonical encoding)`, the first record's
//! previous hash being 32 zero bytes. A checkpoint signs `(seq, hash)` every
//! [`CHECKPOINT_EVERY`] records and at shutdown, so rewriting the chain after a change is
//! caught too. One writer thread owns the database: appends queue to it, in one ordered queue,
//! and it commits them in that order, in groups ([`GROUP_MAX`] at most per transaction),
//! acknowledging each append only after its transaction committed. A client that saw an
//! acknowledgement can rely on the record.
//!
//! The audit trail is not logging: kinds are a closed enum, records are versioned, and
//! `audit verify` checks the whole stream.

pub mod bound;
pub mod detail;
mod key;
mod queue;
pub mod siem;
mod store;
mod verify;
mod wal;
pub mod witness;

use std::{
    path::Path,
    sync::{Arc, LazyLock},
};

use sha2::{Digest, Sha256};

pub use detail::{Detail, Field};
pub use key::AuditKey;
pub use store::{ApprovalTrail, Audit, AuditError, Commit, Dangling, PreviousRun, Query, Startup};
pub use verify::{verify, verify_scope, Scope, VerifyReport};

/// Records committed in one transaction at most.
pub const GROUP_MAX: usize = 4096;
/// Records kept after failed commits, to be committed first by the next one that succeeds,
/// at most: one group. While that many are kept the writer takes nothing new from its queue,
/// so the queue fills ([`QUEUE_DEPTH`]) and its producers wait for room: every effect that
/// waits for its record (or to queue one) waits until a commit succeeds, and no record is
/// dropped.
pub const KEPT_MAX: usize = GROUP_MAX;
/// Records a waiting request's thread commits at most in the writer's stead (see
/// [`Commit::commit_here`]): a commit on a runtime thread holds that thread, so a larger group
/// (a burst's, or the records a lingering writer holds) is left to the writer.
pub const HELP_MAX: usize = 64;
/// How long the writer waits after a failed commit before it tries again (the database
/// locked by another connection past its busy timeout, a full disk).
pub const COMMIT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a record that nobody waits for (`record_later`) waits at most for company: it
/// rides the next commit, or is committed alone when `LINGER` has passed since it was queued.
/// After a commit someone waited for, the writer lingers as long for what follows (a call's
/// outcome, the next call's records), so a call's outcome shares the next call's commit (one
/// fsync, one wake-up of the writer) instead of costing one of its own.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(20);
/// A checkpoint is signed after this many records (and on every `daemon.stopped`, and at
/// shutdown); verification expects one at every multiple of it.
pub const CHECKPOINT_EVERY: u64 = 256;
/// Messages the writer's queue holds (a call's records queued together count once); past
/// it, producers wait for room.
pub const QUEUE_DEPTH: usize = 65_536;
/// Bound on a record's detail text (see [`bound`]: over-long fields are cut one by one).
pub const MAX_DETAIL_BYTES: usize = 16 * 1024;
/// The database file inside the home.
pub const DB_FILE: &str = "audit.db";

/// What happened. Closed: a new kind is a new variant, with a test that it is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// loongd started on its home.
    DaemonStarted,
    /// loongd shut down cleanly (the record carries a signed checkpoint).
    DaemonStopped,
    /// loongd started after a run that recorded no clean stop (a crash or `kill -9`); the
    /// run's calls without an outcome are closed by `tool.failed` records that follow.
    DaemonUncleanStop,
    /// loongd started although its trail failed verification, because the operator said so
    /// (`--accept-audit-integrity-failure`); names the first bad record.
    AuditIntegrityFailed,
    /// A sandbox was started.
    SandboxSpawned,
    /// A sandbox ran without a mechanism its tier needs (degraded mode, as asked).
    SandboxDegraded,
    /// A sandbox ended.
    SandboxExited,
    /// A sandbox request was refused before anything ran.
    SandboxRefused,
    /// A peer broke the protocol; its connection was closed.
    ProtocolViolation,
    /// A peer was refused by the SO_PEERCRED check.
    PeerRefused,
    /// The decision pipeline decided a request (allowed or denied, and why).
    PolicyDecision,
    /// A capability token was issued.
    TokenIssued,
    /// A capability token was revoked.
    TokenRevoked,
    /// A pack's generation was bumped, revoking all its earlier tokens.
    GenerationBumped,
    /// A request waits for an operator's approval.
    ApprovalRequested,
    /// An approval request was approved or denied (by whom), or a full-access window
    /// approved a request.
    ApprovalResolved,
    /// An approval request went unanswered past its deadline (denied).
    ApprovalExpired,
    /// An approved request's caller went away before it took the approval: its effect did
    /// not run.
    ApprovalUnused,
    /// A trust anchor was added to the keyring.
    KeyAdded,
    /// A trust anchor was revoked.
    KeyRevoked,
    /// A trust anchor was replaced by a key it signed.
    KeyRotated,
    /// A policy profile was loaded (with its sha256 and signer).
    ProfileLoaded,
    /// A policy profile was refused (pin mismatch, bad or missing signature, invalid).
    ProfileRejected,
    /// A worker process was started (its id, pid, tier and cold-start time).
    WorkerSpawned,
    /// A worker process ended or was killed (why, exit code, signal, OOM).
    WorkerExited,
    /// A service worker (the gateway, a channel) is started again after it ended, after its
    /// backoff (the service, its name, the attempt and why the last one ended).
    WorkerRestarted,
    /// A tool call was allowed and handed to a worker.
    ToolInvoked,
    /// A tool call answered (with its wall time, CPU, fuel and peak memory).
    ToolCompleted,
    /// A tool call failed (the plugin's failure class, or the worker's death).
    ToolFailed,
    /// A plugin was discovered and loaded by a worker (with its module's sha256).
    PluginLoaded,
    /// A plugin was refused at discovery or load (with the reason).
    PluginRefused,
    /// A tool search (the query, the trust filter and what was found).
    ToolSearched,
    /// A plugin package installed or upgraded (version, digest, trust, signer, enabled).
    PluginInstalled,
    /// An upgrade or install that failed its checks; the previous version kept serving.
    PluginRolledBack,
    /// An operator enabled, disabled or removed an installed plugin.
    PluginEnabled,
    PluginDisabled,
    PluginRemoved,
    /// An operator set or replaced a secret (its name; never its value).
    SecretSet,
    /// An operator removed a secret (its name).
    SecretRemoved,
    /// An agent turn's provider failed before answering and the fallback was asked.
    ProviderFailover,
    /// The egress broker connected a sandbox to a destination (who, host, address, port).
    NetConnected,
    /// A brokered connection ended (bytes each way, duration, outcome).
    NetClosed,
    /// The egress broker refused a connection (host, port, reason).
    NetDenied,
    /// A chat channel took a message into its inbox (channel, chat id, message id; never
    /// the text).
    ChannelReceived,
    /// A chat channel ignored a message from a chat not in its allowlist (channel, chat id,
    /// sender, message id).
    ChannelIgnored,
    /// A chat channel's worker sent an answer (channel, chat id, the message it answers, the
    /// platform's ids of what was sent).
    ChannelSent,
    /// A chat channel refused a webhook request (channel, why: a bad signature, a stale
    /// timestamp, a replayed event id, a body that does not parse); one a channel a minute,
    /// the rest counted in the next (`unrecorded_before`) and in `channels status`.
    ChannelRefused,
    /// A browser session navigated (`browser.open`: each navigation and redirect with its
    /// host and outcome, the subresource hosts summarised), or ended because its worker failed.
    BrowserNavigated,
}

impl Kind {
    /// Whether a record of this kind, when someone waits for it, announces an effect that
    /// runs only once the record is committed, so that its waiter, told that the commit
    /// failed, refuses the effect: an allowed decision (`policy.decision`), a call handed to a
    /// worker (`tool.invoked`), an approval asked or given (`approval.requested`,
    /// `approval.resolved`). Such a record is dropped after a failed commit whose refusal its
    /// waiter heard (the trail must not show an effect that did not run). Every other record
    /// is of something that happened before it was queued (an outcome, a revocation, a
    /// process's end, an operator's change, a start) and is kept for the next commit.
    pub fn gates_its_effect(self) -> bool {
        matches!(
            self,
            Kind::PolicyDecision
                | Kind::ToolInvoked
                | Kind::ApprovalRequested
                | Kind::ApprovalResolved
        )
    }

    /// Every kind.
    pub const ALL: [Kind; 48] = [
        Kind::DaemonStarted,
        Kind::DaemonStopped,
        Kind::DaemonUncleanStop,
        Kind::AuditIntegrityFailed,
        Kind::SandboxSpawned,
        Kind::SandboxDegraded,
        Kind::SandboxExited,
        Kind::SandboxRefused,
        Kind::ProtocolViolation,
        Kind::PeerRefused,
        Kind::PolicyDecision,
        Kind::TokenIssued,
        Kind::TokenRevoked,
        Kind::GenerationBumped,
        Kind::ApprovalRequested,
        Kind::ApprovalResolved,
        Kind::ApprovalExpired,
        Kind::ApprovalUnused,
        Kind::KeyAdded,
        Kind::KeyRevoked,
        Kind::KeyRotated,
        Kind::ProfileLoaded,
        Kind::ProfileRejected,
        Kind::WorkerSpawned,
        Kind::WorkerExited,
        Kind::WorkerRestarted,
        Kind::ToolInvoked,
        Kind::ToolCompleted,
        Kind::ToolFailed,
        Kind::PluginLoaded,
        Kind::PluginRefused,
        Kind::ToolSearched,
        Kind::PluginInstalled,
        Kind::PluginRolledBack,
        Kind::PluginEnabled,
        Kind::PluginDisabled,
        Kind::PluginRemoved,
        Kind::SecretSet,
        Kind::SecretRemoved,
        Kind::ProviderFailover,
        Kind::NetConnected,
        Kind::NetClosed,
        Kind::NetDenied,
        Kind::ChannelReceived,
        Kind::ChannelIgnored,
        Kind::ChannelSent,
        Kind::ChannelRefused,
        Kind::BrowserNavigated,
    ];

    /// The stable name stored and shown (`--kind` takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DaemonStarted => "daemon.started",
            Kind::DaemonStopped => "daemon.stopped",
            Kind::DaemonUncleanStop => "daemon.unclean_stop",
            Kind::AuditIntegrityFailed => "audit.integrity_failed",
            Kind::SandboxSpawned => "sandbox.spawned",
            Kind::SandboxDegraded => "sandbox.degraded",
            Kind::SandboxExited => "sandbox.exited",
            Kind::SandboxRefused => "sandbox.refused",
            Kind::ProtocolViolation => "protocol.violation",
            Kind::PeerRefused => "peer.refused",
            Kind::PolicyDecision => "policy.decision",
            Kind::TokenIssued => "token.issued",
            Kind::TokenRevoked => "token.revoked",
            Kind::GenerationBumped => "token.generation_bumped",
            Kind::ApprovalRequested => "approval.requested",
            Kind::ApprovalResolved => "approval.resolved",
            Kind::ApprovalExpired => "approval.expired",
            Kind::ApprovalUnused => "approval.unused",
            Kind::KeyAdded => "key.added",
            Kind::KeyRevoked => "key.revoked",
            Kind::KeyRotated => "key.rotated",
            Kind::ProfileLoaded => "profile.loaded",
            Kind::ProfileRejected => "profile.rejected",
            Kind::WorkerSpawned => "worker.spawned",
            Kind::WorkerExited => "worker.exited",
            Kind::WorkerRestarted => "worker.restarted",
            Kind::ToolInvoked => "tool.invoked",
            Kind::ToolCompleted => "tool.completed",
            Kind::ToolFailed => "tool.failed",
            Kind::PluginLoaded => "plugin.loaded",
            Kind::PluginRefused => "plugin.refused",
            Kind::ToolSearched => "tool.searched",
            Kind::PluginInstalled => "plugin.installed",
            Kind::PluginRolledBack => "plugin.rolled_back",
            Kind::PluginEnabled => "plugin.enabled",
            Kind::PluginDisabled => "plugin.disabled",
            Kind::PluginRemoved => "plugin.removed",
            Kind::SecretSet => "secret.set",
            Kind::SecretRemoved => "secret.removed",
            Kind::ProviderFailover => "provider.failover",
            Kind::NetConnected => "net.connected",
            Kind::NetClosed => "net.closed",
            Kind::NetDenied => "net.denied",
            Kind::ChannelReceived => "channel.received",
            Kind::ChannelIgnored => "channel.ignored",
            Kind::ChannelSent => "channel.sent",
            Kind::ChannelRefused => "channel.refused",
            Kind::BrowserNavigated => "browser.navigated",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An event to record. Kernel-internal: the detail is built explicitly as JSON, or as its
/// stored text ([`detail::object`]).
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    /// Who caused it: `uid:N` for a control-socket peer, `loongd` for the daemon itself.
    /// Shared by the records of one actor, not copied per record.
    pub actor: Arc<str>,
    /// Ties records of one request together (`conn-N/req-M`); shared like the actor.
    pub correlation: Arc<str>,
    pub detail: Detail,
}

/// The actor of loongd's own records.
static LOONGD: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("loongd"));
/// The empty correlation of records that belong to no request.
static NO_CORRELATION: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

impl Event {
    /// An event by loongd itself.
    pub fn daemon(kind: Kind, detail: impl Into<Detail>) -> Event {
        Event {
            kind,
            actor: LOONGD.clone(),
            correlation: no_correlation(),
            detail: detail.into(),
        }
    }

    /// An event by `actor` in request `correlation`.
    pub fn new(
        kind: Kind,
        actor: impl Into<Arc<str>>,
        correlation: impl Into<Arc<str>>,
        detail: impl Into<Detail>,
    ) -> Event {
        Event {
            kind,
            actor: actor.into(),
            correlation: correlation.into(),
            detail: detail.into(),
        }
    }
}

/// The correlation of a record that belongs to no request (shared, not allocated).
pub fn no_correlation() -> Arc<str> {
    NO_CORRELATION.clone()
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: String,
    pub actor: String,
    pub correlation: String,
    /// JSON text.
    pub detail: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The canonical encoding hashed into the chain (format version 1).
pub fn canonical(
    seq: u64,
    time_ms: i64,
    kind: &str,
    actor: &str,
    correlation: &str,
    detail: &str,
) -> Vec<u8> {
    let mut v =
        Vec::with_capacity(64 + kind.len() + actor.len() + correlation.len() + detail.len());
    v.extend_from_slice(b"loong-audit-v1\0");
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&time_ms.to_be_bytes());
    for field in [kind, actor, correlation, detail] {
        v.extend_from_slice(&(field.len() as u32).to_be_bytes());
        v.extend_from_slice(field.as_bytes());
    }
    v
}

/// `sha256(prev ‖ canonical)`.
pub fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// [`chain_hash`] of [`canonical`]'s encoding of these fields, fed to the hash field by
/// field instead of copied into one buffer first (the writer's path: no allocation, no copy
/// of the detail).
pub fn chain_hash_of(
    prev: &[u8; 32],
    seq: u64,
    time_ms: i64,
    kind: &str,
    actor: &str,
    correlation: &str,
    detail: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"loong-audit-v1\0");
    h.update(seq.to_be_bytes());
    h.update(time_ms.to_be_bytes());
    for field in [kind, actor, correlation, detail] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// The message a checkpoint signs.
pub fn checkpoint_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = b"loong-audit-checkpoint-v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// When a committed group counts as recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// On disk: every commit waits for an fsync (SQLite `synchronous = FULL`), so a record
    /// survives a power loss. The default.
    #[default]
    Full,
    /// In the operating system: a commit survives loongd crashing or being killed, but the
    /// last groups may be lost with the machine (`synchronous = NORMAL` in WAL mode).
    Normal,
}

impl Durability {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

/// Opens the home's audit trail (creating the database and the key on first use), with its
/// witness in the home.
pub fn open(home: &Path) -> Result<Audit, AuditError> {
    open_with(
        home,
        siem::SiemConfig::default(),
        Durability::Full,
        &home.join(witness::DEFAULT_WITNESS_FILE),
    )
}

/// [`open`] with SIEM transports, a durability and a witness file.
pub fn open_with(
    home: &Path,
    siem: siem::SiemConfig,
    durability: Durability,
    witness: &Path,
) -> Result<Audit, AuditError> {
    let key = AuditKey::load_or_create(&home.join("keys"))?;
    Audit::open(&home.join(DB_FILE), key, siem, durability, witness)
}

#[cfg(test)]
mod tests;
