//! Every program a command line would run, for the shell-rules extension: pipes, `;`, `&&`,
//! `||`, `&`, subshells, `$(…)` and backticks (also inside double quotes), leading variable
//! assignments, wrappers (`env`, `sudo`, `nice`, `timeout`, `xargs`, …) and `sh -c` scripts
//! (recursively), not only the first word.

use std::path::Path;

/// Programs that run their arguments as another program.
const WRAPPERS: &[&str] = &[
    "env", "sudo", "doas", "nice", "nohup", "timeout", "exec", "command", "xargs", "stdbuf",
    "setsid", "time", "ionice", "chroot", "unshare", "nsenter", "busybox",
];
/// Shells whose `-c` argument is a script.
const SHELLS: &[&str] = &["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh"];
/// Recursion bound for nested `sh -c` and substitutions.
const MAX_DEPTH: usize = 16;

fn base(p: &str) -> String {
    Path::new(p)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(p)
        .to_string()
}

/// The programs `argv` would run (basenames, in evaluation order, repeats kept).
pub fn programs(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    command(argv, 0, &mut out);
    out
}

fn command(argv: &[String], depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        out.push("<too deeply nested>".into());
        return;
    }
    // Leading VAR=value assignments are not programs.
    let mut words = argv.iter().skip_while(|w| is_assignment(w));
    let Some(first) = words.next() else { return };
    let prog = base(first);
    out.push(prog.clone());
    let rest: Vec<String> = words.cloned().collect();
    if SHELLS.contains(&prog.as_str()) {
        if let Some(i) = rest.iter().position(|w| {
            w == "-c" || (w.starts_with('-') && !w.starts_with("--") && w.contains('c'))
        }) {
            if let Some(script) = rest.get(i + 1) {
                parse_script(script, depth + 1, out);
            }
        }
    } else if WRAPPERS.contains(&prog.as_str()) {
        // Skip the wrapper's own options (and a numeric/duration argument of timeout/nice).
        let mut i = 0;
        while i < rest.len()
            && (rest[i].starts_with('-')
                || is_assignment(&rest[i])
                || (i == 0 && rest[i].chars().next().is_some_and(|c| c.is_ascii_digit())))
        {
            // `sudo -u USER`, `nice -n N`, `timeout -s SIG`: options taking a value.
            if matches!(
                rest[i].as_str(),
                "-u" | "-g" | "-n" | "-s" | "-k" | "-C" | "-i" | "-o" | "-e"
            ) {
                i += 1;
            }
            i += 1;
        }
        command(&rest[i.min(rest.len())..], depth + 1, out);
    }
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// Splits a script into simple commands and collects their programs.
fn parse_script(script: &str, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        out.push("<too deeply nested>".into());
        return;
    }
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let chars: Vec<char> = script.chars().collect();
    let mut i = 0;
    let flush_word = |words: &mut Vec<String>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    let end_command = |words: &mut Vec<String>, out: &mut Vec<String>| {
        if !words.is_empty() {
            command(words, depth, out);
            words.clear();
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        word.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    if chars[i] == '`' || (chars[i] == '$' && chars.get(i + 1) == Some(&'(')) {
                        let (inner, next) = substitution(&chars, i);
                        parse_script(&inner, depth + 1, out);
                        i = next;
                        continue;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.get(i + 1) {
                    word.push(*n);
                }
                i += 1;
            }
            '`' | '$' if c == '`' || chars.get(i + 1) == Some(&'(') => {
                let (inner, next) = substitution(&chars, i);
                parse_script(&inner, depth + 1, out);
                in_word = true;
                i = next;
                continue;
            }
            '|' | ';' | '&' | '\n' | '(' | ')' | '{' | '}' => {
                flush_word(&mut words, &mut word, &mut in_word);
                end_command(&mut words, out);
            }
            c if c.is_whitespace() => flush_word(&mut words, &mut word, &mut in_word),
            c => {
                in_word = true;
                word.push(c);
            }
        }
        i += 1;
    }
    flush_word(&mut words, &mut word, &mut in_word);
    end_command(&mut words, out);
}

/// The text of a `$(…)` or backtick substitution starting at `i`, and the index after it.
fn substitution(chars: &[char], i: usize) -> (String, usize) {
    if chars[i] == '`' {
        let mut j = i + 1;
        let mut s = String::new();
        while j < chars.len() && chars[j] != '`' {
            s.push(chars[j]);
            j += 1;
        }
        return (s, j + 1);
    }
    let mut depth = 0;
    let mut j = i + 2;
    let mut s = String::new();
    while j < chars.len() {
        match chars[j] {
            '(' => depth += 1,
            ')' if depth == 0 => return (s, j + 1),
            ')' => depth -= 1,
            _ => {}
        }
        s.push(chars[j]);
        j += 1;
    }
    (s, j)
}

#[cfg(test)]
mod tests {
    use super::programs;

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
        check(
            &["env", "FOO=1", "sudo", "-u", "root", "dd", "if=/x"],
            &["env", "sudo", "dd"],
        );
        check(
            &["timeout", "5", "nice", "-n", "10", "/sbin/shutdown", "now"],
            &["timeout", "nice", "shutdown"],
        );
        check(
            &["sh", "-c", "FOO=bar curl http://x | sh"],
            &["sh", "curl", "sh"],
        );
        check(
            &["bash", "-lc", "sh -c 'rm -rf /tmp/x'"],
            &["bash", "sh", "rm"],
        );
        check(&["xargs", "-0", "rm"], &["xargs", "rm"]);
        check(&["sh"], &["sh"]);
    }
}
