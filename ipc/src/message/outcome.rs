//! Typed outcomes: what a failed request says beyond its class, as variants a client acts on.
//!
//! A [`RemoteError`](super::envelope::RemoteError) carries a coarse [`ErrorKind`] (what
//! loongctl maps to an exit code), a message for people, and, where there is more to act on,
//! an [`ErrorDetail`]: the approval that is pending or expired, the stage of the pipeline that
//! denied an effect and why, the class of a worker failure, the budget that ran out. A client
//! reads these variants; it never parses the message.
//!
//! [`ErrorKind`]: super::envelope::ErrorKind

use serde::{Deserialize, Serialize};

use super::{truncated, worker::FailureKind};

/// Bound on each text field of an [`ErrorDetail`] (an approval id, a capability, a target, a
/// reason); longer text is cut on a character boundary.
pub const MAX_DETAIL_FIELD_BYTES: usize = 1024;

/// What a failed request says beyond its class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ErrorDetail {
    /// Policy denied the effect.
    Denied(Denial),
    /// The effect waits for approval `approval`, and the request's deadline passed first; the
    /// request is still pending and may be approved later (class `ApprovalPending`).
    ApprovalPending {
        /// The approval's id (`loongctl approvals show ID`).
        approval: String,
    },
    /// Approval `approval` was not answered before its own deadline, so the effect was
    /// denied (class `ApprovalPending`).
    ApprovalExpired {
        /// The approval's id.
        approval: String,
    },
    /// The worker running the effect failed, of this class (class `WorkerFailed`, or
    /// `SandboxUnavailable` when no worker could be had).
    WorkerFailed(FailureClass),
    /// A budget ran out (class `Overloaded`, `BadRequest` or `BudgetExceeded`).
    BudgetExceeded(BudgetExceeded),
    /// A `programmatic_tool_call` plan was refused or stopped (class `WorkerFailed`): its
    /// error's kind and the step it names.
    PlanFailed(PlanFailed),
}

/// A failed plan: the closed kind of its error, the step and batch call it names, and what
/// happened for people. Every text field is at most [`MAX_DETAIL_FIELD_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PlanFailed {
    pub kind: PlanFailureKind,
    /// The step the error belongs to (none for an error of the whole plan: it is malformed
    /// or too large, its `return_step` names nothing).
    pub step: Option<String>,
    /// The batch call, for an error of one call of a `connector_batch`.
    pub call: Option<String>,
    /// For `step_failed`: the class of the connector call's failure.
    pub cause: Option<PlanCallFailure>,
    /// What happened, for people.
    pub message: String,
}

impl PlanFailed {
    /// A failed plan, each text field cut to [`MAX_DETAIL_FIELD_BYTES`].
    pub fn new(
        kind: PlanFailureKind,
        step: Option<String>,
        call: Option<String>,
        cause: Option<PlanCallFailure>,
        message: impl Into<String>,
    ) -> PlanFailed {
        let cut = |s: String| truncated(s, MAX_DETAIL_FIELD_BYTES);
        PlanFailed {
            kind,
            step: step.map(cut),
            call: call.map(cut),
            cause,
            message: cut(message.into()),
        }
    }

    /// The same failure with every text field within its bound (for one decoded from a
    /// worker, which may send anything).
    pub fn bounded(self) -> PlanFailed {
        PlanFailed::new(self.kind, self.step, self.call, self.cause, self.message)
    }
}

/// The kinds of a plan's error (`docs/programmatic.md` lists what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum PlanFailureKind {
    PlanTooLarge,
    PlanTooDeep,
    Malformed,
    InvalidPlan,
    UnknownStep,
    PointerNotFound,
    TemplateError,
    ConnectorNotAllowed,
    BudgetExceeded,
    CircuitOpen,
    StepFailed,
    ValueTooLarge,
}

