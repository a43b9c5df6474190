//! `loongctl doctor [--json]`: which confinement mechanisms this host has, and which tiers
//! loongd can fully enforce (exit 6 when a tier cannot be).

use loong_ipc::{paths::Layout, ControlRequest, ControlResponse};
use serde::Serialize;

use crate::{
    connect, exit,
    text::{esc_join, Esc},
    Failure, REQUEST_DEADLINE,
};

/// The JSON shape of `doctor --json` (stable field names, docs/cli.md).
#[derive(Debug, Serialize)]
struct DoctorJson<'a> {
    root: bool,
    landlock_abi: i32,
    error: Option<&'a str>,
    mechanisms: Vec<MechanismJson<'a>>,
    tiers: Vec<TierJson<'a>>,
    egress_sandboxes: u64,
    egress_open: u64,
}

#[derive(Debug, Serialize)]
struct MechanismJson<'a> {
    name: &'a str,
    available: bool,
    detail: &'a str,
    fix: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct TierJson<'a> {
    tier: &'a str,
    enforceable: bool,
    missing: &'a [String],
}

pub(crate) fn run(layout: &Layout, json: bool) -> Result<u8, Failure> {
    let mut client = connect(layout)?;
    let ControlResponse::Doctor(r) =
        client.call::<_, ControlResponse>(ControlRequest::Doctor, REQUEST_DEADLINE)?
    else {
        return Err(anyhow::anyhow!("unexpected answer to doctor").into());
    };
    let all_ok = r.error.is_none() && r.tiers.iter().all(|t| t.enforceable);
    if json {
        let j = DoctorJson {
            root: r.root,
            landlock_abi: r.landlock_abi,
            error: r.error.as_deref(),
            mechanisms: r
                .mechanisms
                .iter()
                .map(|m| MechanismJson {
                    name: &m.name,
                    available: m.available,
                    detail: &m.detail,
                    fix: m.fix.as_deref(),
                })
                .collect(),
            tiers: r
                .tiers
                .iter()
                .map(|t| TierJson {
                    tier: &t.tier,
                    enforceable: t.enforceable,
                    missing: &t.missing,
                })
                .collect(),
            egress_sandboxes: r.egress_sandboxes,
            egress_open: r.egress_open,
        };
        println!(
            "{}",
            crate::text::json_text(&serde_json::to_string_pretty(&j)?)
        );
    } else {
        if let Some(e) = &r.error {
            println!("sandboxes unavailable: {}", Esc(e));
        }
        println!(
            "loongd runs as {}; landlock ABI {}",
            if r.root {
                "root"
            } else {
                "an unprivileged user"
            },
            r.landlock_abi
        );
        println!();
        for m in &r.mechanisms {
            let mark = if m.available { "ok     " } else { "MISSING" };
            println!("  {mark} {:<13} {}", Esc(&m.name), Esc(&m.detail));
            if let (false, Some(fix)) = (m.available, &m.fix) {
                println!("          fix: {}", Esc(fix));
            }
        }
        println!();
        for t in &r.tiers {
            if t.enforceable {
                println!("  {:<10} fully enforced", Esc(&t.tier));
            } else {
                println!(
                    "  {:<10} NOT enforceable: missing {}",
                    Esc(&t.tier),
                    esc_join(&t.missing, ", ")
                );
            }
        }
        println!();
        println!(
            "egress broker: {} sandboxes, {} open connections",
            r.egress_sandboxes, r.egress_open
        );
    }
    Ok(if all_ok {
        exit::OK
    } else {
        exit::SANDBOX_UNAVAILABLE
    })
}
