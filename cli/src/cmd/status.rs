//! `loongctl status [--json]`.

use loong_ipc::{paths::Layout, ControlRequest, ControlResponse, StatusReport};
use serde::Serialize;

use crate::{exit, text::Esc, Failure};

/// The JSON shape of `loongctl status --json`; field names are stable (docs/cli.md).
#[derive(Debug, Serialize)]
pub(crate) struct StatusJson<'a> {
    version: &'a str,
    protocol_version: u16,
    pid: u32,
    uptime_ms: u64,
    home: &'a str,
    socket_path: &'a str,
    connected_clients: u32,
}

impl<'a> From<&'a StatusReport> for StatusJson<'a> {
    fn from(s: &'a StatusReport) -> Self {
        StatusJson {
            version: &s.version,
            protocol_version: s.protocol_version,
            pid: s.pid,
            uptime_ms: s.uptime_ms,
            home: &s.home,
            socket_path: &s.socket_path,
            connected_clients: s.connected_clients,
        }
    }
}

/// Asks the daemon of `layout` for its status.
pub(crate) fn fetch(layout: &Layout) -> Result<StatusReport, Failure> {
    match crate::request(layout, ControlRequest::Status)? {
        ControlResponse::Status(s) => Ok(s),
        other => Err(anyhow::anyhow!("unexpected answer to status: {other:?}").into()),
    }
}

pub(crate) fn run(layout: &Layout, json: bool) -> Result<u8, Failure> {
    let s = fetch(layout)?;
    if json {
        println!(
            "{}",
            crate::text::json_text(&serde_json::to_string_pretty(&StatusJson::from(&s))?)
        );
    } else {
        println!(
            "loongd {} (protocol {})",
            Esc(&s.version),
            s.protocol_version
        );
        println!("  pid:               {}", s.pid);
        println!("  uptime:            {}", human_duration(s.uptime_ms));
        println!("  home:              {}", Esc(&s.home));
        println!("  socket:            {}", Esc(&s.socket_path));
        println!("  connected clients: {}", s.connected_clients);
    }
    Ok(exit::OK)
}

pub(crate) fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{:03}s", s, ms % 1000),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
