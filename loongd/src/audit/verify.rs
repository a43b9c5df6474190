//! Verifying a trail: every record links to the one before and hashes to what is stored,
//! sequence numbers have no gap, and every checkpoint's signature holds and matches the record
//! it signs. Offline: it needs only the database and the daemon's public key.

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::Connection;

use super::{canonical, chain_hash, checkpoint_message, store::read_record, store::RECORD_COLUMNS};

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

/// Verifies the trail in `conn` against `key`.
pub fn verify(conn: &Connection, key: &VerifyingKey) -> rusqlite::Result<VerifyReport> {
    let mut report = VerifyReport {
        records: 0,
        checkpoints: 0,
        first_bad: None,
    };
    let bad = |seq: u64, why: String, r: &mut VerifyReport| {
        let earlier = r.first_bad.as_ref().is_none_or(|(s, _)| seq < *s);
        if earlier {
            r.first_bad = Some((seq, why));
        }
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {RECORD_COLUMNS} FROM audit ORDER BY seq ASC"
    ))?;
    let mut rows = stmt.query([])?;
    let (mut expected, mut prev) = (1u64, [0u8; 32]);
    let mut hashes = std::collections::HashMap::new();
    while let Some(row) = rows.next()? {
        let r = read_record(row)?;
        report.records += 1;
        if r.seq != expected {
            bad(
                expected,
                format!(
                    "record {expected} is missing (the next stored record is {})",
                    r.seq
                ),
                &mut report,
            );
            break;
        }
        if r.prev_hash != prev {
            bad(r.seq, "its link to the previous record is broken (removed, reordered or rewritten records)".into(), &mut report);
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
            bad(
                r.seq,
                "its contents do not match its hash (the record was changed)".into(),
                &mut report,
            );
            break;
        }
        hashes.insert(r.seq, r.hash);
        prev = r.hash;
        expected += 1;
    }
    let mut cps = conn.prepare("SELECT seq, hash, signature FROM checkpoints ORDER BY seq ASC")?;
    let mut rows = cps.query([])?;
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)? as u64;
        let hash: Vec<u8> = row.get(1)?;
        let sig: Vec<u8> = row.get(2)?;
        let Ok(hash32) = <[u8; 32]>::try_from(hash.as_slice()) else {
            bad(
                seq,
                "its checkpoint's hash is malformed".into(),
                &mut report,
            );
            continue;
        };
        let signature = <[u8; 64]>::try_from(sig.as_slice())
            .ok()
            .map(|s| Signature::from_bytes(&s));
        if signature.is_none_or(|s| {
            key.verify_strict(&checkpoint_message(seq, &hash32), &s)
                .is_err()
        }) {
            bad(
                seq,
                "its checkpoint's signature does not verify (forged or from another key)".into(),
                &mut report,
            );
            continue;
        }
        match hashes.get(&seq) {
            Some(h) if *h == hash32 => report.checkpoints += 1,
            Some(_) => bad(
                seq,
                "it differs from what the signed checkpoint recorded".into(),
                &mut report,
            ),
            None => bad(
                seq,
                "a signed checkpoint covers it, but it is missing (the trail was truncated)".into(),
                &mut report,
            ),
        }
    }
    Ok(report)
}
