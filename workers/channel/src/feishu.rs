//! Feishu/Lark: the event webhook (URL verification, signatures, AES-256-CBC payloads,
//! `im.message.receive_v1`) and the open API client (`tenant_access_token`, replies through
//! `im/v1/messages`).
//!
//! An event request is judged by [`Webhook::judge`] the way the platform's own SDK
//! (`lark-oapi`) judges it, with two tightenings: an encrypt key is required (so every event
//! is signed), and the signature's timestamp must be within [`FEISHU_TIMESTAMP_WINDOW`] of
//! the worker's clock. The order matters: a body `{"encrypt": ...}` is decrypted first (key
//! = SHA-256 of the encrypt key, IV = the first 16 bytes, PKCS#7); a `url_verification`
//! (plain or encrypted) is answered with its challenge once its verification token matches,
//! and is not signed by the platform, so no signature is asked of it; every other event
//! must carry `X-Lark-Signature` = hex SHA-256 of timestamp + nonce + encrypt key + the raw
//! body, compared in constant time, and a matching verification token. Replayed event ids
//! are refused by loongd (its table of seen ids), not here.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{printable, ChannelError};
use crate::http::{self, read_bounded};
use crate::limits::{
    FEISHU_MAX_MESSAGE_UNITS, FEISHU_MAX_TOKEN_LIFE, FEISHU_TIMESTAMP_WINDOW,
    FEISHU_TOKEN_REFRESH_MARGIN, MAX_DESCRIPTION_CHARS, MAX_EVENT_BYTES, MAX_MESSAGE_PARTS,
    MAX_RESPONSE_BYTES, REQUEST_GRACE,
};

/// Feishu's open API host (Lark's is `https://open.larksuite.com`).
pub const DEFAULT_API_BASE: &str = "https://open.feishu.cn";
/// The event type of a received message.
pub const MESSAGE_RECEIVED: &str = "im.message.receive_v1";
/// The open API codes that mean the tenant access token is no longer valid.
const TOKEN_INVALID_CODES: &[i64] = &[99_991_661, 99_991_663, 99_991_668];

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// The signature headers of an event request (`X-Lark-Request-Timestamp`,
/// `X-Lark-Request-Nonce`, `X-Lark-Signature`).
#[derive(Debug, Clone, Default)]
pub struct SignatureHeaders {
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub signature: Option<String>,
}

/// The hex SHA-256 of `timestamp + nonce + encrypt_key + body`.
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(encrypt_key.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

/// Checks `headers` sign `body` with `encrypt_key`, at a timestamp within the window of `now`.
pub fn verify_signature(
    headers: &SignatureHeaders,
    encrypt_key: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(), ChannelError> {
    let (Some(ts), Some(nonce), Some(sig)) = (
        headers.timestamp.as_deref(),
        headers.nonce.as_deref(),
        headers.signature.as_deref(),
    ) else {
        return Err(ChannelError::BadSignature);
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let fresh = ts
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) <= FEISHU_TIMESTAMP_WINDOW.as_secs());
    if !fresh {
        return Err(ChannelError::StaleTimestamp {
            timestamp: printable(ts, 40),
            window: FEISHU_TIMESTAMP_WINDOW,
        });
    }
    let want = signature(ts, nonce, encrypt_key, body);
    if bool::from(want.as_bytes().ct_eq(sig.to_ascii_lowercase().as_bytes())) {
        Ok(())
    } else {
        Err(ChannelError::BadSignature)
    }
}

fn cipher_key(encrypt_key: &str) -> [u8; 32] {
    Sha256::digest(encrypt_key.as_bytes()).into()
}

/// Decrypts an `encrypt` field: base64 of IV (16 bytes) + AES-256-CBC ciphertext.
pub fn decrypt(encrypt_key: &str, encrypted: &str) -> Result<Vec<u8>, ChannelError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encrypted.trim())
        .map_err(|_| ChannelError::Decrypt("not base64"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(ChannelError::Decrypt(
            "not a whole number of AES blocks after the IV",
        ));
    }
    let (iv, data) = raw.split_at(16);
    let key = cipher_key(encrypt_key);
    Aes256CbcDec::new(&key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(data)
        .map_err(|_| ChannelError::Decrypt("bad padding (a wrong key?)"))
}

/// Encrypts `plain` as the platform does, with `iv` (for tests and the SDK cross-check).
pub fn encrypt(encrypt_key: &str, iv: [u8; 16], plain: &[u8]) -> String {
    let key = cipher_key(encrypt_key);
    let mut out = iv.to_vec();
    out.extend(Aes256CbcEnc::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain));
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// A received message, as a channel takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub event_id: String,
    pub chat_id: String,
    pub chat_type: String,
    pub message_id: String,
    pub sender_open_id: String,
    /// The text of a `text` message; `None` for other message types.
    pub text: Option<String>,
}