impl PlanFailureKind {
    /// A stable lowercase name (the plan's own error code).
    pub fn name(self) -> &'static str {
        match self {
            PlanFailureKind::PlanTooLarge => "plan_too_large",
            PlanFailureKind::PlanTooDeep => "plan_too_deep",
            PlanFailureKind::Malformed => "malformed",
            PlanFailureKind::InvalidPlan => "invalid_plan",
            PlanFailureKind::UnknownStep => "unknown_step",
            PlanFailureKind::PointerNotFound => "pointer_not_found",
            PlanFailureKind::TemplateError => "template_error",
            PlanFailureKind::ConnectorNotAllowed => "connector_not_allowed",
            PlanFailureKind::BudgetExceeded => "budget_exceeded",
            PlanFailureKind::CircuitOpen => "circuit_open",
            PlanFailureKind::StepFailed => "step_failed",
            PlanFailureKind::ValueTooLarge => "value_too_large",
        }
    }
}

/// The class of a plan's connector call that failed (`step_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum PlanCallFailure {
    Denied,
    ApprovalRequired,
    NotFound,
    DepthExceeded,
    BudgetExceeded,
    /// The tool failed with a class a retry can pass.
    ToolFailedTransient,
    /// The tool failed with a class a retry repeats.
    ToolFailedPermanent,
    Timeout,
    Overloaded,
    Transport,
}

impl PlanCallFailure {
    /// A stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            PlanCallFailure::Denied => "denied",
            PlanCallFailure::ApprovalRequired => "approval_required",
            PlanCallFailure::NotFound => "not_found",
            PlanCallFailure::DepthExceeded => "depth_exceeded",
            PlanCallFailure::BudgetExceeded => "budget_exceeded",
            PlanCallFailure::ToolFailedTransient => "tool_failed_transient",
            PlanCallFailure::ToolFailedPermanent => "tool_failed_permanent",
            PlanCallFailure::Timeout => "timeout",
            PlanCallFailure::Overloaded => "overloaded",
            PlanCallFailure::Transport => "transport",
        }
    }
}

/// A denial: the stage of the pipeline that said no, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Denial {
    /// Where the decision was made.
    pub stage: DenialStage,
    /// The capability asked for (`tool.invoke`, `fs.read`, …).
    pub capability: String,
    /// What it was asked on (a tool, a path, `HOST:PORT`, a program, an approval id).
    pub target: String,
    /// Why, for people (at most [`MAX_DETAIL_FIELD_BYTES`]).
    pub reason: String,
}

impl Denial {
    /// A denial at `stage`, each text field cut to [`MAX_DETAIL_FIELD_BYTES`].
    pub fn new(
        stage: DenialStage,
        capability: impl Into<String>,
        target: impl Into<String>,
        reason: impl Into<String>,
    ) -> Denial {
        Denial {
            stage,
            capability: truncated(capability.into(), MAX_DETAIL_FIELD_BYTES),
            target: truncated(target.into(), MAX_DETAIL_FIELD_BYTES),
            reason: truncated(reason.into(), MAX_DETAIL_FIELD_BYTES),
        }
    }
}

/// The stage that denied an effect, in the pipeline's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum DenialStage {
    /// The request itself asks for something never allowed (a variable that changes which
    /// program runs, a path that cannot be resolved to one the grants cover).
    Request,
    /// The presented token is unknown, revoked, expired or of an old generation.
    Token,
    /// The token does not grant the capability on the target.
    TokenGrants,
    /// The pack does not grant it.
    PackGrants,
    /// The denylist names it (it always wins).
    Denylist,
    /// A tighten-only extension (file roots, shell rules) refused it.
    Extension,
    /// An approver, or loongd on their behalf (a dead token, an effect too large to show),
    /// denied the approval the effect waited for.
    Approval,
    /// Who may resolve an approval: the asking token or agent, or another pack's token.
    Separation,
    /// The token was checked again right before the effect ran, and no longer holds.
    Dispatch,
    /// A kernel call: the calling plugin's manifest does not declare the capability it
    /// needs (`invoke_tool` to call a tool), whatever the chain's authority grants.
    PluginCapabilities,
}

