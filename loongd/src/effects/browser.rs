//! A browser tool's call on the effect path: the caller's URL checked before anything is
//! decided (only `http`/`https`), the call decided as `browser.control` on its session's
//! `HOST:PORT`, a session found or started (its sandbox granted that `HOST:PORT` alone), and,
//! after the worker answered, the page's navigations recorded (`browser.navigated`) and a
//! session whose worker failed dropped.

use std::time::Duration;

use loong_ipc::{CallOutput, ErrorKind, FailureClass, RemoteError};
use loong_profiles::pack::Capability;

use super::Actor;
use crate::{
    audit::Kind,
    authority::Bearer,
    workers::{
        browser::{self, Handle},
        CallError, Called, Loadable, Supervisor, WorkerKind,
    },
    Kernel,
};

/// A browser call, prepared before it is decided.
#[derive(Debug)]
pub(crate) struct BrowserCall {
    /// The tool's operation (`open`, `extract`, ...).
    op: String,
    /// Whose session it runs in.
    owner: String,
    /// The `HOST:PORT` it is decided on.
    pub on: String,
    /// Its session, when it has one already.
    session: Option<Handle>,
    /// The caller's input as the worker takes it (`op` added, `session` removed).
    worker_input: serde_json::Value,
    /// The session it ran in, once admitted.
    ran_in: Option<Handle>,
    /// Whether this call started its session.
    new_session: bool,
}

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

/// How a session owned by a token names its owner: this, then the token's public id.
const TOKEN_OWNER: &str = "token:";

/// Who owns the sessions this actor opens: its token (by public id), or its uid.
fn owner(kernel: &Kernel, actor: &Actor<'_>) -> String {
    match actor.bearer {
        Bearer::Operator => actor.who.name(),
        Bearer::Id(id) => format!("{TOKEN_OWNER}{id}"),
        Bearer::Secret(s) => match kernel.authority.tokens.id_of(s) {
            Ok(Some(id)) => format!("{TOKEN_OWNER}{id}"),
            _ => format!("{}:unknown-token", actor.who.name()),
        },
    }
}

/// Parses and checks a browser call before it is decided: the URL of an `open` (refused when
/// not `http`/`https`), the session any other call names (refused when it is not the
/// caller's), and a loopback or private address, which is reachable only when the caller's
/// token names that IP literal in a `browser.control` scope.
pub(crate) fn prepare(
    kernel: &Kernel,
    actor: &Actor<'_>,
    tool: &str,
    input: &str,
) -> Result<BrowserCall, RemoteError> {
    let idle = Duration::from_millis(kernel.config.browser.idle_timeout_ms);
    for pool in kernel.browser.sweep(idle) {
        browser::close(pool);
    }
    let mut v: serde_json::Value =
        serde_json::from_str(input).map_err(|e| bad(format!("the input is not JSON: {e}")))?;
    let Some(map) = v.as_object_mut() else {
        return Err(bad(format!("{tool} takes a JSON object")));
    };
    let op = tool.trim_start_matches("browser.").to_string();
    let owner = owner(kernel, actor);
    let named = match map.remove("session") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.len() <= browser::MAX_SESSION_ID_CHARS => Some(s),
        Some(_) => {
            return Err(bad(format!(
            "{tool}: `session` is the id browser.open answered (a string of at most {} characters)",
            browser::MAX_SESSION_ID_CHARS
        )))
        }
    };
    let session = match &named {
        Some(id) => Some(kernel.browser.get(&owner, id).ok_or_else(|| {
            RemoteError::new(
                ErrorKind::NotFound,
                format!("{tool}: no browser session {id:?} of this caller is open (it was closed, timed out or failed); open one with browser.open"),
            )
        })?),
        None => None,
    };
    let on = if op == "open" {
        let url = map
            .get("url")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("browser.open needs `url` (a string)"))?;
        let on = browser::url_target(url).map_err(|e| {
            bad(format!(
                "browser.open: {e}; only http:// and https:// pages may be opened"
            ))
        })?;
        if let Some(s) = &session {
            if s.grant != on {
                return Err(bad(format!(
                    "browser.open {url}: session {} may reach {} only; open {on} without `session` (a new session)",
                    s.id, s.grant
                )));
            }
        }
        on
    } else {
        match &session {
            Some(s) => s.grant.clone(),
            None => {
                return Err(bad(format!(
                    "{tool} needs `session`: the id browser.open answered"
                )))
            }
        }
    };
    if let Some(ip) = browser::private_literal(&on) {
        private_named(kernel, actor, &on, ip)?;
    }
    map.insert("op".into(), op.clone().into());
    Ok(BrowserCall {
        op,
        owner,
        on,
        session,
        worker_input: v,
        ran_in: None,
        new_session: false,
    })
}

