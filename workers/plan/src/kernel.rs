//! The interpreter's one way out: a kernel call per connector call (attempt).
//!
//! The interpreter holds no authority. Every call it makes goes to [`Kernel::call_tool`],
//! which the plan worker implements as a kernel call on its socket: loongd decides it under
//! the authority of the call chain the worker serves, audits it with the chain, and runs the
//! tool. What comes back is a value or a [`CallError`] whose class decides what the
//! interpreter does next (retry, count against a breaker, shrink a batch's budget).

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the interpreter needs from the kernel.
///
/// The returned future need not be `Send`: a plan runs on one thread, its batch calls
/// interleaved on that thread. Dropping the future abandons the call (the worker turns that
/// into a cancel).
pub trait Kernel {
    /// Calls `tool` (a plugin, `PLUGIN/TOOL` or a built-in) with `input`, and returns the
    /// tool's JSON answer.
    fn call_tool(&self, tool: &str, input: Value)
        -> impl Future<Output = Result<Value, CallError>>;
}

/// Why a kernel call produced no answer. Each variant is one class; [`CallError::retryable`]
/// and [`CallError::breaker_outcome`] say what the interpreter makes of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallError {
    /// Policy denied the call (at a stage of the decision pipeline). Never retried.
    #[error("the kernel denied the call: {reason}")]
    Denied { reason: String },
    /// The call needs a human approval that was not given. Never retried by a plan.
    #[error("the call needs an approval: {reason}")]
    ApprovalRequired { reason: String },
    /// The kernel knows no tool of that name. Never retried.
    #[error("no such tool")]
    NotFound,
    /// The call chain is as deep as the kernel allows. Never retried.
    #[error("the call chain is too deep")]
    DepthExceeded,
    /// The root call's budget (calls or wall time) is spent. Never retried.
    #[error("the root call's budget is spent: {reason}")]
    BudgetExceeded { reason: String },
    /// The tool ran and failed; its class says whether trying again can help.
    #[error("the tool failed ({class}): {message}")]
    ToolFailed {
        class: FailureClass,
        message: String,
    },
    /// The call did not finish before its deadline. Retried.
    #[error("the call timed out")]
    Timeout,
    /// The kernel refused the call for now (too many in flight). Retried.
    #[error("the kernel is overloaded")]
    Overloaded,
    /// This worker's link to the kernel failed. Never retried: nothing a retry sends can
    /// arrive.
    #[error("the link to the kernel failed: {message}")]
    Transport { message: String },
}

/// Classes of [`CallError::ToolFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A failure that can pass: the tool's worker died or was replaced, a connection failed,
    /// the tool's own deadline passed.
    #[error("transient")]
    Transient,
    /// A failure a retry repeats: the tool refused its input, trapped, ran out of fuel,
    /// answered outside its contract.
    #[error("permanent")]
    Permanent,
}

/// What a call's outcome does to its connector's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerOutcome {
    Success,
    /// The connector is unhealthy: the tool failed or timed out.
    Failure,
    /// The outcome says nothing about the connector (a denial, a missing approval, a spent
    /// budget); a half-open probe slot it held is given back.
    Neutral,
}

impl CallError {
    /// Whether a retry policy may try the call again.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Timeout
            | CallError::Overloaded
            | CallError::ToolFailed {
                class: FailureClass::Transient,
                ..
            } => true,
            CallError::Denied { .. }
            | CallError::ApprovalRequired { .. }
            | CallError::NotFound
            | CallError::DepthExceeded
            | CallError::BudgetExceeded { .. }
            | CallError::ToolFailed {
                class: FailureClass::Permanent,
                ..
            }
            | CallError::Transport { .. } => false,
        }
    }

    /// Whether the failure ends the run, even inside a batch that continues on error: every
    /// further call would meet it too (the root's budget is spent, the chain is at its
    /// depth, the link to the kernel is gone).
    pub fn ends_run(&self) -> bool {
        match self {
            CallError::DepthExceeded
            | CallError::BudgetExceeded { .. }
            | CallError::Transport { .. } => true,
            CallError::Denied { .. }
            | CallError::ApprovalRequired { .. }
            | CallError::NotFound
            | CallError::ToolFailed { .. }
            | CallError::Timeout
            | CallError::Overloaded => false,
        }
    }

    /// What the failure does to the connector's breaker.
    pub fn breaker_outcome(&self) -> BreakerOutcome {
        match self {
            CallError::ToolFailed { .. } | CallError::Timeout => BreakerOutcome::Failure,
            CallError::Denied { .. }
            | CallError::ApprovalRequired { .. }
            | CallError::NotFound
            | CallError::DepthExceeded
            | CallError::BudgetExceeded { .. }
            | CallError::Overloaded
            | CallError::Transport { .. } => BreakerOutcome::Neutral,
        }
    }

    /// The class as it is spelt on the wire (a batch report's `error_code`).
    pub fn class(&self) -> &'static str {
        match self {
            CallError::Denied { .. } => "denied",
            CallError::ApprovalRequired { .. } => "approval_required",
            CallError::NotFound => "not_found",
            CallError::DepthExceeded => "depth_exceeded",
            CallError::BudgetExceeded { .. } => "budget_exceeded",
            CallError::ToolFailed { .. } => "tool_failed",
            CallError::Timeout => "timeout",
            CallError::Overloaded => "overloaded",
            CallError::Transport { .. } => "transport",
        }
    }
}
