//! Every program a command line would run, for the shell-rules extension: pipes, `;`, `&&`,
//! `||`, `&`, subshells, `$(…)` and backticks (also inside double quotes), leading variable
//! assignments, and programs that run other programs or code, not only the first word.
//!
//! Programs that run programs are reviewed data (`policy-profiles/exec-wrappers.toml`): a
//! wrapper (`env`, `nice`, `timeout`, `xargs`, …) is decided as the program it runs (and as
//! itself too when it changes privilege, root or namespaces); a program that runs code loongd
//! cannot read (a shell, an interpreter, `awk`, `find -exec`, …) is decided as itself, so only
//! a token that grants that program itself may run it. A shell's `-c` script, `find -exec`'s
//! command and the like are decided as well. The shell `shell.exec` starts is the tool's own
//! and is not decided ([`CommandLine::Script`]); a shell named in the script is.

use std::{path::Path, sync::LazyLock};

use loong_profiles::exec::{parse_runners, Runner, Runners, Runs};

/// Recursion bound for nested scripts, substitutions and wrappers.
pub const MAX_DEPTH: usize = 16;
/// Directories whose programs are decided by their name when named by path (`/bin/ls` is
/// `ls`): root-owned and read-only in every sandbox. A program named by any other path is
/// decided as that path, as written.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];
/// Variables that change which program a name runs, or make a shell run code of its own: a
/// command line that sets one is denied, whatever the grants.
pub const EXEC_VARIABLES: &[&str] = &[
    "PATH",
    "SHELL",
    "ENV",
    "BASH_ENV",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "GCONV_PATH",
];
/// Prefixes of such variables (the dynamic loader's, bash's exported functions).
pub const EXEC_VARIABLE_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_"];
/// Whether setting `name` can change which program a name runs or make a program run other
/// code ([`EXEC_VARIABLES`], [`EXEC_VARIABLE_PREFIXES`]).
pub fn is_exec_variable(name: &str) -> bool {
    EXEC_VARIABLES.contains(&name) || EXEC_VARIABLE_PREFIXES.iter().any(|p| name.starts_with(p))
}
/// Marks a script's word whose value the shell computes (an unquoted `$…`, substitution or
/// glob): it may become other words, or none, when the shell splits and globs it. No script
/// holds it (one with a NUL byte is refused), and no program name ends with it.
const COMPUTED: char = '\0';
/// The characters that separate words, as /bin/sh reads a line (a newline ends a command).
const BLANKS: [char; 2] = [' ', '\t'];
/// Builtins whose `NAME=value` arguments set variables.
const SETTERS: &[&str] = &["export", "declare", "typeset", "local", "readonly"];
/// Reserved words that may start a command and are followed by one.
const RESERVED_PREFIX: &[&str] = &["!", "if", "then", "else", "elif", "do", "while", "until"];
/// Reserved words whose command runs no program itself (its substitutions are still seen).
const RESERVED_WHOLE: &[&str] = &[
    "fi", "done", "esac", "for", "select", "case", "function", "in",
];

/// The bundled list of programs that run programs does not parse (then every command line
/// is denied); each problem names its line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct RunnersInvalid {
    pub problems: Vec<String>,
}

/// The bundled list of programs that run programs, or why it does not parse.
static RUNNERS: LazyLock<Result<Runners, RunnersInvalid>> = LazyLock::new(|| {
    parse_runners(loong_profiles::EXEC_WRAPPERS, "exec-wrappers.toml").map_err(|ps| {
        RunnersInvalid {
            problems: ps.iter().map(ToString::to_string).collect(),
        }
    })
});

