//! `channels add | list | status | restart | remove` on the control API. Adding a channel
//! stores its platform secrets in the secret store (each bound to the platform's API host
//! only), issues the channel's own token within the bundled `channel` pack (or the pack the
//! operator names), and keeps its configuration in `state.db` (`authority::channels`);
//! removing it undoes all three; restarting it issues its next token generation and revokes
//! the one before. Each step is audited
//! with the operator's uid and the channel's name (`secret.set`, `token.issued`, and on
//! removal `secret.removed`, `token.revoked`); no answer, record or log line carries a
//! secret, and the token's bearer secret is shown to no one (the channel's service call is
//! bound to the token by its id).

use loong_ipc::{
    ChannelAddRequest, ChannelKind, ChannelView, ControlResponse, ErrorKind, RemoteError,
    SecretValue,
};
use serde::{Deserialize, Serialize};
use tokio::net::unix::UCred;

use crate::{
    audit::Kind,
    authority::{
        channels::{ChannelRow, ChannelStoreError, ClaimLimits},
        tokens::MAX_TTL_MS,
    },
    effects::Actor,
    request::RequestIo,
    secrets, Kernel,
};

/// The pack every channel's token is issued within.
pub const CHANNEL_PACK: &str = "channel";
/// The public Bot API and Feishu open API hosts.
pub const TELEGRAM_API_BASE: &str = "https://api.telegram.org";
pub const FEISHU_API_BASE: &str = "https://open.feishu.cn";
/// The most bytes of an API base URL.
pub const MAX_API_BASE_BYTES: usize = 256;
/// The most bytes of a chat id or an app id.
pub const MAX_CHAT_ID_BYTES: usize = 64;

/// A channel's configuration as kept in its row (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelConfig {
    pub api_base: String,
    /// The endpoint its secrets are bound to (`HOST`, `HOST:PORT` or `http://HOST:PORT`).
    pub secret_host: String,
    pub allowed_chats: Vec<String>,
    pub operator_chats: Vec<String>,
    pub app_id: Option<String>,
    pub secret_names: Vec<String>,
    /// The pack its token is issued within (`None`: [`CHANNEL_PACK`]).
    #[serde(default)]
    pub pack: Option<String>,
}

impl ChannelConfig {
    /// The pack the channel's tokens are issued within.
    pub fn pack(&self) -> &str {
        self.pack.as_deref().unwrap_or(CHANNEL_PACK)
    }
}

fn bad(m: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::BadRequest, m)
}

fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

fn refused(e: ChannelStoreError) -> RemoteError {
    let kind = match e {
        ChannelStoreError::NoSuchChannel(_) => ErrorKind::NotFound,
        ChannelStoreError::Db(_) => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    };
    RemoteError::new(kind, e.to_string())
}

fn store() -> Result<&'static secrets::Secrets, RemoteError> {
    secrets::store()
        .ok_or_else(|| RemoteError::new(ErrorKind::Internal, "the secret store is not open"))
}

/// Whether `name` is a channel name: 1 to 64 letters, digits, `_` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= loong_ipc::message::control::MAX_CHANNEL_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `api_base` checked (`https://HOST[:PORT]`, or `http://HOST:PORT` with its port), without a
/// trailing slash, and the endpoint its secrets are bound to.
pub fn parse_api_base(api_base: &str) -> Result<(String, String), RemoteError> {
    let base = api_base.trim_end_matches('/');
    let why = |w: &str| bad(format!("--api-base {api_base}: {w}"));
    if base.len() > MAX_API_BASE_BYTES {
        return Err(why("longer than 256 bytes"));
    }
    let (plain, rest) = if let Some(r) = base.strip_prefix("https://") {
        (false, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (true, r)
    } else {
        return Err(why("must start with https:// (or http:// with a port)"));
    };
    let ok_byte = |b: u8| b.is_ascii_alphanumeric() || b".-:[]".contains(&b);
    if rest.is_empty() || !rest.bytes().all(ok_byte) {
        return Err(why(
            "must be a scheme and HOST[:PORT] only, no path, user or query",
        ));
    }
    let port = rest
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty() && (!h.contains(':') || h.ends_with(']')))
        .map(|(_, p)| p);
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(why("the port must be 1 to 65535"));
        }
    }
    let host = rest.to_ascii_lowercase();
    if plain {
        if port.is_none() {
            return Err(why("plain http needs an explicit port (http://HOST:PORT)"));
        }
        return Ok((format!("http://{host}"), format!("http://{host}")));
    }
    Ok((format!("https://{host}"), host))
}

fn check_chats(flag: &str, chats: &[String]) -> Result<(), RemoteError> {
    if chats.len() > loong_ipc::message::control::MAX_CHANNEL_CHATS {
        return Err(bad(format!(
            "more than {} {flag} ids",
            loong_ipc::message::control::MAX_CHANNEL_CHATS
        )));
    }
    if let Some(c) = chats.iter().find(|c| {
        c.is_empty()
            || c.len() > MAX_CHAT_ID_BYTES
            || !c
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i == 0 && b == b'-'))
    }) {
        return Err(bad(format!(
            "{flag} {c}: a chat id is a number (Telegram) or letters, digits and _ (Feishu)"
        )));
    }
    Ok(())
}

