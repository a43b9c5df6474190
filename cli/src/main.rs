//! `loongctl`: parses arguments (the hot command lines without clap's tree, see
//! [`loongctl::fast`]), calls [`loongctl::run`] and maps the outcome to one of the exit codes
//! in [`loongctl::exit`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = loongctl::fast::parse(std::env::args_os()).unwrap_or_else(loongctl::Cli::parse);
    match loongctl::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            // The error may quote foreign text (a plugin's error, a path an agent chose).
            // loongd's own multi-line messages keep their line breaks; a worker's failure is
            // a plugin's or a program's word, and shows its line breaks escaped, so it never
            // prints a line that looks like loongctl's own.
            let text = format!("{:#}", f.error);
            let shown = if f.code == loongctl::exit::WORKER_FAILED {
                loongctl::text::esc(&text).into_owned()
            } else {
                loongctl::text::esc_lines(&text)
            };
            eprintln!("loongctl: {shown}");
            ExitCode::from(f.code)
        }
    }
}
