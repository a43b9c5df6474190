//! Chat platforms' webhook requests (Feishu/Lark's event webhook), relayed from the gateway
//! to the channel's worker. loongd never parses them: it checks only that the account names
//! a configured channel of that platform whose worker runs, bounds how fast one account's
//! requests come, queues them for the channel's worker and relays its answer.
//!
//! ```text
//! platform ─POST /channels/feishu/ACCOUNT/events─▶ gateway worker (HTTP, body ≤ 1 MiB)
//!   ─gateway_webhook─▶ relay: unknown → 404, not running → 503, past the rate → 429,
//!                      queue full → 503; else queued, and the answer awaited (≤ deadline)
//! channel worker ─channel_webhook_next─▶ the queued requests (long poll)
//!                ─channel_event─▶ the event id marked seen and its message enqueued (one tx)
//!                ─channel_webhook_answer─▶ the status and body, relayed to the gateway
//! ```
//!
//! No bearer: the platform cannot send one, and the signature the channel worker checks is
//! the authentication. The queue is in memory: a request not answered (its worker died,
//! loongd stopped, the deadline passed) is answered 503/504 and the platform sends it again;
//! its event id, once taken, makes the retry a replay, so nothing is taken twice.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use loong_ipc::{
    message::channel::{
        WebhookAnswer, WebhookReply, WebhookRequest, WebhookWait, MAX_WEBHOOK_BATCH,
        MAX_WEBHOOK_BATCH_BYTES, MAX_WEBHOOK_WAIT_MS,
    },
    message::gateway::GatewayWebhook,
    ErrorKind, RemoteError,
};
use tokio::sync::{oneshot, Notify};

use super::{Service, ServiceHost};
use crate::audit::{Event, Kind};

/// How long the gateway's request waits for the channel worker's answer (Feishu waits 3 s
/// and then sends the event again; the answer past it is not seen).
pub const WEBHOOK_ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Webhook requests of one channel queued for its worker (or handed to it, not yet
/// answered); past it, a request is answered 503 at once.
pub const MAX_QUEUED_WEBHOOKS: usize = 64;
/// Webhook requests one account is relayed each second (in bursts of
/// [`WEBHOOK_BURST`]); past it, 429 at once. Unauthenticated until the channel worker
/// checks the signature, so loongd bounds them whatever the gateway worker does.
pub const WEBHOOKS_PER_SECOND: u32 = 20;
/// Webhook requests one account is relayed at once before [`WEBHOOKS_PER_SECOND`] applies.
pub const WEBHOOK_BURST: u32 = 100;
/// A channel's refused webhook requests are recorded one a window (`channel.refused`); the
/// others are counted in the next record and in `channels status`.
pub const WEBHOOK_REFUSAL_WINDOW_MS: i64 = crate::authority::channels::IGNORED_AUDIT_WINDOW_MS;
/// The platforms whose webhooks are relayed.
pub const WEBHOOK_PLATFORMS: &[&str] = &["feishu"];

/// One channel's webhook requests.
struct Queue {
    waiting: VecDeque<(WebhookRequest, oneshot::Sender<WebhookReply>)>,
    /// Handed to a worker (its number), not yet answered.
    handed: HashMap<u64, (u64, oneshot::Sender<WebhookReply>)>,
    ready: Arc<Notify>,
    /// The rate bucket: its level and when it was last filled.
    level: f64,
    filled: Instant,
    /// When a refusal was last recorded (ms), and the refusals not recorded since.
    recorded_ms: Option<i64>,
    unrecorded: u64,
    /// Every refusal since loongd started (for `channels status`).
    refused: u64,
}

impl Queue {
    fn new(now: Instant) -> Queue {
        Queue {
            waiting: VecDeque::new(),
            handed: HashMap::new(),
            ready: Arc::new(Notify::new()),
            level: f64::from(WEBHOOK_BURST),
            filled: now,
            recorded_ms: None,
            unrecorded: 0,
            refused: 0,
        }
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.filled).as_secs_f64();
        self.level =
            (self.level + elapsed * f64::from(WEBHOOKS_PER_SECOND)).min(f64::from(WEBHOOK_BURST));
        self.filled = now;
        if self.level >= 1.0 {
            self.level -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a refusal; `Some(n)` when it is recorded, with the `n` not recorded before it.
    fn refusal_due(&mut self, now_ms: i64) -> Option<u64> {
        self.refused += 1;
        if self
            .recorded_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < WEBHOOK_REFUSAL_WINDOW_MS)
        {
            self.unrecorded += 1;
            return None;
        }
        self.recorded_ms = Some(now_ms);
        Some(std::mem::take(&mut self.unrecorded))
    }
}

/// The queues, by channel name (at most one a configured channel: a queue is made only for
/// an account that names one).
static QUEUES: Mutex<Option<HashMap<String, Queue>>> = Mutex::new(None);

fn with_queue<T>(channel: &str, f: impl FnOnce(&mut Queue) -> T) -> T {
    let mut all = QUEUES.lock().unwrap_or_else(PoisonError::into_inner);
    let q = all
        .get_or_insert_with(HashMap::new)
        .entry(channel.to_owned())
        .or_insert_with(|| Queue::new(Instant::now()));
    f(q)
}

/// The webhook requests a channel refused since loongd started (`channels status`).
pub(crate) fn refused_count(channel: &str) -> u64 {
    QUEUES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|all| all.get(channel))
        .map_or(0, |q| q.refused)
}

