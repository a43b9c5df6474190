//! The bounds of the channel worker, each a named constant.

use std::time::Duration;

/// The largest platform response body read, in bytes (a `getUpdates` answer of 100 updates
/// with long texts is well under it); past it the response is refused.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// The largest Feishu event request body accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// The longest text one Telegram message carries, in characters as the Bot API counts them
/// (UTF-16 code units).
pub const TELEGRAM_MAX_MESSAGE_UNITS: usize = 4096;
/// The longest text one Feishu message carries here, in UTF-16 code units (the platform's
/// limit is on the request body, 150 KB; a chat answer is split well below it).
pub const FEISHU_MAX_MESSAGE_UNITS: usize = 8000;
/// The most parts one answer is split into; the rest is cut with a note.
pub const MAX_MESSAGE_PARTS: usize = 20;
/// The most updates one `getUpdates` asks for (the Bot API's own maximum).
pub const TELEGRAM_MAX_UPDATES: u32 = 100;
/// The long-poll wait passed to `getUpdates`, in seconds.
pub const TELEGRAM_POLL_TIMEOUT_SECS: u32 = 25;
/// How long a request may take beyond the long-poll wait before it is abandoned.
pub const REQUEST_GRACE: Duration = Duration::from_secs(10);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a `409 Conflict` (or another failed poll); doubled each time.
pub const BACKOFF_START: Duration = Duration::from_secs(2);
/// The first wait after loongd's egress broker refused a request for the sandbox's connection
/// rate (its own `429`, marked `Proxy-Status`; not the platform's); doubled while it keeps
/// refusing. Its bucket gives a connection back every `1 / [egress] connections_per_second`
/// (20 ms by default): the platform's back-off ([`BACKOFF_START`]) held a message 2 s for a
/// refusal that was over in milliseconds.
pub const BROKER_RETRY_START: Duration = Duration::from_millis(100);
/// The longest wait between two polls while they keep failing.
pub const BACKOFF_CAP: Duration = Duration::from_secs(120);
/// The longest `retry_after` honoured; a larger one is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// The most characters of a platform's error description kept in an error.
pub const MAX_DESCRIPTION_CHARS: usize = 200;
/// How far a Feishu request's timestamp may be from the worker's clock.
pub const FEISHU_TIMESTAMP_WINDOW: Duration = Duration::from_secs(300);
/// How long before its expiry a tenant access token is refreshed (at most half its life).
pub const FEISHU_TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);
/// The longest a tenant access token is taken to live, whatever `expire` the platform gives
/// (its tokens live 2 hours): a hostile or broken host's `expire` near `u64::MAX` overflowed
/// the refresh time and panicked the send loop, and a very long one kept a token for good.
pub const FEISHU_MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);
/// The largest `update_id` taken: the Bot API documents it without the note it gives ids
/// past 32 bits, and the offset past a larger (hostile) one would never come back down.
pub const MAX_UPDATE_ID: i64 = i32::MAX as i64;
/// The longest text handed to loongd (its `MAX_CHANNEL_TEXT_BYTES`; the worker binary
/// checks the two agree): a longer one would fail the whole batch.
pub const MAX_HANDED_TEXT_BYTES: usize = 64 * 1024;

/// The longest button data handed to loongd (its `MAX_PRESS_DATA_BYTES`, the Bot API's
/// `callback_data` bound; the worker binary checks the two agree): a press with longer data
/// is not one of loongd's buttons, and is answered without asking.
pub const MAX_HANDED_PRESS_DATA_BYTES: usize = 64;
/// The longest id handed to loongd (its `MAX_CHANNEL_ID_BYTES`).
pub const MAX_HANDED_ID_BYTES: usize = 128;
