//! Approvals, persisted in `HOME/state.db`: requests that wait for an operator, and one-time
//! full-access windows (a scope, an expiry and a number of uses).
//!
//! A request keeps what its approver must see: the whole effect (the command line, the path,
//! the host and port, or the tool with a preview and digest of its input) and the authority
//! that asked (its token's public id and agent), so the token can be re-checked when it is
//! resolved and the requester kept from approving its own request.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::tokens::TokenError;

/// Most uses a full-access window may carry.
pub const MAX_WINDOW_USES: u32 = 1000;
/// Longest a full-access window may last.
pub const MAX_WINDOW_TTL_MS: i64 = 86_400_000;

/// Why a request was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error(transparent)]
    Store(#[from] TokenError),
    #[error("token {token} has {pending} approvals pending, the most one token may have (approvals.max_pending_per_token = {limit}); decide them (`loongctl approvals list`) or let them expire, then retry")]
    TooManyPending {
        token: String,
        pending: u64,
        limit: u32,
    },
}

/// A request loongd ended without an approver (expired): what its record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub id: String,
    /// The public id of the token it was asked under (`None`: the operator's).
    pub token: Option<String>,
    pub agent: Option<String>,
}

/// What an attempt to end a pending request came to ([`ApprovalStore::end`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// This attempt ended it: the request as it now is.
    Ended(Approval),
    /// It had ended already (another end won): the request as that end left it.
    AlreadyEnded(Approval),
    /// No request has that id.
    Unknown,
}

/// One approval request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
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
    /// The public id of the token it was asked under (`None`: the operator).
    pub token: Option<String>,
    /// That token's agent.
    pub agent: Option<String>,
    /// What it would do, beyond the capability and target.
    pub effect: EffectDetail,
    /// Why loongd resolved it, when loongd did.
    pub note: Option<String>,
}

/// The parts of an effect an approver sees beside its capability and target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectDetail {
    /// For `process.exec`: the program and every argument.
    pub argv: Vec<String>,
    /// For a tool call: the tool.
    pub tool: Option<String>,
    /// For a tool call: the start of its input (at most `MAX_INPUT_PREVIEW_BYTES`).
    pub input_preview: Option<String>,
    /// For a tool call: the sha256 of the whole input.
    pub input_sha256: Option<String>,
    /// For a tool call: the size of the whole input.
    pub input_bytes: Option<u64>,
    /// For a nested call: the plugin or built-in whose worker asked for it.
    pub caller: Option<String>,
    /// For a nested call: its chain (root correlation, parent call, depth).
    pub chain: Option<ChainDetail>,
}

/// The chain of a nested call, as an approver sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainDetail {
    pub root: String,
    pub parent: String,
    pub depth: u32,
}

impl EffectDetail {
    /// Its JSON form, as the state database and the audit trail hold it.
    pub fn to_json(&self) -> serde_json::Value {
        let chain = self
            .chain
            .as_ref()
            .map(|c| serde_json::json!({"root": c.root, "parent": c.parent, "depth": c.depth}));
        serde_json::json!({
            "argv": self.argv, "tool": self.tool, "input_preview": self.input_preview,
            "input_sha256": self.input_sha256, "input_bytes": self.input_bytes,
            "caller": self.caller, "chain": chain,
        })
    }

    /// Reads [`EffectDetail::to_json`]'s form; what is missing or mistyped is left empty.
    pub fn from_json(v: &serde_json::Value) -> EffectDetail {
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        EffectDetail {
            argv: v
                .get("argv")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            tool: text("tool"),
            input_preview: text("input_preview"),
            input_sha256: text("input_sha256"),
            input_bytes: v.get("input_bytes").and_then(serde_json::Value::as_u64),
            caller: text("caller"),
            chain: v.get("chain").and_then(|c| {
                Some(ChainDetail {
                    root: c.get("root")?.as_str()?.to_string(),
                    parent: c.get("parent")?.as_str()?.to_string(),
                    depth: u32::try_from(c.get("depth")?.as_u64()?).ok()?,
                })
            }),
        }
    }

