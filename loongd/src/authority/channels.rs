//! The chat channels' state in `HOME/state.db` (tables added by state.db schema version 3;
//! the approvals offered and the token generation by version 5): each channel's
//! configuration, token id and generation, Telegram's update offset, the inbox of received
//! messages, the outbox of answers to send, the approvals offered to its operator chats, and
//! Feishu's seen event ids.
//!
//! **Exactly once.** A batch of received updates and the offset past them are committed in
//! ONE transaction ([`ChannelStore::receive`]): a kill before the commit leaves the old offset
//! (the platform sends the batch again), after it the messages are in the inbox and the
//! platform is asked from the new offset. Each inbox row is keyed by the platform's own id
//! (Telegram's `update_id`, Feishu's `event_id`), so a batch received twice (a worker killed
//! after the commit but before it polled again) is taken once. A message's answer is written
//! to the outbox in the same transaction that marks it answered ([`ChannelStore::answer`]),
//! at most one outbox row per message. A turn that was running when loongd died is run again
//! at start ([`ChannelStore::recover`]): its answer had not been committed. The claim itself
//! (pending → running) waits for no fsync: lost with the machine, the message is still
//! pending; the answer's synchronous commit carries it to disk. The one boundary
//! that is at least once is the platform's send: an outbox row is acked after the platform
//! answered 200, so a kill between that 200 and the ack sends it again (once more per kill;
//! the platform offers no idempotency key). See docs/channels.md.

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use super::{db::StateDb, tokens::TokenError};

/// The most channels one home configures.
pub const MAX_CHANNELS: usize = 64;
/// The most bytes of a received message's text kept (longer text is refused by the worker).
pub const MAX_INBOX_TEXT_BYTES: usize = 64 * 1024;
/// The most bytes of an answer kept in the outbox.
pub const MAX_OUTBOX_TEXT_BYTES: usize = 256 * 1024;
/// The most messages one `receive` takes.
pub const MAX_RECEIVED_BATCH: usize = 100;
/// The most pending inbox rows per channel; past it new messages are refused (the worker
/// does not advance its offset, so nothing is lost: the platform keeps them).
pub const MAX_PENDING_INBOX: u64 = 1_000;
/// The most messages of one chat waiting for their turns: past it a chat's messages are
/// kept as ignored (audited, no turn), so one chat (a flood, a worker making a chat's
/// messages up) cannot fill the channel's inbox and stop every other chat's messages.
pub const MAX_PENDING_PER_CHAT: u64 = 50;
/// The most ignored messages (from chats not allowed) kept per channel: the newest, to take
/// a batch handed over twice once; older ones go as new ones come, so a stranger writing
/// without end (or a worker making updates up) grows no table.
pub const MAX_IGNORED_KEPT: u64 = 1_000;
/// The largest offset a Telegram channel keeps: one past the largest update id. The Bot API
/// documents `update_id` without the note it gives ids past 32 bits, so an update id past
/// `i32::MAX` is not the platform's, and an offset past it would make the channel deaf for
/// good (the offset never moves back).
pub const MAX_TELEGRAM_OFFSET: i64 = i32::MAX as i64 + 1;
/// A chat's ignored messages are audited one a window: a stranger writing without end
/// (every message of theirs is one platform update) grows the audit trail by one record a
/// minute, not one a message; the others are counted in `channels status`.
pub const IGNORED_AUDIT_WINDOW_MS: i64 = 60 * 1000;
/// The most chats not allowed whose ignored messages one channel audits a window: a chat's
/// id is the worker's word (a worker taken over makes up a new stranger for each message),
/// so one record a chat a window alone would be one a message. The rest are counted in
/// `channels status`.
pub const MAX_STRANGERS_AUDITED: i64 = 32;
/// The window of the turns one channel may start (`[channels] turns_per_minute`): a
/// compromised channel worker (or a flood of allowed chats) makes up messages at will, and
/// each turn costs the provider's tokens and runs tools. Past its turns, the channel's
/// messages wait (pending, none lost) until the window moves; the other channels' turns go
/// on.
pub const TURN_RATE_WINDOW_MS: i64 = 60 * 1000;

/// How long a seen Feishu event id is kept (the platform retries for hours, not days).
pub const SEEN_EVENT_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;
/// The most seen event ids kept for one channel (its newest): the ids are the worker's word,
/// and a worker taken over hands over a new one each call; kept a week each, they grew
/// state.db without bound. The platform's retries of an id come within hours, far fewer.
pub const MAX_SEEN_EVENTS: i64 = 100_000;
/// The ids past [`MAX_SEEN_EVENTS`] (or older than [`SEEN_EVENT_KEEP_MS`]) are forgotten
/// once this many more were seen (the prune reads the table; done at every event, it cost
/// each one that much).
pub const SEEN_EVENTS_PRUNE_EVERY: i64 = 1_000;

