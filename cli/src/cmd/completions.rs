//! `loongctl completions SHELL` and the hidden `loongctl manpage`: text generated from the
//! command-line definition itself, so what a shell completes and what the manual says never
//! drift from what loongctl accepts. The Debian package ships both (`scripts/package`).

use std::io::Write;

use clap::CommandFactory;

use crate::{exit, Cli, Failure};

/// Prints the completion script for `shell` on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<u8, Failure> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "loongctl", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(exit::OK)
}

/// Prints loongctl's manual page (roff) on stdout.
pub(crate) fn manpage() -> Result<u8, Failure> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    std::io::stdout().write_all(&out)?;
    Ok(exit::OK)
}
