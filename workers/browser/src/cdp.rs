//! A thin client of the Chrome DevTools Protocol over `--remote-debugging-pipe`: messages
//! are JSON texts ended by a NUL byte, untyped (`serde_json::Value`), so a Chromium that adds
//! fields or events breaks nothing. One command is in flight at a time. A reader task drains
//! the pipe all the time, between commands too: it hands the awaited command its answer and
//! keeps the events a session looks at (at most [`MAX_EVENTS`], slimmed); everything else is
//! read and dropped. So a page that floods DevTools while no call runs neither grows the
//! worker's memory (what is kept is bounded) nor makes Chromium queue its output (the pipe
//! is always read), and the next call does not wade through a backlog. Every command has a
//! deadline, and no message may be longer than [`MAX_MESSAGE_BYTES`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest message read from Chromium (a full-page screenshot is the largest answer;
/// [`crate::MAX_SCREENSHOT_BYTES`] bounds what is passed on).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Events kept between two looks at them; past it the oldest are dropped (and counted).
pub const MAX_EVENTS: usize = 4096;
/// The events a session looks at (navigations, requests, loads); every other event a page
/// causes is read and dropped, so a page flooding DevTools (console output, DOM changes)
/// costs the worker nothing it keeps.
pub const KEPT_EVENTS: [&str; 5] = [
    "Network.requestWillBeSent",
    "Network.responseReceived",
    "Network.loadingFailed",
    "Page.loadEventFired",
    "Page.frameStartedLoading",
];
/// The longest string kept of an event (a URL, an error), in characters: a kept event is a
/// few of them, so [`MAX_EVENTS`] of them stay small whatever the page asked for.
pub const MAX_EVENT_STRING_CHARS: usize = 2048;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    #[error("the browser did not answer {method} within {after:?}")]
    Timeout { method: String, after: Duration },
    #[error("a message from the browser is longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("the browser's pipe closed (Chromium ended)")]
    Closed,
    #[error("the browser's pipe: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message from the browser is not JSON: {0}")]
    NotJson(String),
    #[error("the browser refused {method}: {message}")]
    Refused { method: String, message: String },
}

/// Why the reader stopped (the pipe is unusable from then on), kept to answer every later
/// command.
#[derive(Debug, Clone)]
enum Ended {
    TooLong,
    Closed,
    Io(std::io::ErrorKind, String),
    NotJson(String),
}

impl Ended {
    fn of(e: CdpError) -> Ended {
        match e {
            CdpError::TooLong => Ended::TooLong,
            CdpError::Io(e) => Ended::Io(e.kind(), e.to_string()),
            CdpError::NotJson(m) => Ended::NotJson(m),
            _ => Ended::Closed,
        }
    }

    fn error(&self) -> CdpError {
        match self {
            Ended::TooLong => CdpError::TooLong,
            Ended::Closed => CdpError::Closed,
            Ended::Io(kind, m) => CdpError::Io(std::io::Error::new(*kind, m.clone())),
            Ended::NotJson(m) => CdpError::NotJson(m.clone()),
        }
    }
}

/// What the reader task and the commands share.
#[derive(Debug, Default)]
struct State {
    /// The command awaited, and its answer once read.
    awaited: Option<u64>,
    answer: Option<Value>,
    events: VecDeque<Value>,
    /// Events kept in all (the dropped too), so a waiter tells new ones from old.
    pushed: u64,
    dropped: u64,
    ended: Option<Ended>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken at each answer, kept event and at the reader's end.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One DevTools connection: the pipe's writing end, the next command id, and the reader
/// task that drains the other end.
#[derive(Debug)]
pub struct Cdp<W> {
    writer: W,
    next_id: u64,
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
}

impl<W> Drop for Cdp<W> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads every message of `reader` until it ends: answers to the awaited command, events
/// kept (slimmed, bounded), the rest dropped.
async fn drain<R: AsyncBufRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    loop {
        let m = match read_message(&mut reader).await {
            Ok(m) => m,
            Err(e) => {
                shared.lock().ended = Some(Ended::of(e));
                shared.changed.notify_waiters();
                return;
            }
        };
        let woke = {
            let mut st = shared.lock();
            match m.get("id").and_then(Value::as_u64) {
                // An answer nobody awaits (its command timed out) is dropped.
                Some(id) if st.awaited == Some(id) => {
                    st.answer = Some(m);
                    true
                }
                Some(_) => false,
                None => match m.get("method").and_then(|_| slim(&m)) {
                    Some(event) => {
                        if st.events.len() >= MAX_EVENTS {
                            st.events.pop_front();
                            st.dropped += 1;
                        }
                        st.events.push_back(event);
                        st.pushed += 1;
                        true
                    }
                    None => false,
                },
            }
        };
        if woke {
            shared.changed.notify_waiters();
        }
    }
}