/// The secret roles each kind needs, in order.
fn roles(kind: ChannelKind) -> &'static [&'static str] {
    match kind {
        ChannelKind::Telegram => &["bot_token"],
        ChannelKind::Feishu => &["app_secret", "encrypt_key", "verification_token"],
    }
}

/// The secret store's name of a channel's secret.
pub fn secret_name(channel: &str, role: &str) -> String {
    format!("channel.{channel}.{role}")
}

async fn record(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    kind: Kind,
    detail: serde_json::Value,
) -> Result<(), RemoteError> {
    let event = Actor::operator(cred.uid(), None, io).event(kind, detail);
    kernel
        .audit
        .record(event)
        .await
        .map(|_| ())
        .map_err(internal)
}

/// A channel's secrets by their names in the secret store.
type NamedSecrets<'a> = Vec<(String, &'a SecretValue)>;

/// Checks an add request; returns its configuration and its secrets by store name.
fn plan(req: &ChannelAddRequest) -> Result<(ChannelConfig, NamedSecrets<'_>), RemoteError> {
    if !valid_name(&req.name) {
        return Err(bad(format!(
            "channel name `{}`: 1 to 64 letters, digits, _ and -",
            req.name
        )));
    }
    check_chats("--allowed-chat", &req.allowed_chats)?;
    check_chats("--operator-chat", &req.operator_chats)?;
    let default = match req.kind {
        ChannelKind::Telegram => TELEGRAM_API_BASE,
        ChannelKind::Feishu => FEISHU_API_BASE,
    };
    let (api_base, secret_host) = parse_api_base(req.api_base.as_deref().unwrap_or(default))?;
    match (req.kind, &req.app_id) {
        (ChannelKind::Feishu, None) => return Err(bad("a feishu channel needs --app-id")),
        (ChannelKind::Telegram, Some(_)) => {
            return Err(bad("--app-id is for feishu channels only"))
        }
        (_, Some(id))
            if id.is_empty()
                || id.len() > MAX_CHAT_ID_BYTES
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            return Err(bad(format!(
                "--app-id {id}: letters, digits and _ (cli_...)"
            )))
        }
        _ => {}
    }
    let want = roles(req.kind);
    let mut secrets = Vec::new();
    for role in want {
        let Some((_, v)) = req.secrets.iter().find(|(r, _)| r == role) else {
            return Err(bad(format!(
                "a {} channel needs its {role} (read from stdin)",
                req.kind.as_str()
            )));
        };
        secrets.push((secret_name(&req.name, role), v));
    }
    if let Some((r, _)) = req
        .secrets
        .iter()
        .find(|(r, _)| !want.contains(&r.as_str()))
    {
        return Err(bad(format!(
            "a {} channel takes no secret `{r}`",
            req.kind.as_str()
        )));
    }
    let config = ChannelConfig {
        api_base,
        secret_host,
        allowed_chats: req.allowed_chats.clone(),
        operator_chats: req.operator_chats.clone(),
        app_id: req.app_id.clone(),
        secret_names: secrets.iter().map(|(n, _)| n.clone()).collect(),
        pack: req.pack.clone().filter(|p| p != CHANNEL_PACK),
    };
    Ok((config, secrets))
}

/// `channels add`.
pub(crate) async fn add(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    req: ChannelAddRequest,
) -> Result<ControlResponse, RemoteError> {
    let (config, secrets) = plan(&req)?;
    let _one = LIFECYCLE.lock().await;
    let channels = &kernel.authority.channels;
    if channels.get(&req.name).is_ok() {
        return Err(refused(ChannelStoreError::Exists(req.name.clone())));
    }
    let store = store()?;
    let (issued, grants) = issue(kernel, &req.name, &config)?;
    let token_id = issued.token.id.clone();
    let row = ChannelRow {
        name: req.name.clone(),
        kind: req.kind.as_str().to_owned(),
        config_json: serde_json::to_string(&config).map_err(internal)?,
        token_id: token_id.clone(),
        generation: 1,
    };
    let mut set = Vec::new();
    let stored = secrets.iter().try_for_each(|(name, value)| {
        store
            .set(
                name,
                value.expose(),
                std::slice::from_ref(&config.secret_host),
            )
            .map(|_| set.push(name.clone()))
            .map_err(|e| bad(e.to_string()))
    });
    let added = stored.and_then(|()| channels.add(&row).map_err(refused));
    if let Err(e) = added {
        // Undo what was done: nothing of a refused channel stays.
        for name in &set {
            let _ = store.remove(name);
        }
        let _ = kernel.authority.tokens.revoke(&token_id);
        return Err(e);
    }
    for name in &set {
        let detail =
            serde_json::json!({ "name": name, "hosts": [config.secret_host], "channel": req.name });
        record(kernel, cred, io, Kind::SecretSet, detail).await?;
    }
    let detail = issued_detail(&req.name, &config, &issued, &grants, 1);
    record(kernel, cred, io, Kind::TokenIssued, detail).await?;
    start_service(kernel, &req.name);
    Ok(ControlResponse::Channels(vec![view(kernel, &row)?]))
}

