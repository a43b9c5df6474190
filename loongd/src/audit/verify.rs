//! Verifying a trail: every record links to the one before and hashes to what is stored,
//! sequence numbers have no gap, and every checkpoint's signature holds and matches the record
//! it signs. Checkpoints are also expected: one at every multiple of [`CHECKPOINT_EVERY`] and
//! one on every `daemon.stopped` record, so a trail cut back or rechained with its later
//! checkpoints deleted is caught; and a start after an unstopped run must say so
//! (`daemon.unclean_stop` right after its `daemon.started`). The witness (the latest signed
//! checkpoint, kept outside the database) catches a tail removed with every checkpoint that
//! covered it. Offline: it needs only the database, the witness and the daemon's public key.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::{Connection, OptionalExtension};

use super::{
    canonical, chain_hash, checkpoint_message, store::read_record, store::RECORD_COLUMNS,
    witness::Witness, Kind, CHECKPOINT_EVERY,
};

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Checkpoints whose signature and record both hold.
    pub checkpoints: u64,
    /// The first bad sequence number and what is wrong there; `None` when all holds.
    pub first_bad: Option<(u64, String)>,
}

impl VerifyReport {
    pub(super) fn bad(&mut self, seq: u64, why: String) {
        if self.first_bad.as_ref().is_none_or(|(s, _)| seq < *s) {
            self.first_bad = Some((seq, why));
        }
    }
}

/// How much of the trail to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every record (`audit verify`).
    Full,
    /// The records after the newest checkpoint (loongd's start): the chain before it was
    /// verified when that checkpoint was signed.
    Tail,
}

/// Verifies the whole trail in `conn` against `key`.
pub fn verify(conn: &Connection, key: &VerifyingKey) -> rusqlite::Result<VerifyReport> {
    verify_scope(conn, key, Scope::Full)
}

/// Verifies the trail in `conn` against `key`, over `scope`.
pub fn verify_scope(
    conn: &Connection,
    key: &VerifyingKey,
    scope: Scope,
) -> rusqlite::Result<VerifyReport> {
    let mut report = VerifyReport {
        records: 0,
        checkpoints: 0,
        first_bad: None,
    };
    let from = match scope {
        Scope::Full => 0,
        Scope::Tail => conn
            .query_row("SELECT MAX(seq) FROM checkpoints", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?
            .map_or(0, |s| s as u64),
    };
    // Rows no walk reads (sequence numbers start at 1) would still be listed and exported.
    let stray: Option<i64> =
        conn.query_row("SELECT MAX(seq) FROM audit WHERE seq < 1", [], |r| r.get(0))?;
    if let Some(s) = stray {
        report.bad(
            0,
            format!("a record numbered {s} is stored, but records are numbered from 1 (it was inserted)"),
        );
    }
    // A break loongd was told to accept stays reported by the full walk: a trail cut back
    // with its checkpoints is consistent again once the next checkpoint is signed.
    if scope == Scope::Full {
        let accepted: Option<(i64, Option<i64>, Option<String>)> = conn
            .query_row(
                "SELECT seq, json_extract(detail, '$.first_bad_seq'), json_extract(detail, '$.problem') FROM audit WHERE kind = ?1 ORDER BY seq LIMIT 1",
                [Kind::AuditIntegrityFailed.as_str()],
                |r| Ok((r.get(0)?, r.get(1).ok().flatten(), r.get(2).ok().flatten())),
            )
            .optional()?;
        if let Some((at, bad, problem)) = accepted {
            report.bad(
                bad.map_or(at as u64, |b| b.max(0) as u64),
                format!(
                    "{} (loongd was started over this failure with --accept-audit-integrity-failure, recorded as audit.integrity_failed at record {at})",
                    problem.unwrap_or_else(|| "the trail failed verification".into())
                ),
            );
        }
    }
    let signed = checkpoints(conn, key, from, &mut report)?;
    let head = walk(conn, from, &signed, &mut report)?;
    for (&seq, _) in signed.range(head.max(from) + 1..) {
        report.bad(
            seq,
            "a signed checkpoint covers it, but it is missing (the trail was truncated)".into(),
        );
    }
    // Checkpoints every CHECKPOINT_EVERY records: a trail whose head is further past its
    // last checkpoint lost checkpoints (deleted, or the records after them rechained).
    let mut expected = from
        .next_multiple_of(CHECKPOINT_EVERY)
        .max(CHECKPOINT_EVERY);
    while expected <= head {
        if !signed.contains_key(&expected) {
            report.bad(
                expected,
                format!("no signed checkpoint covers it, though one is expected every {CHECKPOINT_EVERY} records (checkpoints were deleted or the chain rebuilt)"),
            );
            break;
        }
        expected += CHECKPOINT_EVERY;
    }
    Ok(report)
}

/// The checkpoints at or after `from` whose signature holds; reports the others.
fn checkpoints(
    conn: &Connection,
    key: &VerifyingKey,
    from: u64,
    report: &mut VerifyReport,
) -> rusqlite::Result<BTreeMap<u64, [u8; 32]>> {
    let mut out = BTreeMap::new();
    let mut stmt =
        conn.prepare("SELECT seq, hash, signature FROM checkpoints WHERE seq >= ?1 ORDER BY seq")?;
    let mut rows = stmt.query([from as i64])?;
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)? as u64;
        let hash: Vec<u8> = row.get(1)?;
        let sig: Vec<u8> = row.get(2)?;
        let Ok(hash32) = <[u8; 32]>::try_from(hash.as_slice()) else {
            report.bad(seq, "its checkpoint's hash is malformed".into());
            continue;
        };
        if signature_holds(key, seq, &hash32, &sig) {
            out.insert(seq, hash32);
        } else {
            report.bad(
                seq,
                "its checkpoint's signature does not verify (forged or from another key)".into(),
            );
        }
    }
    Ok(out)
}