/// Marks `event_id` seen for `channel` in `tx`; false when it was seen before. Ids older
/// than [`SEEN_EVENT_KEEP_MS`], and each channel's past its newest [`MAX_SEEN_EVENTS`], are
/// forgotten every [`SEEN_EVENTS_PRUNE_EVERY`] ids.
fn mark_seen(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    event_id: &str,
) -> Result<bool, rusqlite::Error> {
    let at = now_ms();
    let fresh = tx.execute(
        "INSERT OR IGNORE INTO channel_events (channel, event_id, seen_ms) VALUES (?1, ?2, ?3)",
        params![channel, event_id, at],
    )? == 1;
    // Every channel's, whichever channel's id lands on the mark: between two marks, at most
    // SEEN_EVENTS_PRUNE_EVERY ids were added in all. Both prunes read the whole table (no
    // index on the time), so not at every event.
    if fresh && tx.last_insert_rowid() % SEEN_EVENTS_PRUNE_EVERY == 0 {
        tx.execute(
            "DELETE FROM channel_events WHERE seen_ms < ?1",
            params![at.saturating_sub(SEEN_EVENT_KEEP_MS)],
        )?;
        tx.execute(
            "DELETE FROM channel_events WHERE rowid IN (SELECT rowid FROM
             (SELECT rowid, ROW_NUMBER() OVER (PARTITION BY channel ORDER BY rowid DESC) AS n
              FROM channel_events) WHERE n > ?1)",
            params![MAX_SEEN_EVENTS],
        )?;
    }
    Ok(fresh)
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    config_json TEXT NOT NULL,
    token_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_offsets (
    channel TEXT PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    chat TEXT NOT NULL,
    message_id TEXT NOT NULL,
    thread TEXT,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (channel, key)
);
CREATE INDEX IF NOT EXISTS channel_inbox_state ON channel_inbox (channel, state, id);
CREATE TABLE IF NOT EXISTS channel_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    inbox_id INTEGER NOT NULL UNIQUE,
    chat TEXT NOT NULL,
    reply_to TEXT NOT NULL,
    thread TEXT,
    text TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    sent_ms INTEGER
);
CREATE INDEX IF NOT EXISTS channel_outbox_state ON channel_outbox (channel, state, id);
CREATE TABLE IF NOT EXISTS channel_events (
    channel TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, event_id)
);";

/// The statements of state.db's schema step from version 2 to 3.
pub const SCHEMA_STEP: &str = SCHEMA;

/// The approvals offered to a channel's operator chats: one row per approval and chat,
/// `pending` (to send), `sent`, or `closed` (resolved before it was sent).
macro_rules! offers_table {
    () => {
        "CREATE TABLE IF NOT EXISTS channel_offers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    approval TEXT NOT NULL,
    chat TEXT NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    sent_ms INTEGER,
    UNIQUE (channel, approval, chat)
);
CREATE INDEX IF NOT EXISTS channel_offers_state ON channel_offers (channel, state, id);"
    };
}
const OFFERS_SCHEMA: &str = offers_table!();

/// A channel's token generation, added to `channels` by state.db's step from 4 to 5.
const ADDED_COLUMNS: &[(&str, &str)] = &[("generation", "INTEGER NOT NULL DEFAULT 1")];

/// The statements of state.db's schema step from version 4 to 5: the approvals offered over
/// chat, and each channel's token generation.
pub const OFFERS_SCHEMA_STEP: &str = concat!(
    offers_table!(),
    "\nALTER TABLE channels ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;"
);

/// The most bytes of an offer's text (what the operator chat is shown of the approval).
pub const MAX_OFFER_TEXT_BYTES: usize = 1024;
/// The most offers kept per channel: the newest (an offer settled keeps no text, only what
/// judges a press on it). Older ones go as new ones come: their approvals were settled
/// long before (a channel runs a few turns at once, `[channels]
/// max_turns_at_once_per_channel`, each waiting for one approval at a time, offered to each
/// operator chat once), so every approval its turns ask for grows no table. Were more
/// offers pending than this (64 turns at once with 256 operator chats), the oldest would
/// go: a press on it is refused as not offered, and `approvals approve|deny` still
/// resolves it (fail closed).
pub const MAX_OFFERS_KEPT: i64 = 4 * loong_ipc::message::control::MAX_CHANNEL_CHATS as i64;

/// A channel store operation refused.
#[derive(Debug, thiserror::Error)]
pub enum ChannelStoreError {
    #[error(transparent)]
    Db(#[from] TokenError),
    #[error("a channel named `{0}` exists; remove it first (`loongctl channels remove {0}`)")]
    Exists(String),
    #[error("no channel named `{0}`; see `loongctl channels list`")]
    NoSuchChannel(String),
    #[error("{0} channels are configured, the most one home holds; remove one first")]
    TooMany(usize),
    #[error("channel `{channel}`: {count} messages in one batch, more than {MAX_RECEIVED_BATCH}")]
    BatchTooLarge { channel: String, count: usize },
    #[error("channel `{channel}`: {pending} messages wait for an answer; the inbox takes no more until they are answered")]
    InboxFull { channel: String, pending: u64 },
    #[error("channel `{channel}`: event `{event_id}` was seen before; a replay is refused")]
    Replayed { channel: String, event_id: String },
    #[error("channel `{channel}`: offset {offset} is outside 0 to {MAX_TELEGRAM_OFFSET}; refused")]
    BadOffset { channel: String, offset: i64 },
    #[error("channel `{channel}`: outbox item {id} is not one of its pending answers")]
    NotPending { channel: String, id: i64 },
    #[error("channel `{channel}`: offer {id} is not one of its pending offers")]
    OfferNotPending { channel: String, id: i64 },
    #[error("channel `{channel}`: a text of {len} bytes is above the {limit}-byte limit")]
    TextTooLarge {
        channel: String,
        len: usize,
        limit: usize,
    },
}

/// A configured channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    pub name: String,
    pub kind: String,
    pub config_json: String,
    pub token_id: String,
    /// 1 when added; one more at each restart (each a new token, the old one revoked).
    pub generation: u64,
}

