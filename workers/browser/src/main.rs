//! `loong-worker-browser`: the balanced-tier worker that runs one browsing session, a
//! headless Chromium driven over its DevTools pipe.
//!
//! Its sandbox's only network is the egress broker's proxy inside it (`HTTP_PROXY`), which
//! admits exactly the session's granted `HOST:PORT`; Chromium is told to send every request
//! there, loopback included. The profile lives in the sandbox's private `/tmp`, gone with the
//! sandbox. loongd configures it with a `Builtin` request for the tool `browser` whose one
//! root is the Chromium binary, then sends each call as `{"op": "open" | "extract" | "click" |
//! "type" | "wait" | "screenshot", ...}`. A call that finds Chromium hung or gone fails the
//! worker itself, so loongd replaces it and the session ends.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use loong_ipc::{WorkerRequest, WorkerResponse};
use loong_worker_browser::{BrowserError, Session};
use loong_worker_runtime::{internal, refused, Handler};
use serde_json::Value;

/// The tool name loongd configures this worker with.
const TOOL: &str = "browser";

#[derive(Debug)]
struct Worker {
    rt: tokio::runtime::Runtime,
    chromium: Option<PathBuf>,
    session: Option<Session>,
    calls: u64,
}

fn failed(e: &BrowserError) -> WorkerResponse {
    WorkerResponse::Failed(loong_ipc::PluginFailure::new(
        loong_ipc::FailureKind::ToolError,
        e.to_string(),
    ))
}

impl Worker {
    async fn call(
        session: &mut Option<Session>,
        chromium: &std::path::Path,
        input: &Value,
    ) -> Result<Value, BrowserError> {
        let s = |k: &str| input.get(k).and_then(Value::as_str);
        let need = |k: &str| {
            s(k).ok_or_else(|| BrowserError::Refused(format!("the call needs `{k}` (a string)")))
        };
        let op = need("op")?;
        if op == "open" {
            // The URL is checked before Chromium is started or asked.
            let url = need("url")?;
            loong_worker_browser::check_url(url)?;
            if session.is_none() {
                let proxy = std::env::var("HTTP_PROXY").map_err(|_| {
                    BrowserError::Refused(
                        "this sandbox has no proxy (HTTP_PROXY): it was started without a network grant".into(),
                    )
                })?;
                let profile = std::env::temp_dir().join(format!("profile-{}", std::process::id()));
                let mut started = Session::start(chromium, &profile, Some(&proxy)).await?;
                let mut answer = started.open(url).await?;
                answer["cold_start_us"] = serde_json::json!(started.started);
                *session = Some(started);
                return Ok(answer);
            }
        }
        let Some(page) = session.as_mut() else {
            return Err(BrowserError::Refused(
                "no page is open in this session; call browser.open first".into(),
            ));
        };
        match op {
            "open" => page.open(need("url")?).await,
            "extract" => page.extract(s("selector")).await,
            "click" => page.click(need("selector")?).await,
            "type" => page.type_text(need("selector")?, need("text")?).await,
            "wait" => {
                let ms = input
                    .get("timeout_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(5_000);
                page.wait(need("selector")?, Duration::from_millis(ms))
                    .await
            }
            "screenshot" => {
                let full = input
                    .get("full_page")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                page.screenshot(full).await
            }
            other => Err(BrowserError::Refused(format!(
                "no browser operation {other:?}; use open, extract, click, type, wait or screenshot"
            ))),
        }
    }
}

impl Handler for Worker {
    fn handle(&mut self, req: WorkerRequest) -> Result<WorkerResponse, loong_ipc::RemoteError> {
        Ok(match req {
            WorkerRequest::Builtin(spec) if spec.tool == TOOL => {
                if let Err(e) = spec.check_bounds() {
                    return Ok(refused(e.to_string()));
                }
                let Some(chromium) = spec.roots.first() else {
                    return Ok(refused(
                        "the browser tool needs the Chromium binary as its root".into(),
                    ));
                };
                self.chromium = Some(PathBuf::from(chromium));
                loong_worker_runtime::one_tool(TOOL)
            }
            WorkerRequest::Invoke {
                plugin_id, input, ..
            } => {
                self.calls += 1;
                let Some(chromium) = self.chromium.clone().filter(|_| plugin_id == TOOL) else {
                    return Ok(loong_worker_runtime::not_configured(&plugin_id));
                };
                let input: Value = match serde_json::from_slice(&input) {
                    Ok(v) => v,
                    Err(e) => {
                        return Ok(failed(&BrowserError::Refused(format!(
                            "the input is not JSON: {e}"
                        ))))
                    }
                };
                let started = Instant::now();
                let cpu_before = loong_worker_runtime::thread_cpu_us();
                let answer = self
                    .rt
                    .block_on(Worker::call(&mut self.session, &chromium, &input));
                match answer {
                    Ok(v) => loong_worker_runtime::plain_output(
                        serde_json::to_vec(&v).map_err(|e| internal(e.to_string()))?,
                        started,
                        cpu_before,
                    ),
                    // Chromium hung or ended: this worker (and its session) is replaced.
                    Err(e) if e.is_fatal() => {
                        if let Some(s) = self.session.take() {
                            self.rt.block_on(s.close());
                        }
                        return Err(internal(format!("the browser session ended: {e}")));
                    }
                    Err(e) => failed(&e),
                }
            }
            WorkerRequest::Unload { .. } => {
                if let Some(s) = self.session.take() {
                    self.rt.block_on(s.close());
                }
                WorkerResponse::Unloaded
            }
            WorkerRequest::Stats => loong_worker_runtime::stats(
                self.chromium.iter().map(|_| TOOL.to_string()).collect(),
                self.calls,
            ),
            other => loong_worker_runtime::wrong_worker(&other, "loong-worker-browser"),
        })
    }
}

fn main() {
    let code = loong_worker_runtime::main_with(
        concat!("loong-worker-browser ", env!("CARGO_PKG_VERSION")),
        // The worker starts Chromium itself: the tier's sandbox holds both.
        loong_worker_runtime::Final::TierOnly,
        || {
            // One worker thread of its own: the DevTools reader drains Chromium's pipe
            // between calls too, while this thread waits for loongd's next request.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| format!("a runtime for the DevTools client: {e}"))?;
            Ok(Worker {
                rt,
                chromium: None,
                session: None,
                calls: 0,
            })
        },
    );
    std::process::exit(code);
}