/// The grants every channel's token needs: its turns, their session, its answers.
fn needed_grants(kernel: &Kernel) -> Result<Vec<loong_profiles::pack::Grant>, RemoteError> {
    Ok(kernel
        .authority
        .pack(CHANNEL_PACK)
        .ok_or_else(|| internal("the bundled `channel` pack is not loaded"))?
        .grants
        .clone())
}

/// Issues channel `name`'s token within its pack, with every grant of the pack; a pack that
/// lacks a grant a channel needs is refused, naming it.
fn issue(
    kernel: &Kernel,
    name: &str,
    config: &ChannelConfig,
) -> Result<
    (
        crate::authority::tokens::Issued,
        Vec<loong_profiles::pack::Grant>,
    ),
    RemoteError,
> {
    let pack = kernel.authority.pack(config.pack()).ok_or_else(|| {
        bad(format!(
            "--pack {}: no such pack; see `loongctl packs list`",
            config.pack()
        ))
    })?;
    if let Some(g) = needed_grants(kernel)?.iter().find(|g| !pack.covers(g)) {
        return Err(bad(format!(
            "--pack {}: it does not grant {g}, which a channel's turns need; add it to the pack, or leave --pack out",
            pack.id
        )));
    }
    let grants = pack.grants.clone();
    let issued = kernel
        .authority
        .tokens
        .issue(pack, &format!("channel:{name}"), grants.clone(), MAX_TTL_MS)
        .map_err(internal)?;
    Ok((issued, grants))
}

fn issued_detail(
    name: &str,
    config: &ChannelConfig,
    issued: &crate::authority::tokens::Issued,
    grants: &[loong_profiles::pack::Grant],
    generation: u64,
) -> serde_json::Value {
    serde_json::json!({
        "token": issued.token.id, "pack": config.pack(), "agent": format!("channel:{name}"),
        "grants": grants.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "expires_ms": issued.token.expires_ms, "generation": issued.token.generation,
        "channel": name, "channel_generation": generation,
    })
}

/// The channel's service starts now; one that cannot start says why in its status.
fn start_service(kernel: &Kernel, name: &str) {
    if let Some(k) = kernel.arc() {
        if let Err(e) = crate::services::channel::start(&k, name) {
            crate::channel_status::report(
                name,
                crate::channel_status::PollStatus {
                    conflict: None,
                    last_error: Some(format!("not started: {e}")),
                },
            );
        }
    }
}

/// One `channels add | restart | remove` at a time: each reads a channel's row, stops or
/// starts its worker, and issues or revokes its token; two at once (two restarts, a restart
/// and a remove) would each revoke the token it read, leaving the one the other issued
/// valid, and a worker bound to a token the row no longer names.
static LIFECYCLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `channels restart NAME`: the channel's worker stops (drained); its next token generation
/// is issued and the one before revoked (a turn still running under it is refused at its
/// next decision and its answer is not sent: the message runs again under the new token;
/// an approval it waits for is denied); then the worker starts again, bound to the new
/// token.
pub(crate) async fn restart(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    name: String,
) -> Result<ControlResponse, RemoteError> {
    let _one = LIFECYCLE.lock().await;
    let channels = &kernel.authority.channels;
    let row = channels.get(&name).map_err(refused)?;
    let config: ChannelConfig = serde_json::from_str(&row.config_json).map_err(internal)?;
    kernel
        .services
        .stop(
            crate::services::Service::Channel,
            &name,
            crate::services::DEFAULT_DRAIN,
        )
        .await;
    let (issued, grants) = issue(kernel, &name, &config)?;
    let (generation, replaced) = match channels.next_generation(&name, &issued.token.id) {
        Ok(g) => g,
        Err(e) => {
            let _ = kernel.authority.tokens.revoke(&issued.token.id);
            start_service(kernel, &name);
            return Err(refused(e));
        }
    };
    let detail = issued_detail(&name, &config, &issued, &grants, generation);
    record(kernel, cred, io, Kind::TokenIssued, detail).await?;
    if kernel
        .authority
        .tokens
        .revoke(&replaced)
        .map_err(internal)?
    {
        let detail = serde_json::json!({
            "token": replaced, "channel": name, "channel_generation": generation.saturating_sub(1),
            "reason": format!("channel {name} restarted under generation {generation}"),
        });
        record(kernel, cred, io, Kind::TokenRevoked, detail).await?;
        crate::egress::authority_changed();
    }
    let actor = Actor::operator(cred.uid(), None, io);
    crate::effects::approval::deny_orphaned(kernel, &actor).await?;
    start_service(kernel, &name);
    let row = channels.get(&name).map_err(refused)?;
    Ok(ControlResponse::Channels(vec![view(kernel, &row)?]))
}

