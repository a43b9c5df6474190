//! Chat platforms' webhooks: `POST /channels/PLATFORM/ACCOUNT/events` (Feishu/Lark's event
//! subscription). The platform sends no bearer, so none is asked: the request (the headers
//! the platform's signature check needs, the raw body within [`MAX_WEBHOOK_BODY_BYTES`]) is
//! handed to loongd as `gateway_webhook`, which relays it, unparsed, to that channel's
//! worker; the worker checks the signature (the authentication) and its answer (status,
//! body) is this route's. No `Host`/`Origin` check either: the platform reaches the gateway
//! through the operator's public name, and a browser's rebinding gains nothing on a route
//! that carries no credential.
//!
//! Each account is limited here ([`WEBHOOKS_PER_SECOND`], before its body is read) and again
//! in loongd, so that an unauthenticated flood neither ties up the gateway's connections nor
//! reaches loongd past its rate. An account loongd does not know (404) leaves no entry in
//! the table: made-up names cannot fill it against the real ones.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use loong_ipc::message::{
    channel::{WebhookReply, WebhookRequest, MAX_WEBHOOK_BODY_BYTES, MAX_WEBHOOK_HEADER_BYTES},
    gateway::{self as wire, GatewayWebhook},
};
use loong_worker_runtime::service::AsyncLink;

use crate::http::{error, Body_};

/// The route's prefix; the rest is `PLATFORM/ACCOUNT/events`.
pub const PREFIX: &str = "/channels/";
/// The platforms served.
pub const PLATFORMS: &[&str] = &["feishu"];
/// The headers handed over (Feishu's signature: timestamp, nonce, signature).
pub const KEPT_HEADERS: &[&str] = &[
    "x-lark-request-timestamp",
    "x-lark-request-nonce",
    "x-lark-signature",
];
/// The longest account name taken (a channel's name is shorter).
pub const MAX_ACCOUNT_BYTES: usize = 64;
/// Webhook requests one account is served each second, in bursts of [`WEBHOOK_BURST`]
/// (loongd's own bound is the same).
pub const WEBHOOKS_PER_SECOND: u32 = 20;
/// Webhook requests one account is served at once before [`WEBHOOKS_PER_SECOND`] applies.
pub const WEBHOOK_BURST: u32 = 100;
/// Accounts whose rate is tracked at once; past it, a request of an account not tracked
/// keeps to loongd's bound alone (an idle one is forgotten first).
pub const MAX_TRACKED_ACCOUNTS: usize = 256;
/// How long a webhook's body may take to arrive once its head has (408 past it): the route
/// is unauthenticated, so a body sent a byte at a time would hold one of the gateway's
/// connections (and so every route's) for as long as the sender likes.
pub const WEBHOOK_BODY_TIMEOUT: Duration = crate::http::HEADER_READ_TIMEOUT;
/// How long the kernel call may take (loongd answers within its own deadline, 10 s).
pub const WEBHOOK_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The rate of each account seen: its bucket's level and when it was filled.
#[derive(Default)]
pub(crate) struct Rates(Mutex<HashMap<String, (f64, Instant)>>);

impl Rates {
    fn admit(&self, account: &str, now: Instant) -> bool {
        let mut table = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = f64::from(WEBHOOK_BURST);
        let refill = |(level, at): &mut (f64, Instant)| {
            let elapsed = now.saturating_duration_since(*at).as_secs_f64();
            *level = (*level + elapsed * f64::from(WEBHOOKS_PER_SECOND)).min(burst);
            *at = now;
        };
        if !table.contains_key(account) && table.len() >= MAX_TRACKED_ACCOUNTS {
            // Idle accounts (a full bucket) are forgotten: they lose nothing.
            table.retain(|_, b| {
                refill(b);
                b.0 < burst
            });
            if table.len() >= MAX_TRACKED_ACCOUNTS {
                // Made-up names in flight (each held until loongd answers 404) fill the table:
                // refusing here would let them starve the real accounts. Not tracked, the
                // request keeps to loongd's own bound of the account.
                return true;
            }
        }
        let b = table.entry(account.to_owned()).or_insert((burst, now));
        refill(b);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn forget(&self, account: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(account);
    }
}

/// The platform and account of a webhook path, if `path` is one.
pub(crate) fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (platform, rest) = rest.split_once('/')?;
    let account = rest.strip_suffix("/events")?;
    Some((platform, account))
}

