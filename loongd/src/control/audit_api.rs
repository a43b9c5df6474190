//! The audit queries of the control API: `audit recent|show|verify|export`.

use loong_ipc::{
    message::control::{MAX_AUDIT_PAGE, MAX_AUDIT_PAGE_BYTES},
    AuditQuery, AuditRecordView, AuditVerifyReport, ControlResponse, ErrorKind, Page, RemoteError,
};

use crate::{
    audit::{Query, Record},
    Kernel,
};

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

fn view(r: Record) -> AuditRecordView {
    AuditRecordView {
        seq: r.seq,
        time_ms: r.time_ms,
        kind: r.kind,
        actor: r.actor,
        correlation: r.correlation,
        detail: r.detail,
        hash: hex::encode(r.hash),
    }
}

/// Records matching `q`, bounded in count and bytes (the caller pages with `after_seq`).
pub(crate) async fn query(kernel: &Kernel, q: AuditQuery) -> Result<ControlResponse, RemoteError> {
    if let Some(k) = &q.kind {
        if crate::audit::Kind::parse(k).is_none() {
            let known: Vec<&str> = crate::audit::Kind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(RemoteError::new(
                ErrorKind::BadRequest,
                format!(
                    "unknown audit kind `{k}`; known kinds: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    // Lingering records first, so a reader sees everything that happened before it asked.
    kernel.audit.flush().await.map_err(internal)?;
    let audit = kernel.audit.clone();
    let records = tokio::task::spawn_blocking(move || {
        audit.query(&Query {
            kind: q.kind,
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            after_seq: q.after_seq,
            limit: q.limit.clamp(1, MAX_AUDIT_PAGE),
            ascending: q.oldest_first,
        })
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(ControlResponse::AuditRecords(bounded(records)))
}

/// One record.
pub(crate) async fn show(kernel: &Kernel, seq: u64) -> Result<ControlResponse, RemoteError> {
    // Lingering records first, so a reader sees everything that happened before it asked.
    kernel.audit.flush().await.map_err(internal)?;
    let audit = kernel.audit.clone();
    let r = tokio::task::spawn_blocking(move || audit.get(seq))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(ControlResponse::AuditRecords(
        r.into_iter().map(view).collect(),
    ))
}

/// Verifies the whole trail.
pub(crate) async fn verify(kernel: &Kernel) -> Result<ControlResponse, RemoteError> {
    // Lingering records first, so a reader sees everything that happened before it asked.
    kernel.audit.flush().await.map_err(internal)?;
    let audit = kernel.audit.clone();
    let r = tokio::task::spawn_blocking(move || audit.verify())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let (first_bad_seq, problem) = match r.first_bad {
        Some((s, p)) => (Some(s), Some(p)),
        None => (None, None),
    };
    Ok(ControlResponse::AuditVerified(AuditVerifyReport {
        records: r.records,
        checkpoints: r.checkpoints,
        first_bad_seq,
        problem,
    }))
}

/// `audit summary --group-by G`.
pub(crate) async fn summary(
    kernel: &Kernel,
    group_by: String,
) -> Result<ControlResponse, RemoteError> {
    if !["kind", "pack", "agent", "token"].contains(&group_by.as_str()) {
        return Err(RemoteError::new(
            ErrorKind::BadRequest,
            format!("--group-by {group_by}: expected kind, pack, agent or token"),
        ));
    }
    // Lingering records first, so a reader sees everything that happened before it asked.
    kernel.audit.flush().await.map_err(internal)?;
    let audit = kernel.audit.clone();
    let rows = tokio::task::spawn_blocking(move || audit.summary(&group_by))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(ControlResponse::AuditSummary(rows))
}

/// `audit token-trail ID`.
pub(crate) async fn token_trail(
    kernel: &Kernel,
    token: String,
    page: Page,
) -> Result<ControlResponse, RemoteError> {
    let after_seq = match page.after.as_deref() {
        None => 0,
        Some(a) => a.parse::<u64>().map_err(|_| {
            RemoteError::new(
                ErrorKind::BadRequest,
                format!("--after {a}: a token trail pages by record number (a whole number)"),
            )
        })?,
    };
    // Lingering records first, so a reader sees everything that happened before it asked.
    kernel.audit.flush().await.map_err(internal)?;
    let audit = kernel.audit.clone();
    let limit = page.items();
    let rows = tokio::task::spawn_blocking(move || audit.token_trail(&token, after_seq, limit))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(ControlResponse::AuditRecords(bounded(rows)))
}

/// The records' views, stopping once their text passes [`MAX_AUDIT_PAGE_BYTES`] (at least
/// one is kept, so a page always moves on).
fn bounded(records: Vec<Record>) -> Vec<AuditRecordView> {
    let mut bytes = 0;
    let mut out = Vec::new();
    for r in records {
        bytes += r.detail.len() + r.kind.len() + r.actor.len() + r.correlation.len() + 96;
        if bytes > MAX_AUDIT_PAGE_BYTES && !out.is_empty() {
            break;
        }
        out.push(view(r));
    }
    out
}