/// Whether the bundled list of programs that run programs is valid; `Err` says why not.
pub fn check_runners() -> Result<(), RunnersInvalid> {
    RUNNERS.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// A command line to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandLine<'a> {
    /// A program and its arguments, as `execve` gets them.
    Argv(&'a [String]),
    /// A script for the shell a tool starts itself (`shell.exec`): that shell is implied by
    /// the tool; what the script runs is decided.
    Script(&'a str),
}

impl CommandLine<'_> {
    /// What it would run.
    pub fn plan(&self) -> Plan {
        let runners = match RUNNERS.as_ref() {
            Ok(r) => r,
            Err(why) => {
                return Plan {
                    programs: Vec::new(),
                    refusals: vec![format!("cannot be read: {why}")],
                }
            }
        };
        let mut w = Walker {
            runners,
            plan: Plan::default(),
        };
        match self {
            CommandLine::Argv(argv) => w.command(argv, 0),
            CommandLine::Script(s) => w.script(s, 0),
        }
        w.plan
    }

    /// The whole command line as text (for the risk profile's keywords).
    pub fn text(&self) -> String {
        match self {
            CommandLine::Argv(argv) => argv.join(" "),
            CommandLine::Script(s) => (*s).to_string(),
        }
    }
}

/// How a program a command line runs is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// It runs only itself.
    Plain,
    /// It runs code loongd cannot read: the token must grant it itself.
    Code,
    /// It runs another program with other privileges, root or namespaces: decided as itself
    /// as well as that program.
    Privileged,
}

/// One program a command line runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Its name (a basename), or the path it was named by outside [`SYSTEM_DIRS`].
    pub name: String,
    pub how: How,
}

/// What a command line would run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every program, in evaluation order (repeats kept); a wrapper that runs its operand
    /// stands here as that operand.
    pub programs: Vec<Program>,
    /// Why the line is denied whatever the grants (it sets `PATH`, nests too deeply, …).
    pub refusals: Vec<String>,
}

impl Plan {
    /// The programs' names.
    pub fn names(&self) -> Vec<String> {
        self.programs.iter().map(|p| p.name.clone()).collect()
    }
}

/// The programs `argv` would run (names, in evaluation order, repeats kept).
pub fn programs(argv: &[String]) -> Vec<String> {
    CommandLine::Argv(argv).plan().names()
}

struct Walker<'r> {
    runners: &'r Runners,
    plan: Plan,
}

