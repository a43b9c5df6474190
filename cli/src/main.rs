//! `loongctl`: parses arguments, calls [`loongctl::run`] and maps the outcome to one of the
//! exit codes in [`loongctl::exit`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = loongctl::Cli::parse();
    match loongctl::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            // The error may quote foreign text (a plugin's error, a path an agent chose).
            eprintln!(
                "loongctl: {}",
                loongctl::text::esc_lines(&format!("{:#}", f.error))
            );
            ExitCode::from(f.code)
        }
    }
}