/// A loopback or private `on` is reachable only when the caller's token names that IP
/// literal (the operator's own pack, which grants every host, may name it in the URL).
fn private_named(
    kernel: &Kernel,
    actor: &Actor<'_>,
    on: &str,
    ip: std::net::IpAddr,
) -> Result<(), RemoteError> {
    let id = match actor.bearer {
        Bearer::Operator => return Ok(()),
        Bearer::Id(id) => Some(id.to_string()),
        Bearer::Secret(s) => kernel.authority.tokens.id_of(s).ok().flatten(),
    };
    // An unknown token is denied by the decision itself.
    let Some(id) = id else { return Ok(()) };
    let Ok(Ok(token)) = kernel.authority.tokens.check_id(&id) else {
        return Ok(());
    };
    let literal = match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    };
    let named = token.grants.iter().any(|g| {
        g.cap == Capability::BrowserControl
            && g.scope.as_deref().is_some_and(|s| s == on || s == literal)
    });
    if named {
        return Ok(());
    }
    Err(super::denied(
        loong_ipc::DenialStage::TokenGrants,
        Capability::BrowserControl,
        on,
        &format!(
            "{literal} is a loopback or private address; a token reaches it only with a browser.control scope naming it (browser.control:{on})"
        ),
    ))
}

/// The decided call's session: the named one, the caller's session on the same `HOST:PORT`
/// (an `open` reuses it), or a new one whose sandbox may reach `on` alone. Points `pool` and
/// `loadable` at it and answers the worker's input.
pub(crate) fn admit(
    kernel: &Kernel,
    b: &mut BrowserCall,
    pool: &mut std::sync::Arc<Supervisor>,
    loadable: &mut Loadable,
) -> Result<String, RemoteError> {
    let handle = match b.session.clone() {
        Some(h) => h,
        None if b.op == "open" => match kernel.browser.find(&b.owner, &b.on) {
            Some(h) => h,
            None => {
                let grant: loong_sandbox::NetGrant =
                    b.on.parse()
                        .map_err(|e| bad(format!("browser.open: {}: {e}", b.on)))?;
                let chromium = match &loadable.wire.as_ref() {
                    crate::workers::Wire::Builtin(spec) => spec.roots.first().cloned(),
                    _ => None,
                }
                .ok_or_else(|| super::internal("the browser tool names no Chromium"))?;
                let id = kernel.browser.next_id();
                let kind = WorkerKind::browser(vec![grant], format!("browser session {id}"));
                let new = kernel.new_pool(kind);
                let cfg = &kernel.config.browser;
                let max = browser::SessionLimits {
                    total: cfg.max_sessions as usize,
                    per_caller: cfg.max_sessions_per_caller as usize,
                };
                match kernel.browser.add(
                    &id,
                    &b.owner,
                    &b.on,
                    token_expiry(kernel, &b.owner),
                    new,
                    std::path::Path::new(&chromium),
                    max,
                ) {
                    Ok(h) => {
                        kernel
                            .browser
                            .watch(Duration::from_millis(kernel.config.browser.idle_timeout_ms));
                        b.new_session = true;
                        h
                    }
                    Err((unused, full)) => {
                        unused.shutdown();
                        return Err(RemoteError::new(ErrorKind::Overloaded, match full {
                            browser::Full::Total(n) => format!("{n} browser sessions are open ([browser] max_sessions); close one with browser.close"),
                            browser::Full::Caller(n) => format!("this caller has {n} browser sessions open ([browser] max_sessions_per_caller); close one of its own with browser.close"),
                        }));
                    }
                }
            }
        },
        None => return Err(bad(format!("browser.{} needs `session`", b.op))),
    };
    *pool = handle.pool.clone();
    *loadable = handle.loadable.clone();
    b.ran_in = Some(handle);
    serde_json::to_string(&b.worker_input).map_err(|e| super::internal(e.to_string()))
}

