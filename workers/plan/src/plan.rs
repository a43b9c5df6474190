//! The plan: public Loong's `programmatic_tool_call` operation, field for field.
//!
//! Every field name, default and step kind is upstream's (`crates/spec/src/spec_runtime.rs`),
//! so an upstream `operation` object is accepted as is, `"kind": "programmatic_tool_call"`
//! included. Where upstream ignores an unknown field, this parser refuses it
//! (`deny_unknown_fields` on every struct): a misspelt `max_attempts` must not silently
//! become the default. Values are checked against [`crate::limits`] by
//! [`crate::validate`], not here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A whole plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Upstream's operation tag; optional here, and only this value is accepted.
    #[serde(default)]
    pub kind: Option<PlanKind>,
    /// Who the plan says it runs for; copied into every call's `_loong.caller`. A claim of
    /// the plan, not an identity: the kernel's audit chain says who really asked.
    pub caller: String,
    /// The most connector calls the plan makes (retries of one call count once).
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Whether the answer carries every step's output and a trace of the steps.
    #[serde(default)]
    pub include_intermediate: bool,
    /// When not empty, the only connectors the plan may call.
    #[serde(default)]
    pub allowed_connectors: BTreeSet<String>,
    /// Per connector: the least time between the starts of two of its calls.
    #[serde(default)]
    pub connector_rate_limits: BTreeMap<String, RateLimit>,
    /// Per connector: a circuit breaker.
    #[serde(default)]
    pub connector_circuit_breakers: BTreeMap<String, BreakerPolicy>,
    /// How batches schedule their calls.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// The step whose output is the answer's `result`; the last step when absent.
    #[serde(default)]
    pub return_step: Option<String>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
}

/// The only operation tag a plan may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    /// `"programmatic_tool_call"`.
    ProgrammaticToolCall,
}

/// One step. Its output is kept under its `step_id` for later steps to read.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Outputs `value` as is (templates in it are not resolved, as upstream).
    SetLiteral { step_id: String, value: Value },
    /// Outputs the part of an earlier step's output at `pointer` (RFC 6901; a missing
    /// leading `/` is added, and the empty pointer is the whole output).
    JsonPointer {
        step_id: String,
        from_step: String,
        pointer: String,
    },
    /// One kernel call of `connector_name` with `payload` (templates resolved, `_loong`
    /// provenance written).
    ConnectorCall {
        step_id: String,
        connector_name: String,
        /// Upstream's connector operation; passed to the tool as `_loong.operation`.
        #[serde(default)]
        operation: Option<String>,
        /// Upstream's capability list; accepted and ignored (the kernel decides).
        #[serde(default)]
        required_capabilities: Vec<String>,
        #[serde(default)]
        retry: Option<RetryPolicy>,
        #[serde(default)]
        priority_class: PriorityClass,
        #[serde(default)]
        payload: Value,
    },
    /// Several calls, in parallel (bounded by [`Concurrency`]) or one after another.
    ConnectorBatch {
        step_id: String,
        #[serde(default = "yes")]
        parallel: bool,
        /// Whether a failed call is reported in the output instead of failing the step.
        #[serde(default)]
        continue_on_error: bool,
        calls: Vec<BatchCall>,
    },
    /// Tests an earlier step's output and outputs `when_true` or `when_false` (templates
    /// resolved); both predicates, when given, must hold.
    Conditional {
        step_id: String,
        from_step: String,
        #[serde(default)]
        pointer: Option<String>,
        #[serde(default)]
        equals: Option<Value>,
        #[serde(default)]
        exists: Option<bool>,
        when_true: Value,
        #[serde(default)]
        when_false: Option<Value>,
    },
}

impl Step {
    /// The step's id.
    pub fn id(&self) -> &str {
        match self {
            Step::SetLiteral { step_id, .. }
            | Step::JsonPointer { step_id, .. }
            | Step::ConnectorCall { step_id, .. }
            | Step::ConnectorBatch { step_id, .. }
            | Step::Conditional { step_id, .. } => step_id,
        }
    }

    /// The step's kind.
    pub fn kind(&self) -> StepKind {
        match self {
            Step::SetLiteral { .. } => StepKind::SetLiteral,
            Step::JsonPointer { .. } => StepKind::JsonPointer,
            Step::ConnectorCall { .. } => StepKind::ConnectorCall,
            Step::ConnectorBatch { .. } => StepKind::ConnectorBatch,
            Step::Conditional { .. } => StepKind::Conditional,
        }
    }
}

/// The kinds of [`Step`], as they are spelt in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    SetLiteral,
    JsonPointer,
    ConnectorCall,
    ConnectorBatch,
    Conditional,
}

/// One call of a `connector_batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCall {
    /// Unique within its batch; names the call in the output's `by_call`.
    pub call_id: String,
    pub connector_name: String,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub priority_class: PriorityClass,
    #[serde(default)]
    pub payload: Value,
}

