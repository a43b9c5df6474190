//! `loongctl metrics`: the daemon's metrics as OpenMetrics text.

use std::io::Write;

use loong_ipc::{paths::Layout, ControlRequest, ControlResponse};

use crate::{exit, Failure};

pub(crate) fn run(layout: &Layout) -> Result<u8, Failure> {
    match crate::request(layout, ControlRequest::Metrics)? {
        ControlResponse::Metrics(text) => {
            // Written as it came: the text is the exposition format, which a scraper parses.
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(exit::OK)
        }
        other => Err(anyhow::anyhow!("unexpected answer to metrics: {other:?}").into()),
    }
}