impl Walker<'_> {
    fn push(&mut self, name: &str, how: How) {
        self.plan.programs.push(Program {
            name: name.to_string(),
            how,
        });
    }

    fn refuse(&mut self, why: String) {
        if !self.plan.refusals.contains(&why) {
            self.plan.refusals.push(why);
        }
    }

    /// A `NAME=value` setting: refused when NAME changes what programs run.
    fn assignment(&mut self, w: &str) {
        let Some((name, _)) = w.split_once('=') else {
            return;
        };
        if is_exec_variable(name) {
            self.refuse(format!("sets {name}, which changes what programs run"));
        }
    }

    /// One simple command: `words` as `execve` would get them.
    fn command(&mut self, words: &[String], depth: usize) {
        if depth > MAX_DEPTH {
            self.refuse(format!("nests programs more than {MAX_DEPTH} deep"));
            return;
        }
        let mut i = 0;
        while words.get(i).is_some_and(|w| is_assignment(w)) {
            self.assignment(&words[i]);
            i += 1;
        }
        let Some(first) = words.get(i) else { return };
        let name = program_name(first.trim_end_matches(COMPUTED));
        let rest = &words[i + 1..];
        match self.runners.get(&name) {
            None => {
                self.push(&name, How::Plain);
                if SETTERS.contains(&name.as_str()) {
                    for w in rest.iter().filter(|w| is_assignment(w)) {
                        self.assignment(w);
                    }
                }
                // `read NAME…` and `getopts OPTS NAME` set the variables they name.
                if matches!(name.as_str(), "read" | "getopts") {
                    for w in rest.iter().filter(|w| !w.starts_with('-')) {
                        self.assignment(&format!("{}=", w.trim_end_matches(COMPUTED)));
                    }
                }
            }
            Some(r) => match r.runs {
                Runs::Code => {
                    self.push(&name, How::Code);
                    self.embedded(r, rest, depth);
                }
                Runs::Shell => {
                    self.push(&name, How::Code);
                    self.shell(rest, depth);
                }
                Runs::Argument => self.wrapper(&name, r, rest, depth),
            },
        }
    }

    /// A wrapper: decided as the program it runs (and as itself when it is privileged).
    fn wrapper(&mut self, name: &str, r: &Runner, rest: &[String], depth: usize) {
        if r.itself {
            self.push(name, How::Privileged);
        }
        let seen = self.plan.programs.len();
        let mut i = 0;
        let mut operands = 0;
        while let Some(w) = rest.get(i) {
            if w == "--" {
                i += 1;
                break;
            }
            if operands == 0 && w.len() > 1 && w.starts_with('-') {
                match self.option(r, rest, i, depth) {
                    Some(next) => {
                        i = next;
                        continue;
                    }
                    None => {
                        // An option the list does not know: what it runs cannot be read.
                        self.push(name, How::Code);
                        return;
                    }
                }
            }
            // env takes any NAME=value, whatever NAME is.
            if operands == 0 && r.assignments && w.contains('=') {
                self.assignment(w);
                i += 1;
                continue;
            }
            if operands < r.positionals {
                operands += 1;
                i += 1;
                continue;
            }
            break;
        }
        // A computed word before the program may split or glob into other words (`nice -n
        // $x cat` with x='5 sh'): which program runs cannot be read.
        if rest[..i.min(rest.len())]
            .iter()
            .any(|w| w.ends_with(COMPUTED))
        {
            self.push(name, How::Code);
            return;
        }
        i += r.positionals.saturating_sub(operands);
        if i < rest.len() {
            self.command(&rest[i..], depth + 1);
        } else if let Some(d) = &r.default {
            self.push(d, How::Plain);
        } else if !r.itself && self.plan.programs.len() == seen {
            // Nothing named and no script given (`env`, `nice`): it runs only itself.
            self.push(name, How::Plain);
        }
    }

    /// Reads the option at `rest[i]` of wrapper `r`; the index after it, or `None` when the
    /// list does not know it.
    fn option(&mut self, r: &Runner, rest: &[String], i: usize, depth: usize) -> Option<usize> {
        let w = &rest[i];
        let has = |list: &[String], o: &str| list.iter().any(|x| x == o);
        if let Some(body) = w.strip_prefix("--") {
            let (key, value) = match body.split_once('=') {
                Some((k, v)) => (format!("--{k}"), Some(v.to_string())),
                None => (w.clone(), None),
            };
            let taken = if value.is_some() { i + 1 } else { i + 2 };
            if value.is_none() && has(&r.flags, &key) {
                return Some(i + 1);
            }
            if has(&r.value_options, &key) {
                return Some(taken);
            }
            if has(&r.script_options, &key) {
                if let Some(s) = value.or_else(|| rest.get(i + 1).cloned()) {
                    self.script(&s, depth + 1);
                }
                return Some(taken);
            }
            return None;
        }
        if has(&r.flags, w) {
            return Some(i + 1);
        }
        if r.digit_options && w[1..].chars().all(|c| c.is_ascii_digit()) {
            return Some(i + 1);
        }
        // A cluster of short options; a value option takes the rest of it or the next word.
        let chars: Vec<char> = w[1..].chars().collect();
        for (k, ch) in chars.iter().enumerate() {
            let opt = format!("-{ch}");
            if has(&r.flags, &opt) {
                continue;
            }
            let attached: String = chars[k + 1..].iter().collect();
            let taken = if attached.is_empty() { i + 2 } else { i + 1 };
            if has(&r.value_options, &opt) {
                return Some(taken);
            }
            if has(&r.script_options, &opt) {
                let s = if attached.is_empty() {
                    rest.get(i + 1).cloned()
                } else {
                    Some(attached)
                };
                if let Some(s) = s {
                    self.script(&s, depth + 1);
                }
                return Some(taken);
            }
            return None;
        }
        Some(i + 1)
    }

    /// The command lines and commands a code-running program names in its arguments.
    fn embedded(&mut self, r: &Runner, rest: &[String], depth: usize) {
        let mut i = 0;
        while let Some(w) = rest.get(i) {
            if r.command_options.iter().any(|o| o == w) {
                let end = rest[i + 1..]
                    .iter()
                    .position(|x| x == ";" || x == "+")
                    .map_or(rest.len(), |p| i + 1 + p);
                self.command(&rest[i + 1..end], depth + 1);
                i = end + 1;
                continue;
            }
            if r.script_options.iter().any(|o| o == w) {
                if let Some(s) = rest.get(i + 1) {
                    self.script(s, depth + 1);
                }
                i += 2;
                continue;
            }
            if let Some((k, v)) = w.split_once('=') {
                if k.starts_with("--") && r.script_options.iter().any(|o| o == k) {
                    self.script(v, depth + 1);
                }
            }
            i += 1;
        }
    }

    /// A shell's arguments: with `-c`, its first operand is a script.
    fn shell(&mut self, rest: &[String], depth: usize) {
        let mut i = 0;
        let mut script = false;
        while let Some(w) = rest.get(i) {
            if w == "--" || w == "-" {
                i += 1;
                break;
            }
            if w.len() < 2 || !(w.starts_with('-') || w.starts_with('+')) {
                break;
            }
            if w.starts_with("--") {
                i += if matches!(w.as_str(), "--rcfile" | "--init-file") {
                    2
                } else {
                    1
                };
                continue;
            }
            let opts = &w[1..];
            script |= w.starts_with('-') && opts.contains('c');
            // `-o NAME` / `+o NAME` / `-O NAME` take a value.
            i += if opts.contains('o') || opts.contains('O') {
                2
            } else {
                1
            };
        }
        if script {
            if let Some(s) = rest.get(i) {
                self.script(s, depth + 1);
            }
        }
    }

    /// Splits a script into simple commands and decides each.
    fn script(&mut self, script: &str, depth: usize) {
        if depth > MAX_DEPTH {
            self.refuse(format!("nests programs more than {MAX_DEPTH} deep"));
            return;
        }
        if script.contains('\0') {
            self.refuse("holds a NUL byte, which no shell reads".into());
        }
        // `\` before a line break joins the lines before anything else is read, so it can
        // make `<<`, `$(` or a quote out of what is read here as two words.
        if script.contains("\\\n") {
            self.refuse("continues a line with a backslash, which the shell rules do not read; write the command on one line".into());
        }
        // `${NAME=value}` and `${NAME:=value}` set NAME as they expand.
        for (at, _) in script.match_indices("${") {
            let name: String = script[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let after = &script[at + 2 + name.len()..];
            if !name.is_empty() && (after.starts_with('=') || after.starts_with(":=")) {
                self.assignment(&format!("{name}="));
            }
        }
        let mut words: Vec<String> = Vec::new();
        // Whether each word was written without quotes or escapes (only those can be
        // reserved words).
        let mut bare: Vec<bool> = Vec::new();
        // Whether each word has quotes or escapes before its first `=`: `'x=/tmp/a'` is a
        // command to the shell, not an assignment.
        let mut named_quoted: Vec<bool> = Vec::new();
        let mut first_quote: Option<usize> = None;
        let mut word = String::new();
        let mut in_word = false;
        let mut quoted = false;
        let chars: Vec<char> = script.chars().collect();
        let mut i = 0;
        // Whether the current word holds an unquoted expansion.
        let mut computed = false;
        macro_rules! flush_word {
            () => {
                if in_word {
                    let early = first_quote.take().is_some_and(|q| !word[..q].contains('='));
                    if std::mem::take(&mut computed) {
                        word.push(COMPUTED);
                    }
                    words.push(std::mem::take(&mut word));
                    bare.push(!quoted);
                    named_quoted.push(early);
                    in_word = false;
                    quoted = false;
                }
            };
        }
        macro_rules! end_command {
            () => {
                if !words.is_empty() {
                    self.simple(&words, &bare, &named_quoted, depth);
                    words.clear();
                    bare.clear();
                    named_quoted.clear();
                }
            };
        }
        while i < chars.len() {
            let c = chars[i];
            let prev = i.checked_sub(1).map(|p| chars[p]);
            match c {
                // A comment, to the end of the line.
                '#' if !in_word => {
                    while i + 1 < chars.len() && chars[i + 1] != '\n' {
                        i += 1;
                    }
                }
                // A here-document's body is not read as the shell reads it (quotes in it are
                // text), and `$'…'` quoting differs between shells: the line is refused.
                '<' if chars.get(i + 1) == Some(&'<') => {
                    self.refuse("uses a here-document, which the shell rules do not read; pipe the text in with echo or printf instead".into());
                    word.push(c);
                    in_word = true;
                }
                '$' if chars.get(i + 1) == Some(&'\'') => {
                    self.refuse(
                        "uses $'…' quoting, which the shell rules do not read; use '…' or \"…\""
                            .into(),
                    );
                    word.push(c);
                    in_word = true;
                }
                '\'' => {
                    in_word = true;
                    quoted = true;
                    first_quote.get_or_insert(word.len());
                    i += 1;
                    while i < chars.len() && chars[i] != '\'' {
                        word.push(chars[i]);
                        i += 1;
                    }
                }
                '"' => {
                    in_word = true;
                    quoted = true;
                    first_quote.get_or_insert(word.len());
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        if chars[i] == '\\' && i + 1 < chars.len() {
                            // Inside double quotes a backslash escapes only these.
                            if !"$`\"\\\n".contains(chars[i + 1]) {
                                word.push('\\');
                            }
                            word.push(chars[i + 1]);
                            i += 2;
                            continue;
                        }
                        if quoted_param(&chars, i) {
                            self.refuse(Trouble::QuoteInParam.why());
                        }
                        if chars[i] == '`' || (chars[i] == '$' && chars.get(i + 1) == Some(&'(')) {
                            let next = self.substitute(&chars, i, true, depth);
                            // The word keeps the substitution's text: it names no program.
                            word.extend(&chars[i..next.min(chars.len())]);
                            i = next;
                            continue;
                        }
                        word.push(chars[i]);
                        i += 1;
                    }
                }
                '\\' => {
                    in_word = true;
                    quoted = true;
                    first_quote.get_or_insert(word.len());
                    if let Some(n) = chars.get(i + 1) {
                        word.push(*n);
                    }
                    i += 1;
                }
                '`' | '$' if c == '`' || chars.get(i + 1) == Some(&'(') => {
                    let next = self.substitute(&chars, i, false, depth);
                    word.extend(&chars[i..next.min(chars.len())]);
                    in_word = true;
                    quoted = true;
                    first_quote.get_or_insert(word.len());
                    computed = true;
                    i = next;
                    continue;
                }
                // A parameter expansion or a glob: the shell computes the word.
                '$' | '*' | '?' | '[' => {
                    in_word = true;
                    computed = true;
                    word.push(c);
                }
                // Redirections `2>&1`, `<&0` and `>|file` are words, not separators. (`&>` is
                // bash's; /bin/sh reads `a &>f b` as `a &` then `>f b`, so `&` stays one.)
                '&' if matches!(prev, Some('>' | '<')) => {
                    in_word = true;
                    word.push(c);
                }
                '|' if prev == Some('>') => {
                    in_word = true;
                    word.push(c);
                }
                // `{` and `}` group commands only as words of their own (`{}` is a word).
                '{' | '}'
                    if in_word
                        || !chars
                            .get(i + 1)
                            .is_none_or(|n| BLANKS.contains(n) || ";|&)\n".contains(*n)) =>
                {
                    in_word = true;
                    word.push(c);
                }
                '|' | ';' | '&' | '\n' | '(' | ')' | '{' | '}' => {
                    flush_word!();
                    end_command!();
                }
                c if BLANKS.contains(&c) => flush_word!(),
                c => {
                    in_word = true;
                    word.push(c);
                }
            }
            i += 1;
        }
        if in_word {
            let early = first_quote.is_some_and(|q| !word[..q].contains('='));
            if computed {
                word.push(COMPUTED);
            }
            words.push(word);
            bare.push(!quoted);
            named_quoted.push(early);
        }
        end_command!();
    }

    /// Decides the substitution starting at `chars[i]` (inside double quotes or not); the
    /// index after it.
    fn substitute(&mut self, chars: &[char], i: usize, in_quotes: bool, depth: usize) -> usize {
        let mut trouble = None;
        let (inner, next) = nested(chars, i, in_quotes, 0, &mut trouble);
        if depth >= MAX_DEPTH {
            trouble = Some(Trouble::TooDeep);
        }
        if let Some(why) = trouble {
            self.refuse(why.why());
            return next;
        }
        if chars[i] == '$'
            && inner
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == "case")
        {
            self.refuse("uses case inside $(…), whose patterns end in `)`, which the shell rules do not read; use if, or backticks".into());
        }
        self.script(&inner, depth + 1);
        next
    }

    /// One simple command of a script: reserved words first, then the command, without its
    /// redirections (which may stand anywhere in it).
    fn simple(&mut self, words: &[String], bare: &[bool], named_quoted: &[bool], depth: usize) {
        let mut i = 0;
        while i < words.len() && bare[i] && RESERVED_PREFIX.contains(&words[i].as_str()) {
            i += 1;
        }
        if i < words.len() && bare[i] && RESERVED_WHOLE.contains(&words[i].as_str()) {
            // `for NAME in …` sets NAME.
            if words[i] == "for" {
                if let Some(name) = words.get(i + 1) {
                    self.assignment(&format!("{name}="));
                }
            }
            return;
        }
        let mut kept = Vec::new();
        let mut early = Vec::new();
        while i < words.len() {
            match redirection(&words[i]).filter(|_| bare[i]) {
                Some(Operand::Next) => i += 2,
                Some(Operand::Attached) => i += 1,
                None => {
                    kept.push(words[i].clone());
                    early.push(named_quoted.get(i).copied().unwrap_or(false));
                    i += 1;
                }
            }
        }
        // A word like an assignment whose name is quoted is the command (`'x=/tmp/a'` runs
        // the program at that relative path).
        let settings = kept
            .iter()
            .zip(&early)
            .take_while(|(w, q)| is_assignment(w) && !**q)
            .count();
        if let Some(word) = kept.get(settings).filter(|w| is_assignment(w)) {
            for w in &kept[..settings] {
                self.assignment(w);
            }
            self.push(&program_name(word.trim_end_matches(COMPUTED)), How::Plain);
            return;
        }
        self.command(&kept, depth);
    }
}