fn kind_of(kind: &str) -> ChannelKind {
    if kind == "feishu" {
        ChannelKind::Feishu
    } else {
        ChannelKind::Telegram
    }
}

fn view(kernel: &Kernel, row: &ChannelRow) -> Result<ChannelView, RemoteError> {
    let config: ChannelConfig = serde_json::from_str(&row.config_json).map_err(internal)?;
    let counts = kernel
        .authority
        .channels
        .counts(&row.name)
        .map_err(refused)?;
    let poll = crate::channel_status::get(&row.name);
    Ok(ChannelView {
        name: row.name.clone(),
        kind: kind_of(&row.kind),
        api_base: config.api_base,
        allowed_chats: config.allowed_chats,
        operator_chats: config.operator_chats,
        app_id: config.app_id,
        token_id: row.token_id.clone(),
        pack: config
            .pack
            .clone()
            .unwrap_or_else(|| CHANNEL_PACK.to_owned()),
        generation: row.generation,
        secret_names: config.secret_names,
        pending: counts.pending,
        running: counts.running,
        answered: counts.answered,
        ignored: counts.ignored,
        unsent: counts.unsent,
        sent: counts.sent,
        offset: counts.offset,
        conflict: poll.conflict,
        last_error: poll.last_error,
        webhook: (row.kind == "feishu").then(|| webhook_url(kernel, &row.name)),
        refused: crate::services::webhook::refused_count(&row.name),
    })
}

/// The URL of a Feishu channel's webhook on the gateway's listener (`[gateway] listen`):
/// the platform reaches it through the operator's public https name, which fronts it.
fn webhook_url(kernel: &Kernel, name: &str) -> String {
    let path = crate::services::webhook::webhook_path("feishu", name);
    match &kernel.config.gateway.listen {
        crate::config::GatewayListen::Tcp(a) => format!("http://{a}{path}"),
        crate::config::GatewayListen::Unix(p) => format!("unix:{}{path}", p.display()),
    }
}