/// When the token owning sessions of `owner` expires, if a token owns them.
fn token_expiry(kernel: &Kernel, owner: &str) -> Option<i64> {
    let id = owner.strip_prefix(TOKEN_OWNER)?;
    match kernel.authority.tokens.check_id(id) {
        Ok(Ok(t)) => Some(t.expires_ms),
        // Not valid now: the session ends at the first sweep.
        _ => Some(0),
    }
}

/// Tokens were revoked (one, or a pack's generation): every session a token owns that is not
/// valid now is closed with its Chromium, so a page opened under a revoked token does not go
/// on reaching its host until it is idle.
pub(crate) fn revoked(kernel: &Kernel) {
    let pools = kernel.browser.remove_owners(|owner| {
        let Some(id) = owner.strip_prefix(TOKEN_OWNER) else {
            return true;
        };
        matches!(kernel.authority.tokens.check_id(id), Ok(Ok(_)))
    });
    for pool in pools {
        browser::close(pool);
    }
}

/// `browser.close`'s answer, without asking the worker: the session is removed and its pool
/// (Chromium and its profile with it) shut down.
pub(crate) fn closed_answer(b: &BrowserCall) -> Option<Called> {
    if b.op != "close" {
        return None;
    }
    let h = b.ran_in.as_ref()?;
    Some(Called {
        worker: 0,
        result: Ok(CallOutput {
            output: serde_json::to_vec(&serde_json::json!({"closed": h.id})).unwrap_or_default(),
            logs: Vec::new(),
            logs_dropped: 0,
            wall_us: 0,
            cpu_us: 0,
            fuel_consumed: None,
            peak_memory_bytes: 0,
        }),
        loaded: None,
    })
}

/// After the worker answered: a closed session or one whose worker failed (hung past its
/// deadline, crashed, OOM-killed) is dropped with its pool; an `open` is recorded as
/// `browser.navigated` (every navigation with its host and outcome, the subresource hosts
/// summarised) and answers its session's id.
pub(crate) async fn after(
    kernel: &Kernel,
    actor: &Actor<'_>,
    b: &BrowserCall,
    called: &mut Called,
) {
    let Some(h) = &b.ran_in else { return };
    let failed_worker = matches!(
        &called.result,
        Err(CallError::Worker(..) | CallError::Unavailable(_) | CallError::Busy(_))
    );
    if b.op == "close" || failed_worker {
        if let Some(pool) = kernel.browser.remove(None, &h.id) {
            browser::close(pool);
        }
        if failed_worker {
            let class = match &called.result {
                Err(e) => e.class(),
                Ok(_) => FailureClass::Abandoned,
            };
            kernel
                .audit
                .record_later(actor.event(
                    Kind::BrowserNavigated,
                    serde_json::json!({
                        "session": h.id, "op": b.op, "host": h.grant,
                        "outcome": "session_ended", "failure": class.name(),
                    }),
                ))
                .await;
        }
        return;
    }
    let Ok(out) = &mut called.result else {
        return;
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&out.output) else {
        return;
    };
    // An open always; any other call when it reports navigations (a click that submitted a
    // form, a wait that saw the page move).
    let navigated = v
        .get("navigations")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|n| !n.is_empty());
    if b.op != "open" && !navigated {
        return;
    }
    kernel
        .audit
        .record_later(actor.event(
            Kind::BrowserNavigated,
            serde_json::json!({
                "session": h.id, "op": b.op, "new_session": b.new_session, "host": h.grant,
                "url": v.get("url"), "status": v.get("status"), "loaded": v.get("loaded"),
                "error": v.get("error"),
                "navigations": v.get("navigations"),
                "subresource_hosts": v.get("subresource_hosts"),
                "subresources_failed": v.get("subresources_failed"),
            }),
        ))
        .await;
    if b.op == "open" {
        v["session"] = h.id.clone().into();
        if let Ok(bytes) = serde_json::to_vec(&v) {
            out.output = bytes;
        }
    }
}