/// The name a command word is decided as: its basename when it names no directory or one of
/// [`SYSTEM_DIRS`], otherwise the word as written.
fn program_name(word: &str) -> String {
    let path = Path::new(word);
    let base = path.file_name().and_then(|n| n.to_str());
    match (word.contains('/'), base) {
        (false, _) => word.to_string(),
        (true, Some(base)) => {
            let parent = path.parent().and_then(|p| p.to_str()).unwrap_or_default();
            if SYSTEM_DIRS.contains(&parent) {
                base.to_string()
            } else {
                word.to_string()
            }
        }
        (true, None) => word.to_string(),
    }
}

/// Where a redirection's file or descriptor is.
enum Operand {
    /// In the next word (`> out`).
    Next,
    /// In the same word (`>out`, `2>&1`).
    Attached,
}

/// Whether `w` is a redirection (`>`, `2>>`, `<&0`, `&>f`, `<<<`, `>|`, …), and where its
/// operand is.
fn redirection(w: &str) -> Option<Operand> {
    const OPERATORS: &[&str] = &[
        "<<<", "<<-", "&>>", ">>", "<<", "<&", ">&", "&>", "<>", ">|", "<", ">",
    ];
    let rest = w.trim_start_matches(|c: char| c.is_ascii_digit());
    let op = OPERATORS.iter().find(|op| rest.starts_with(*op))?;
    if rest.len() == op.len() {
        Some(Operand::Next)
    } else {
        Some(Operand::Attached)
    }
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// The text of a `$(…)` or backtick substitution starting at `i`, and the index after it.
/// Quotes, escapes and comments inside it are skipped over, so a `)` or a backtick in them
/// does not end it early.
/// In backticks, `\$`, `` \` `` and `\\` (and `\"` inside double quotes) lose their backslash
/// before the command is read, as the shell does, so nested backticks are read as such.
/// `level` substitutions deep; sets `trouble` to why it cannot be read (past [`MAX_DEPTH`]
/// levels, or quotes inside a `${…}` inside double quotes).
fn nested(
    chars: &[char],
    i: usize,
    in_quotes: bool,
    level: usize,
    trouble: &mut Option<Trouble>,
) -> (String, usize) {
    let backtick = chars[i] == '`';
    let mut j = if backtick { i + 1 } else { i + 2 };
    let mut depth = 0;
    let mut s = String::new();
    let take = |j: &mut usize, s: &mut String| {
        if let Some(c) = chars.get(*j) {
            s.push(*c);
        }
        *j += 1;
    };
    while j < chars.len() {
        match chars[j] {
            '`' if backtick => return (s, j + 1),
            '\\' if backtick
                && chars
                    .get(j + 1)
                    .is_some_and(|n| "$`\\".contains(*n) || (in_quotes && *n == '"')) =>
            {
                j += 1;
            }
            ')' if !backtick && depth == 0 => return (s, j + 1),
            ')' if !backtick => depth -= 1,
            '(' if !backtick => depth += 1,
            '\\' => take(&mut j, &mut s),
            '\'' if !backtick => {
                take(&mut j, &mut s);
                while j < chars.len() && chars[j] != '\'' {
                    take(&mut j, &mut s);
                }
            }
            // Nested substitutions, parameter expansions and double-quoted strings are
            // skipped whole: a `)` inside `${x:-)}` or `` `echo )` `` does not end this one.
            '"' | '`' | '$' if !backtick => {
                let end = nested_end(chars, j, level + 1, trouble);
                if end > j + 1 {
                    s.extend(&chars[j..end.min(chars.len())]);
                    j = end;
                    continue;
                }
            }
            '#' if !backtick
                && j > 0
                && (BLANKS.contains(&chars[j - 1]) || "(\n".contains(chars[j - 1])) =>
            {
                while j + 1 < chars.len() && chars[j + 1] != '\n' {
                    take(&mut j, &mut s);
                }
            }
            _ => {}
        }
        take(&mut j, &mut s);
    }
    (s, j)
}

/// Why a substitution cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// It nests past [`MAX_DEPTH`] levels.
    TooDeep,
    /// A `${…}` inside double quotes holds quotes.
    QuoteInParam,
}

