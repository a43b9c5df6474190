//! Tier profile files (`tiers/*.toml`).

use std::{collections::BTreeSet, ops::Range, path::PathBuf};

use loong_sandbox::{
    syscalls, LandlockMode, Namespaces, RlimitProfile, SeccompMode, SyscallEntry, SystemPath, Tier,
    TierProfile,
};
use toml_edit::{Item, TableLike};

use crate::Problem;

fn span_of(item: &Item) -> Option<Range<usize>> {
    item.span()
}

/// Parses a tier profile; `Err` holds every problem found.
pub fn parse_tier(text: &str, file: &str) -> Result<TierProfile, Vec<Problem>> {
    let (mut c, doc) = crate::doc::open(
        text,
        file,
        &[
            "tier",
            "namespaces",
            "landlock",
            "filesystem",
            "rlimits",
            "seccomp",
        ],
    )?;
    let root = doc.as_table() as &dyn TableLike;

    let tier = match root.get("tier") {
        None => {
            c.add(None, "tier", "missing: restricted, balanced or trusted");
            None
        }
        Some(i) => match i.as_str().map(str::parse::<Tier>) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                c.add(i.span(), "tier", e.to_string());
                None
            }
            None => {
                c.add(i.span(), "tier", "expected a string");
                None
            }
        },
    };

    let mut namespaces = Namespaces::default();
    if let Some(t) = c.table(root, "namespaces", "") {
        c.known_keys(t, "namespaces", &["pid", "mount", "net", "ipc", "uts"]);
        namespaces = Namespaces {
            pid: c.bool(t, "pid", "namespaces", false),
            mount: c.bool(t, "mount", "namespaces", false),
            net: c.bool(t, "net", "namespaces", false),
            ipc: c.bool(t, "ipc", "namespaces", false),
            uts: c.bool(t, "uts", "namespaces", false),
        };
    }

    let (mut landlock, mut landlock_net, mut landlock_scopes) = (LandlockMode::Off, false, false);
    if let Some(t) = c.table(root, "landlock", "") {
        c.known_keys(t, "landlock", &["mode", "net", "scopes"]);
        if let Some(i) = t.get("mode") {
            landlock = match i.as_str() {
                Some("required") => LandlockMode::Required,
                Some("best-effort") => LandlockMode::BestEffort,
                Some("off") => LandlockMode::Off,
                _ => {
                    c.add(
                        i.span(),
                        "landlock.mode",
                        "expected \"required\", \"best-effort\" or \"off\"",
                    );
                    LandlockMode::Off
                }
            };
        }
        landlock_net = c.bool(t, "net", "landlock", false);
        landlock_scopes = c.bool(t, "scopes", "landlock", false);
    }

    let (mut system_paths, mut tmp_bytes, mut tmp_writable) = (Vec::new(), 0, false);
    if let Some(t) = c.table(root, "filesystem", "") {
        c.known_keys(t, "filesystem", &["system", "tmp_bytes", "tmp_writable"]);
        if let Some(item) = t.get("system") {
            match item.as_array() {
                None => c.add(
                    span_of(item),
                    "filesystem.system",
                    "expected an array of { path, exec, why }",
                ),
                Some(arr) => {
                    for (n, v) in arr.iter().enumerate() {
                        let at = format!("filesystem.system[{n}]");
                        let Some(e) = v.as_inline_table() else {
                            c.add(
                                v.span(),
                                &at,
                                "expected { path = \"/…\", exec = bool, why = \"…\" }",
                            );
                            continue;
                        };
                        c.known_keys(e, &at, &["path", "exec", "why"]);
                        let path = c.string(e, "path", &at, v.span()).map(PathBuf::from);
                        if let Some(p) = &path {
                            if !p.is_absolute() {
                                c.add(
                                    v.span(),
                                    &format!("{at}.path"),
                                    format!("`{}` is not absolute", p.display()),
                                );
                            }
                        }
                        let exec = c.bool(e, "exec", &at, false);
                        if c.string(e, "why", &at, v.span())
                            .is_some_and(|w| w.trim().is_empty())
                        {
                            c.add(v.span(), &format!("{at}.why"), "say why the path is needed");
                        }
                        if let Some(path) = path {
                            system_paths.push(SystemPath { path, exec });
                        }
                    }
                }
            }
        }
        tmp_bytes = c.uint(t, "tmp_bytes", "filesystem").unwrap_or(0);
        tmp_writable = c.bool(t, "tmp_writable", "filesystem", false);
    }

    let mut rlimits = RlimitProfile::default();
    if let Some(t) = c.table(root, "rlimits", "") {
        c.known_keys(
            t,
            "rlimits",
            &[
                "address_space",
                "cpu_secs",
                "file_size",
                "open_files",
                "processes",
            ],
        );
        rlimits = RlimitProfile {
            address_space: c.uint(t, "address_space", "rlimits"),
            cpu_secs: c.uint(t, "cpu_secs", "rlimits"),
            file_size: c.uint(t, "file_size", "rlimits"),
            open_files: c.uint(t, "open_files", "rlimits"),
            processes: c.uint(t, "processes", "rlimits"),
        };
    }

    let mut seccomp_mode = None;
    let mut syscalls_out = Vec::new();
    match c.table(root, "seccomp", "") {
        None => c.add(
            None,
            "seccomp",
            "missing: every tier needs a seccomp section",
        ),
        Some(t) => {
            c.known_keys(t, "seccomp", &["mode", "syscalls"]);
            match t.get("mode") {
                None => c.add(
                    None,
                    "seccomp.mode",
                    "missing: \"allowlist\" or \"denylist\"",
                ),
                Some(i) => match i.as_str() {
                    Some("allowlist") => seccomp_mode = Some(SeccompMode::Allowlist),
                    Some("denylist") => seccomp_mode = Some(SeccompMode::Denylist),
                    _ => c.add(
                        i.span(),
                        "seccomp.mode",
                        "expected \"allowlist\" or \"denylist\"",
                    ),
                },
            }
            let mut seen = BTreeSet::new();
            match t.get("syscalls").map(|i| (i, i.as_array())) {
                None => c.add(None, "seccomp.syscalls", "missing"),
                Some((i, None)) => c.add(
                    i.span(),
                    "seccomp.syscalls",
                    "expected an array of { name, why }",
                ),
                Some((_, Some(arr))) => {
                    for (n, v) in arr.iter().enumerate() {
                        let at = format!("seccomp.syscalls[{n}]");
                        let Some(e) = v.as_inline_table() else {
                            c.add(v.span(), &at, "expected { name = \"…\", why = \"…\" }");
                            continue;
                        };
                        c.known_keys(e, &at, &["name", "why"]);
                        let name = c.string(e, "name", &at, v.span()).map(str::to_string);
                        let why = c.string(e, "why", &at, v.span()).map(str::to_string);
                        if why.as_deref().is_some_and(|w| w.trim().is_empty()) {
                            c.add(
                                v.span(),
                                &format!("{at}.why"),
                                "say why the syscall is listed",
                            );
                        }
                        let Some(name) = name else { continue };
                        if !seen.insert(name.clone()) {
                            c.add(
                                v.span(),
                                &format!("{at}.name"),
                                format!("`{name}` is listed twice"),
                            );
                            continue;
                        }
                        match syscalls::number(&name) {
                            Some(nr) => syscalls_out.push(SyscallEntry {
                                name,
                                nr,
                                why: why.unwrap_or_default(),
                            }),
                            None => c.add(
                                v.span(),
                                &format!("{at}.name"),
                                format!("`{name}` is not a known x86_64 syscall"),
                            ),
                        }
                    }
                }
            }
            if seccomp_mode == Some(SeccompMode::Allowlist) {
                for needed in ["execve", "exit_group"] {
                    if !seen.contains(needed) {
                        c.add(
                            None,
                            "seccomp.syscalls",
                            format!(
                                "the allowlist lacks `{needed}`: no program could start or exit"
                            ),
                        );
                    }
                }
            }
        }
    }
    if landlock == LandlockMode::Required && !namespaces.mount {
        c.add(None, "landlock.mode", "required landlock needs namespaces.mount (the rules name paths inside the sandbox's root)");
    }

    match (tier, seccomp_mode) {
        (Some(tier), Some(seccomp_mode)) if c.problems.is_empty() => Ok(TierProfile {
            tier,
            namespaces,
            landlock,
            landlock_net,
            landlock_scopes,
            system_paths,
            tmp_bytes,
            tmp_writable,
            seccomp_mode,
            syscalls: syscalls_out,
            rlimits,
        }),
        _ => Err(c.problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse_tier(text, "t.toml")
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"tier = "medium"
colour = "red"

[namespaces]
pid = "yes"

[filesystem]
system = [ { path = "usr", exec = true, why = "" } ]

[rlimits]
cpu_secs = -5

[seccomp]
mode = "allowlist"
syscalls = [
  { name = "read", why = "x" },
  { name = "read", why = "y" },
  { name = "frobnicate", why = "z" },
]
"#;
        assert_eq!(
            problems(text),
            vec![
                "t.toml:2: colour: unknown key; expected one of: tier, namespaces, landlock, filesystem, rlimits, seccomp",
                "t.toml:1: tier: unknown tier `medium`: expected restricted, balanced or trusted",
                "t.toml:5: namespaces.pid: expected true or false",
                "t.toml:8: filesystem.system[0].path: `usr` is not absolute",
                "t.toml:8: filesystem.system[0].why: say why the path is needed",
                "t.toml:11: rlimits.cpu_secs: -5 is negative; expected a count of 0 or more",
                "t.toml:17: seccomp.syscalls[1].name: `read` is listed twice",
                "t.toml:18: seccomp.syscalls[2].name: `frobnicate` is not a known x86_64 syscall",
                "t.toml:1: seccomp.syscalls: the allowlist lacks `execve`: no program could start or exit",
                "t.toml:1: seccomp.syscalls: the allowlist lacks `exit_group`: no program could start or exit",
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert_eq!(
            problems("tier = \"balanced\"\n[seccomp\n"),
            vec!["t.toml:2: invalid table header\nexpected `.`, `]`"]
        );
    }
}