/// Forgets a removed channel's queue (its waiting requests are answered 503).
pub(crate) fn forget(channel: &str) {
    if let Some(all) = QUEUES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        all.remove(channel);
    }
}

/// The path of a channel's webhook on the gateway's listener.
pub fn webhook_path(platform: &str, account: &str) -> String {
    format!("/channels/{platform}/{account}/events")
}

/// A typed JSON answer `{"error": {"type", "message"}}` (the gateway's refusal format).
fn refusal(status: u16, kind: &str, message: &str) -> WebhookReply {
    WebhookReply {
        status,
        body: serde_json::json!({ "error": { "type": kind, "message": message } })
            .to_string()
            .into_bytes(),
    }
}

/// `gateway_webhook`: the request relayed to the channel's worker, and its answer.
pub(crate) async fn relay(
    host: &ServiceHost,
    b: GatewayWebhook,
) -> Result<WebhookReply, RemoteError> {
    b.check_bounds().map_err(|e| {
        RemoteError::new(
            ErrorKind::BadRequest,
            format!("kernel call gateway_webhook: {e}"),
        )
    })?;
    let kernel = &host.kernel;
    let name = b.account.as_str();
    let configured = WEBHOOK_PLATFORMS.contains(&b.platform.as_str())
        && kernel
            .authority
            .channels
            .get(name)
            .is_ok_and(|row| row.kind == b.platform);
    if !configured {
        return Ok(refusal(
            404,
            "not_found",
            &format!(
                "no {} channel named {name}; add it with `loongctl channels add {} {name} ...`",
                b.platform, b.platform
            ),
        ));
    }
    let running = kernel
        .services
        .state(Service::Channel, name)
        .is_some_and(|s| {
            s.worker_started_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                != 0
        });
    if !running {
        return Ok(refusal(
            503,
            "unavailable",
            &format!("channel {name} is not running; see `loongctl channels status {name}`"),
        ));
    }
    let (tx, rx) = oneshot::channel();
    let admitted = with_queue(name, |q| {
        if !q.take_token(Instant::now()) {
            return Err(refusal(
                429,
                "rate_limited",
                &format!(
                    "channel {name} takes at most {WEBHOOKS_PER_SECOND} webhook requests a second"
                ),
            ));
        }
        if q.waiting.len() + q.handed.len() >= MAX_QUEUED_WEBHOOKS {
            return Err(refusal(
                503,
                "unavailable",
                &format!("channel {name} has {MAX_QUEUED_WEBHOOKS} webhook requests waiting"),
            ));
        }
        q.waiting.push_back((b.request, tx));
        q.ready.notify_one();
        Ok(())
    });
    if let Err(reply) = admitted {
        return Ok(reply);
    }
    match tokio::time::timeout(WEBHOOK_ANSWER_DEADLINE, rx).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(_)) => Ok(refusal(
            503,
            "unavailable",
            &format!("channel {name}'s worker ended before it answered; the platform sends the event again"),
        )),
        Err(_) => {
            // Its entry (waiting or handed) answers nothing any more: a closed sender.
            with_queue(name, |q| {
                q.waiting.retain(|(_, t)| !t.is_closed());
                q.handed.retain(|_, (_, t)| !t.is_closed());
            });
            Ok(refusal(
                504,
                "timeout",
                &format!(
                    "channel {name}'s worker did not answer within {} s",
                    WEBHOOK_ANSWER_DEADLINE.as_secs()
                ),
            ))
        }
    }
}