/// Whether `sig` is `key`'s signature of the checkpoint `(seq, hash)`.
pub(super) fn signature_holds(key: &VerifyingKey, seq: u64, hash: &[u8; 32], sig: &[u8]) -> bool {
    <[u8; 64]>::try_from(sig).is_ok_and(|s| {
        key.verify_strict(&checkpoint_message(seq, hash), &Signature::from_bytes(&s))
            .is_ok()
    })
}

/// Where a walk starts: the record before the first one read, and whether loongd was
/// running there (started, not yet stopped) or had stopped cleanly.
fn start_of(conn: &Connection, from: u64) -> rusqlite::Result<Option<([u8; 32], Run)>> {
    if from == 0 {
        return Ok(Some(([0u8; 32], Run::Unknown)));
    }
    let prev: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [from as i64],
            |r| r.get(0),
        )
        .optional()?;
    let last: Option<String> = conn
        .query_row(
            "SELECT kind FROM audit WHERE kind IN (?1, ?2) AND seq <= ?3 ORDER BY seq DESC LIMIT 1",
            rusqlite::params![
                Kind::DaemonStarted.as_str(),
                Kind::DaemonStopped.as_str(),
                from as i64
            ],
            |r| r.get(0),
        )
        .optional()?;
    let run = match last.as_deref() {
        Some(k) if k == Kind::DaemonStarted.as_str() => Run::Running,
        Some(k) if k == Kind::DaemonStopped.as_str() => Run::Stopped,
        _ => Run::Unknown,
    };
    Ok(prev.map(|v| (super::store::hash32(v), run)))
}

/// Where the trail was, as far as loongd's runs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Before any `daemon.started`.
    Unknown,
    /// After a `daemon.started`, before its `daemon.stopped`.
    Running,
    /// After a `daemon.stopped`: loongd appends nothing until it starts again, and signs the
    /// first records of its next run.
    Stopped,
}

