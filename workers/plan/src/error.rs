//! The error taxonomy of a plan run, one variant per code.
//!
//! Each error names the step it belongs to (and the batch call, where there is one), and
//! serialises as `{"code": "...", "step": "...", ...}` for the wire. Errors found by
//! validation come before any kernel call; the others stop the run where they happen.

use serde::Serialize;

use crate::kernel::CallError;

/// Why a plan was refused or stopped.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum PlanError {
    /// The plan's bytes are over [`crate::limits::MAX_PLAN_BYTES`].
    #[error("the plan is {bytes} bytes, over the limit of {max}: split it into smaller plans")]
    PlanTooLarge { bytes: usize, max: usize },
    /// The plan nests arrays and objects deeper than [`crate::limits::MAX_PLAN_DEPTH`].
    #[error(
        "the plan nests arrays and objects deeper than {max} levels (at byte {offset}): \
         flatten it"
    )]
    PlanTooDeep { max: usize, offset: usize },
    /// The plan is not JSON of the plan's shape (an unknown field, a wrong type, a missing
    /// field, an unknown step kind).
    #[error(
        "the plan is not a programmatic_tool_call plan: {message} (line {line}, column {column})"
    )]
    Malformed {
        message: String,
        line: usize,
        column: usize,
    },
    /// A field's value is out of its range or breaks a rule of the plan (an empty or
    /// duplicated id, a policy out of bounds).
    #[error("{}{field}: {message}", at(step.as_deref(), call.as_deref()))]
    InvalidPlan {
        step: Option<String>,
        call: Option<String>,
        /// The field, as a path in the plan (`steps[2].retry.max_attempts`).
        field: String,
        message: String,
    },
    /// `from_step` or `return_step` names no step before the one that reads it.
    #[error(
        "{}{field} names {reference}, which is {}: a step may read only steps before it",
        at(step.as_deref(), None),
        if *later { "not before it" } else { "no step of the plan" }
    )]
    UnknownStep {
        step: Option<String>,
        field: String,
        reference: String,
        /// Whether the step exists but comes at or after the reader.
        later: bool,
    },
    /// A `json_pointer` step's pointer found nothing in its source's output.
    #[error("step {step}: pointer {pointer} finds nothing in the output of {from_step}")]
    PointerNotFound {
        step: String,
        from_step: String,
        pointer: String,
    },
    /// A `{{step#/pointer}}` placeholder cannot be resolved.
    #[error("{}placeholder {template}: {problem}", at(Some(step), call.as_deref()))]
    TemplateError {
        step: String,
        call: Option<String>,
        template: String,
        problem: TemplateProblem,
    },
    /// A connector outside a non-empty `allowed_connectors`.
    #[error(
        "{}connector {connector} is not in allowed_connectors: add it there or call another",
        at(Some(step), call.as_deref())
    )]
    ConnectorNotAllowed {
        step: String,
        call: Option<String>,
        connector: String,
    },
    /// A budget of the run is spent.
    #[error("{}{budget}", at(step.as_deref(), call.as_deref()))]
    BudgetExceeded {
        step: Option<String>,
        call: Option<String>,
        budget: Budget,
    },
    /// The connector's circuit breaker refused the call.
    #[error(
        "{}connector {connector}'s circuit is open (cooldown left: {remaining_cooldown_ms} ms)",
        at(Some(step), call.as_deref())
    )]
    CircuitOpen {
        step: String,
        call: Option<String>,
        connector: String,
        remaining_cooldown_ms: u64,
    },
    /// A connector call failed (after its retries, where the failure was retryable).
    #[error(
        "{}connector {connector} failed after {attempts} attempt(s): {cause}",
        at(Some(step), call.as_deref())
    )]
    StepFailed {
        step: String,
        call: Option<String>,
        connector: String,
        attempts: usize,
        cause: CallError,
    },
    /// A value the run would build or keep is over its bound.
    #[error("{}{what} is over {max} bytes", at(step.as_deref(), call.as_deref()))]
    ValueTooLarge {
        step: Option<String>,
        call: Option<String>,
        what: ValueKind,
        max: usize,
    },
}

fn at(step: Option<&str>, call: Option<&str>) -> String {
    match (step, call) {
        (Some(s), Some(c)) => format!("step {s} call {c}: "),
        (Some(s), None) => format!("step {s}: "),
        (None, _) => String::new(),
    }
}

/// Why a placeholder cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TemplateProblem {
    #[error("`{{{{` has no closing `}}}}`")]
    Unclosed,
    #[error("the expression is empty: write {{{{step}}}} or {{{{step#/pointer}}}}")]
    EmptyExpression,
    #[error("the pointer after `#` is empty: drop the `#` to take the whole output")]
    EmptyPointer,
    #[error("the expression is over {max} bytes")]
    TooLong { max: usize },
    #[error("no step is named {reference}")]
    UnknownStep { reference: String },
    #[error("step {reference} does not come before this one: a step may read only earlier steps")]
    LaterStep { reference: String },
    #[error("pointer {pointer} finds nothing in the output of {reference}")]
    PointerNotFound { reference: String, pointer: String },
    #[error("the plan has more than {max} placeholders")]
    TooMany { max: usize },
}

/// A budget of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Budget {
    /// The plan makes more connector calls than its `max_calls`.
    #[error("the plan makes {needed} connector calls, over its max_calls of {max}: raise max_calls or make fewer calls")]
    Calls { max: usize, needed: usize },
    /// The run's wall time is spent.
    #[error("the run's wall time of {max_ms} ms is spent")]
    WallTime { max_ms: u64 },
}

/// What [`PlanError::ValueTooLarge`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// A call's input, once its placeholders are resolved.
    #[error("the resolved payload")]
    Payload,
    /// A step's output (a tool's answer, a branch, a pointer's target).
    #[error("the step's output")]
    Output,
    /// All step outputs the run keeps.
    #[error("the outputs kept by the run")]
    Retained,
    /// The answer.
    #[error("the answer")]
    Answer,
}

impl PlanError {
    /// The error's code, as it is spelt on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::PlanTooLarge { .. } => "plan_too_large",
            PlanError::PlanTooDeep { .. } => "plan_too_deep",
            PlanError::Malformed { .. } => "malformed",
            PlanError::InvalidPlan { .. } => "invalid_plan",
            PlanError::UnknownStep { .. } => "unknown_step",
            PlanError::PointerNotFound { .. } => "pointer_not_found",
            PlanError::TemplateError { .. } => "template_error",
            PlanError::ConnectorNotAllowed { .. } => "connector_not_allowed",
            PlanError::BudgetExceeded { .. } => "budget_exceeded",
            PlanError::CircuitOpen { .. } => "circuit_open",
            PlanError::StepFailed { .. } => "step_failed",
            PlanError::ValueTooLarge { .. } => "value_too_large",
        }
    }

    /// The error as JSON for the wire.
    pub fn to_json(&self) -> serde_json::Value {
        // A derived Serialize of strings, numbers and unit enums cannot fail.
        serde_json::to_value(self).unwrap_or_else(|_| serde_json::json!({"code": self.code()}))
    }
}
