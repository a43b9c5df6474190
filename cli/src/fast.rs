//! A fast parse of the hot command lines (`sandbox run`, `status`, `invoke`) that builds
//! no clap command tree: clap's parse builds every subcommand's arguments first, a few
//! hundred allocations and pages of code each run, for a command that names one of them.
//!
//! It accepts only plain, well-formed command lines and returns `None` for anything else
//! (help, version, an unknown or repeated option, a value that does not parse, a value that
//! starts with `-`, text that is not UTF-8 before the program), which clap then parses as
//! before: every error and every help text stays clap's. What it accepts, it parses to the
//! same [`Cli`] that clap would (`tests::the_fast_parse_agrees_with_clap`).

use std::{ffi::OsString, path::PathBuf};

use crate::{
    cmd::{
        sandbox::{RunArgs, SandboxCommand},
        tools::InvokeArgs,
    },
    Cli, Command,
};

/// `--input`'s default, as `InvokeArgs` declares it.
const DEFAULT_INVOKE_INPUT: &str = "{}";

/// Parses `args` (the program's name first) when it is a plain hot command line; `None`
/// means "let clap parse it".
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Option<Cli> {
    let mut args = args.into_iter().skip(1);
    let mut globals = Globals::default();
    let command = loop {
        let arg = args.next()?;
        let arg = arg.to_str()?;
        if globals.take(arg, &mut args)? {
            continue;
        }
        break match arg {
            "status" => status(&mut globals, &mut args)?,
            "invoke" => invoke(&mut globals, &mut args)?,
            "sandbox" => loop {
                let arg = args.next()?;
                let arg = arg.to_str()?;
                if globals.take(arg, &mut args)? {
                    continue;
                }
                if arg != "run" {
                    return None;
                }
                break sandbox_run(&mut globals, &mut args)?;
            },
            _ => return None,
        };
    };
    if globals.home.is_some() && globals.system {
        // `--home` conflicts with `--system`: clap's error.
        return None;
    }
    Some(Cli {
        home: globals.home,
        system: globals.system,
        command,
    })
}

/// The global options, which clap accepts before and after any subcommand.
#[derive(Default)]
struct Globals {
    home: Option<PathBuf>,
    system: bool,
}

impl Globals {
    /// `Some(true)` when `arg` was a global option (its value taken from `rest`), `Some(false)`
    /// when it is not one, `None` when clap must decide.
    fn take(&mut self, arg: &str, rest: &mut impl Iterator<Item = OsString>) -> Option<bool> {
        let (name, inline) = split(arg);
        match name {
            "--home" => {
                once(&mut self.home, PathBuf::from(value(inline, rest)?))?;
                Some(true)
            }
            "--system" if inline.is_none() && !self.system => {
                self.system = true;
                Some(true)
            }
            "--system" => None,
            _ => Some(false),
        }
    }
}

/// `--name=value` as (`--name`, `Some(value)`); anything else as (`arg`, `None`).
fn split(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((name, v)) if name.starts_with("--") => (name, Some(v)),
        _ => (arg, None),
    }
}

/// An option's value: inline, else the next argument. Only a plain one: not empty, not
/// starting with `-` (except `-` itself), UTF-8.
fn value(inline: Option<&str>, rest: &mut impl Iterator<Item = OsString>) -> Option<String> {
    let v = match inline {
        Some(v) => v.to_string(),
        None => rest.next()?.into_string().ok()?,
    };
    (!v.is_empty() && (v == "-" || !v.starts_with('-'))).then_some(v)
}

/// Sets an option given once; a second time is clap's error.
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

/// Sets a flag given once, without a value.
fn flag(slot: &mut bool, inline: Option<&str>) -> Option<()> {
    if *slot || inline.is_some() {
        return None;
    }
    *slot = true;
    Some(())
}

fn status(globals: &mut Globals, args: &mut impl Iterator<Item = OsString>) -> Option<Command> {
    let mut json = false;
    while let Some(arg) = args.next() {
        let arg = arg.to_str()?;
        if globals.take(arg, args)? {
            continue;
        }
        let (name, inline) = split(arg);
        match name {
            "--json" => flag(&mut json, inline)?,
            _ => return None,
        }
    }
    Some(Command::Status { json })
}