/// `channels list`.
pub(crate) fn list(kernel: &Kernel) -> Result<ControlResponse, RemoteError> {
    let rows = kernel.authority.channels.list().map_err(refused)?;
    let views = rows
        .iter()
        .map(|r| view(kernel, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ControlResponse::Channels(views))
}

/// `channels status NAME`.
pub(crate) fn status(kernel: &Kernel, name: &str) -> Result<ControlResponse, RemoteError> {
    let row = kernel.authority.channels.get(name).map_err(refused)?;
    Ok(ControlResponse::Channels(vec![view(kernel, &row)?]))
}

/// `channels remove NAME`.
pub(crate) async fn remove(
    kernel: &Kernel,
    cred: &UCred,
    io: &RequestIo,
    name: String,
) -> Result<ControlResponse, RemoteError> {
    let _one = LIFECYCLE.lock().await;
    let row = kernel.authority.channels.get(&name).map_err(refused)?;
    let shown = view(kernel, &row)?;
    // Its worker stops (drained) before its state goes.
    kernel
        .services
        .stop(
            crate::services::Service::Channel,
            &name,
            crate::services::DEFAULT_DRAIN,
        )
        .await;
    kernel.authority.channels.remove(&name).map_err(refused)?;
    if kernel
        .authority
        .tokens
        .revoke(&row.token_id)
        .map_err(internal)?
    {
        let detail = serde_json::json!({ "token": row.token_id, "channel": name });
        record(kernel, cred, io, Kind::TokenRevoked, detail).await?;
        crate::egress::authority_changed();
    }
    let store = store()?;
    for secret in &shown.secret_names {
        if store.remove(secret).is_ok() {
            let detail = serde_json::json!({ "name": secret, "channel": name });
            record(kernel, cred, io, Kind::SecretRemoved, detail).await?;
        }
    }
    crate::channel_status::forget(&name);
    crate::services::webhook::forget(&name);
    Ok(ControlResponse::Channels(vec![shown]))
}

/// The longest the turn runner waits before it looks at the inbox again when it was empty
/// (a new message wakes it at once: `ChannelStore::inbox_ready`; a channel past its turns a
/// minute is looked at again after this).
pub const TURN_POLL: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long a turn that found no free agent worker (or could not read its channel) waits
/// before its message is pending again (so a pool kept busy is not polled in a loop).
pub const BUSY_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(1000);

/// What `/start` and `/help` answer.
pub const HELP_TEXT: &str = "Send a message and the agent answers it here. /new starts a new conversation; /help shows this.";
/// What a chat is answered when its turn failed (the trail and the log say why; the chat
/// is told nothing of loongd's configuration).
pub const FAILED_TEXT: &str = "Sorry, this message could not be answered. Please try again later.";
/// What `/new` answers.
pub const NEW_TEXT: &str = "A new conversation begins.";

/// The session a chat's turns are kept in: per channel and chat (`tg.CHANNEL.CHAT`; a
/// session id is letters, digits, `_`, `-` and `.`).
pub fn session_of(kind: &str, channel: &str, chat: &str) -> String {
    let prefix = if kind == "feishu" { "feishu" } else { "tg" };
    format!("{prefix}.{channel}.{chat}")
}

/// The command a message is (`/start`, `/help`, `/new`; `/new@bot` too), if any.
pub fn command(text: &str) -> Option<&str> {
    let word = text.split_whitespace().next()?;
    let word = word.split('@').next().unwrap_or(word);
    ["/start", "/help", "/new"].into_iter().find(|c| *c == word)
}

/// The channels' turns: each pending inbox message, oldest first, becomes one agent turn
/// under its channel's token, and its answer goes to the outbox in the same transaction that
/// marks it answered. Turns of different chats run at once (at most `[channels]
/// max_turns_at_once`, and no more than the agent's pool serves beside an `ask`:
/// [`crate::config::Config::channel_turns_at_once`]; and `max_turns_at_once_per_channel` of one channel: the claim passes
/// over a channel at its bound and a chat whose turn runs), so a turn waiting for an
/// approval holds no other chat's, channel's or `loongctl ask`'s turn; a chat's turns run
/// one at a time, in order. Runs until loongd stops; the turns still running then are
/// dropped with it (their messages stay `running` and run again at the next start:
/// `ChannelStore::recover`).
pub(crate) async fn run_turns(kernel: std::sync::Arc<Kernel>) {
    let config = &kernel.config.channels;
    let limits = ClaimLimits {
        per_minute: config.turns_per_minute as usize,
        at_once: config.max_turns_at_once_per_channel as usize,
    };
    let at_once = kernel.config.channel_turns_at_once() as usize;
    let mut running = tokio::task::JoinSet::new();
    loop {
        if *kernel.shutdown.borrow() {
            return;
        }
        while running.try_join_next().is_some() {}
        if running.len() >= at_once {
            // Every slot is taken: the next one frees when a turn ends.
            let _ = running.join_next().await;
            continue;
        }
        match kernel.authority.channels.claim(limits) {
            Ok(Some(item)) => {
                let kernel = kernel.clone();
                running.spawn(async move { turn_for(&kernel, item).await });
            }
            Ok(None) => {
                // A new message, or a turn's end (its chat's next message may go now).
                tokio::select! {
                    () = kernel.authority.channels.inbox_ready.notified() => {}
                    Some(_) = running.join_next() => {}
                    () = tokio::time::sleep(TURN_POLL) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the channels' inbox");
                tokio::time::sleep(TURN_POLL).await;
            }
        }
    }
}

async fn turn_for(kernel: &Kernel, item: crate::authority::channels::InboxItem) {
    let store = &kernel.authority.channels;
    let row = match turn_start(store, &item) {
        Start::Run(row) => row,
        Start::Removed => return,
        Start::Retry => {
            // Held a moment, so that a failing state.db is not read in a loop.
            tokio::time::sleep(BUSY_RETRY_PAUSE).await;
            return;
        }
    };
    let session = session_of(&row.kind, &item.channel, &item.chat);
    let root = format!("channel-{}/msg-{}", item.channel, item.id);
    let mut end = TurnEnd {
        store,
        id: item.id,
        root: None,
        settled: false,
    };
    let answer = match command(&item.text) {
        Some("/new") => {
            if let Err(e) = kernel.authority.memory.clear(&session) {
                tracing::warn!(error = %e, "clearing a chat's session");
            }
            NEW_TEXT.to_owned()
        }
        Some(_) => HELP_TEXT.to_owned(),
        None => {
            // While it runs, an approval its tool calls wait for is offered to the
            // channel's operator chats (effects::approval).
            store.turn_started(&root, &item.channel);
            end.root = Some(root.clone());
            let answer = agent_turn(kernel, &row, &item, &root, session).await;
            store.turn_ended(&root);
            end.root = None;
            match answer {
                Some(answer) => answer,
                None => {
                    // No agent worker was free (gateway turns and asks held every one):
                    // the message was not answered and waits for its turn again.
                    end.settled = true;
                    tokio::time::sleep(BUSY_RETRY_PAUSE).await;
                    if let Err(e) = store.requeue(item.id) {
                        tracing::warn!(channel = %item.channel, error = %e, "putting back a message that found no agent worker");
                    }
                    return;
                }
            }
        }
    };
    end.settled = true;
    if !same_generation(kernel, &row, &item, &root).await {
        return;
    }
    settle(store, &item, &answer);
}

/// What a claimed message's turn starts with.
#[derive(Debug)]
enum Start {
    /// Its channel, as it is now.
    Run(ChannelRow),
    /// Its channel was removed: the message is ignored.
    Removed,
    /// Its channel could not be read (state.db failed to answer): the message is pending
    /// again, to be claimed later, not lost.
    Retry,
}

/// Reads `item`'s channel at its turn's start, settling the message when the turn cannot
/// run: ignored when the channel is gone, pending again when state.db failed.
fn turn_start(
    store: &crate::authority::channels::ChannelStore,
    item: &crate::authority::channels::InboxItem,
) -> Start {
    match store.get(&item.channel) {
        Ok(row) => Start::Run(row),
        Err(ChannelStoreError::NoSuchChannel(_)) => {
            if let Err(e) = store.ignore(item.id) {
                tracing::warn!(channel = %item.channel, error = %e, "ignoring a removed channel's message");
            }
            Start::Removed
        }
        Err(e) => {
            tracing::warn!(channel = %item.channel, error = %e, "reading a channel at its turn; its message waits for its turn again");
            if let Err(e) = store.requeue(item.id) {
                tracing::warn!(channel = %item.channel, error = %e, "putting back a message whose channel could not be read");
            }
            Start::Retry
        }
    }
}

/// What a channel turn's task leaves however it ends: its chain forgotten (offers,
/// approvals), and, when it panicked before its answer was settled, its message answered
/// with [`FAILED_TEXT`], as a failed turn's is. Left `running`, it would hold its chat's
/// every later message and a slot of its channel until loongd restarted (and run again,
/// and panic again, then). A turn dropped at loongd's stop leaves it running: it runs
/// again at the next start (`ChannelStore::recover`).
struct TurnEnd<'a> {
    store: &'a crate::authority::channels::ChannelStore,
    id: i64,
    root: Option<String>,
    settled: bool,
}

impl Drop for TurnEnd<'_> {
    fn drop(&mut self) {
        if let Some(root) = &self.root {
            self.store.turn_ended(root);
        }
        if !self.settled && std::thread::panicking() {
            if let Err(e) = self.store.answer(self.id, FAILED_TEXT) {
                tracing::warn!(error = %e, "settling the message of a turn that panicked");
            }
        }
    }
}