/// How a failed call is tried again. Only failures the kernel classes as retryable are
/// ([`crate::CallError::retryable`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    #[serde(default = "one")]
    pub max_attempts: usize,
    /// The wait after the first failure; doubled after each further one.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest wait, jitter included.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Up to this fraction of the wait is added at random (0.0 to 1.0).
    #[serde(default = "default_jitter_ratio")]
    pub jitter_ratio: f64,
    /// Whether jitter is added at all.
    #[serde(default = "yes")]
    pub adaptive_jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: one(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            jitter_ratio: default_jitter_ratio(),
            adaptive_jitter: true,
        }
    }
}

/// A connector's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The least time between the starts of two calls (attempts) of the connector.
    pub min_interval_ms: u64,
}

/// A connector's circuit breaker: closed → open after `failure_threshold` consecutive
/// failures → half-open after `cooldown_ms`, admitting `half_open_max_calls` probes →
/// closed after `success_threshold` successful probes (open again on a failed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: usize,
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    #[serde(default = "one")]
    pub half_open_max_calls: usize,
    #[serde(default = "one")]
    pub success_threshold: usize,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            enabled: true,
            failure_threshold: default_failure_threshold(),
            cooldown_ms: default_cooldown_ms(),
            half_open_max_calls: 1,
            success_threshold: 1,
        }
    }
}

/// A call's priority within a parallel batch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PriorityClass {
    High,
    #[default]
    Normal,
    Low,
}

impl PriorityClass {
    /// The class as it is spelt in a plan.
    pub fn as_str(self) -> &'static str {
        match self {
            PriorityClass::High => "high",
            PriorityClass::Normal => "normal",
            PriorityClass::Low => "low",
        }
    }
}

/// The order in which a parallel batch takes calls from its three priority queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fairness {
    /// One call of each class in turn.
    StrictRoundRobin,
    /// `high_weight` high calls, then `normal_weight` normal, then `low_weight` low.
    #[default]
    WeightedRoundRobin,
}

/// The failures that shrink a parallel batch's in-flight budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceOn {
    AnyError,
    /// The tool failed, timed out, or the kernel was overloaded or unreachable.
    ConnectorExecutionError,
    /// The connector's breaker refused the call.
    CircuitOpen,
    /// The kernel knows no such tool.
    ConnectorNotFound,
    /// Never seen at run time: `allowed_connectors` is checked before any call.
    ConnectorNotAllowed,
    /// The kernel denied the call.
    CapabilityDenied,
    /// The kernel denied the call or asked for an approval.
    PolicyDenied,
}

/// How parallel batches schedule their calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// The most calls of one batch in flight at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The floor the adaptive budget never goes below.
    #[serde(default = "one")]
    pub min_in_flight: usize,
    #[serde(default)]
    pub fairness: Fairness,
    /// Whether failures shrink the budget and successes grow it back.
    #[serde(default = "yes")]
    pub adaptive_budget: bool,
    #[serde(default = "default_high_weight")]
    pub high_weight: usize,
    #[serde(default = "default_normal_weight")]
    pub normal_weight: usize,
    #[serde(default = "one")]
    pub low_weight: usize,
    /// Consecutive successes that grow the budget by `adaptive_upshift_step`.
    #[serde(default = "default_recovery_successes")]
    pub adaptive_recovery_successes: usize,
    #[serde(default = "one")]
    pub adaptive_upshift_step: usize,
    #[serde(default = "one")]
    pub adaptive_downshift_step: usize,
    #[serde(default = "default_reduce_on")]
    pub adaptive_reduce_on: BTreeSet<ReduceOn>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            max_in_flight: default_max_in_flight(),
            min_in_flight: 1,
            fairness: Fairness::default(),
            adaptive_budget: true,
            high_weight: default_high_weight(),
            normal_weight: default_normal_weight(),
            low_weight: 1,
            adaptive_recovery_successes: default_recovery_successes(),
            adaptive_upshift_step: 1,
            adaptive_downshift_step: 1,
            adaptive_reduce_on: default_reduce_on(),
        }
    }
}

// Upstream's defaults (`default_programmatic_*` in crates/spec/src/spec_runtime.rs).
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_max_calls() -> usize {
    12
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    2_000
}
fn default_jitter_ratio() -> f64 {
    0.2
}
fn default_failure_threshold() -> usize {
    3
}
fn default_cooldown_ms() -> u64 {
    1_000
}
fn default_max_in_flight() -> usize {
    4
}
fn default_high_weight() -> usize {
    4
}
fn default_normal_weight() -> usize {
    2
}
fn default_recovery_successes() -> usize {
    2
}
fn default_reduce_on() -> BTreeSet<ReduceOn> {
    BTreeSet::from([ReduceOn::ConnectorExecutionError, ReduceOn::CircuitOpen])
}