    /// The detail of a call of `tool` with `input`: the input's digest and size, and its
    /// first [`MAX_INPUT_PREVIEW_BYTES`] bytes (cut on a character boundary).
    pub fn tool_call(tool: &str, input: &str) -> EffectDetail {
        use sha2::{Digest, Sha256};
        let mut end = input.len().min(MAX_INPUT_PREVIEW_BYTES);
        while !input.is_char_boundary(end) {
            end -= 1;
        }
        EffectDetail {
            argv: Vec::new(),
            tool: Some(tool.to_string()),
            input_preview: Some(input[..end].to_string()),
            input_sha256: Some(hex::encode(Sha256::digest(input.as_bytes()))),
            input_bytes: Some(input.len() as u64),
            caller: None,
            chain: None,
        }
    }
}

pub use loong_ipc::message::control::MAX_INPUT_PREVIEW_BYTES;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    actor TEXT NOT NULL,
    pack TEXT NOT NULL,
    capability TEXT NOT NULL,
    target TEXT NOT NULL,
    score INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    resolver TEXT,
    resolved_ms INTEGER
);
CREATE TABLE IF NOT EXISTS windows (
    id TEXT PRIMARY KEY,
    pack TEXT,
    expires_ms INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    creator TEXT NOT NULL
);
";

/// The pending requests by token: a token's are counted on every request it makes (its
/// bound) and on each of its gateway calls, and requests are kept after they are decided, so
/// the count must not read the whole history. Partial: it holds the pending rows only.
/// Made after [`ADDED_COLUMNS`] (the `token` column may be added by them).
const PENDING_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS approvals_pending_by_token ON approvals (token) WHERE state = 'pending';";

/// Columns added since the table was first written: `(name, declaration)`. `taken`: what
/// became of an approved request's approval, marked positively: `open` is set in the same
/// statement as the approve ([`ApprovalStore::end`]), and moved on once: `taken` (its waiter
/// took it and went on to the effect), `unused` (recorded `approval.unused`: nothing ran), or
/// what a start found in the trail ([`ApprovalStore::settle`]). A row approved by a binary
/// from before the column (or one that never writes it) has `NULL`, which no start reads:
/// adding the column needs no backfill, so a start killed half-way through the migration
/// changes nothing's meaning.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("token", "TEXT"),
    ("agent", "TEXT"),
    ("effect", "TEXT"),
    ("note", "TEXT"),
    ("taken", "TEXT"),
];

/// The approved requests whose approval is still `open`, read at each start: partial, so
/// the start does not read the whole history of requests. Made after [`ADDED_COLUMNS`]; the
/// index of an earlier build (which read `NULL` as untaken) is dropped.
const OPEN_INDEX: &str = "DROP INDEX IF EXISTS approvals_untaken; \
     CREATE INDEX IF NOT EXISTS approvals_open ON approvals (id) WHERE taken = 'open';";

const COLUMNS: &str =
    "id, created_ms, deadline_ms, state, actor, pack, capability, target, score, reasons, resolver, token, agent, effect, note";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        deadline_ms: r.get(2)?,
        state: r.get(3)?,
        actor: r.get(4)?,
        pack: r.get(5)?,
        capability: r.get(6)?,
        target: r.get(7)?,
        score: r.get::<_, i64>(8)? as u32,
        reasons: r.get(9)?,
        resolver: r.get(10)?,
        token: r.get(11)?,
        agent: r.get(12)?,
        // Written by this module only; a row from before the column shows no detail.
        effect: r
            .get::<_, Option<String>>(13)?
            .and_then(|e| serde_json::from_str::<serde_json::Value>(&e).ok())
            .map(|e| EffectDetail::from_json(&e))
            .unwrap_or_default(),
        note: r.get(14)?,
    })
}

/// The approvals table.
#[derive(Debug)]
pub struct ApprovalStore {
    db: super::db::StateDb,
}

fn random_id() -> Result<String, TokenError> {
    let mut raw = [0u8; 8];
    getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(hex::encode(raw))
}