/// A message the worker hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The platform's id of the delivery (Telegram's `update_id`, Feishu's `event_id`).
    pub key: String,
    pub chat: String,
    pub message_id: String,
    pub thread: Option<String>,
    pub sender: String,
    pub text: String,
    /// From a chat in the channel's allowlist: it waits for its turn. Otherwise it is kept
    /// as `ignored` (so a batch handed over twice is still ignored, and audited, once).
    pub allowed: bool,
}

/// A message new to the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub id: i64,
    pub key: String,
    pub chat: String,
    pub message_id: String,
    pub sender: String,
    pub allowed: bool,
    /// Audited one by one: every message taken for a turn, and a chat's first ignored
    /// message in [`IGNORED_AUDIT_WINDOW_MS`] (the rest are counted in `channels status`).
    pub audited: bool,
}

/// What [`ChannelStore::claim`] keeps each channel within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLimits {
    /// The turns a channel may start in [`TURN_RATE_WINDOW_MS`] (`[channels] turns_per_minute`).
    pub per_minute: usize,
    /// The turns of a channel running at once (`[channels] max_turns_at_once_per_channel`).
    pub at_once: usize,
}

/// A message waiting for (or running) its turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    pub id: i64,
    pub channel: String,
    pub chat: String,
    pub message_id: String,
    pub thread: Option<String>,
    pub sender: String,
    pub text: String,
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub chat: String,
    pub reply_to: String,
    pub thread: Option<String>,
    pub text: String,
}

/// An approval to offer to an operator chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferItem {
    pub id: i64,
    pub approval: String,
    pub chat: String,
    pub text: String,
}

/// A channel's counts, for `channels status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub answered: u64,
    pub ignored: u64,
    pub unsent: u64,
    pub sent: u64,
    pub offset: Option<i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The channels' tables.