/// What an event request comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// A URL verification: answer `{"challenge": ...}`.
    Challenge(String),
    /// A received message, signed and decrypted.
    Message(ReceivedMessage),
    /// A signed event of another type (acknowledged, not taken).
    Other {
        event_id: String,
        event_type: String,
    },
}

impl Judged {
    /// The response body the platform expects.
    pub fn response_body(&self) -> Vec<u8> {
        match self {
            Self::Challenge(c) => json!({ "challenge": c }).to_string().into_bytes(),
            _ => br#"{"msg":"success"}"#.to_vec(),
        }
    }
}

/// The webhook's secrets.
pub struct Webhook {
    encrypt_key: String,
    verification_token: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct EventHeader {
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct MessageEvent {
    sender: Sender,
    message: EventMessage,
}

#[derive(Deserialize)]
struct Sender {
    sender_id: SenderId,
}

#[derive(Deserialize)]
struct SenderId {
    #[serde(default)]
    open_id: String,
}

#[derive(Deserialize)]
struct EventMessage {
    message_id: String,
    chat_id: String,
    #[serde(default)]
    chat_type: String,
    #[serde(default)]
    message_type: String,
    #[serde(default)]
    content: String,
}

fn malformed(reason: impl Into<String>) -> ChannelError {
    ChannelError::Malformed {
        what: "feishu event",
        reason: reason.into(),
    }
}

impl Webhook {
    /// The webhook of an app with these secrets (both required, non-empty).
    pub fn new(encrypt_key: &str, verification_token: &str) -> Result<Self, ChannelError> {
        if encrypt_key.is_empty() {
            return Err(ChannelError::NoEncryptKey);
        }
        if verification_token.is_empty() {
            return Err(ChannelError::BadToken);
        }
        Ok(Self {
            encrypt_key: encrypt_key.to_owned(),
            verification_token: verification_token.to_owned(),
        })
    }

    fn token_matches(&self, token: Option<&str>) -> Result<(), ChannelError> {
        let token = token.unwrap_or_default();
        if bool::from(token.as_bytes().ct_eq(self.verification_token.as_bytes())) {
            Ok(())
        } else {
            Err(ChannelError::BadToken)
        }
    }

    /// The challenge of a `url_verification` whose verification token matches.
    fn challenge(&self, plain: &Value) -> Result<String, ChannelError> {
        if plain.get("type").and_then(Value::as_str) != Some("url_verification") {
            return Err(malformed("not a url_verification"));
        }
        self.token_matches(plain.get("token").and_then(Value::as_str))?;
        plain
            .get("challenge")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed("url_verification without a challenge"))
    }

    /// Judges one event request (`headers`, raw `body`) received at `now`.
    pub fn judge(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Judged, ChannelError> {
        if body.len() > MAX_EVENT_BYTES {
            return Err(ChannelError::TooLarge {
                what: "feishu event",
                limit: MAX_EVENT_BYTES,
            });
        }
        let outer: Value = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        // The signature is judged before anything is decrypted: what an unsigned encrypted
        // body decrypts to must not change the answer (a padding oracle would decrypt
        // captured events byte by byte).
        let signed = verify_signature(headers, &self.encrypt_key, body, now);
        let plain = match outer.get("encrypt") {
            Some(Value::String(enc)) => {
                let opened = decrypt(&self.encrypt_key, enc).and_then(|bytes| {
                    serde_json::from_slice::<Value>(&bytes).map_err(|e| malformed(e.to_string()))
                });
                match (&signed, opened) {
                    (Ok(()), opened) => opened?,
                    // Unsigned: a url verification with the right token, or refused with the
                    // signature's error whatever the decryption found.
                    (Err(_), opened) => {
                        let challenge = opened.ok().and_then(|p| self.challenge(&p).ok());
                        return match (challenge, signed) {
                            (Some(c), _) => Ok(Judged::Challenge(c)),
                            (None, Err(e)) => Err(e),
                            (None, Ok(())) => Err(ChannelError::BadSignature),
                        };
                    }
                }
            }
            Some(_) => return Err(malformed("encrypt is not a string")),
            None => outer,
        };
        if plain.get("type").and_then(Value::as_str) == Some("url_verification") {
            return self.challenge(&plain).map(Judged::Challenge);
        }
        signed?;
        if plain.get("schema").and_then(Value::as_str) != Some("2.0") {
            return Err(malformed(
                "not a schema 2.0 event (subscribe to v2.0 events)",
            ));
        }
        let header: EventHeader = plain
            .get("header")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| malformed(format!("header: {e}")))?
            .ok_or_else(|| malformed("no header"))?;
        self.token_matches(header.token.as_deref())?;
        if header.event_id.is_empty() {
            return Err(malformed("no event_id"));
        }
        if header.event_type != MESSAGE_RECEIVED {
            return Ok(Judged::Other {
                event_id: header.event_id,
                event_type: printable(&header.event_type, 80),
            });
        }
        let event: MessageEvent = plain
            .get("event")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| malformed(format!("event: {e}")))?
            .ok_or_else(|| malformed("no event"))?;
        let text = (event.message.message_type == "text")
            .then(|| {
                serde_json::from_str::<Value>(&event.message.content)
                    .ok()
                    .and_then(|c| c.get("text").and_then(Value::as_str).map(str::to_owned))
            })
            .flatten();
        Ok(Judged::Message(ReceivedMessage {
            event_id: header.event_id,
            chat_id: event.message.chat_id,
            chat_type: event.message.chat_type,
            message_id: event.message.message_id,
            sender_open_id: event.sender.sender_id.open_id,
            text,
        }))
    }
}