/// Settles `item` with `answer`, whatever the store says of it: a message left `running`
/// holds its chat's every later message (a chat's turns run one at a time) and a slot of its
/// channel (`max_turns_at_once_per_channel`) until loongd restarts, and runs again then. An
/// answer the outbox refuses for its size (a model or an agent worker taken over may answer
/// any length) is replaced by [`FAILED_TEXT`]; a commit that failed leaves the message to
/// run again now, as a restart would (pending).
fn settle(
    store: &crate::authority::channels::ChannelStore,
    item: &crate::authority::channels::InboxItem,
    answer: &str,
) {
    let refused = match store.answer(item.id, answer) {
        Ok(_) => return,
        Err(e @ ChannelStoreError::TextTooLarge { .. }) => {
            tracing::warn!(channel = %item.channel, error = %e, "a channel's answer is refused; the failure text is sent");
            match store.answer(item.id, FAILED_TEXT) {
                Ok(_) => return,
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    tracing::warn!(channel = %item.channel, error = %refused, "keeping a channel's answer; its message waits for its turn again");
    if let Err(e) = store.requeue(item.id) {
        tracing::warn!(channel = %item.channel, error = %e, "a message whose answer was not kept");
    }
}

/// The worker serving channel `name` now (0: none).
fn channel_worker(kernel: &Kernel, name: &str) -> u64 {
    kernel
        .services
        .state(crate::services::Service::Channel, name)
        .map_or(0, |s| s.worker.load(std::sync::atomic::Ordering::Relaxed))
}

/// One agent turn for `item` under the channel's token, in its chat's session; its answer,
/// or `None` when it could not run for the load (`Overloaded`: no agent worker became free
/// within the pool's queue deadline), so that the message is put back.
async fn agent_turn(
    kernel: &Kernel,
    row: &ChannelRow,
    item: &crate::authority::channels::InboxItem,
    root: &str,
    session: String,
) -> Option<String> {
    let actor = Actor {
        who: crate::effects::Principal::Worker {
            worker: channel_worker(kernel, &item.channel),
        },
        bearer: crate::authority::Bearer::Id(&row.token_id),
        chain: crate::effects::Chain::root(root.to_owned()),
        io: None,
    };
    let turn = super::agent_api::turn(
        kernel,
        &actor,
        Some(row.token_id.clone()),
        Some(session),
        item.text.clone(),
        // The answer's commit (`ChannelStore::answer`, synchronous) follows at once.
        super::agent_api::SessionCommit::CarriedByAnswer,
    )
    .await;
    match turn {
        Ok(asked) => Some(asked.answer),
        Err(e) if e.kind == loong_ipc::ErrorKind::Overloaded => {
            tracing::info!(channel = %item.channel, error = %e.message, "a channel's turn found no free agent worker; its message waits");
            None
        }
        Err(e) => {
            tracing::warn!(channel = %item.channel, error = %e.message, "a channel's turn failed");
            Some(FAILED_TEXT.to_owned())
        }
    }
}

/// Whether the channel still runs under the token generation `row` was read at. When it was
/// restarted during the turn, the turn's answer is refused: `channel.send` is decided under
/// the old token (recorded, denied: it is revoked) and the message waits for its turn again,
/// under the new generation.
async fn same_generation(
    kernel: &Kernel,
    row: &ChannelRow,
    item: &crate::authority::channels::InboxItem,
    root: &str,
) -> bool {
    let store = &kernel.authority.channels;
    let current = match store.get(&item.channel) {
        Ok(current) => current,
        // Removed meanwhile: nothing is sent.
        Err(_) => return true,
    };
    if current.token_id == row.token_id {
        return true;
    }
    let actor = Actor {
        who: crate::effects::Principal::Worker {
            worker: channel_worker(kernel, &item.channel),
        },
        bearer: crate::authority::Bearer::Id(&row.token_id),
        chain: crate::effects::Chain::root(root.to_owned()),
        io: None,
    };
    let cap = loong_profiles::pack::Capability::ChannelSend;
    match crate::effects::decide(kernel, &actor, cap, Some(&item.chat), None) {
        Ok((o, _)) => {
            let allowed = matches!(o.decision, Ok(crate::authority::Decision::Allow));
            let mut detail = crate::effects::decision_detail(&o, cap, Some(&item.chat), None);
            detail["channel"] = item.channel.clone().into();
            detail["channel_generation"] = row.generation.into();
            if allowed {
                // Not revoked (a token restored by hand): the answer is refused all the
                // same, as the generation it was made under is gone.
                detail["allowed"] = false.into();
                detail["reason"] = format!(
                    "channel {} was restarted under generation {} during this turn",
                    item.channel, current.generation
                )
                .into();
            }
            let event = actor.event(crate::audit::Kind::PolicyDecision, detail);
            let _ = crate::effects::record(kernel, event).await;
        }
        Err(e) => tracing::warn!(error = %e.message, "deciding an old generation's answer"),
    }
    if let Err(e) = store.requeue(item.id) {
        tracing::warn!(error = %e, "a message of an old generation's turn");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_that_panics_settles_its_message_and_one_dropped_at_the_stop_leaves_it() {
        use crate::authority::channels::{ChannelStore, Received};
        let dir = tempfile::tempdir().expect("dir");
        let store = ChannelStore::open(&dir.path().join("state.db")).expect("open");
        store
            .add(&ChannelRow {
                name: "tg".into(),
                kind: "telegram".into(),
                config_json: "{}".into(),
                token_id: "tok-1".into(),
                generation: 1,
            })
            .expect("add");
        let msg = |key: i64, chat: i64| Received {
            key: key.to_string(),
            chat: chat.to_string(),
            message_id: key.to_string(),
            thread: None,
            sender: "42".into(),
            text: "hi".into(),
            allowed: true,
        };
        store
            .receive("tg", Some(3), &[msg(1, 1), msg(2, 2)])
            .expect("receive");
        let limits = ClaimLimits {
            per_minute: 10,
            at_once: 10,
        };
        let first = store.claim(limits).expect("claim").expect("item");
        store.turn_started("root-1", "tg");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _end = TurnEnd {
                store: &store,
                id: first.id,
                root: Some("root-1".into()),
                settled: false,
            };
            panic!("a bug in a turn");
        }));
        assert!(panicked.is_err());
        assert_eq!(store.turn_channel("root-1"), None);
        // Settled: a second answer is refused as already settled.
        assert!(!store.answer(first.id, "late").expect("answer"));
        // Positive control: dropped without a panic (loongd's stop), it stays running.
        let second = store.claim(limits).expect("claim").expect("item");
        drop(TurnEnd {
            store: &store,
            id: second.id,
            root: None,
            settled: false,
        });
        assert_eq!(store.counts("tg").expect("counts").running, 1);
    }

    #[test]
    fn a_channel_unreadable_at_a_turns_start_leaves_its_message_pending_and_a_removed_one_ignored()
    {
        use crate::authority::channels::{ChannelStore, Received};
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("state.db");
        let store = ChannelStore::open(&db).expect("open");
        let row = |name: &str| ChannelRow {
            name: name.into(),
            kind: "telegram".into(),
            config_json: "{}".into(),
            token_id: "tok-1".into(),
            generation: 1,
        };
        store.add(&row("tg")).expect("add");
        let msg = |key: i64| Received {
            key: key.to_string(),
            chat: "1".into(),
            message_id: key.to_string(),
            thread: None,
            sender: "42".into(),
            text: "hi".into(),
            allowed: true,
        };
        store.receive("tg", Some(3), &[msg(1)]).expect("receive");
        let limits = ClaimLimits {
            per_minute: 10,
            at_once: 10,
        };
        // Positive control: a readable channel runs its turn.
        let item = store.claim(limits).expect("claim").expect("item");
        assert!(matches!(turn_start(&store, &item), Start::Run(r) if r.name == "tg"));
        // state.db fails to answer the channel's read (its table is gone for a moment):
        // the message is pending again, not ignored.
        let other = rusqlite::Connection::open(&db).expect("second connection");
        other
            .execute_batch("ALTER TABLE channels RENAME TO channels_away")
            .expect("rename");
        assert!(matches!(turn_start(&store, &item), Start::Retry));
        other
            .execute_batch("ALTER TABLE channels_away RENAME TO channels")
            .expect("rename back");
        let counts = store.counts("tg").expect("counts");
        assert_eq!((counts.pending, counts.ignored), (1, 0));
        // Claimed again later, it runs.
        let again = store.claim(limits).expect("claim").expect("item again");
        assert_eq!(again.id, item.id);
        // Removed: the message is ignored.
        store.remove("tg").expect("remove");
        assert!(matches!(turn_start(&store, &again), Start::Removed));
        assert!(!store.requeue(again.id).expect("requeue"), "left running");
    }

    #[test]
    fn api_bases_are_checked_and_bound() {
        for (base, want) in [
            (
                "https://api.telegram.org",
                ("https://api.telegram.org", "api.telegram.org"),
            ),
            (
                "https://API.telegram.org/",
                ("https://api.telegram.org", "api.telegram.org"),
            ),
            (
                "https://open.larksuite.com:8443",
                ("https://open.larksuite.com:8443", "open.larksuite.com:8443"),
            ),
            (
                "http://127.0.0.1:8081",
                ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
            ),
            (
                "http://[::1]:8081",
                ("http://[::1]:8081", "http://[::1]:8081"),
            ),
        ] {
            let got = parse_api_base(base).expect(base);
            assert_eq!((got.0.as_str(), got.1.as_str()), want, "{base}");
        }
        for bad in [
            "api.telegram.org",
            "ftp://x",
            "http://127.0.0.1",
            "https://x/path",
            "https://user@x",
            "https://x?q",
            "https://",
            "https://x:0",
            "https://x:99999",
            "https://x y",
        ] {
            assert!(parse_api_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_and_sessions() {
        assert_eq!(command("/new"), Some("/new"));
        assert_eq!(command("  /help please"), Some("/help"));
        assert_eq!(command("/start@loong_bot"), Some("/start"));
        for not in ["hello", "/newer", "new", "", "please /new"] {
            assert_eq!(command(not), None, "{not}");
        }
        assert_eq!(session_of("telegram", "ops", "-100"), "tg.ops.-100");
        assert_eq!(session_of("feishu", "lark", "oc_1"), "feishu.lark.oc_1");
    }

    #[test]
    fn names_and_requests_are_checked() {
        assert!(valid_name("ops-bot_1"));
        for bad in ["", "a b", "a/b", "a.b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        let req = |kind, app_id: Option<&str>, roles: &[&str]| ChannelAddRequest {
            name: "c".into(),
            kind,
            api_base: None,
            allowed_chats: vec!["-100123".into()],
            operator_chats: vec![],
            app_id: app_id.map(str::to_owned),
            secrets: roles
                .iter()
                .map(|r| ((*r).to_owned(), SecretValue::new("v")))
                .collect(),
            pack: None,
        };
        let telegram = req(ChannelKind::Telegram, None, &["bot_token"]);
        let (config, secrets) = plan(&telegram).expect("telegram");
        assert_eq!(config.secret_host, "api.telegram.org");
        assert_eq!(secrets[0].0, "channel.c.bot_token");
        plan(&req(
            ChannelKind::Feishu,
            Some("cli_a1"),
            &["app_secret", "encrypt_key", "verification_token"],
        ))
        .expect("feishu");
        for bad in [
            req(ChannelKind::Telegram, None, &[]),
            req(ChannelKind::Telegram, Some("cli_a"), &["bot_token"]),
            req(ChannelKind::Telegram, None, &["bot_token", "app_secret"]),
            req(
                ChannelKind::Feishu,
                None,
                &["app_secret", "encrypt_key", "verification_token"],
            ),
            req(
                ChannelKind::Feishu,
                Some("cli_a"),
                &["app_secret", "encrypt_key"],
            ),
            req(
                ChannelKind::Feishu,
                Some("a/b"),
                &["app_secret", "encrypt_key", "verification_token"],
            ),
        ] {
            assert!(plan(&bad).is_err(), "{bad:?}");
        }
        let mut chats = req(ChannelKind::Telegram, None, &["bot_token"]);
        chats.allowed_chats = vec!["1; drop".into()];
        assert!(plan(&chats).is_err());
    }
}
