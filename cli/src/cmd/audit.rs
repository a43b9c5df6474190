//! `loongctl audit recent | show SEQ | verify | export --format jsonl`.

use std::{
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::anyhow;
use clap::Subcommand;
use loong_ipc::{
    message::control::MAX_AUDIT_PAGE, paths::Layout, AuditQuery, AuditRecordView, ControlRequest,
    ControlResponse,
};

use crate::{
    connect, exit,
    paging::{self, PageArgs},
    text::Esc,
    Failure,
};

/// How long `audit verify` and `audit summary` wait for their answer: each reads the whole
/// trail (a 1 GiB trail verifies in about 9 s on a loaded 2-core machine, so the simple
/// request's deadline would fail a larger one that is intact).
pub const WHOLE_TRAIL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// `loongctl audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit records.
    Recent {
        /// Only this kind (daemon.started, sandbox.spawned, sandbox.exited, …).
        #[arg(long)]
        kind: Option<String>,
        /// Only records newer than this: a duration (30s, 10m, 2h, 1d) or Unix milliseconds.
        #[arg(long)]
        since: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON (an array of {seq, time_ms, kind, actor, correlation, detail, hash}).
        #[arg(long)]
        json: bool,
    },
    /// One record.
    Show {
        seq: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Records counted per kind, pack, agent or token (decisions split into allowed and
    /// denied).
    Summary {
        #[arg(long, default_value = "kind")]
        group_by: String,
        /// Print JSON (an array of {key, records, allowed, denied}).
        #[arg(long)]
        json: bool,
    },
    /// Every record about one capability token, oldest first, fetched a page at a time
    /// (`--after` takes a record number).
    TokenTrail {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Check the whole trail: the hash chain and the signed checkpoints (exit 1 when broken,
    /// naming the first bad record).
    Verify {
        /// Print JSON ({records, checkpoints, ok, first_bad_seq, problem}).
        #[arg(long)]
        json: bool,
    },
    /// Every record, oldest first, one JSON object per line (for a SIEM).
    Export {
        /// Only `jsonl`.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Only records at or after this (duration ago, or Unix ms).
        #[arg(long)]
        since: Option<String>,
        /// Only records at or before this (duration ago, or Unix ms).
        #[arg(long)]
        until: Option<String>,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A duration ago (`30s`, `10m`, `2h`, `1d`), or Unix milliseconds.
fn when(flag: &str, s: &str) -> Result<i64, Failure> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    Ok(now_ms() - crate::duration::millis(flag, s)?)
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, proleptic Gregorian).
pub(crate) fn rfc3339(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn json_of(r: &AuditRecordView) -> serde_json::Value {
    let detail: serde_json::Value = serde_json::from_str(&r.detail)
        .unwrap_or_else(|_| serde_json::Value::String(r.detail.clone()));
    serde_json::json!({
        "seq": r.seq, "time_ms": r.time_ms, "time": rfc3339(r.time_ms), "kind": r.kind, "actor": r.actor,
        "correlation": r.correlation, "detail": detail, "hash": r.hash,
    })
}

fn records(layout: &Layout, req: ControlRequest) -> Result<Vec<AuditRecordView>, Failure> {
    match crate::request(layout, req)? {
        ControlResponse::AuditRecords(r) => Ok(r),
        other => Err(anyhow!("unexpected answer: {other:?}").into()),
    }
}

/// Prints records as a JSON array or one line each.
fn print_records(rs: &[AuditRecordView], json: bool) -> Result<(), Failure> {
    if json {
        let values: Vec<_> = rs.iter().map(json_of).collect();
        println!(
            "{}",
            crate::text::json_text(&serde_json::to_string_pretty(&values)?)
        );
    } else {
        print_human(rs);
    }
    Ok(())
}

fn print_human(rs: &[AuditRecordView]) {
    for r in rs {
        println!(
            "{:>6}  {}  {:<18} {:<10} {:<16} {}",
            r.seq,
            rfc3339(r.time_ms),
            Esc(&r.kind),
            Esc(&r.actor),
            Esc(&r.correlation),
            Esc(&r.detail)
        );
    }
}

pub(crate) fn run(layout: &Layout, cmd: AuditCommand) -> Result<u8, Failure> {
    match cmd {
        AuditCommand::Recent {
            kind,
            since,
            limit,
            json,
        } => {
            let since_ms = since.as_deref().map(|s| when("--since", s)).transpose()?;
            let q = AuditQuery {
                kind,
                since_ms,
                limit: limit.clamp(1, MAX_AUDIT_PAGE),
                ..AuditQuery::default()
            };
            let rs = records(layout, ControlRequest::AuditQuery(q))?;
            print_records(&rs, json)?;
            Ok(exit::OK)
        }
        AuditCommand::Summary { group_by, json } => {
            let mut client = connect(layout)?;
            let ControlResponse::AuditSummary(rows) = client.call::<_, ControlResponse>(
                ControlRequest::AuditSummary { group_by },
                WHOLE_TRAIL_DEADLINE,
            )?
            else {
                return Err(anyhow!("unexpected answer to audit summary").into());
            };
            if json {
                let v: Vec<serde_json::Value> = rows.iter().map(|(k, n, a, d)| serde_json::json!({ "key": k, "records": n, "allowed": a, "denied": d })).collect();
                println!("{}", crate::text::json_value(&serde_json::Value::Array(v)));
            } else {
                for (k, n, a, d) in &rows {
                    println!(
                        "{:<40} {n:>8} records  {a:>6} allowed  {d:>6} denied",
                        Esc(k)
                    );
                }
            }
            Ok(exit::OK)
        }
        AuditCommand::TokenTrail { id, json, page } => {
            crate::public_token_id(&id)?;
            paging::print_list(
                layout,
                &page,
                json,
                |p| ControlRequest::AuditTokenTrail {
                    token: id.clone(),
                    page: p,
                },
                |r| match r {
                    ControlResponse::AuditRecords(rs) => Some(rs),
                    _ => None,
                },
                |r| r.seq.to_string(),
                json_of,
                |r| print_human(std::slice::from_ref(r)),
            )
        }
        AuditCommand::Show { seq, json } => {
            let rs = records(layout, ControlRequest::AuditShow { seq })?;
            let Some(r) = rs.first() else {
                return Err(Failure {
                    code: exit::UNEXPECTED,
                    error: anyhow!("no audit record {seq}"),
                });
            };
            if json {
                println!(
                    "{}",
                    crate::text::json_text(&serde_json::to_string_pretty(&json_of(r))?)
                );
            } else {
                print_human(&rs);
            }
            Ok(exit::OK)
        }
        AuditCommand::Verify { json } => {
            let mut client = connect(layout)?;
            let ControlResponse::AuditVerified(v) = client
                .call::<_, ControlResponse>(ControlRequest::AuditVerify, WHOLE_TRAIL_DEADLINE)?
            else {
                return Err(anyhow!("unexpected answer to audit verify").into());
            };
            if json {
                let j = serde_json::json!({ "records": v.records, "checkpoints": v.checkpoints, "ok": v.first_bad_seq.is_none(), "first_bad_seq": v.first_bad_seq, "problem": v.problem });
                println!("{j}");
            } else if let Some(seq) = v.first_bad_seq {
                println!(
                    "audit trail BROKEN at record {seq}: {}",
                    Esc(&v.problem.unwrap_or_default())
                );
            } else {
                println!(
                    "audit trail verified: {} records, {} signed checkpoints",
                    v.records, v.checkpoints
                );
            }
            Ok(if v.first_bad_seq.is_none() {
                exit::OK
            } else {
                exit::UNEXPECTED
            })
        }
        AuditCommand::Export {
            format,
            since,
            until,
        } => {
            if format != "jsonl" {
                return Err(Failure {
                    code: exit::USAGE,
                    error: anyhow!("--format {format}: only jsonl is supported"),
                });
            }
            let since_ms = since.as_deref().map(|s| when("--since", s)).transpose()?;
            let until_ms = until.as_deref().map(|s| when("--until", s)).transpose()?;
            let mut after_seq = None;
            let mut out = std::io::stdout().lock();
            loop {
                let q = AuditQuery {
                    since_ms,
                    until_ms,
                    after_seq,
                    limit: MAX_AUDIT_PAGE,
                    oldest_first: true,
                    ..AuditQuery::default()
                };
                let page = records(layout, ControlRequest::AuditQuery(q))?;
                let Some(last) = page.last() else { break };
                after_seq = Some(last.seq);
                for r in &page {
                    writeln!(out, "{}", json_of(r))?;
                }
            }
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_795_651_200_000),
            "2026-11-26T00:00:00.000Z"
        );
    }
}
