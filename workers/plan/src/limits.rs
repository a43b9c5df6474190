//! Every bound the interpreter enforces, as named constants.
//!
//! A plan is untrusted data: each of its variable-size parts, each number that schedules
//! work or time, and each value it builds has a ceiling here. A plan over a ceiling is
//! refused before any kernel call, with an error naming the field and the bound.

/// The largest plan accepted, in bytes of JSON (the same bound as a tool call's input).
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;
/// The deepest nesting of arrays and objects in a plan, counted before it is parsed.
pub const MAX_PLAN_DEPTH: usize = 32;
/// The most steps in one plan.
pub const MAX_STEPS: usize = 256;
/// The most calls in one `connector_batch` step.
pub const MAX_BATCH_CALLS: usize = 64;
/// The highest `max_calls` a plan may ask for (connector calls, not attempts).
pub const MAX_PLAN_CALLS: usize = 256;
/// The longest step id or call id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// The longest connector (tool) name, in bytes.
pub const MAX_CONNECTOR_BYTES: usize = 128;
/// The longest `caller`, `operation` or capability name, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// The most entries in `allowed_connectors`, `connector_rate_limits`,
/// `connector_circuit_breakers` and a call's `required_capabilities`, each.
pub const MAX_POLICY_ENTRIES: usize = 64;
/// The longest JSON pointer, in bytes.
pub const MAX_POINTER_BYTES: usize = 512;
/// The longest expression between `{{` and `}}`, in bytes.
pub const MAX_TEMPLATE_EXPR_BYTES: usize = 600;
/// The most placeholders in one plan, over all its payloads and branches.
pub const MAX_TEMPLATES: usize = 4096;
/// The largest value a step may produce or a call may send, in bytes of JSON (a resolved
/// payload, a tool's answer, a conditional's branch).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The most bytes of step outputs one run keeps at once.
pub const MAX_RETAINED_BYTES: usize = 8 * 1024 * 1024;
/// The largest answer, in bytes of JSON (the same bound as a tool call's output).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The most attempts of one call (`retry.max_attempts`).
pub const MAX_ATTEMPTS: usize = 10;
/// The longest single backoff (`retry.max_backoff_ms`).
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// The longest `min_interval_ms` of a rate limit.
pub const MAX_MIN_INTERVAL_MS: u64 = 60_000;
/// The longest breaker `cooldown_ms`.
pub const MAX_COOLDOWN_MS: u64 = 10 * 60_000;
/// The highest count a policy may name: a breaker's `failure_threshold`,
/// `half_open_max_calls` and `success_threshold`, and `adaptive_recovery_successes`.
pub const MAX_COUNT: usize = 1_000;
/// The highest `concurrency.max_in_flight`: kernel calls one plan has in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// The highest fairness weight and adaptive step or recovery count.
pub const MAX_WEIGHT: usize = 64;
/// The wall time a run gets when its runner names none.
pub const DEFAULT_WALL_TIME_MS: u64 = 60_000;
/// The longest wall time a runner may give one run.
pub const MAX_WALL_TIME_MS: u64 = 15 * 60_000;