impl<W: AsyncWrite + Unpin> Cdp<W> {
    /// A connection on `reader` and `writer`; its reader task runs on the current runtime
    /// (a worker's runtime must run it between calls too: a multi-threaded one).
    pub fn new<R>(reader: R, writer: W) -> Cdp<W>
    where
        R: AsyncBufRead + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let reader = tokio::spawn(drain(reader, shared.clone()));
        Cdp {
            writer,
            next_id: 1,
            shared,
            reader,
        }
    }

    /// Waits, at most until `until`, for `ready` to find what it looks for in the shared
    /// state; `None` at `until`. The reader's end is an error.
    async fn until<T>(
        &self,
        until: Instant,
        mut ready: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<Option<T>, CdpError> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if let Some(found) = ready(&mut st) {
                    return Ok(Some(found));
                }
                if let Some(end) = &st.ended {
                    return Err(end.error());
                }
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Sends `method` with `params` (to the target `session`, or to the browser) and waits,
    /// at most `deadline`, for its answer: the `result`, or why not.
    pub async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        deadline: Duration,
    ) -> Result<Value, CdpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::from(s);
        }
        let until = Instant::now() + deadline;
        let timeout = || CdpError::Timeout {
            method: method.to_string(),
            after: deadline,
        };
        {
            let mut st = self.shared.lock();
            st.awaited = Some(id);
            st.answer = None;
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| CdpError::NotJson(e.to_string()))?;
        bytes.push(0);
        tokio::time::timeout_at(until, self.writer.write_all(&bytes))
            .await
            .map_err(|_| timeout())??;
        tokio::time::timeout_at(until, self.writer.flush())
            .await
            .map_err(|_| timeout())??;
        let m = self
            .until(until, |st| st.answer.take().inspect(|_| st.awaited = None))
            .await?
            .ok_or_else(timeout)?;
        if let Some(e) = m.get("error") {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            return Err(CdpError::Refused {
                method: method.to_string(),
                message,
            });
        }
        Ok(m.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Waits for an event until `until` or until `done` holds for one kept (since the last
    /// [`Cdp::take_events`]); true when it did.
    pub async fn wait_event(
        &mut self,
        until: Instant,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Result<bool, CdpError> {
        let mut looked: Option<u64> = None;
        let found = self
            .until(until, |st| {
                // The events not looked at yet: all at first, then those kept since (the
                // oldest may have been dropped meanwhile).
                let len = st.events.len();
                let new = looked.map_or(len, |at| {
                    usize::try_from(st.pushed - at).map_or(len, |n| n.min(len))
                });
                looked = Some(st.pushed);
                st.events
                    .iter()
                    .skip(len - new)
                    .any(&mut done)
                    .then_some(())
            })
            .await?;
        Ok(found.is_some())
    }

    /// The events kept since the last call, and how many were dropped past [`MAX_EVENTS`].
    pub fn take_events(&mut self) -> (Vec<Value>, u64) {
        let mut st = self.shared.lock();
        (
            std::mem::take(&mut st.events).into(),
            std::mem::take(&mut st.dropped),
        )
    }
}

/// What is kept of an event: one of [`KEPT_EVENTS`], with only the fields a session reads,
/// each string cut to [`MAX_EVENT_STRING_CHARS`]; `None` for any other event.
pub fn slim(event: &Value) -> Option<Value> {
    let method = event.get("method").and_then(Value::as_str)?;
    if !KEPT_EVENTS.contains(&method) {
        return None;
    }
    let p = event.get("params").unwrap_or(&Value::Null);
    let text = |ptr: &str| {
        p.pointer(ptr)
            .and_then(Value::as_str)
            .map(|s| Value::from(s.chars().take(MAX_EVENT_STRING_CHARS).collect::<String>()))
    };
    let mut params = serde_json::Map::new();
    for key in ["type", "frameId", "requestId", "loaderId", "errorText"] {
        if let Some(v) = text(&format!("/{key}")) {
            params.insert(key.into(), v);
        }
    }
    if let Some(url) = text("/request/url") {
        params.insert("request".into(), json!({ "url": url }));
    }
    for key in ["response", "redirectResponse"] {
        if p.get(key).is_some_and(Value::is_object) {
            let status = p.pointer(&format!("/{key}/status")).and_then(Value::as_i64);
            let url = text(&format!("/{key}/url")).unwrap_or_default();
            params.insert(key.into(), json!({ "url": url, "status": status }));
        }
    }
    Some(json!({ "method": method, "params": params }))
}

/// Reads one NUL-ended message, refusing one longer than [`MAX_MESSAGE_BYTES`] before it is
/// all buffered.
pub async fn read_message<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Value, CdpError> {
    let mut message = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(CdpError::Closed);
        }
        let (take, end) = match buf.iter().position(|b| *b == 0) {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if message.len() + take > MAX_MESSAGE_BYTES {
            return Err(CdpError::TooLong);
        }
        message.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(end));
        if end {
            return serde_json::from_slice(&message).map_err(|e| CdpError::NotJson(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Messages end at NUL; a message past the bound is refused without buffering it, and a
    /// closed pipe is told apart.
    #[test]
    fn messages_are_nul_delimited_and_bounded() {
        rt().block_on(async {
            let data: &[u8] = b"{\"a\":1}\0{\"b\":2}\0";
            let mut r = tokio::io::BufReader::new(data);
            assert_eq!(read_message(&mut r).await.ok(), Some(json!({"a": 1})));
            assert_eq!(read_message(&mut r).await.ok(), Some(json!({"b": 2})));
            assert!(matches!(read_message(&mut r).await, Err(CdpError::Closed)));

            let mut long = vec![b' '; MAX_MESSAGE_BYTES + 1];
            long.push(0);
            let mut r = tokio::io::BufReader::new(&long[..]);
            assert!(matches!(read_message(&mut r).await, Err(CdpError::TooLong)));
            // The positive control: exactly the bound passes.
            let mut at = vec![b' '; MAX_MESSAGE_BYTES - 2];
            at.extend_from_slice(b"{}\0");
            let mut r = tokio::io::BufReader::new(&at[..]);
            assert_eq!(read_message(&mut r).await.ok(), Some(json!({})));
        });
    }

    /// Only the events a session reads are kept, with only their fields it reads, bounded;
    /// a console message (however long) is not kept at all.
    #[test]
    fn only_bounded_navigation_events_are_kept() {
        let long = "x".repeat(MAX_EVENT_STRING_CHARS * 4);
        let console =
            json!({"method": "Runtime.consoleAPICalled", "params": {"args": [{"value": long}]}});
        assert_eq!(slim(&console), None);
        let sent = json!({"method": "Network.requestWillBeSent", "params": {
            "requestId": "1", "frameId": "F", "type": "Document",
            "request": {"url": format!("http://a.test/{long}"), "headers": {"x": long}, "postData": long},
            "redirectResponse": {"url": "http://a.test/", "status": 302, "headers": {"y": long}},
        }});
        let kept = slim(&sent).expect("kept");
        assert!(
            kept.to_string().len() < 3 * MAX_EVENT_STRING_CHARS,
            "{kept}"
        );
        assert_eq!(kept["params"]["redirectResponse"]["status"], 302);
        assert_eq!(kept["params"]["type"], "Document");
        assert_eq!(
            kept["params"]["request"]["url"]
                .as_str()
                .map(|u| u.chars().count()),
            Some(MAX_EVENT_STRING_CHARS)
        );
        // No redirect: no `redirectResponse` is made up.
        let plain = json!({"method": "Network.requestWillBeSent", "params": {"requestId": "2", "request": {"url": "http://a.test/"}}});
        assert!(slim(&plain).expect("kept")["params"]
            .get("redirectResponse")
            .is_none());
    }

    /// A page's flood of events read while a command waits (console messages, requests with
    /// megabyte URLs) leaves only the bounded navigation events kept.
    #[test]
    fn a_flood_of_events_keeps_little() {
        rt().block_on(async {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            let (cr, cw) = tokio::io::split(client);
            let mut cdp = Cdp::new(tokio::io::BufReader::new(cr), cw);
            let big = "x".repeat(1024 * 1024);
            let answer = async {
                let mut sr = tokio::io::BufReader::new(&mut server);
                let m = read_message(&mut sr).await.expect("a command");
                let id = m["id"].as_u64().expect("an id");
                for i in 0..16 {
                    let console = json!({"method": "Runtime.consoleAPICalled", "params": {"args": [{"value": big}]}});
                    let sent = json!({"method": "Network.requestWillBeSent", "params": {"requestId": i.to_string(), "request": {"url": format!("http://a.test/?{big}")}}});
                    for e in [console, sent] {
                        let mut b = serde_json::to_vec(&e).expect("json");
                        b.push(0);
                        sr.get_mut().write_all(&b).await.expect("write");
                    }
                }
                let reply = format!("{{\"id\":{id},\"result\":{{}}}}\0");
                sr.get_mut().write_all(reply.as_bytes()).await.expect("write");
            };
            let (got, _) = tokio::join!(
                cdp.call(None, "Runtime.evaluate", json!({}), Duration::from_secs(30)),
                answer
            );
            assert!(got.is_ok(), "{got:?}");
            let (events, _) = cdp.take_events();
            // The positive control: the requests are kept, to be reported.
            assert_eq!(events.len(), 16);
            assert!(events.iter().all(|e| e["method"] == "Network.requestWillBeSent"));
            let kept: usize = events.iter().map(|e| e.to_string().len()).sum();
            assert!(kept < 16 * 2 * MAX_EVENT_STRING_CHARS, "{kept} bytes kept");
        });
    }

    /// Between two calls the reader drains the pipe: a page flooding events while no call
    /// runs (and no thread waits on the runtime) neither blocks Chromium's writes nor grows
    /// what is kept past [`MAX_EVENTS`] (the oldest dropped and counted), and the next call
    /// is answered.
    #[test]
    fn the_pipe_is_drained_between_calls_and_what_is_kept_is_bounded() {
        let worker = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (client, server) = tokio::io::duplex(1 << 16);
        let (cr, cw) = tokio::io::split(client);
        let mut cdp = {
            let _in = worker.enter();
            Cdp::new(tokio::io::BufReader::new(cr), cw)
        };
        let sent = MAX_EVENTS * 2;
        let (done, drained) = std::sync::mpsc::channel();
        // The page, in another thread: a console message of 64 KiB after every 31 requests,
        // ~17 MiB in all, far past the pipe's 64 KiB, while this thread stays outside the
        // runtime, as the worker does between calls.
        let page = std::thread::spawn(move || {
            rt().block_on(async move {
                let big = "x".repeat(64 * 1024);
                let mut server = server;
                let (mut requests, mut written) = (0, 0u64);
                while requests < sent {
                    written += 1;
                    let e = if written % 32 == 0 {
                        json!({"method": "Runtime.consoleAPICalled", "params": {"args": [{"value": big}]}})
                    } else {
                        json!({"method": "Network.requestWillBeSent", "params": {"requestId": requests.to_string(), "request": {"url": "http://a.test/"}}})
                    };
                    requests += usize::from(e["method"] == "Network.requestWillBeSent");
                    let mut b = serde_json::to_vec(&e).expect("json");
                    b.push(0);
                    server.write_all(&b).await.expect("write");
                }
                // The last event: once it is kept, the reader has read all the rest.
                server
                    .write_all(b"{\"method\":\"Page.loadEventFired\",\"params\":{}}\0")
                    .await
                    .expect("write");
                let _ = done.send(());
                server
            })
        });
        drained
            .recv_timeout(Duration::from_secs(60))
            .expect("the flood was not read between calls: the page's writes block");
        let mut server = page.join().expect("the page");
        let until = Instant::now() + Duration::from_secs(30);
        let last = worker.block_on(cdp.wait_event(until, |e| e["method"] == "Page.loadEventFired"));
        assert!(matches!(last, Ok(true)), "{last:?}");
        let (events, dropped) = cdp.take_events();
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(dropped, (sent + 1 - MAX_EVENTS) as u64);
        assert!(events[..MAX_EVENTS - 1]
            .iter()
            .all(|e| e["method"] == "Network.requestWillBeSent"));
        // The positive control: the next call is answered.
        let got = worker.block_on(async {
            let answer = async {
                let mut sr = tokio::io::BufReader::new(&mut server);
                let m = read_message(&mut sr).await.expect("a command");
                let id = m["id"].as_u64().expect("an id");
                let reply = format!("{{\"id\":{id},\"result\":{{\"ok\":1}}}}\0");
                sr.get_mut()
                    .write_all(reply.as_bytes())
                    .await
                    .expect("write");
            };
            let (got, ()) = tokio::join!(
                cdp.call(None, "Runtime.evaluate", json!({}), Duration::from_secs(30)),
                answer
            );
            got
        });
        assert_eq!(got.ok(), Some(json!({"ok": 1})));
    }

    /// A command's answer is matched by id past events (which are kept); a command nobody
    /// answers ends at its deadline.
    #[test]
    fn a_command_is_answered_by_id_or_times_out() {
        rt().block_on(async {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            let (cr, cw) = tokio::io::split(client);
            let mut cdp = Cdp::new(tokio::io::BufReader::new(cr), cw);
            let answer = async {
                let mut sr = tokio::io::BufReader::new(&mut server);
                let m = read_message(&mut sr).await.expect("a command");
                assert_eq!(m["method"], "Page.enable");
                assert_eq!(m["sessionId"], "S");
                let id = m["id"].as_u64().expect("an id");
                let reply = format!(
                    "{{\"method\":\"Page.loadEventFired\",\"params\":{{}}}}\0{{\"id\":{},\"result\":{{\"ok\":true}}}}\0",
                    id + 100
                ) + &format!("{{\"id\":{id},\"result\":{{\"ok\":1}}}}\0");
                server.write_all(reply.as_bytes()).await.expect("write");
                server
            };
            let (got, mut server) = tokio::join!(
                cdp.call(Some("S"), "Page.enable", json!({}), Duration::from_secs(5)),
                answer
            );
            assert_eq!(got.ok(), Some(json!({"ok": 1})));
            let (events, dropped) = cdp.take_events();
            assert_eq!((events.len(), dropped), (1, 0));
            let silent = cdp
                .call(None, "Runtime.evaluate", json!({}), Duration::from_millis(100))
                .await;
            assert!(matches!(silent, Err(CdpError::Timeout { .. })), "{silent:?}");
            // An error answer is a refusal naming the method.
            let mut sr = tokio::io::BufReader::new(&mut server);
            let _first = read_message(&mut sr).await.expect("the timed-out command");
            let (got, _) = tokio::join!(
                cdp.call(None, "Bad.method", json!({}), Duration::from_secs(5)),
                async {
                    let m = read_message(&mut sr).await.expect("a command");
                    let id = m["id"].as_u64().expect("an id");
                    let reply =
                        format!("{{\"id\":{id},\"error\":{{\"message\":\"no such method\"}}}}\0");
                    sr.get_mut().write_all(reply.as_bytes()).await.expect("write");
                }
            );
            assert!(
                matches!(&got, Err(CdpError::Refused { method, .. }) if method == "Bad.method"),
                "{got:?}"
            );
        });
    }
}