/// Numbers the requests handed to channel workers.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Hands `worker` the requests waiting, at most [`MAX_WEBHOOK_BATCH`] of them and
/// [`MAX_WEBHOOK_BATCH_BYTES`] (one whatever its size): an answer past the worker's frame
/// limit would retire the worker. Requests handed to an earlier worker are answered 503 (their
/// senders dropped).
fn hand(q: &mut Queue, worker: u64) -> Vec<WebhookRequest> {
    q.handed.retain(|_, (w, t)| *w == worker && !t.is_closed());
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < MAX_WEBHOOK_BATCH {
        let Some((mut req, tx)) = q.waiting.pop_front() else {
            break;
        };
        if tx.is_closed() {
            continue;
        }
        let size = req.wire_bytes();
        if !batch.is_empty() && bytes.saturating_add(size) > MAX_WEBHOOK_BATCH_BYTES {
            // The next answer's.
            q.waiting.push_front((req, tx));
            break;
        }
        bytes = bytes.saturating_add(size);
        req.id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        q.handed.insert(req.id, (worker, tx));
        batch.push(req);
    }
    batch
}

/// `channel_webhook_next`: the requests queued for this channel, waiting a while for one.
/// Requests handed to an earlier worker of the channel (it died before it answered) are
/// answered 503 now: the platform sends them again.
pub(crate) async fn next(
    host: &ServiceHost,
    worker: u64,
    wait: WebhookWait,
) -> Result<Vec<WebhookRequest>, RemoteError> {
    let until =
        Instant::now() + Duration::from_millis(u64::from(wait.wait_ms.min(MAX_WEBHOOK_WAIT_MS)));
    loop {
        let (batch, ready) = with_queue(&host.name, |q| (hand(q, worker), q.ready.clone()));
        if !batch.is_empty() || Instant::now() >= until {
            return Ok(batch);
        }
        let left = until.saturating_duration_since(Instant::now());
        let notified = ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Looked at again after enabling: a request queued in between is not missed.
        if with_queue(&host.name, |q| !q.waiting.is_empty()) {
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// `channel_webhook_answer`: the worker's answer relayed to the waiting gateway request;
/// a refusal recorded (one a window, the rest counted).
pub(crate) async fn answer(
    host: &ServiceHost,
    worker: u64,
    a: WebhookAnswer,
) -> Result<(), RemoteError> {
    a.check_bounds().map_err(|e| {
        RemoteError::new(
            ErrorKind::BadRequest,
            format!("kernel call channel_webhook_answer: {e}"),
        )
    })?;
    let tx = with_queue(&host.name, |q| match q.handed.remove(&a.id) {
        Some((w, tx)) if w == worker => Some(tx),
        Some(other) => {
            q.handed.insert(a.id, other);
            None
        }
        None => None,
    });
    if let Some(why) = &a.refused {
        refused(host, worker, why).await;
    }
    match tx {
        // The gateway's request may have passed its deadline: nothing waits for the answer.
        Some(tx) => {
            let _ = tx.send(a.reply);
            Ok(())
        }
        None => Err(RemoteError::new(
            ErrorKind::NotFound,
            format!(
                "webhook request {} is not one handed to this worker of channel {} (or its gateway request has ended)",
                a.id, host.name
            ),
        )),
    }
}

/// Records a refused webhook request of the channel: one a window, the others counted.
pub(crate) async fn refused(host: &ServiceHost, worker: u64, why: &str) {
    let due = with_queue(&host.name, |q| q.refusal_due(crate::now_ms()));
    let Some(unrecorded) = due else {
        return;
    };
    host.kernel
        .audit
        .record_later(Event {
            kind: Kind::ChannelRefused,
            actor: format!("worker:{worker}").into(),
            correlation: crate::audit::no_correlation(),
            detail: serde_json::json!({
                "channel": host.name, "reason": why, "unrecorded_before": unrecorded,
                "note": format!(
                    "further refused webhook requests of this channel within {} s are counted in `channels status`, not audited one by one",
                    WEBHOOK_REFUSAL_WINDOW_MS / 1000
                ),
            }).into(),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_rate_is_bounded_and_refills() {
        let at = Instant::now();
        let mut q = Queue::new(at);
        let taken = (0..1000).filter(|_| q.take_token(at)).count();
        assert_eq!(taken, WEBHOOK_BURST as usize);
        // Positive control: a second later, a second's worth again.
        let later = at + Duration::from_secs(1);
        let taken = (0..1000).filter(|_| q.take_token(later)).count();
        assert_eq!(taken, WEBHOOKS_PER_SECOND as usize);
    }

    #[test]
    fn a_batch_of_the_largest_webhook_requests_fits_the_workers_frame() {
        use loong_ipc::{
            frame::{encode, FrameLimit},
            message::{
                channel::{MAX_WEBHOOK_BODY_BYTES, MAX_WEBHOOK_HEADERS, MAX_WEBHOOK_HEADER_BYTES},
                worker::WORKER_MAX_FRAME_BYTES,
            },
        };
        let mut q = Queue::new(Instant::now());
        let mut receivers = Vec::new();
        let request = WebhookRequest {
            id: 0,
            headers: vec![
                (
                    "h".repeat(MAX_WEBHOOK_HEADER_BYTES),
                    "v".repeat(MAX_WEBHOOK_HEADER_BYTES)
                );
                MAX_WEBHOOK_HEADERS
            ],
            body: vec![b' '; MAX_WEBHOOK_BODY_BYTES],
        };
        for _ in 0..2 * MAX_WEBHOOK_BATCH {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            q.waiting.push_back((request.clone(), tx));
        }
        let limit = FrameLimit::new(u64::from(WORKER_MAX_FRAME_BYTES)).expect("limit");
        let mut handed = 0;
        while !q.waiting.is_empty() {
            let batch = hand(&mut q, 1);
            assert!(!batch.is_empty(), "a request is handed whatever its size");
            handed += batch.len();
            // The kernel call's answer (the encoded batch) in a frame, as loongd sends it.
            let answer = loong_ipc::message::gateway::encode(&batch).expect("encodes");
            let mut out = Vec::new();
            encode(&(u64::MAX, Ok::<_, ()>(answer)), limit, &mut out)
                .expect("the answer fits the worker's frame");
        }
        // Positive control: every request was handed, none lost.
        assert_eq!(handed, 2 * MAX_WEBHOOK_BATCH);
        assert_eq!(q.handed.len(), 2 * MAX_WEBHOOK_BATCH);
        // Small requests still go MAX_WEBHOOK_BATCH at a time.
        let small = WebhookRequest {
            body: b"{}".to_vec(),
            ..request
        };
        for _ in 0..MAX_WEBHOOK_BATCH + 1 {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            q.waiting.push_back((small.clone(), tx));
        }
        assert_eq!(hand(&mut q, 1).len(), MAX_WEBHOOK_BATCH);
        assert_eq!(hand(&mut q, 1).len(), 1);
    }

    #[test]
    fn refusals_are_recorded_one_a_window_and_all_counted() {
        let mut q = Queue::new(Instant::now());
        assert_eq!(q.refusal_due(1_000), Some(0));
        assert_eq!(q.refusal_due(1_001), None);
        assert_eq!(q.refusal_due(1_002), None);
        assert_eq!(q.refusal_due(1_000 + WEBHOOK_REFUSAL_WINDOW_MS), Some(2));
        assert_eq!(q.refused, 4);
    }
}
