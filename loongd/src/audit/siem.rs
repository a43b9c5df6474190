//! The SIEM lane: every committed record also leaves the host as one JSON line, to a JSONL
//! file and/or to syslog (an RFC 5424 message on a unix datagram socket, `/dev/log` by
//! default). Each transport is fail-open (a failure is logged, the effect proceeds) or
//! fail-closed (a failure refuses the effect being recorded; the record stays in the trail).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::{fs::OpenOptionsExt, net::UnixDatagram},
    path::PathBuf,
};

use super::Record;

/// A fail-closed lane that could not ship: the effects its records record are refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit {lane} lane {}: {message}", path.display())]
pub(crate) struct LaneError {
    /// `JSONL` or `syslog`.
    pub lane: &'static str,
    pub path: PathBuf,
    pub message: String,
}

/// What a transport failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Log it and carry on.
    Open,
    /// Refuse the effect being recorded.
    Closed,
}

/// The configured transports.
#[derive(Debug, Clone, Default)]
pub struct SiemConfig {
    pub jsonl: Option<(PathBuf, FailureMode)>,
    pub syslog: Option<(PathBuf, FailureMode)>,
}

/// The open transports, owned by the writer thread.
#[derive(Debug, Default)]
pub(super) struct Siem {
    config: SiemConfig,
    file: Option<File>,
    socket: Option<UnixDatagram>,
}

/// One record as its JSON line (the same shape `loongctl audit export` prints).
pub fn json_line(r: &Record) -> String {
    let detail: serde_json::Value = serde_json::from_str(&r.detail)
        .unwrap_or_else(|_| serde_json::Value::String(r.detail.clone()));
    serde_json::json!({
        "seq": r.seq, "time_ms": r.time_ms, "kind": r.kind, "actor": r.actor,
        "correlation": r.correlation, "detail": detail, "hash": hex::encode(r.hash),
    })
    .to_string()
}

impl Siem {
    pub(super) fn new(config: SiemConfig) -> Siem {
        Siem {
            config,
            file: None,
            socket: None,
        }
    }

    /// Whether any transport is configured.
    pub(super) fn any(&self) -> bool {
        self.config.jsonl.is_some() || self.config.syslog.is_some()
    }

    /// Ships `records`; `Err` only when a fail-closed transport failed.
    pub(super) fn ship(&mut self, records: &[Record]) -> Result<(), LaneError> {
        // Without a lane (the default) no line is built: each would parse the record's detail
        // back and serialise it again, on the writer's thread, for nobody.
        if !self.any() {
            return Ok(());
        }
        let lines: Vec<String> = records.iter().map(json_line).collect();
        self.ship_lines(&lines)
    }

    /// Ships one JSON line each; `Err` only when a fail-closed transport failed.
    fn ship_lines(&mut self, records: &[String]) -> Result<(), LaneError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut closed_failure = None;
        if let Some((path, mode)) = self.config.jsonl.clone() {
            if let Err(e) = self.write_jsonl(&path, records) {
                self.file = None; // reopen next time
                let failed = LaneError {
                    lane: "JSONL",
                    path,
                    message: e.to_string(),
                };
                tracing::error!("{failed}");
                if mode == FailureMode::Closed {
                    closed_failure = Some(failed);
                }
            }
        }
        if let Some((path, mode)) = self.config.syslog.clone() {
            if let Err(e) = self.send_syslog(&path, records) {
                let failed = LaneError {
                    lane: "syslog",
                    path,
                    message: e.to_string(),
                };
                tracing::error!("{failed}");
                if mode == FailureMode::Closed {
                    closed_failure = Some(failed);
                }
            }
        }
        closed_failure.map_or(Ok(()), Err)
    }

    /// Ships a signed checkpoint as one line `{"checkpoint": {seq, hash, time_ms, key_id,
    /// signature, format}}` on every lane, so that a trail cut back behind it is caught from
    /// outside the host too.
    pub(super) fn ship_checkpoint(&mut self, w: &super::witness::Witness) -> Result<(), LaneError> {
        if !self.any() {
            return Ok(());
        }
        let line = serde_json::json!({ "checkpoint": w.to_json() }).to_string();
        self.ship_lines(&[line])
    }

    fn write_jsonl(&mut self, path: &PathBuf, records: &[String]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?,
            );
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not open"))?;
        let mut buf = String::new();
        for r in records {
            buf.push_str(r);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes())?;
        f.sync_data()
    }

    fn send_syslog(&mut self, path: &PathBuf, records: &[String]) -> std::io::Result<()> {
        if self.socket.is_none() {
            self.socket = Some(UnixDatagram::unbound()?);
        }
        let s = self
            .socket
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no socket"))?;
        for r in records {
            // facility authpriv (10), severity info (6); no timestamp or host: the receiver's.
            let msg = format!("<86>1 - - loongd {} audit - {}", std::process::id(), r);
            s.send_to(msg.as_bytes(), path)?;
        }
        Ok(())
    }
}