impl ApprovalStore {
    /// Opens (creating) the tables in `path`.
    pub fn open(path: &Path) -> Result<ApprovalStore, TokenError> {
        let db = super::db::StateDb::open(path, SCHEMA)?;
        db.add_columns("approvals", ADDED_COLUMNS)?;
        db.with(|c| c.execute_batch(PENDING_INDEX))?;
        db.with(|c| c.execute_batch(OPEN_INDEX))?;
        Ok(ApprovalStore { db })
    }

    fn db<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, TokenError> {
        self.db.with(f)
    }

    /// Records `a` as a pending request (its id and creation time are set here), unless it
    /// was asked under a token that has `max_per_token` requests pending already
    /// ([`ApprovalError::TooManyPending`]): counted and inserted in one write transaction,
    /// so requests asked at once cannot pass the bound together. The operator's own requests
    /// (no token) are not bounded here.
    pub fn create(&self, mut a: Approval, max_per_token: u32) -> Result<Approval, ApprovalError> {
        a.id = random_id()?;
        a.created_ms = crate::now_ms();
        a.state = "pending".into();
        a.resolver = None;
        a.note = None;
        let effect = a.effect.to_json().to_string();
        let pending = self.db(|c| {
            let tx = super::db::StateDb::write(c)?;
            if let Some(token) = &a.token {
                let pending: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND token = ?1",
                    params![token],
                    |r| r.get(0),
                )?;
                let pending = u64::try_from(pending).unwrap_or(0);
                if pending >= u64::from(max_per_token) {
                    return Ok(Some(pending));
                }
            }
            tx.execute(
                &format!("INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, ?11, ?12, ?13, NULL)"),
                params![a.id, a.created_ms, a.deadline_ms, a.state, a.actor, a.pack, a.capability, a.target, a.score, a.reasons, a.token, a.agent, effect],
            )?;
            tx.commit()?;
            Ok(None)
        })?;
        if let Some(pending) = pending {
            return Err(ApprovalError::TooManyPending {
                token: a.token.unwrap_or_default(),
                pending,
                limit: max_per_token,
            });
        }
        Ok(a)
    }

    /// The request `id`.
    pub fn get(&self, id: &str) -> Result<Option<Approval>, TokenError> {
        self.db(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
                [id],
                read,
            )
            .optional()
        })
    }

    /// At most `limit` requests, newest first, after the request `after` in that order (from
    /// the start when `None`; nothing when `after` names no request). The order is by what
    /// never changes (when a request was made, then its id), so a request resolved or expired
    /// between two pages keeps its place and the next page starts where the last one ended
    /// (ordered pending first, a cursor resolved meanwhile moved behind every pending request,
    /// and the next page skipped them all).
    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Approval>, TokenError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {COLUMNS} FROM approvals
                 WHERE ?1 IS NULL
                    OR (-created_ms, id) > (SELECT -created_ms, id FROM approvals WHERE id = ?1)
                 ORDER BY created_ms DESC, id LIMIT ?2"
            ))?;
            let rows = s.query_map(params![after, limit], read)?;
            rows.collect()
        })
    }

    /// Every pending request that was made under a token.
    pub fn pending_under_tokens(&self) -> Result<Vec<Approval>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE state = 'pending' AND token IS NOT NULL"
            ))?;
            let rows = s.query_map([], read)?;
            rows.collect()
        })
    }

    /// How many requests asked under token `token` (its public id) are pending.
    pub fn pending_of_token(&self, token: &str) -> Result<u64, TokenError> {
        self.db(|c| {
            c.prepare_cached(
                "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND token = ?1",
            )?
            .query_row(params![token], |r| r.get::<_, i64>(0))
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
    }

    /// Moves a pending request to `state` (approved, denied, expired); `None` if it was not
    /// pending.
    pub fn resolve(
        &self,
        id: &str,
        state: &str,
        resolver: &str,
    ) -> Result<Option<Approval>, TokenError> {
        self.resolve_noted(id, state, resolver, None)
    }

    /// [`ApprovalStore::resolve`], recording why (`note`).
    pub fn resolve_noted(
        &self,
        id: &str,
        state: &str,
        resolver: &str,
        note: Option<&str>,
    ) -> Result<Option<Approval>, TokenError> {
        Ok(match self.end(id, state, resolver, note)? {
            Ending::Ended(a) => Some(a),
            Ending::AlreadyEnded(_) | Ending::Unknown => None,
        })
    }

    /// Ends the pending request `id` in `state` (approved, denied, expired) by `resolver`,
    /// noting why (`note`): the one transition out of `pending`, made and read back in one
    /// write transaction, so of the approve, the deny, the withdrawal and the expiry that race
    /// for a request exactly one wins, and each loser learns which end it lost to
    /// ([`Ending::AlreadyEnded`] with the request as the winner left it).
    pub fn end(
        &self,
        id: &str,
        state: &str,
        resolver: &str,
        note: Option<&str>,
    ) -> Result<Ending, TokenError> {
        self.db(|c| {
            let tx = super::db::StateDb::write(c)?;
            let won = tx
                .query_row(
                    &format!(
                        "UPDATE approvals SET state = ?2, resolver = ?3, resolved_ms = ?4, note = ?5, \
                         taken = CASE WHEN ?2 = 'approved' THEN 'open' ELSE NULL END \
                         WHERE id = ?1 AND state = 'pending' RETURNING {COLUMNS}"
                    ),
                    params![id, state, resolver, crate::now_ms(), note],
                    read,
                )
                .optional()?;
            let ending = match won {
                Some(a) => Ending::Ended(a),
                None => tx
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
                        [id],
                        read,
                    )
                    .optional()?
                    .map_or(Ending::Unknown, Ending::AlreadyEnded),
            };
            tx.commit()?;
            Ok(ending)
        })
    }

    /// Moves a resolved request from `from` to `to` (an approval whose resolution could not be
    /// recorded becomes a denial); `false` if it was not in `from`. A request moved out of
    /// `approved` has no approval left to take (its `taken` is cleared).
    pub fn overrule(
        &self,
        id: &str,
        from: &str,
        to: &str,
        resolver: &str,
        note: &str,
    ) -> Result<bool, TokenError> {
        let n = self.db(|c| {
            c.execute(
                "UPDATE approvals SET state = ?3, resolver = ?4, resolved_ms = ?5, note = ?6, \
                 taken = CASE WHEN ?3 = 'approved' THEN taken ELSE NULL END WHERE id = ?1 AND state = ?2",
                params![id, from, to, resolver, crate::now_ms(), note],
            )
        })?;
        Ok(n > 0)
    }

    /// Closes a full-access window (no use left).
    pub fn close_window(&self, id: &str) -> Result<(), TokenError> {
        self.db(|c| c.execute("UPDATE windows SET uses_left = 0 WHERE id = ?1", [id]))?;
        Ok(())
    }

    /// Every pending request: at a start, those whose waiters died with the previous
    /// daemon, each one's id, token and agent, for its record (made before they are expired,
    /// [`ApprovalStore::expire_all_pending`]).
    pub fn pending_all(&self) -> Result<Vec<Ended>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(
                "SELECT id, token, agent FROM approvals WHERE state = 'pending' ORDER BY created_ms, id",
            )?;
            let rows = s.query_map([], |r| {
                Ok(Ended {
                    id: r.get(0)?,
                    token: r.get(1)?,
                    agent: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Expires pending requests whose deadline passed (their waiter gave up or is gone):
    /// each one's id, token and agent, for its record.
    pub fn expire_overdue(&self) -> Result<Vec<Ended>, TokenError> {
        self.expire_where("deadline_ms <= ?1")
    }

    /// Expires every pending request (their waiters died with the previous daemon): each
    /// one's id, token and agent, for its record.
    pub fn expire_all_pending(&self) -> Result<Vec<Ended>, TokenError> {
        self.expire_where("?1 = ?1")
    }

    /// Expires the pending requests that also match `filter` (`?1` is now), in one
    /// statement: what it expired, so that each is recorded under its token.
    fn expire_where(&self, filter: &str) -> Result<Vec<Ended>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(&format!(
                "UPDATE approvals SET state = 'expired', resolver = 'loongd', resolved_ms = ?1 \
                 WHERE state = 'pending' AND {filter} RETURNING id, token, agent"
            ))?;
            let rows = s.query_map([crate::now_ms()], |r| {
                Ok(Ended {
                    id: r.get(0)?,
                    token: r.get(1)?,
                    agent: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Moves the approval of the approved request `id` from `open` to `how` (`taken` by its
    /// waiter, `unused` once recorded so, or what a start found in the trail); `false` when it
    /// was not approved or not open (settled already, or approved by an older binary).
    pub fn settle(&self, id: &str, how: &str) -> Result<bool, TokenError> {
        let n = self.db(|c| {
            c.execute(
                "UPDATE approvals SET taken = ?2 WHERE id = ?1 AND state = 'approved' AND taken = 'open'",
                params![id, how],
            )
        })?;
        Ok(n > 0)
    }

    /// The approved requests whose approval is still `open` (see [`ADDED_COLUMNS`]): at a
    /// start, those whose waiters died with the previous loongd before taking them, or whose
    /// approval's record never committed. Only candidates: what is recorded of each is the
    /// trail's to say ([`crate::effects::approval::record_untaken`]).
    pub fn approved_open(&self) -> Result<Vec<Approval>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE state = 'approved' AND taken = 'open' ORDER BY created_ms, id"
            ))?;
            let rows = s.query_map([], read)?;
            rows.collect()
        })
    }

    /// Opens a full-access window for `pack` (every pack when `None`).
    pub fn open_window(
        &self,
        pack: Option<&str>,
        ttl_ms: i64,
        uses: u32,
        creator: &str,
    ) -> Result<String, TokenError> {
        let id = random_id()?;
        self.db(|c| c.execute("INSERT INTO windows (id, pack, expires_ms, uses_left, creator) VALUES (?1, ?2, ?3, ?4, ?5)", params![id, pack, crate::now_ms() + ttl_ms, uses, creator]))?;
        Ok(id)
    }

    /// The full-access windows still live (a use left, not expired): at a start, each must
    /// be on record ([`crate::effects::approval::close_unrecorded_windows`]).
    pub fn live_windows(&self) -> Result<Vec<String>, TokenError> {
        self.db(|c| {
            let mut s = c.prepare(
                "SELECT id FROM windows WHERE uses_left > 0 AND expires_ms > ?1 ORDER BY id",
            )?;
            let rows = s.query_map([crate::now_ms()], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Spends one use of a live window covering `pack`; its id, or `None`.
    pub fn take_window_use(&self, pack: &str) -> Result<Option<String>, TokenError> {
        self.db(|c| {
            let id: Option<String> = c
                .query_row(
                    "SELECT id FROM windows WHERE (pack IS NULL OR pack = ?1) AND uses_left > 0 AND expires_ms > ?2 ORDER BY expires_ms LIMIT 1",
                    params![pack, crate::now_ms()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = &id {
                c.execute("UPDATE windows SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0", [id])?;
            }
            Ok(id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>, effect: EffectDetail) -> Approval {
        Approval {
            id: String::new(),
            created_ms: 0,
            deadline_ms: i64::MAX,
            state: String::new(),
            actor: "uid:0".into(),
            pack: "p".into(),
            capability: "process.exec".into(),
            target: "sh".into(),
            score: 11,
            reasons: "r".into(),
            resolver: None,
            token: token.map(String::from),
            agent: token.map(|_| "bot".to_string()),
            effect,
            note: None,
        }
    }

    /// An approval is `open` from the statement that approves it until it is settled, once;
    /// a denied, expired or pending request is never open. Rows with no mark (approved by an
    /// older binary, or the column added by a start killed before anything else) are never
    /// open, so no start reads a history of approvals as unused; and a request overruled out
    /// of `approved` is no longer open.
    #[test]
    fn approvals_are_open_from_the_approve_until_settled_once_and_unmarked_rows_never() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.db");
        let store = ApprovalStore::open(&path).expect("open");
        let open = |s: &ApprovalStore| -> Vec<String> {
            let mut ids: Vec<String> = s
                .approved_open()
                .expect("open")
                .into_iter()
                .map(|a| a.id)
                .collect();
            ids.sort();
            ids
        };
        let old = store
            .create(request(Some("tok_a"), EffectDetail::default()), 10)
            .expect("old");
        store
            .resolve(&old.id, "approved", "uid:0")
            .expect("resolve");
        // As a store from before the column, then one whose start added the column and was
        // killed: the approval was never marked.
        store
            .db(|c| {
                c.execute_batch(
                    "DROP INDEX approvals_open; ALTER TABLE approvals DROP COLUMN taken",
                )
            })
            .expect("drop the column");
        drop(store);
        let store = ApprovalStore::open(&path).expect("open again");
        assert!(open(&store).is_empty());
        assert!(!store.settle(&old.id, "taken").expect("unmarked"));
        // As a start killed after adding the column, before any backfill.
        store
            .db(|c| c.execute("UPDATE approvals SET taken = NULL", []))
            .expect("unmark");
        drop(store);
        let store = ApprovalStore::open(&path).expect("open once more");
        assert!(open(&store).is_empty());

        let ids: Vec<String> = (0..5)
            .map(|_| {
                store
                    .create(request(Some("tok_a"), EffectDetail::default()), 10)
                    .expect("create")
                    .id
            })
            .collect();
        for (id, state) in ids
            .iter()
            .zip(["approved", "approved", "denied", "approved"])
        {
            store.resolve(id, state, "uid:0").expect("resolve");
        }
        assert!(store
            .overrule(&ids[3], "approved", "denied", "loongd", "not recorded")
            .expect("overrule"));
        let mut both = vec![ids[0].clone(), ids[1].clone()];
        both.sort();
        assert_eq!(open(&store), both);
        assert!(store.settle(&ids[0], "taken").expect("settle"));
        assert!(!store.settle(&ids[0], "unused").expect("settled once"));
        assert!(!store.settle(&ids[2], "unused").expect("a denial"));
        assert!(!store.settle(&ids[3], "unused").expect("overruled"));
        assert!(!store.settle(&ids[4], "unused").expect("pending"));
        assert_eq!(open(&store), [ids[1].clone()]);
        assert!(store.settle(&ids[1], "unused").expect("settle"));
        drop(store);
        let store = ApprovalStore::open(&path).expect("open at last");
        assert!(open(&store).is_empty());
    }

    /// What loongd expires without an approver is returned with its token and agent, for
    /// the record under the token; a request still in time, or decided, is not.
    #[test]
    fn expired_requests_name_their_token() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ApprovalStore::open(&dir.path().join("state.db")).expect("open");
        let mut overdue = request(Some("tok_a"), EffectDetail::default());
        overdue.deadline_ms = 1;
        let overdue = store.create(overdue, 10).expect("overdue");
        let in_time = store
            .create(request(Some("tok_a"), EffectDetail::default()), 10)
            .expect("in time");
        let decided = store
            .create(request(None, EffectDetail::default()), 10)
            .expect("decided");
        store
            .resolve(&decided.id, "denied", "uid:0")
            .expect("resolve")
            .expect("was pending");
        let ended = store.expire_overdue().expect("expire overdue");
        assert_eq!(
            ended,
            vec![Ended {
                id: overdue.id,
                token: Some("tok_a".into()),
                agent: Some("bot".into()),
            }]
        );
        let ended = store.expire_all_pending().expect("expire all");
        assert_eq!(
            ended.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            [in_time.id.as_str()]
        );
        assert_eq!(ended[0].token.as_deref(), Some("tok_a"));
    }

    #[test]
    fn a_request_keeps_its_effect_and_its_token_and_old_tables_gain_the_columns() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.db");
        // An approvals table as loongd wrote it before effects and tokens were kept.
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE approvals (id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL, state TEXT NOT NULL, actor TEXT NOT NULL, pack TEXT NOT NULL, capability TEXT NOT NULL, target TEXT NOT NULL, score INTEGER NOT NULL, reasons TEXT NOT NULL, resolver TEXT, resolved_ms INTEGER);
                 INSERT INTO approvals VALUES ('old', 0, 1, 'denied', 'uid:0', 'p', 'fs.read', '/x', 0, '', 'uid:0', 1);",
            )
            .expect("old table");
        }
        let store = ApprovalStore::open(&path).expect("migrates");
        let old = store.get("old").expect("get").expect("old row");
        assert_eq!((old.token, old.effect), (None, EffectDetail::default()));

        let input = format!(
            "{{\"command\": \"{}\"}}",
            "é".repeat(MAX_INPUT_PREVIEW_BYTES)
        );
        let mut effect = EffectDetail::tool_call("shell.exec", &input);
        effect.argv = vec!["/bin/sh".into(), "-c".into(), "rm -rf / # \u{1b}[2K".into()];
        let a = store
            .create(request(Some("tok_1"), effect.clone()), 10)
            .expect("create");
        let back = store.get(&a.id).expect("get").expect("row");
        assert_eq!(back.effect, effect);
        assert_eq!(
            (back.token.as_deref(), back.agent.as_deref()),
            (Some("tok_1"), Some("bot"))
        );
        // The preview is cut on a character boundary, within the bound; size and digest are
        // of the whole input.
        let preview = effect.input_preview.as_deref().unwrap_or_default();
        assert!(
            preview.len() <= MAX_INPUT_PREVIEW_BYTES && preview.len() > MAX_INPUT_PREVIEW_BYTES - 4
        );
        assert!(input.starts_with(preview));
        assert_eq!(effect.input_bytes, Some(input.len() as u64));
        assert_eq!(effect.input_sha256.as_deref().map(str::len), Some(64));
        // Only requests under a token are listed for re-checking.
        store
            .create(request(None, EffectDetail::default()), 10)
            .expect("operator's");
        let under: Vec<String> = store
            .pending_under_tokens()
            .expect("pending")
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(under, vec![a.id.clone()]);
        let denied = store
            .resolve_noted(&a.id, "denied", "loongd", Some("its token died"))
            .expect("resolve")
            .expect("was pending");
        assert_eq!(denied.note.as_deref(), Some("its token died"));
        assert!(store.pending_under_tokens().expect("pending").is_empty());
    }

    /// The end of a request is one transition with one winner: a withdrawal that comes first
    /// leaves an approve nothing but the news that it was withdrawn, an approve that comes
    /// first leaves the withdrawal the news that it was approved; ends racing on threads
    /// have exactly one winner, and every loser reads the winner's state.
    #[test]
    fn one_end_of_a_request_wins_and_the_others_learn_which() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ApprovalStore::open(&dir.path().join("state.db")).expect("open");
        let ask = || {
            store
                .create(request(Some("tok_a"), EffectDetail::default()), 100)
                .expect("create")
        };
        // The withdrawal first: the approve loses, and sees why.
        let a = ask();
        let withdrawn = store
            .end(&a.id, "expired", "loongd", Some("withdrawn"))
            .expect("withdraw");
        assert!(
            matches!(&withdrawn, Ending::Ended(e) if e.state == "expired"),
            "{withdrawn:?}"
        );
        match store
            .end(&a.id, "approved", "uid:0", None)
            .expect("approve")
        {
            Ending::AlreadyEnded(e) => {
                assert_eq!(
                    (e.state.as_str(), e.note.as_deref()),
                    ("expired", Some("withdrawn"))
                );
            }
            other => panic!("an approve after the withdrawal: {other:?}"),
        }
        // The approve first: the withdrawal loses, and sees the approval.
        let b = ask();
        let approved = store
            .end(&b.id, "approved", "uid:0", None)
            .expect("approve");
        assert!(
            matches!(&approved, Ending::Ended(e) if e.state == "approved" && e.resolver.as_deref() == Some("uid:0")),
            "{approved:?}"
        );
        match store
            .end(&b.id, "expired", "loongd", Some("withdrawn"))
            .expect("withdraw")
        {
            Ending::AlreadyEnded(e) => assert_eq!(e.state, "approved"),
            other => panic!("a withdrawal after the approve: {other:?}"),
        }
        assert_eq!(
            store
                .end("nope", "approved", "uid:0", None)
                .expect("unknown"),
            Ending::Unknown
        );
        // Ends at once, on threads: one winner, each loser reads its state.
        for _ in 0..20 {
            let c = ask();
            let ends = [
                "approved", "denied", "expired", "approved", "expired", "denied",
            ];
            let results: Vec<(String, Ending)> = std::thread::scope(|s| {
                let handles: Vec<_> = ends
                    .iter()
                    .map(|state| {
                        let (store, id) = (&store, c.id.clone());
                        s.spawn(move || {
                            (
                                state.to_string(),
                                store.end(&id, state, "r", None).expect("end"),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("thread"))
                    .collect()
            });
            let winners: Vec<&str> = results
                .iter()
                .filter_map(|(s, e)| matches!(e, Ending::Ended(_)).then_some(s.as_str()))
                .collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            for (_, e) in &results {
                match e {
                    Ending::Ended(a) | Ending::AlreadyEnded(a) => assert_eq!(a.state, winners[0]),
                    Ending::Unknown => panic!("{results:?}"),
                }
            }
        }
    }

    /// A token with `max_per_token` requests pending is refused the next, typed and naming
    /// it; another token, and the operator, still ask (the controls); a request decided or
    /// expired makes room again.
    #[test]
    fn a_tokens_pending_requests_are_bounded() {
        const LIMIT: u32 = 2;
        let dir = tempfile::tempdir().expect("dir");
        let store = ApprovalStore::open(&dir.path().join("state.db")).expect("open");
        let ask =
            |token: Option<&str>| store.create(request(token, EffectDetail::default()), LIMIT);
        let first = ask(Some("tok_a")).expect("first");
        ask(Some("tok_a")).expect("second");
        match ask(Some("tok_a")) {
            Err(e @ ApprovalError::TooManyPending { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("token tok_a has 2 approvals pending")
                        && text.contains("max_pending_per_token = 2")
                        && text.contains("loongctl approvals list"),
                    "{text}"
                );
            }
            other => panic!("the third of tok_a: {other:?}"),
        }
        assert_eq!(store.pending_of_token("tok_a").expect("count"), 2);
        ask(Some("tok_b")).expect("another token asks");
        for _ in 0..=LIMIT {
            ask(None).expect("the operator's requests are not bounded");
        }
        store
            .resolve(&first.id, "denied", "uid:0")
            .expect("resolve")
            .expect("was pending");
        ask(Some("tok_a")).expect("room again once one is decided");
        assert!(matches!(
            ask(Some("tok_a")),
            Err(ApprovalError::TooManyPending { .. })
        ));
    }

    /// A token's pending requests are counted from the partial index, not by reading every
    /// request ever kept (the count runs on each request and each gateway call).
    #[test]
    fn a_tokens_pending_count_reads_the_pending_index_only() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ApprovalStore::open(&dir.path().join("state.db")).expect("open");
        let plan = |sql: &str| -> String {
            store
                .db(|c| {
                    let mut s = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = s.query_map(params!["tok_a"], |r| r.get::<_, String>(3))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .expect("plan")
                .join("; ")
        };
        let counted = plan("SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND token = ?1");
        assert!(counted.contains("approvals_pending_by_token"), "{counted}");
        // The control: a query the index cannot serve scans the table.
        let all = plan("SELECT COUNT(*) FROM approvals WHERE token = ?1");
        assert!(!all.contains("approvals_pending_by_token"), "{all}");
    }

    #[test]
    fn a_request_resolved_between_pages_keeps_its_place() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ApprovalStore::open(&dir.path().join("state.db")).expect("open");
        for _ in 0..5 {
            store
                .create(request(Some("tok_1"), EffectDetail::default()), 10)
                .expect("create");
        }
        let ids = |after: Option<&str>, limit| -> Vec<String> {
            let page = store.list(after, limit).expect("list");
            page.into_iter().map(|a| a.id).collect()
        };
        let all = ids(None, 10);
        assert_eq!(all.len(), 5);
        // Positive control: pages of two give the same list when nothing changes.
        let first = ids(None, 2);
        let mut paged = first.clone();
        paged.extend(ids(Some(&first[1]), 10));
        assert_eq!(paged, all);
        // The last request of the first page is resolved (or expires) before the next page:
        // the rest still follow it, and the one resolved is not shown again.
        store
            .resolve(&first[1], "approved", "uid:0")
            .expect("resolve")
            .expect("was pending");
        let rest = ids(Some(&first[1]), 10);
        let mut paged = first;
        paged.extend(rest);
        assert_eq!(paged, all);
    }
}
