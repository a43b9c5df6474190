//! Programs that run other programs or code (`exec-wrappers.toml`): for each, what it runs
//! and how its command line is read, so that the shell rules decide it as what it would run.

use std::collections::BTreeMap;

use toml_edit::TableLike;

use crate::{
    doc::{join, Ctx},
    Problem,
};

/// How a listed program is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Runs its first operand as a program: decided as that program (and as itself when
    /// [`Runner::itself`]).
    Argument,
    /// Runs code loongd cannot read: decided as itself.
    Code,
    /// A shell: decided as itself, and its `-c` script as a command line.
    Shell,
}

/// One program that runs other programs or code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    pub runs: Runs,
    /// What it runs, for review.
    pub what: String,
    /// Also decided as itself (it changes privilege, root or namespaces).
    pub itself: bool,
    /// Options that take no value.
    pub flags: Vec<String>,
    /// Options that take a value.
    pub value_options: Vec<String>,
    /// Options whose value is a command line.
    pub script_options: Vec<String>,
    /// Options followed by a program and its arguments, up to `;` or `+`.
    pub command_options: Vec<String>,
    /// Operands before the program (a duration, a lock file, a CPU mask).
    pub positionals: usize,
    /// `-N` (digits) is an option (`nice -10`).
    pub digit_options: bool,
    /// `NAME=value` operands before the program set its environment.
    pub assignments: bool,
    /// What it runs when no program is named.
    pub default: Option<String>,
}

/// Every listed program, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runners {
    pub programs: BTreeMap<String, Runner>,
}

impl Runners {
    /// The entry for `name`, or for a program that runs code under `name` without a version
    /// suffix (`python3.11`, `perl5`). A wrapper matches only its exact name: `env2` is not
    /// `env`, so it is never decided as what it runs.
    pub fn get(&self, name: &str) -> Option<&Runner> {
        self.programs.get(name).or_else(|| {
            let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
            (stem != name && !stem.is_empty())
                .then(|| self.programs.get(stem))
                .flatten()
                .filter(|r| r.runs != Runs::Argument)
        })
    }
}

const KEYS: &[&str] = &[
    "runs",
    "what",
    "itself",
    "flags",
    "value_options",
    "script_options",
    "command_options",
    "positionals",
    "digit_options",
    "assignments",
    "default",
];

/// Most operands a program may take before the one it runs.
pub const MAX_POSITIONALS: u64 = 4;

fn list(c: &mut Ctx<'_>, t: &dyn TableLike, key: &str, at: &str) -> Vec<String> {
    let Some(item) = t.get(key) else {
        return Vec::new();
    };
    let Some(arr) = item.as_array() else {
        c.add(item.span(), &join(at, key), "expected an array of strings");
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in arr.iter() {
        match v.as_str() {
            Some(s) if s.starts_with('-') => out.push(s.to_string()),
            Some(s) => c.add(
                v.span(),
                &join(at, key),
                format!("`{s}` is not an option; options start with `-`"),
            ),
            None => c.add(v.span(), &join(at, key), "expected a string"),
        }
    }
    out
}

/// Parses `exec-wrappers.toml`; `Err` holds every problem.
pub fn parse_runners(text: &str, file: &str) -> Result<Runners, Vec<Problem>> {
    let (mut c, doc) = crate::doc::open(text, file, &["program"])?;
    let mut programs = BTreeMap::new();
    if let Some(table) = c.table(doc.as_table(), "program", "") {
        for (name, item) in table.iter() {
            let at = format!("program.{name}");
            let Some(t) = item.as_table_like() else {
                c.add(item.span(), &at, "expected a table");
                continue;
            };
            c.known_keys(t, &at, KEYS);
            let span = item.span();
            let runs = match c.string(t, "runs", &at, span.clone()) {
                Some("argument") => Runs::Argument,
                Some("code") => Runs::Code,
                Some("shell") => Runs::Shell,
                Some(other) => {
                    c.add(
                        t.get("runs").and_then(|i| i.span()),
                        &join(&at, "runs"),
                        format!("`{other}` is not one of: argument, code, shell"),
                    );
                    continue;
                }
                None => continue,
            };
            let what = c
                .string(t, "what", &at, span)
                .map(str::to_string)
                .unwrap_or_default();
            let positionals = c.uint(t, "positionals", &at).unwrap_or(0);
            if positionals > MAX_POSITIONALS {
                c.add(
                    t.get("positionals").and_then(|i| i.span()),
                    &join(&at, "positionals"),
                    format!("{positionals} is above {MAX_POSITIONALS}"),
                );
            }
            let default = t
                .get("default")
                .and_then(|_| c.string(t, "default", &at, None));
            let runner = Runner {
                runs,
                what,
                itself: c.bool(t, "itself", &at, false),
                flags: list(&mut c, t, "flags", &at),
                value_options: list(&mut c, t, "value_options", &at),
                script_options: list(&mut c, t, "script_options", &at),
                command_options: list(&mut c, t, "command_options", &at),
                positionals: usize::try_from(positionals.min(MAX_POSITIONALS)).unwrap_or(0),
                digit_options: c.bool(t, "digit_options", &at, false),
                assignments: c.bool(t, "assignments", &at, false),
                default: default.map(str::to_string),
            };
            programs.insert(name.to_string(), runner);
        }
    }
    if c.problems.is_empty() {
        Ok(Runners { programs })
    } else {
        Err(c.problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_list_parses_and_each_entry_says_what_it_runs() {
        let r = parse_runners(crate::EXEC_WRAPPERS, "exec-wrappers.toml").expect("valid");
        assert!(r.programs.len() >= 40, "{}", r.programs.len());
        for (name, e) in &r.programs {
            assert!(!e.what.is_empty(), "{name} says what it runs");
        }
        assert_eq!(r.get("python3.11").map(|e| e.runs), Some(Runs::Code));
        assert_eq!(r.get("env").map(|e| e.runs), Some(Runs::Argument));
        assert!(r.get("cat").is_none());
        assert!(
            r.get("env2").is_none(),
            "a wrapper matches only its own name"
        );
    }

    #[test]
    fn problems_name_the_entry() {
        let errs = parse_runners(
            "[program.x]\nruns = \"maybe\"\nwhat = \"w\"\n[program.y]\nruns = \"argument\"\nflags = [\"f\"]\n",
            "w.toml",
        )
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|e| e.contains("program.x.runs")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("program.y.what")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("`f` is not an option")),
            "{text:?}"
        );
    }
}