fn invoke(globals: &mut Globals, args: &mut impl Iterator<Item = OsString>) -> Option<Command> {
    let (mut tool, mut input, mut token, mut timeout, mut json) = (None, None, None, None, false);
    while let Some(arg) = args.next() {
        let arg = arg.to_str()?;
        if globals.take(arg, args)? {
            continue;
        }
        if !arg.starts_with('-') && !arg.is_empty() {
            once(&mut tool, arg.to_string())?;
            continue;
        }
        let (name, inline) = split(arg);
        match name {
            "--input" => once(&mut input, value(inline, args)?)?,
            "--token" => once(&mut token, value(inline, args)?)?,
            "--timeout" => once(&mut timeout, value(inline, args)?.parse::<f64>().ok()?)?,
            "--json" => flag(&mut json, inline)?,
            _ => return None,
        }
    }
    Some(Command::Invoke(InvokeArgs {
        tool: tool?,
        input: input.unwrap_or_else(|| DEFAULT_INVOKE_INPUT.to_string()),
        token,
        timeout,
        json,
    }))
}

fn sandbox_run(
    globals: &mut Globals,
    args: &mut impl Iterator<Item = OsString>,
) -> Option<Command> {
    let mut a = RunArgs::default();
    let mut tier = None;
    let program = loop {
        let arg = args.next()?;
        if arg == "--" {
            break args.next()?;
        }
        let text = arg.to_str()?;
        if globals.take(text, args)? {
            continue;
        }
        if !text.starts_with('-') && !text.is_empty() {
            break arg;
        }
        let (name, inline) = split(text);
        match name {
            "--tier" => once(&mut tier, value(inline, args)?)?,
            "--read" => a.read.push(PathBuf::from(value(inline, args)?)),
            "--write" => a.write.push(PathBuf::from(value(inline, args)?)),
            "--allow-net" => a.allow_net.push(value(inline, args)?),
            "--timeout" => once(&mut a.timeout, value(inline, args)?.parse::<f64>().ok()?)?,
            "--memory" => once(&mut a.memory, value(inline, args)?)?,
            "--pids" => once(&mut a.pids, value(inline, args)?.parse::<u64>().ok()?)?,
            "--cpu" => once(&mut a.cpu, value(inline, args)?.parse::<u64>().ok()?)?,
            "--env" => a.env.push(value(inline, args)?),
            "--allow-degraded" => flag(&mut a.allow_degraded, inline)?,
            "--token" => once(&mut a.token, value(inline, args)?)?,
            "--max-output" => once(&mut a.max_output, value(inline, args)?)?,
            _ => return None,
        }
    };
    // A program that looks like an option (or is empty) is left to clap.
    let p = program.to_str()?;
    if p.is_empty() || p.starts_with('-') {
        return None;
    }
    a.tier = tier?;
    a.command.push(program);
    a.command.extend(args);
    Some(Command::Sandbox(SandboxCommand::Run(a)))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        std::iter::once("loongctl")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Command lines the fast parse must take (the hot paths as scripts and agents write them).
    const TAKEN: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["--home", "/h", "status"],
        &["--home=/h", "status", "--json"],
        &["status", "--home", "/h"],
        &["--system", "status"],
        &["status", "--system", "--json"],
        &["sandbox", "run", "--tier", "balanced", "--", "/bin/true"],
        &[
            "--home",
            "/h",
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "/bin/true",
        ],
        &[
            "sandbox",
            "--home",
            "/h",
            "run",
            "--tier=restricted",
            "--",
            "/bin/sh",
            "-c",
            "exit 3",
        ],
        &[
            "sandbox",
            "run",
            "--home",
            "/h",
            "--tier",
            "trusted",
            "/bin/echo",
            "--tier",
            "x",
            "--",
        ],
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "/bin/echo",
            "--",
            "x",
            "--help",
        ],
        &[
            "sandbox", "run", "--tier", "balanced", "--", "sh", "-", "-h",
        ],
        &[
            "sandbox",
            "run",
            "--tier",
            "balanced",
            "--read",
            "/a",
            "--read=/b",
            "--write",
            "w",
            "--allow-net",
            "h:1",
            "--allow-net=h:2",
            "--timeout",
            "1.5",
            "--memory",
            "64M",
            "--pids",
            "16",
            "--cpu=3",
            "--env",
            "PATH",
            "--env=HOME",
            "--allow-degraded",
            "--token",
            "secret",
            "--max-output",
            "1K",
            "--",
            "prog",
            "a",
            "b",
        ],
        &[
            "sandbox",
            "run",
            "--tier",
            "b",
            "--timeout",
            "1e3",
            "--pids",
            "+5",
            "p",
        ],
        &["sandbox", "run", "--tier", "b", "--timeout", "inf", "p"],
        &["sandbox", "run", "--tier", "b", "--timeout=NaN", "p"],
        &["invoke", "echo"],
        &["invoke", "echo", "--input", "{\"a\":1}", "--json"],
        &["invoke", "--input", "-", "echo"],
        &[
            "invoke",
            "--input=@f.json",
            "--token",
            "t",
            "--timeout",
            "2",
            "echo",
            "--home",
            "/h",
        ],
        &["--system", "invoke", "echo", "--timeout=0.5"],
    ];

    /// Command lines the fast parse must leave to clap: help, version, errors, and what it
    /// does not try to read.
    const LEFT: &[&[&str]] = &[
        &[],
        &["--version"],
        &["-V"],
        &["--help"],
        &["help", "status"],
        &["status", "--help"],
        &["status", "-h"],
        &["status", "--json", "--json"],
        &["status", "--json=true"],
        &["status", "extra"],
        &["status", "--home"],
        &["status", "--home="],
        &["status", "--home", "--json"],
        &["--home", "/a", "--home", "/b", "status"],
        &["--home", "/a", "--system", "status"],
        &["--system", "--system", "status"],
        &["--system=yes", "status"],
        &["statu"],
        &["sandbox"],
        &["sandbox", "--help"],
        &["sandbox", "run"],
        &["sandbox", "run", "--help"],
        &["sandbox", "run", "-h", "--tier", "b", "p"],
        &["sandbox", "run", "--tier", "balanced"],
        &["sandbox", "run", "--tier", "balanced", "--"],
        &["sandbox", "run", "/bin/true"],
        &["sandbox", "run", "--", "--tier", "b", "/bin/true"],
        &["sandbox", "run", "--tier", "b", "--tier", "c", "p"],
        &["sandbox", "run", "--tier", "-x", "p"],
        &["sandbox", "run", "--tier=-x", "p"],
        &["sandbox", "run", "--tier=", "p"],
        &["sandbox", "run", "--tier", "b", "--pids", "x", "p"],
        &["sandbox", "run", "--tier", "b", "--pids", "-1", "p"],
        &["sandbox", "run", "--tier", "b", "--cpu", "1.5", "p"],
        &["sandbox", "run", "--tier", "b", "--timeout", "soon", "p"],
        &["sandbox", "run", "--tier", "b", "--timeout", "-1", "p"],
        &["sandbox", "run", "--tier", "b", "--allow-degraded=1", "p"],
        &[
            "sandbox",
            "run",
            "--tier",
            "b",
            "--allow-degraded",
            "--allow-degraded",
            "p",
        ],
        &["sandbox", "run", "--tier", "b", "--bogus", "p"],
        &["sandbox", "run", "--tier", "b", "-", "p"],
        &["sandbox", "run", "--tier", "b", "--", "-p"],
        &["sandbox", "run", "--tier", "b", "--", ""],
        &[
            "sandbox", "run", "--tier", "b", "--memory", "1M", "--memory", "2M", "p",
        ],
        &["sandbox", "exec", "--tier", "b", "p"],
        &["invoke"],
        &["invoke", "a", "b"],
        &["invoke", "--", "echo"],
        &["invoke", "-echo"],
        &["invoke", "echo", "--input"],
        &["invoke", "echo", "--input", "x", "--input", "y"],
        &["invoke", "echo", "--timeout", "x"],
        &["invoke", "echo", "--json", "--json"],
        &["invoke", "echo", "--help"],
        &["invoke", "echo", "--bogus"],
        &["tokens", "list"],
        &["daemon", "start"],
    ];

    /// What the fast parse accepts, it parses to exactly what clap makes of the same line;
    /// what it leaves, clap parses (or refuses) as it always did. And it does take the hot
    /// lines (else this would hold of a parse that takes nothing).
    #[test]
    fn the_fast_parse_agrees_with_clap() {
        for args in TAKEN.iter().chain(LEFT) {
            let fast = parse(os(args));
            let clap = Cli::try_parse_from(os(args));
            if let Some(fast) = &fast {
                let clap = clap.as_ref().unwrap_or_else(|e| {
                    panic!("{args:?}: the fast parse took a line clap refuses: {e}")
                });
                assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{args:?}");
            }
        }
        for args in TAKEN {
            assert!(parse(os(args)).is_some(), "{args:?}: left to clap");
        }
        for args in LEFT {
            assert!(
                parse(os(args)).is_none(),
                "{args:?}: taken by the fast parse"
            );
        }
    }

    /// A program's arguments are passed as they are, bytes that are not UTF-8 included, as
    /// clap passes them.
    #[test]
    fn a_programs_arguments_need_not_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let mut args = os(&["sandbox", "run", "--tier", "b", "--", "/bin/echo"]);
        args.push(OsString::from_vec(vec![0xff, b'x']));
        let fast = parse(args.clone()).expect("taken");
        let clap = Cli::try_parse_from(args).expect("clap");
        assert_eq!(format!("{fast:?}"), format!("{clap:?}"));
        // Before the program, only UTF-8 is taken.
        let mut args = os(&["sandbox", "run", "--tier"]);
        args.push(OsString::from_vec(vec![0xff]));
        args.push("p".into());
        assert!(parse(args).is_none());
    }
}
