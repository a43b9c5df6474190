//! What a run gives back: the answer (upstream's response fields, plus per-step telemetry),
//! or the error with the telemetry of the steps that ran.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::{
    breaker::Phase,
    error::PlanError,
    plan::{BreakerPolicy, Concurrency, RateLimit, StepKind},
};

/// A finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub caller: String,
    pub max_calls: usize,
    /// Connector calls made (a call's retries count once).
    pub connector_calls: usize,
    pub return_step: String,
    /// `return_step`'s output.
    pub result: Value,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub connector_rate_limits: BTreeMap<String, RateLimit>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub connector_circuit_breakers: BTreeMap<String, BreakerPolicy>,
    pub concurrency: Concurrency,
    /// One entry per step that ran, in order.
    pub telemetry: Vec<StepTelemetry>,
    /// With `include_intermediate`: a trace of each step (upstream's `steps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Value>>,
    /// With `include_intermediate`: every step's output by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_outputs: Option<BTreeMap<String, Value>>,
}

/// A run that stopped: the error, and the telemetry of the steps that ran (the failed one
/// last). Errors found before the first step come with no telemetry.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{error}")]
pub struct Failure {
    pub error: PlanError,
    pub telemetry: Vec<StepTelemetry>,
}

impl From<PlanError> for Failure {
    fn from(error: PlanError) -> Self {
        Failure {
            error,
            telemetry: Vec::new(),
        }
    }
}

/// How a step went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepTelemetry {
    pub step_id: String,
    pub index: usize,
    pub kind: StepKind,
    pub status: StepStatus,
    /// Wall time of the step, rate-limit waits and backoffs included.
    pub wall_ms: u64,
    /// Connector calls the step made.
    pub calls: usize,
    /// Kernel calls the step made (each retry is one more).
    pub attempts: usize,
    pub retries: usize,
    pub rate_wait_ms: u64,
    pub backoff_ms: u64,
    /// The breaker of each connector the step called, after the step.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub breakers: BTreeMap<String, Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    Failed,
}

/// How one connector call went (upstream's `execution` object, plus `wall_ms`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallMetrics {
    pub attempts: usize,
    pub retries: usize,
    pub priority_class: &'static str,
    pub rate_wait_ms_total: u64,
    pub backoff_ms_total: u64,
    pub circuit_phase_before: Phase,
    pub circuit_phase_after: Phase,
    pub wall_ms: u64,
}

/// How a batch scheduled its calls (upstream's `scheduler` object).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerSummary {
    pub mode: &'static str,
    pub fairness: crate::plan::Fairness,
    pub adaptive_budget: bool,
    pub configured_max_in_flight: usize,
    pub configured_min_in_flight: usize,
    pub peak_in_flight: usize,
    pub final_in_flight_budget: usize,
    pub budget_reductions: usize,
    pub budget_increases: usize,
    pub scheduler_wait_cycles: usize,
    pub dispatch_order: Vec<String>,
    pub priority_dispatch_counts: BTreeMap<&'static str, usize>,
}
