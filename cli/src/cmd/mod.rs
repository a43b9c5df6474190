//! One file per subcommand.

pub(crate) mod daemon;
pub(crate) mod status;
