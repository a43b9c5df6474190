//! Every bound the provider clients and the loop keep, as named constants.
//!
//! The per-provider timeouts and retry counts are defaults that `[providers.NAME]` may change
//! within the `MAX_*` ceilings; the stream sizes are fixed.

use std::time::Duration;

/// The longest SSE line accepted (bytes, without its terminator).
pub const MAX_SSE_LINE_BYTES: usize = 1 << 20;
/// The largest SSE event accepted (its `data` lines joined, bytes).
pub const MAX_SSE_EVENT_BYTES: usize = 4 << 20;
/// The most bytes one answer's stream may carry.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;
/// The most bytes of an error response's body kept for the error message.
pub const MAX_ERROR_BODY_BYTES: usize = 8 << 10;
/// The most tool calls one answer may ask for.
pub const MAX_TOOL_CALLS_PER_ANSWER: usize = 64;
/// The most bytes of one tool result handed back to the model; the rest is cut with a note.
pub const MAX_TOOL_RESULT_BYTES: usize = 256 << 10;

/// Time allowed to open a connection (TCP and TLS) to the provider or its proxy.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed between two reads of an answer (and before the response head).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for one whole answer, from the request to its last byte.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// The ceiling any configured timeout is held under.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Attempts per request (the first and its retries) on 429, 5xx and connection failures.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// The ceiling of `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;
/// The first backoff; each retry doubles it, up to [`DEFAULT_BACKOFF_CAP`], with jitter.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest backoff between two attempts.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(20);
/// The longest `Retry-After` honoured; a provider asking for more is an error at once (so a
/// fallback provider can answer instead).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Model round trips per turn, by default (`[agent] max_steps`).
pub const DEFAULT_MAX_STEPS: u32 = 16;
/// The ceiling of `max_steps`.
pub const MAX_STEPS_LIMIT: u32 = 256;
/// Wall-clock time of one turn, by default (`[agent] turn_budget_secs`).
pub const DEFAULT_TURN_BUDGET: Duration = Duration::from_secs(300);
/// `max_tokens` sent to the provider, by default (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The ceiling of `max_tokens`.
pub const MAX_TOKENS_LIMIT: u32 = 1 << 20;
/// The longest system prompt (inline or from its file).
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 256 << 10;

/// The most tools offered to the model at once, by default (`[agent] max_offered_tools`);
/// past it the model is offered `tool_search` and the tools it finds.
pub const DEFAULT_MAX_OFFERED_TOOLS: u32 = 32;
/// The floor of `max_offered_tools`: `tool_search` and one tool it found.
pub const MIN_OFFERED_TOOLS: u32 = 2;
/// The ceiling of `max_offered_tools`.
pub const MAX_OFFERED_TOOLS_LIMIT: u32 = 256;
/// The tools most relevant to the user's message offered beside `tool_search` from the start.
pub const SEARCH_PRELOADED_TOOLS: usize = 4;
/// The most tools one `tool_search` call returns (and loads).
pub const SEARCH_RESULTS: usize = 5;
/// The longest `tool_search` query read (bytes; the rest is ignored).
pub const MAX_SEARCH_QUERY_BYTES: usize = 1024;
/// The longest rolling summary kept (bytes; a longer answer is cut on a character).
pub const MAX_SUMMARY_BYTES: usize = 16 << 10;
/// The most bytes of one message shown in the transcript a summary is made from.
pub const MAX_FOLD_MESSAGE_BYTES: usize = 4 << 10;