impl Trouble {
    fn why(self) -> String {
        match self {
            Trouble::TooDeep => format!("nests programs more than {MAX_DEPTH} deep"),
            Trouble::QuoteInParam => "puts quotes inside a ${…} within double quotes, which /bin/sh reads as quotes or as text depending on the operator; set a variable first".into(),
        }
    }
}

/// Whether `chars[i]` starts a `${…}` that holds a quote character (read inside double
/// quotes).
fn quoted_param(chars: &[char], i: usize) -> bool {
    if chars[i] != '$' || chars.get(i + 1) != Some(&'{') {
        return false;
    }
    let mut braces = 1;
    let mut k = i + 2;
    while k < chars.len() {
        match chars[k] {
            '\\' => k += 1,
            '\'' | '"' => return true,
            '{' if chars[k - 1] == '$' => braces += 1,
            '}' => {
                braces -= 1;
                if braces == 0 {
                    return false;
                }
            }
            _ => {}
        }
        k += 1;
    }
    false
}

/// Where the quoted string, substitution or parameter expansion starting at `chars[j]` ends
/// (the index after it), as the shell reads it inside `$(…)`; `j + 1` when none starts there.
/// Past [`MAX_DEPTH`] nested levels it takes the rest of the text and sets `trouble`.
fn nested_end(chars: &[char], j: usize, level: usize, trouble: &mut Option<Trouble>) -> usize {
    if level > MAX_DEPTH {
        *trouble = Some(Trouble::TooDeep);
        return chars.len();
    }
    match (chars[j], chars.get(j + 1)) {
        ('`', _) | ('$', Some('(')) => nested(chars, j, false, level, trouble).1,
        ('$', Some('{')) => {
            let mut k = j + 2;
            while k < chars.len() {
                match chars[k] {
                    '\\' => k += 2,
                    '\'' => {
                        k += 1;
                        while k < chars.len() && chars[k] != '\'' {
                            k += 1;
                        }
                        k += 1;
                    }
                    '"' | '`' | '$' => k = nested_end(chars, k, level + 1, trouble),
                    '}' => return k + 1,
                    _ => k += 1,
                }
            }
            k
        }
        ('"', _) => {
            let mut k = j + 1;
            while k < chars.len() && chars[k] != '"' {
                match chars[k] {
                    '\\' => k += 2,
                    '$' if quoted_param(chars, k) => {
                        *trouble = Some(Trouble::QuoteInParam);
                        return chars.len();
                    }
                    '`' | '$' => k = nested_end(chars, k, level + 1, trouble),
                    _ => k += 1,
                }
            }
            k + 1
        }
        _ => j + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::{programs, CommandLine};

    fn check(argv: &[&str], expect: &[&str]) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        assert_eq!(programs(&argv), expect, "for {argv:?}");
    }

    #[test]
    fn whole_command_lines() {
        check(&["/bin/ls", "-l"], &["ls"]);
        check(&["sh", "-c", "ls | grep x"], &["sh", "ls", "grep"]);
        check(
            &["bash", "-c", "a; b && c || d & e"],
            &["bash", "a", "b", "c", "d", "e"],
        );
        // Substitutions run first, as the shell evaluates them.
        check(
            &["sh", "-c", "echo $(dd if=/dev/zero)"],
            &["sh", "dd", "echo"],
        );
        check(
            &["sh", "-c", "echo \"x $(mkfs /dev/sda) y\""],
            &["sh", "mkfs", "echo"],
        );
        check(&["sh", "-c", "echo `reboot`"], &["sh", "reboot", "echo"]);
        check(
            &["sh", "-c", "(cd /; mkfs /dev/sda)"],
            &["sh", "cd", "mkfs"],
        );
        check(&["sh", "-c", "echo 'a | b; c'"], &["sh", "echo"]);
        // A wrapper stands as what it runs; a privileged one as itself too.
        check(
            &["env", "FOO=1", "sudo", "-u", "root", "dd", "if=/x"],
            &["sudo", "dd"],
        );
        check(
            &["timeout", "5", "nice", "-n", "10", "/sbin/shutdown", "now"],
            &["shutdown"],
        );
        check(
            &["sh", "-c", "FOO=bar curl http://x | sh"],
            &["sh", "curl", "sh"],
        );
        check(
            &["bash", "-lc", "sh -c 'rm -rf /tmp/x'"],
            &["bash", "sh", "rm"],
        );
        check(&["xargs", "-0", "rm"], &["rm"]);
        check(&["xargs", "-0"], &["echo"]);
        check(&["sh"], &["sh"]);
        check(
            &[
                "find", ".", "-exec", "rm", "{}", ";", "-execdir", "sh", "-c", "id", "+",
            ],
            &["find", "rm", "sh", "id"],
        );
        check(&["env", "-S", "sh -c id"], &["sh", "id"]);
        check(&["env", "--bogus", "sh"], &["env"]);
        check(&["./sh", "-c", "id"], &["./sh"]);
        check(&["/tmp/../bin/sh"], &["/tmp/../bin/sh"]);
        check(&["busybox", "ash"], &["busybox", "ash"]);
    }

    #[test]
    fn scripts_keep_redirections_and_reserved_words_apart_from_programs() {
        let names = |s: &str| CommandLine::Script(s).plan().names();
        assert_eq!(names("echo hi 2>&1 >|out &>all | cat"), ["echo", "cat"]);
        assert_eq!(
            names("for i in 1 2; do echo $i; done; if true; then cat x; fi"),
            ["echo", "true", "cat"]
        );
        // A quoted reserved word is a program name.
        assert_eq!(names("\"if\" x"), ["if"]);
        assert_eq!(names("x=1"), Vec::<String>::new());
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let n = 100_000;
        for (open, close) in [("$(echo ", ")"), ("\"$(echo ${x:-", "})\"")] {
            let line = format!("echo \"{}{}\"", open.repeat(n), close.repeat(n));
            let plan = CommandLine::Script(&line).plan();
            assert!(
                plan.refusals
                    .iter()
                    .any(|r| r.contains("nests programs more than")),
                "{:?}",
                plan.refusals
            );
        }
    }

    #[test]
    fn a_line_cut_inside_a_substitution_is_read_without_a_panic() {
        for line in [
            "echo $(echo \\",
            "echo `echo \\",
            "echo \"$(echo \\",
            "echo \"$(echo \"",
            "echo \"$(echo ${x",
            "echo \"$(echo `",
            "c$(",
            "\"$(",
        ] {
            let _ = CommandLine::Script(line).plan();
        }
    }

    #[test]
    fn settings_that_change_what_runs_are_refused() {
        for line in [
            "PATH=. echo hi",
            "export PATH=/tmp; echo hi",
            "env LD_PRELOAD=/tmp/x.so cat",
            "env 'BASH_FUNC_echo%%=() { sh; }' echo",
            "IFS=/ echo",
        ] {
            let plan = CommandLine::Script(line).plan();
            assert!(!plan.refusals.is_empty(), "{line}: {plan:?}");
        }
        assert!(CommandLine::Script("FOO=1 echo").plan().refusals.is_empty());
    }
}