#[derive(Debug)]
pub struct ChannelStore {
    db: StateDb,
    /// The channel and chat whose message was claimed last (the turns go round the chats).
    last_claimed: std::sync::Mutex<Option<(String, String)>>,
    /// The turns running now, by their chain's root: which channel each is for (an
    /// approval one asks for is offered to that channel's operator chats).
    turns: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Each channel's turns waiting for an approval now.
    approvals_waiting: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Woken when a message is new to the inbox (the turn runner waits on it rather than
    /// polling), and when an answer or an offer is new to an outbox (the workers' outbox
    /// waits): a message's way through loongd waits on no timer.
    pub inbox_ready: tokio::sync::Notify,
    pub outbox_ready: tokio::sync::Notify,
    /// When each channel's turns of the last [`TURN_RATE_WINDOW_MS`] were claimed.
    claimed_at:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<i64>>>,
}

/// Milliseconds on a clock that never moves back (the turn-rate window's: a wall clock set
/// back an hour held a channel's turns for the hour; set forward, it freed the window).
pub fn monotonic_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    i64::try_from(
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The operator chats in a channel's configuration.
fn operator_chats(config_json: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(config_json)
        .ok()
        .and_then(|c| {
            c["operator_chats"].as_array().map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

impl ChannelStore {
    /// Opens the tables in `path`.
    pub fn open(path: &Path) -> Result<ChannelStore, TokenError> {
        let db = StateDb::open(path, &format!("{SCHEMA}\n{OFFERS_SCHEMA}"))?;
        db.add_columns("channels", ADDED_COLUMNS)?;
        Ok(ChannelStore {
            db,
            last_claimed: std::sync::Mutex::new(None),
            turns: std::sync::Mutex::new(std::collections::HashMap::new()),
            approvals_waiting: std::sync::Mutex::new(std::collections::HashMap::new()),
            claimed_at: std::sync::Mutex::new(std::collections::HashMap::new()),
            inbox_ready: tokio::sync::Notify::new(),
            outbox_ready: tokio::sync::Notify::new(),
        })
    }

    /// A turn of `channel`'s starts under the chain `root`; [`ChannelStore::turn_ended`]
    /// when it ends.
    pub fn turn_started(&self, root: &str, channel: &str) {
        lock(&self.turns).insert(root.to_owned(), channel.to_owned());
    }

    /// The turn of chain `root` ended.
    pub fn turn_ended(&self, root: &str) {
        lock(&self.turns).remove(root);
    }

    /// A turn of `channel` starts waiting for an approval: counted, unless `per_channel` of
    /// its turns, or `in_all` of every channel's, wait already (false then: it is denied
    /// without asking, so turns waiting for approvals never hold every turn slot of a
    /// channel, or of all channels, and a chat user who can make turns ask for approvals
    /// cannot stop the other chats). [`ChannelStore::approval_wait_ended`] when it ends.
    pub fn approval_wait_started(&self, channel: &str, per_channel: usize, in_all: usize) -> bool {
        let mut waiting = lock(&self.approvals_waiting);
        let all: usize = waiting.values().sum();
        let mine = waiting.get(channel).copied().unwrap_or(0);
        if mine >= per_channel || all >= in_all {
            return false;
        }
        waiting.insert(channel.to_owned(), mine + 1);
        true
    }

    /// A wait counted by [`ChannelStore::approval_wait_started`] ended.
    pub fn approval_wait_ended(&self, channel: &str) {
        let mut waiting = lock(&self.approvals_waiting);
        if let Some(n) = waiting.get_mut(channel) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(channel);
            }
        }
    }

    /// The channel whose turn runs under the chain `root`, if one does.
    pub fn turn_channel(&self, root: &str) -> Option<String> {
        lock(&self.turns).get(root).cloned()
    }

    /// Offers the pending `approval` to each operator chat of `channel` (once per chat,
    /// however often it is asked); returns how many chats it is offered to.
    pub fn offer(
        &self,
        channel: &str,
        approval: &str,
        text: &str,
    ) -> Result<usize, ChannelStoreError> {
        if text.len() > MAX_OFFER_TEXT_BYTES {
            return Err(ChannelStoreError::TextTooLarge {
                channel: channel.to_owned(),
                len: text.len(),
                limit: MAX_OFFER_TEXT_BYTES,
            });
        }
        let chats = operator_chats(&self.get(channel)?.config_json);
        let at = now_ms();
        Ok(self.db.with(|c| {
            let tx = StateDb::write(c)?;
            for chat in &chats {
                tx.execute(
                    "INSERT OR IGNORE INTO channel_offers (channel, approval, chat, text, state, created_ms)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                    params![channel, approval, chat, text, at],
                )?;
            }
            tx.execute(
                "DELETE FROM channel_offers WHERE channel = ?1 AND id NOT IN
                 (SELECT id FROM channel_offers WHERE channel = ?1 ORDER BY id DESC LIMIT ?2)",
                params![channel, MAX_OFFERS_KEPT],
            )?;
            tx.commit()?;
            Ok(chats.len())
        })
        .inspect(|_| self.outbox_ready.notify_waiters())?)
    }

    /// The channel's oldest offers not yet sent, at most `limit`.
    pub fn offers(&self, channel: &str, limit: u32) -> Result<Vec<OfferItem>, ChannelStoreError> {
        Ok(self.db.with(|c| {
            let mut s = c.prepare(
                "SELECT id, approval, chat, text FROM channel_offers
                 WHERE channel = ?1 AND state = 'pending' ORDER BY id LIMIT ?2",
            )?;
            let rows = s.query_map(params![channel, limit], |r| {
                Ok(OfferItem {
                    id: r.get(0)?,
                    approval: r.get(1)?,
                    chat: r.get(2)?,
                    text: r.get(3)?,
                })
            })?;
            rows.collect()
        })?)
    }

    /// Offer `id` of `channel` is `sent` (its buttons reached the chat) or `closed` (its
    /// approval was resolved before it was sent). Returns its chat and approval; an id that
    /// is not one of this channel's pending offers is refused.
    pub fn settle_offer(
        &self,
        channel: &str,
        id: i64,
        sent: bool,
    ) -> Result<(String, String), ChannelStoreError> {
        let state = if sent { "sent" } else { "closed" };
        let done = self.db.with(|c| {
            let tx = StateDb::write(c)?;
            let n = tx.execute(
                "UPDATE channel_offers SET state = ?3, sent_ms = ?4, text = ''
                 WHERE id = ?1 AND channel = ?2 AND state = 'pending'",
                params![id, channel, state, now_ms()],
            )?;
            let row = if n == 1 {
                Some(tx.query_row(
                    "SELECT chat, approval FROM channel_offers WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            } else {
                None
            };
            tx.commit()?;
            Ok(row)
        })?;
        done.ok_or_else(|| ChannelStoreError::OfferNotPending {
            channel: channel.to_owned(),
            id,
        })
    }

    /// Whether `approval` was offered to `chat` of `channel`.
    pub fn offered(
        &self,
        channel: &str,
        approval: &str,
        chat: &str,
    ) -> Result<bool, ChannelStoreError> {
        Ok(self.db.with(|c| {
            c.query_row(
                "SELECT 1 FROM channel_offers WHERE channel = ?1 AND approval = ?2 AND chat = ?3",
                params![channel, approval, chat],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
        })?)
    }

    /// The channel runs under a new token: `token_id`, of the next generation. Returns that
    /// generation and the token it replaced, read in the same transaction (the one to
    /// revoke: not one read before, which another restart may have replaced meanwhile).
    pub fn next_generation(
        &self,
        name: &str,
        token_id: &str,
    ) -> Result<(u64, String), ChannelStoreError> {
        let replaced = self.db.with(|c| {
            let tx = StateDb::write(c)?;
            let old: Option<String> = tx
                .query_row(
                    "SELECT token_id FROM channels WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(old) = old else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE channels SET token_id = ?2, generation = generation + 1 WHERE name = ?1",
                params![name, token_id],
            )?;
            let g: i64 = tx.query_row(
                "SELECT generation FROM channels WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(Some((g.unsigned_abs(), old)))
        })?;
        replaced.ok_or_else(|| ChannelStoreError::NoSuchChannel(name.to_owned()))
    }

    /// Adds a channel.
    pub fn add(&self, row: &ChannelRow) -> Result<(), ChannelStoreError> {
        let outcome = self.db.with(|c| {
            let tx = StateDb::write(c)?;
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM channels", [], |r| r.get(0))?;
            if count.unsigned_abs() >= MAX_CHANNELS as u64 {
                return Ok(Err(ChannelStoreError::TooMany(MAX_CHANNELS)));
            }
            let n = tx.execute(
                "INSERT OR IGNORE INTO channels (name, kind, config_json, token_id, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.name, row.kind, row.config_json, row.token_id, now_ms()],
            )?;
            if n == 0 {
                return Ok(Err(ChannelStoreError::Exists(row.name.clone())));
            }
            tx.commit()?;
            Ok(Ok(()))
        })?;
        outcome
    }

    /// The channel `name`.
    pub fn get(&self, name: &str) -> Result<ChannelRow, ChannelStoreError> {
        self.db
            .with(|c| {
                c.query_row(
                    "SELECT name, kind, config_json, token_id, generation FROM channels WHERE name = ?1",
                    params![name],
                    channel_row,
                )
                .optional()
            })?
            .ok_or_else(|| ChannelStoreError::NoSuchChannel(name.to_owned()))
    }

    /// Every channel, by name.
    pub fn list(&self) -> Result<Vec<ChannelRow>, ChannelStoreError> {
        Ok(self.db.with(|c| {
            let mut s = c.prepare(
                "SELECT name, kind, config_json, token_id, generation FROM channels ORDER BY name",
            )?;
            let rows = s.query_map([], channel_row)?;
            rows.collect()
        })?)
    }

    /// Removes the channel and everything kept for it, in one transaction, but the event ids
    /// it saw: removed and added again (how its settings change), a channel that forgot them
    /// would take again a signed event captured within the platform's timestamp window. They
    /// go with age and with the channel's bound ([`mark_seen`]).
    pub fn remove(&self, name: &str) -> Result<ChannelRow, ChannelStoreError> {
        let row = self.get(name)?;
        self.db.with(|c| {
            let tx = StateDb::write(c)?;
            tx.execute("DELETE FROM channels WHERE name = ?1", params![name])?;
            for table in ["channel_inbox", "channel_outbox", "channel_offers"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE channel = ?1"),
                    params![name],
                )?;
            }
            tx.execute(
                "DELETE FROM channel_offsets WHERE channel = ?1",
                params![name],
            )?;
            tx.commit()
        })?;
        Ok(row)
    }

    /// The offset the next `getUpdates` starts from.
    pub fn offset(&self, channel: &str) -> Result<Option<i64>, ChannelStoreError> {
        Ok(self.db.with(|c| {
            c.query_row(
                "SELECT next_offset FROM channel_offsets WHERE channel = ?1",
                params![channel],
                |r| r.get(0),
            )
            .optional()
        })?)
    }

    /// Takes a batch: the messages into the inbox (each once, by its key) and, for Telegram,
    /// the offset past the batch (never moved back), in ONE transaction. Returns the
    /// messages new to the inbox. A full inbox refuses the whole batch and keeps
    /// the offset, so the platform sends it again later.
    pub fn receive(
        &self,
        channel: &str,
        next_offset: Option<i64>,
        messages: &[Received],
    ) -> Result<Vec<Taken>, ChannelStoreError> {
        self.receive_with(channel, next_offset, None, messages)
    }

    /// Takes a Feishu event: its id marked seen ([`Self::see_event`]'s table) and its
    /// message (if any) into the inbox, in ONE transaction. An id seen before is
    /// [`ChannelStoreError::Replayed`] and nothing is taken; a kill before the commit
    /// leaves neither (the platform's retry is taken), after it both (the retry is a replay).
    pub fn receive_event(
        &self,
        channel: &str,
        event_id: &str,
        message: Option<&Received>,
    ) -> Result<Vec<Taken>, ChannelStoreError> {
        let messages: Vec<Received> = message.into_iter().cloned().collect();
        self.receive_with(channel, None, Some(event_id), &messages)
    }

    fn receive_with(
        &self,
        channel: &str,
        next_offset: Option<i64>,
        event_id: Option<&str>,
        messages: &[Received],
    ) -> Result<Vec<Taken>, ChannelStoreError> {
        if messages.len() > MAX_RECEIVED_BATCH {
            return Err(ChannelStoreError::BatchTooLarge {
                channel: channel.to_owned(),
                count: messages.len(),
            });
        }
        if let Some(m) = messages
            .iter()
            .find(|m| m.text.len() > MAX_INBOX_TEXT_BYTES)
        {
            return Err(ChannelStoreError::TextTooLarge {
                channel: channel.to_owned(),
                len: m.text.len(),
                limit: MAX_INBOX_TEXT_BYTES,
            });
        }
        if let Some(o) = next_offset.filter(|o| !(0..=MAX_TELEGRAM_OFFSET).contains(o)) {
            return Err(ChannelStoreError::BadOffset {
                channel: channel.to_owned(),
                offset: o,
            });
        }
        self.get(channel)?;
        let outcome = self.db.with(|c| {
            let tx = StateDb::write(c)?;
            // Updates below the committed offset were taken before (their rows may be gone):
            // a replay of one is not taken again.
            let committed: Option<i64> = tx
                .query_row(
                    "SELECT next_offset FROM channel_offsets WHERE channel = ?1",
                    params![channel],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(event_id) = event_id {
                if !mark_seen(&tx, channel, event_id)? {
                    return Ok(Err(ChannelStoreError::Replayed {
                        channel: channel.to_owned(),
                        event_id: event_id.to_owned(),
                    }));
                }
            }
            let taken_before = |m: &Received| {
                committed.is_some_and(|c| m.key.parse::<i64>().is_ok_and(|k| k < c))
            };
            let pending: i64 = tx.query_row(
                "SELECT COUNT(*) FROM channel_inbox WHERE channel = ?1 AND state IN ('pending', 'running')",
                params![channel],
                |r| r.get(0),
            )?;
            let pending = pending.unsigned_abs();
            if !messages.is_empty() && pending + messages.len() as u64 > MAX_PENDING_INBOX {
                return Ok(Err(ChannelStoreError::InboxFull {
                    channel: channel.to_owned(),
                    pending,
                }));
            }
            let at = now_ms();
            let mut ids = Vec::new();
            for m in messages.iter().filter(|m| !taken_before(m)) {
                let waiting: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM channel_inbox
                     WHERE channel = ?1 AND chat = ?2 AND state IN ('pending', 'running')",
                    params![channel, m.chat],
                    |r| r.get(0),
                )?;
                let allowed = m.allowed && waiting.unsigned_abs() < MAX_PENDING_PER_CHAT;
                let m = &Received {
                    allowed,
                    ..m.clone()
                };
                let state = if m.allowed { "pending" } else { "ignored" };
                // Audited: a chat's first ignored message of the window, while the channel's
                // strangers of the window are fewer than MAX_STRANGERS_AUDITED.
                let recently_ignored: i64 = if m.allowed {
                    0
                } else {
                    tx.query_row(
                        "SELECT COUNT(*) FROM channel_inbox WHERE channel = ?1 AND chat = ?2
                         AND state = 'ignored' AND received_ms > ?3",
                        params![channel, m.chat, at.saturating_sub(IGNORED_AUDIT_WINDOW_MS)],
                        |r| r.get::<_, i64>(0),
                    )? + tx.query_row(
                        "SELECT COUNT(DISTINCT chat) >= ?3 FROM channel_inbox WHERE channel = ?1
                         AND state = 'ignored' AND received_ms > ?2",
                        params![
                            channel,
                            at.saturating_sub(IGNORED_AUDIT_WINDOW_MS),
                            MAX_STRANGERS_AUDITED
                        ],
                        |r| r.get::<_, i64>(0),
                    )?
                };
                let n = tx.execute(
                    "INSERT OR IGNORE INTO channel_inbox
                     (channel, key, chat, message_id, thread, sender, text, state, received_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        channel,
                        m.key,
                        m.chat,
                        m.message_id,
                        m.thread,
                        m.sender,
                        if m.allowed { m.text.as_str() } else { "" },
                        state,
                        at
                    ],
                )?;
                if n == 1 {
                    ids.push(Taken {
                        id: tx.last_insert_rowid(),
                        key: m.key.clone(),
                        chat: m.chat.clone(),
                        message_id: m.message_id.clone(),
                        sender: m.sender.clone(),
                        allowed: m.allowed,
                        audited: recently_ignored == 0,
                    });
                }
            }
            tx.execute(
                "DELETE FROM channel_inbox WHERE channel = ?1 AND state = 'ignored' AND id NOT IN
                 (SELECT id FROM channel_inbox WHERE channel = ?1 AND state = 'ignored'
                  ORDER BY id DESC LIMIT ?2)",
                params![channel, MAX_IGNORED_KEPT],
            )?;
            if let Some(o) = next_offset {
                tx.execute(
                    "INSERT INTO channel_offsets (channel, next_offset) VALUES (?1, ?2)
                     ON CONFLICT (channel) DO UPDATE SET next_offset = MAX(next_offset, ?2)",
                    params![channel, o],
                )?;
            }
            tx.commit()?;
            Ok(Ok(ids))
        })?;
        if outcome
            .as_ref()
            .is_ok_and(|ids| ids.iter().any(|t| t.allowed))
        {
            self.inbox_ready.notify_one();
        }
        outcome
    }

    /// Records a Feishu event id as seen; a second time is [`ChannelStoreError::Replayed`].
    /// Ids are forgotten as [`mark_seen`] says.
    pub fn see_event(&self, channel: &str, event_id: &str) -> Result<(), ChannelStoreError> {
        let fresh = self.db.with(|c| {
            let tx = StateDb::write(c)?;
            let fresh = mark_seen(&tx, channel, event_id)?;
            tx.commit()?;
            Ok(fresh)
        })?;
        if !fresh {
            return Err(ChannelStoreError::Replayed {
                channel: channel.to_owned(),
                event_id: event_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Claims a pending message for its turn (pending → running): the chats (of every
    /// channel) take turns, each chat's messages oldest first, so one chat's many messages
    /// hold no other chat's (or channel's) turn behind them. A chat whose turn is running is
    /// passed over until it is settled (a chat's turns run one at a time, in order: the
    /// next one reads the session the last one wrote), and so is a channel with
    /// `limits.at_once` turns running, or that started `limits.per_minute` turns in the last
    /// [`TURN_RATE_WINDOW_MS`] (until the window moves).
    pub fn claim(&self, limits: ClaimLimits) -> Result<Option<InboxItem>, ChannelStoreError> {
        self.claim_at(monotonic_ms(), limits)
    }

    /// The channels that started `per_minute` turns in the window before `now`.
    fn throttled(&self, now: i64, per_minute: usize) -> Vec<String> {
        let mut claimed = lock(&self.claimed_at);
        claimed.retain(|_, at| {
            while at
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= TURN_RATE_WINDOW_MS)
            {
                at.pop_front();
            }
            !at.is_empty()
        });
        claimed
            .iter()
            .filter(|(_, at)| at.len() >= per_minute)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// [`ChannelStore::claim`] at the time `now` ([`monotonic_ms`]).
    pub fn claim_at(
        &self,
        now: i64,
        limits: ClaimLimits,
    ) -> Result<Option<InboxItem>, ChannelStoreError> {
        let mut last = self
            .last_claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let after = last.clone().unwrap_or_default();
        let throttled =
            serde_json::to_string(&self.throttled(now, limits.per_minute)).unwrap_or_default();
        let at_once = i64::try_from(limits.at_once).unwrap_or(i64::MAX);
        // No fsync: a claim lost with the machine is a message still pending, and a claim
        // kept is made pending again at the start anyway (`recover`); the answer's commit
        // (synchronous) carries it to disk in any case.
        let claimed = self.db.with_unsynced(|c| {
            let tx = StateDb::write(c)?;
            let item = tx
                .query_row(
                    "SELECT id, channel, chat, message_id, thread, sender, text FROM channel_inbox p
                     WHERE state = 'pending'
                     AND channel NOT IN (SELECT value FROM json_each(?3))
                     AND NOT EXISTS (SELECT 1 FROM channel_inbox r WHERE r.channel = p.channel
                                     AND r.state = 'running' AND r.chat = p.chat)
                     AND channel NOT IN (SELECT channel FROM channel_inbox WHERE state = 'running'
                                         GROUP BY channel HAVING COUNT(*) >= ?4)
                     ORDER BY (channel, chat) <= (?1, ?2), channel, chat, id LIMIT 1",
                    params![after.0, after.1, throttled, at_once],
                    |r| {
                        Ok(InboxItem {
                            id: r.get(0)?,
                            channel: r.get(1)?,
                            chat: r.get(2)?,
                            message_id: r.get(3)?,
                            thread: r.get(4)?,
                            sender: r.get(5)?,
                            text: r.get(6)?,
                        })
                    },
                )
                .optional()?;
            if let Some(i) = &item {
                tx.execute(
                    "UPDATE channel_inbox SET state = 'running' WHERE id = ?1",
                    params![i.id],
                )?;
            }
            tx.commit()?;
            Ok(item)
        })?;
        if let Some(i) = &claimed {
            *last = Some((i.channel.clone(), i.chat.clone()));
            lock(&self.claimed_at)
                .entry(i.channel.clone())
                .or_default()
                .push_back(now);
        }
        Ok(claimed)
    }

    /// At start: turns that were running when loongd stopped run again (their answers were
    /// not committed). Returns how many.
    pub fn recover(&self) -> Result<u64, ChannelStoreError> {
        Ok(self.db.with(|c| {
            c.execute(
                "UPDATE channel_inbox SET state = 'pending' WHERE state = 'running'",
                [],
            )
            .map(|n| n as u64)
        })?)
    }

    /// The message `inbox_id`, whose turn ran under a token generation that is gone, waits
    /// for its turn again (running → pending). False when it was not running.
    pub fn requeue(&self, inbox_id: i64) -> Result<bool, ChannelStoreError> {
        Ok(self
            .db
            .with(|c| {
                c.execute(
                "UPDATE channel_inbox SET state = 'pending' WHERE id = ?1 AND state = 'running'",
                params![inbox_id],
            )
            .map(|n| n == 1)
            })
            .inspect(|_| self.inbox_ready.notify_one())?)
    }

    /// The message `inbox_id` is answered with `text`: the outbox row and the answered mark
    /// in ONE transaction. A message already answered (or ignored) is left as it is: false.
    pub fn answer(&self, inbox_id: i64, text: &str) -> Result<bool, ChannelStoreError> {
        self.settle(inbox_id, Some(text))
    }

    /// The message `inbox_id` gets no answer (a chat not allowed, a command handled): false
    /// when it was already settled.
    pub fn ignore(&self, inbox_id: i64) -> Result<bool, ChannelStoreError> {
        self.settle(inbox_id, None)
    }

    fn settle(&self, inbox_id: i64, text: Option<&str>) -> Result<bool, ChannelStoreError> {
        if let Some(t) = text.filter(|t| t.len() > MAX_OUTBOX_TEXT_BYTES) {
            return Err(ChannelStoreError::TextTooLarge {
                channel: format!("inbox {inbox_id}"),
                len: t.len(),
                limit: MAX_OUTBOX_TEXT_BYTES,
            });
        }
        Ok(self.db.with(|c| {
            let tx = StateDb::write(c)?;
            let state = if text.is_some() { "answered" } else { "ignored" };
            let n = tx.execute(
                "UPDATE channel_inbox SET state = ?2 WHERE id = ?1 AND state IN ('pending', 'running')",
                params![inbox_id, state],
            )?;
            if n == 1 {
                if let Some(t) = text {
                    tx.execute(
                        "INSERT INTO channel_outbox
                         (channel, inbox_id, chat, reply_to, thread, text, state, created_ms)
                         SELECT channel, id, chat, message_id, thread, ?2, 'pending', ?3
                         FROM channel_inbox WHERE id = ?1",
                        params![inbox_id, t, now_ms()],
                    )?;
                }
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .inspect(|done| {
            if *done && text.is_some() {
                self.outbox_ready.notify_waiters();
            }
        })?)
    }

    /// The channel's oldest answers not yet sent, at most `limit`.
    pub fn outbox(&self, channel: &str, limit: u32) -> Result<Vec<OutboxItem>, ChannelStoreError> {
        Ok(self.db.with(|c| {
            let mut s = c.prepare(
                "SELECT id, chat, reply_to, thread, text FROM channel_outbox
                 WHERE channel = ?1 AND state = 'pending' ORDER BY id LIMIT ?2",
            )?;
            let rows = s.query_map(params![channel, limit], |r| {
                Ok(OutboxItem {
                    id: r.get(0)?,
                    chat: r.get(1)?,
                    reply_to: r.get(2)?,
                    thread: r.get(3)?,
                    text: r.get(4)?,
                })
            })?;
            rows.collect()
        })?)
    }

    /// The channel's worker sent outbox item `id`: it is marked sent; returns its chat and
    /// the message it answered. An id that is not one of this channel's pending items is
    /// refused.
    pub fn ack(&self, channel: &str, id: i64) -> Result<(String, String), ChannelStoreError> {
        let done = self.db.with(|c| {
            let tx = StateDb::write(c)?;
            let n = tx.execute(
                "UPDATE channel_outbox SET state = 'sent', sent_ms = ?3
                 WHERE id = ?1 AND channel = ?2 AND state = 'pending'",
                params![id, channel, now_ms()],
            )?;
            let row = if n == 1 {
                Some(tx.query_row(
                    "SELECT chat, reply_to FROM channel_outbox WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            } else {
                None
            };
            tx.commit()?;
            Ok(row)
        })?;
        done.ok_or_else(|| ChannelStoreError::NotPending {
            channel: channel.to_owned(),
            id,
        })
    }

    /// The channel's counts.
    pub fn counts(&self, channel: &str) -> Result<Counts, ChannelStoreError> {
        let offset = self.offset(channel)?;
        Ok(self.db.with(|c| {
            let mut counts = Counts {
                offset,
                ..Counts::default()
            };
            let mut s = c.prepare(
                "SELECT state, COUNT(*) FROM channel_inbox WHERE channel = ?1 GROUP BY state",
            )?;
            for row in s.query_map(params![channel], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.unsigned_abs()))
            })? {
                let (state, n) = row?;
                match state.as_str() {
                    "pending" => counts.pending = n,
                    "running" => counts.running = n,
                    "answered" => counts.answered = n,
                    _ => counts.ignored = n,
                }
            }
            let mut s = c.prepare(
                "SELECT state, COUNT(*) FROM channel_outbox WHERE channel = ?1 GROUP BY state",
            )?;
            for row in s.query_map(params![channel], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.unsigned_abs()))
            })? {
                let (state, n) = row?;
                if state == "sent" {
                    counts.sent = n;
                } else {
                    counts.unsent = n;
                }
            }
            Ok(counts)
        })?)
    }
}

fn channel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChannelRow> {
    Ok(ChannelRow {
        name: r.get(0)?,
        kind: r.get(1)?,
        config_json: r.get(2)?,
        token_id: r.get(3)?,
        generation: r.get::<_, i64>(4)?.unsigned_abs(),
    })
}

#[cfg(test)]
mod tests;