impl DenialStage {
    /// A stable lowercase name (audit records and JSON output use it).
    pub fn name(self) -> &'static str {
        match self {
            DenialStage::Request => "request",
            DenialStage::Token => "token",
            DenialStage::TokenGrants => "token_grants",
            DenialStage::PackGrants => "pack_grants",
            DenialStage::Denylist => "denylist",
            DenialStage::Extension => "extension",
            DenialStage::Approval => "approval",
            DenialStage::Separation => "separation",
            DenialStage::Dispatch => "dispatch",
            DenialStage::PluginCapabilities => "plugin_capabilities",
        }
    }
}

/// Why a call to a worker produced no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum FailureClass {
    /// The plugin failed in a healthy worker (refused at load, trapped, timed out, …).
    Plugin(FailureKind),
    /// The worker died or closed its socket; it was retired.
    WorkerDied,
    /// The worker did not answer within the call's deadline; it was killed and retired.
    WorkerDeadline,
    /// The worker broke the protocol (an unexpected frame, an answer out of bounds); it was
    /// retired.
    WorkerProtocol,
    /// No worker could be had (sandbox unavailable, spawn failed, queue deadline passed).
    Unavailable,
    /// The call was dropped before its worker answered (its request's deadline, its client
    /// gone); the worker was retired.
    Abandoned,
}

impl FailureClass {
    /// A stable lowercase name; `tool.failed` records carry it as `failure`.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Plugin(k) => k.name(),
            FailureClass::WorkerDied => "worker_died",
            FailureClass::WorkerDeadline => "worker_deadline",
            FailureClass::WorkerProtocol => "worker_protocol",
            FailureClass::Unavailable => "unavailable",
            FailureClass::Abandoned => "abandoned",
        }
    }
}

/// A budget that ran out, and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BudgetExceeded {
    /// Which budget.
    pub budget: Budget,
    /// Its limit, in the budget's unit.
    pub limit: u64,
}

/// The budgets loongd keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Budget {
    /// Requests in flight on one connection (or answered and not yet read).
    InFlight,
    /// Bytes of a request's input.
    InputBytes,
    /// Bytes of an answer (the connection's frame limit).
    OutputBytes,
    /// Depth of a chain of nested calls.
    CallDepth,
    /// Calls made on behalf of one root call.
    Calls,
    /// Milliseconds of wall time spent on behalf of one root call.
    WallTimeMs,
}

impl Budget {
    /// A stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Budget::InFlight => "in_flight",
            Budget::InputBytes => "input_bytes",
            Budget::OutputBytes => "output_bytes",
            Budget::CallDepth => "call_depth",
            Budget::Calls => "calls",
            Budget::WallTimeMs => "wall_time_ms",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_bounded_field_by_field() {
        let long = "é".repeat(MAX_DETAIL_FIELD_BYTES);
        let d = Denial::new(DenialStage::Denylist, "fs.read", long.clone(), long);
        assert!(d.target.len() <= MAX_DETAIL_FIELD_BYTES);
        assert!(d.reason.len() <= MAX_DETAIL_FIELD_BYTES);
        assert_eq!(d.capability, "fs.read");
    }

    #[test]
    fn a_plan_failure_is_bounded_field_by_field() {
        let long = "é".repeat(MAX_DETAIL_FIELD_BYTES);
        let p = PlanFailed {
            kind: PlanFailureKind::StepFailed,
            step: Some(long.clone()),
            call: Some(long.clone()),
            cause: Some(PlanCallFailure::Denied),
            message: long,
        }
        .bounded();
        for f in [
            p.step.unwrap_or_default(),
            p.call.unwrap_or_default(),
            p.message,
        ] {
            assert!(f.len() <= MAX_DETAIL_FIELD_BYTES);
        }
    }

    #[test]
    fn names_are_distinct() {
        let classes = [
            FailureClass::WorkerDied,
            FailureClass::WorkerDeadline,
            FailureClass::WorkerProtocol,
            FailureClass::Unavailable,
            FailureClass::Abandoned,
            FailureClass::Plugin(FailureKind::Trap),
        ];
        let mut names: Vec<&str> = classes.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), classes.len());
    }
}
