//! The interpreter of `programmatic_tool_call` plans, the library a restricted plan worker
//! runs.
//!
//! A plan (public Loong's shape, [`plan::Plan`]) is untrusted data. [`run`] parses it within
//! the bounds of [`limits`], [`validate`]s everything that can be known before a call
//! (references only to earlier steps, placeholders, `allowed_connectors`, `max_calls`, every
//! policy value), then runs its steps in order. Each connector call is one
//! [`Kernel::call_tool`]: the interpreter holds no authority, and the kernel decides and
//! audits every call. Around each call it applies the plan's retry policy (retryable failure
//! classes only), per-connector rate limits and circuit breakers, batch concurrency, and the
//! run's budgets (`max_calls`, wall time). The answer carries `return_step`'s output, the
//! intermediate outputs when asked, and per-step telemetry; a failure is a typed
//! [`PlanError`] naming its step. `docs/programmatic.md` is the reference.

pub mod answer;
mod batch;
pub mod breaker;
pub mod error;
mod exec;
mod invoke;
pub mod kernel;
pub mod limits;
pub mod parse;
pub mod plan;
mod template;
pub mod validate;

pub use answer::{Answer, Failure, StepTelemetry};
pub use error::PlanError;
pub use exec::{execute, run, Options};
pub use kernel::{CallError, FailureClass, Kernel};
pub use parse::parse;
pub use validate::validate;

#[cfg(test)]
mod tests;
