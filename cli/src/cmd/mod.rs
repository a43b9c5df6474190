//! One file per subcommand.

pub(crate) mod agent;
pub(crate) mod approvals;
pub(crate) mod audit;
pub(crate) mod completions;
pub(crate) mod daemon;
pub(crate) mod doctor;
pub(crate) mod gateway;
pub(crate) mod keys;
pub(crate) mod mcp;
pub(crate) mod metrics;
pub(crate) mod onboard;
pub(crate) mod policy;
pub(crate) mod sandbox;
pub(crate) mod scaffold;
pub(crate) mod secrets;
pub(crate) mod status;
pub(crate) mod tokens;
pub(crate) mod tools;
pub(crate) mod verify;