fn valid_account(account: &str) -> bool {
    !account.is_empty()
        && account.len() <= MAX_ACCOUNT_BYTES
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Serves one webhook request.
pub(crate) async fn serve(
    link: &AsyncLink,
    rates: &Rates,
    max_body_bytes: u64,
    req: Request<Incoming>,
    platform: &str,
    account: &str,
) -> Response<Body_> {
    // The gateway's own body bound applies too (loongd takes no call past what it allows).
    let limit = usize::try_from(max_body_bytes)
        .unwrap_or(usize::MAX)
        .min(MAX_WEBHOOK_BODY_BYTES);
    if !PLATFORMS.contains(&platform) || !valid_account(account) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no webhook route for platform {platform:?} and account {account:?}; the gateway serves POST /channels/feishu/CHANNEL/events"),
        );
    }
    if req.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "a webhook takes POST only",
        );
    }
    if !rates.admit(account, Instant::now()) {
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("account {account} is served at most {WEBHOOKS_PER_SECOND} webhook requests a second"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
        return r;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("a webhook body is at most {limit} bytes (1 MiB, or gateway.max_body_bytes when lower)"),
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let headers: Vec<(String, String)> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let v = req.headers().get(*name)?.to_str().ok()?;
            (v.len() <= MAX_WEBHOOK_HEADER_BYTES).then(|| ((*name).to_owned(), v.to_owned()))
        })
        .collect();
    let read = http_body_util::Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(WEBHOOK_BODY_TIMEOUT, read).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!(
                    "a webhook body must arrive within {} s of its head",
                    WEBHOOK_BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let call = GatewayWebhook {
        platform: platform.to_owned(),
        account: account.to_owned(),
        request: WebhookRequest {
            id: 0,
            headers,
            body: body.to_vec(),
        },
    };
    let answer = match wire::request(wire::KIND_GATEWAY_WEBHOOK, &call) {
        Ok(r) => link.call(r, WEBHOOK_CALL_TIMEOUT).await,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("encoding the webhook call: {e}"),
            )
        }
    };
    let reply: WebhookReply = match answer
        .map_err(|e| e.to_string())
        .and_then(|b| wire::decode(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!("loongd did not relay the webhook: {e}"),
            )
        }
    };
    if reply.status == 404 {
        rates.forget(account);
    }
    let mut r = Response::new(Full::new(Bytes::from(reply.body)).boxed());
    // A final status only (loongd checks it too): a 1xx would be no answer at all.
    *r.status_mut() = StatusCode::from_u16(reply.status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_paths_name_a_platform_and_an_account() {
        assert_eq!(
            route("/channels/feishu/ops/events"),
            Some(("feishu", "ops"))
        );
        assert_eq!(route("/channels/feishu/ops"), None);
        assert_eq!(route("/mcp"), None);
        assert!(valid_account("ops-1.a_b"));
        assert!(!valid_account(""));
        assert!(!valid_account("a/b"));
        assert!(!valid_account(&"a".repeat(MAX_ACCOUNT_BYTES + 1)));
    }

    #[test]
    fn an_accounts_rate_is_bounded_and_made_up_accounts_cannot_starve_it() {
        let rates = Rates::default();
        let at = Instant::now();
        let served = (0..1000).filter(|_| rates.admit("ops", at)).count();
        assert_eq!(served, WEBHOOK_BURST as usize);
        // Another account has its own bucket.
        assert!(rates.admit("other", at));
        // Made-up names answered 404 are forgotten: the table never fills with them.
        for n in 0..10 * MAX_TRACKED_ACCOUNTS {
            let name = format!("made-up-{n}");
            assert!(rates.admit(&name, at));
            rates.forget(&name);
        }
        // Positive control: a second later, the account is served again.
        assert!(rates.admit("ops", at + Duration::from_secs(1)));
    }

    #[test]
    fn made_up_accounts_in_flight_do_not_starve_a_real_one() {
        let rates = Rates::default();
        let at = Instant::now();
        // Made-up names whose bodies are still arriving (loongd has not answered 404 yet)
        // fill the table.
        for n in 0..MAX_TRACKED_ACCOUNTS {
            assert!(rates.admit(&format!("made-up-{n}"), at));
        }
        // A real account's first request is served all the same (loongd bounds its rate).
        assert!(rates.admit("ops", at));
        // Positive control: a tracked account is still limited.
        let served = (0..1000).filter(|_| rates.admit("made-up-0", at)).count();
        assert_eq!(served, WEBHOOK_BURST as usize - 1);
    }
}