/// Walks the records after `from`; returns the head (the last sequence number read in order).
fn walk(
    conn: &Connection,
    from: u64,
    signed: &BTreeMap<u64, [u8; 32]>,
    report: &mut VerifyReport,
) -> rusqlite::Result<u64> {
    let Some((mut prev, mut run)) = start_of(conn, from)? else {
        report.bad(
            from,
            "a signed checkpoint covers it, but it is missing (the trail was truncated)".into(),
        );
        let head: Option<i64> = conn.query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))?;
        return Ok(head.map_or(0, |h| h as u64));
    };
    if let Some(h) = signed.get(&from) {
        if from > 0 && *h == prev {
            report.checkpoints += 1;
        } else if from > 0 {
            report.bad(
                from,
                "it differs from what the signed checkpoint recorded".into(),
            );
            return Ok(from);
        }
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECORD_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq ASC"
    ))?;
    let mut rows = stmt.query([from as i64])?;
    let mut expected = from + 1;
    // A `daemon.started` after an unstopped run, waiting for its `daemon.unclean_stop`.
    let mut unclean_start: Option<u64> = None;
    // The first record after a clean stop that no checkpoint covers yet.
    let mut unsigned_after_stop: Option<u64> = None;
    const AFTER_STOP: &str = "records follow a clean stop that no signed checkpoint covers, though loongd signs the first records of every run (they were appended by someone else)";
    while let Some(row) = rows.next()? {
        let r = read_record(row)?;
        report.records += 1;
        if r.seq != expected {
            report.bad(
                expected,
                format!(
                    "record {expected} is missing (the next stored record is {})",
                    r.seq
                ),
            );
            break;
        }
        if r.prev_hash != prev {
            report.bad(r.seq, "its link to the previous record is broken (removed, reordered or rewritten records)".into());
            break;
        }
        let h = chain_hash(
            &prev,
            &canonical(
                r.seq,
                r.time_ms,
                &r.kind,
                &r.actor,
                &r.correlation,
                &r.detail,
            ),
        );
        if h != r.hash {
            report.bad(
                r.seq,
                "its contents do not match its hash (the record was changed)".into(),
            );
            break;
        }
        if run == Run::Stopped && r.kind != Kind::DaemonStopped.as_str() {
            unsigned_after_stop.get_or_insert(r.seq);
        }
        if signed.contains_key(&r.seq) {
            unsigned_after_stop = None;
        }
        match signed.get(&r.seq) {
            Some(c) if *c == h => report.checkpoints += 1,
            Some(_) => report.bad(
                r.seq,
                "it differs from what the signed checkpoint recorded".into(),
            ),
            None => {}
        }
        if let Some(started) = unclean_start.take() {
            if r.kind != Kind::DaemonUncleanStop.as_str() {
                report.bad(started, "loongd started after a run that did not stop cleanly, but the next record is not its daemon.unclean_stop (records were removed or the chain rebuilt)".into());
            }
        }
        if r.kind == Kind::DaemonStarted.as_str() {
            if !signed.contains_key(&r.seq) {
                report.bad(r.seq, "loongd started here, but no signed checkpoint covers the start (loongd signs every start: the run was appended by someone else, or its checkpoint deleted)".into());
            }
            if let Some(s) = unsigned_after_stop.take() {
                report.bad(s, AFTER_STOP.into());
            }
            if run == Run::Running {
                unclean_start = Some(r.seq);
            }
            run = Run::Running;
        } else if r.kind == Kind::DaemonStopped.as_str() {
            run = Run::Stopped;
            if !signed.contains_key(&r.seq) {
                report.bad(r.seq, "loongd stopped cleanly here, but no signed checkpoint covers the stop (checkpoints were deleted or the chain rebuilt)".into());
            }
        }
        prev = h;
        expected += 1;
    }
    if let Some(s) = unsigned_after_stop {
        report.bad(s, AFTER_STOP.into());
    }
    if let Some(started) = unclean_start {
        report.bad(started, "loongd started after a run that did not stop cleanly, but no daemon.unclean_stop follows (records were removed or the chain rebuilt)".into());
    }
    Ok(expected - 1)
}

/// Checks the database against the witness: it must hold the witness's record with the
/// witness's hash, signed by `key`.
pub fn check_witness(
    conn: &Connection,
    key: &VerifyingKey,
    witness: &Witness,
    report: &mut VerifyReport,
) -> rusqlite::Result<()> {
    if !signature_holds(key, witness.seq, &witness.hash, &witness.signature) {
        report.bad(
            witness.seq,
            "the witness file's checkpoint signature does not verify (forged or from another key)"
                .into(),
        );
        return Ok(());
    }
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            [witness.seq as i64],
            |r| r.get(0),
        )
        .optional()?;
    match stored {
        Some(h) if h.as_slice() == witness.hash => {}
        Some(_) => report.bad(
            witness.seq,
            "it differs from the signed checkpoint the witness file holds (the trail was rewritten)"
                .into(),
        ),
        None => {
            let head: Option<i64> =
                conn.query_row("SELECT MAX(seq) FROM audit", [], |r| r.get(0))?;
            report.bad(
                witness.seq,
                format!(
                    "the witness file holds a signed checkpoint at record {}, but the database ends at record {} (the trail was truncated)",
                    witness.seq,
                    head.unwrap_or(0)
                ),
            );
        }
    }
    Ok(())
}
