//! loongctl's exit codes. Stable: scripts depend on them. Listed in `--help` and the README.

/// Success.
pub const OK: u8 = 0;
/// An unexpected failure (the message says what).
pub const UNEXPECTED: u8 = 1;
/// A usage error: unknown command, bad flag or argument.
pub const USAGE: u8 = 2;
/// No daemon is running for the chosen home.
pub const DAEMON_NOT_RUNNING: u8 = 3;
/// Policy denied the request.
pub const DENIED: u8 = 4;
/// The request needs an approval that is pending or expired.
pub const APPROVAL_PENDING: u8 = 5;
/// The host cannot enforce the sandbox the request needs.
pub const SANDBOX_UNAVAILABLE: u8 = 6;
/// The worker running the request failed.
pub const WORKER_FAILED: u8 = 7;
/// A verification found a difference (installed plugins drifted from the lockfile, or a
/// package does not match its signature).
pub const VERIFY_FAILED: u8 = 8;
/// A plugin the command enabled did not come up (`plugins enable`): the message says why.
pub const PLUGIN_FAILED: u8 = 9;
/// A budget of the call chain ran out (its depth, its calls or its wall time).
pub const BUDGET_EXCEEDED: u8 = 10;

/// The text of `--help` that lists the codes.
pub const HELP: &str = "Exit codes:
  0  ok
  1  unexpected error
  2  usage error
  3  daemon not running
  4  denied by policy
  5  approval pending or expired
  6  sandbox unavailable
  7  worker failed
  8  verification failed (lock drift, a package that does not match its signature)
  9  plugin failed (enabled, but its load check or probe failed)
 10  budget exceeded (a call chain's depth, calls or wall time)";