/// When a token that lives `expire` from `fetched` is refreshed: `FEISHU_TOKEN_REFRESH_MARGIN`
/// before it expires, or half way through a shorter life; a life past
/// `FEISHU_MAX_TOKEN_LIFE` is taken as that.
pub fn refresh_at(fetched: Instant, expire: Duration) -> Instant {
    let expire = expire.min(FEISHU_MAX_TOKEN_LIFE);
    let life = expire - FEISHU_TOKEN_REFRESH_MARGIN.min(expire / 2);
    fetched.checked_add(life).unwrap_or(fetched)
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct ApiAnswer {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    tenant_access_token: Option<String>,
    #[serde(default)]
    expire: Option<u64>,
}

/// The open API client of one app.
pub struct Feishu {
    client: reqwest::Client,
    base: String,
    app_id: String,
    app_secret: String,
    token: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for Feishu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feishu")
            .field("base", &self.base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

fn api_error(method: &'static str, status: u16, answer: &ApiAnswer) -> ChannelError {
    ChannelError::Api {
        method,
        status,
        description: format!(
            "code {}: {}",
            answer.code,
            printable(&answer.msg, MAX_DESCRIPTION_CHARS)
        ),
    }
}

impl Feishu {
    /// A client for the app `app_id` at `api_base`.
    pub fn new(api_base: &str, app_id: &str, app_secret: &str) -> Result<Self, ChannelError> {
        let base = http::base_url(api_base, "feishu api base")?;
        Ok(Self {
            client: http::client(REQUEST_GRACE, &base)?,
            base,
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
            token: Mutex::new(None),
        })
    }

    async fn post(
        &self,
        method: &'static str,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> Result<(u16, ApiAnswer), ChannelError> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let response = req.send().await.map_err(|e| ChannelError::Http {
            method,
            source: e.without_url(),
        })?;
        let status = response.status().as_u16();
        if status == 429 && response.headers().contains_key(http::PROXY_STATUS) {
            return Err(ChannelError::BrokerRefused { method });
        }
        if status == 429 {
            return Err(ChannelError::RateLimited {
                method,
                retry_after: crate::limits::BACKOFF_START,
            });
        }
        let bytes = read_bounded(response, MAX_RESPONSE_BYTES, method).await?;
        let answer: ApiAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            if (200..300).contains(&status) {
                ChannelError::Malformed {
                    what: method,
                    reason: e.to_string(),
                }
            } else {
                ChannelError::Api {
                    method,
                    status,
                    description: printable(&String::from_utf8_lossy(&bytes), MAX_DESCRIPTION_CHARS),
                }
            }
        })?;
        Ok((status, answer))
    }

    /// A tenant access token: the cached one until its refresh time, else a fresh one.
    pub async fn tenant_token(&self) -> Result<String, ChannelError> {
        let now = Instant::now();
        if let Some(c) = self.cached() {
            if now < c.refresh_at {
                return Ok(c.token);
            }
        }
        let (status, answer) = self
            .post(
                "tenant_access_token",
                "/open-apis/auth/v3/tenant_access_token/internal",
                None,
                &json!({"app_id": self.app_id, "app_secret": self.app_secret}),
            )
            .await?;
        let (0, Some(token), Some(expire)) =
            (answer.code, &answer.tenant_access_token, answer.expire)
        else {
            return Err(api_error("tenant_access_token", status, &answer));
        };
        let cached = Cached {
            token: token.clone(),
            refresh_at: refresh_at(now, Duration::from_secs(expire)),
        };
        if let Ok(mut slot) = self.token.lock() {
            *slot = Some(cached);
        }
        Ok(token.clone())
    }

    fn cached(&self) -> Option<Cached> {
        self.token.lock().ok().and_then(|s| s.clone())
    }

    fn forget_token(&self) {
        if let Ok(mut slot) = self.token.lock() {
            *slot = None;
        }
    }

    /// Replies `text` to the message `message_id` (split into parts); returns the sent ids. A
    /// token the platform calls invalid is fetched again once.
    pub async fn reply(&self, message_id: &str, text: &str) -> Result<Vec<String>, ChannelError> {
        let mut sent = Vec::new();
        self.reply_parts(message_id, &self.parts(text), &mut sent)
            .await?;
        Ok(sent)
    }

    /// `text` cut into the parts [`Feishu::reply_parts`] sends.
    pub fn parts(&self, text: &str) -> Vec<String> {
        crate::text::split(text, FEISHU_MAX_MESSAGE_UNITS, MAX_MESSAGE_PARTS)
    }

    /// Replies the `parts` of an answer not sent yet (those past `sent.len()`) to the message
    /// `message_id`, pushing each sent message's id to `sent` as the platform takes it: a
    /// reply cut short (a failure, a refusal) is resumed at the part that did not go out, so
    /// no part reaches the chat twice (as Telegram's `send_parts`). A token the platform
    /// calls invalid is fetched again once a part.
    pub async fn reply_parts(
        &self,
        message_id: &str,
        parts: &[String],
        sent: &mut Vec<String>,
    ) -> Result<(), ChannelError> {
        if message_id.is_empty()
            || !message_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(malformed("a message id of letters, digits, _ and -"));
        }
        let path = format!("/open-apis/im/v1/messages/{message_id}/reply");
        for part in parts.iter().skip(sent.len()) {
            let body = json!({
                "msg_type": "text",
                "content": json!({ "text": part }).to_string(),
            });
            let mut retried = false;
            loop {
                let token = self.tenant_token().await?;
                let (status, answer) = self
                    .post("im/v1/messages", &path, Some(&token), &body)
                    .await?;
                if answer.code == 0 {
                    sent.push(
                        answer
                            .data
                            .as_ref()
                            .and_then(|d| d.get("message_id"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    );
                    break;
                }
                if TOKEN_INVALID_CODES.contains(&answer.code) && !retried {
                    self.forget_token();
                    retried = true;
                    continue;
                }
                return Err(api_error("im/v1/messages", status, &answer));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
