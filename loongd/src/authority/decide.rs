//! The decision pipeline, in order: token → capability in token → pack grants → denylist
//! (always wins) → tighten-only extensions → risk profile and the pack's approval preset →
//! `Allow | Deny | NeedsApproval`. Only what would otherwise be allowed can need approval, so
//! no approval (nor a full-access window) can reach past a denial.
//!
//! Pure over its inputs, so it is property-tested and benchmarked in memory; the token's own
//! validity (unknown, expired, revoked, stale generation) is checked by the token table first.

use std::path::{Path, PathBuf};

use loong_profiles::{
    pack::{lexical, Capability, Denylist, Pack},
    risk::RiskProfile,
};

use super::{
    shell::{self, CommandLine, How},
    tokens::Token,
};

/// One request for an effect.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `None`: the operator (loongctl without --token), acting with the operator pack.
    pub token: Option<&'a Token>,
    pub cap: Capability,
    /// The path, host or program name the effect is on.
    pub target: Option<&'a str>,
    /// For `process.exec`: the whole command line.
    pub command: Option<CommandLine<'a>>,
    /// For `fs.read` and `fs.write`: the target's canonical form, resolved once by the caller
    /// so that the decision and the effect use the same path (`None`: [`FileRoots`]
    /// resolves it).
    pub resolved: Option<&'a Path>,
}

/// Where a denial came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    NotInToken,
    NotInPack,
    Denylisted(String),
    Extension { name: &'static str, reason: String },
}

impl std::fmt::Display for Deny {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deny::NotInToken => f.write_str("the token does not grant it"),
            Deny::NotInPack => f.write_str("the pack does not grant it"),
            Deny::Denylisted(why) => write!(f, "denylisted: {why}"),
            Deny::Extension { name, reason } => write!(f, "{name}: {reason}"),
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Deny),
    /// Allowed only once an operator approves (or a full-access window covers it).
    NeedsApproval {
        score: u32,
        reasons: Vec<String>,
    },
}

/// A tighten-only extension: it may deny what the stages before allowed, never the reverse.
pub trait Extension: Send + Sync {
    /// Its name, in denial reasons.
    fn name(&self) -> &'static str;
    /// `Some(reason)` to deny.
    fn check(&self, req: &Request<'_>, pack: &Pack, denylist: &Denylist) -> Option<String>;
}

/// Runs the pipeline for `req` in `pack`.
pub fn decide(
    req: &Request<'_>,
    pack: &Pack,
    denylist: &Denylist,
    extensions: &[&dyn Extension],
    risk: Option<&RiskProfile>,
) -> Decision {
    if let Some(t) = req.token {
        if !t.grants.iter().any(|g| g.allows(req.cap, req.target)) {
            return Decision::Deny(Deny::NotInToken);
        }
    }
    if !pack.allows(req.cap, req.target) {
        return Decision::Deny(Deny::NotInPack);
    }
    if let Some(why) = req.target.and_then(|t| denylist.denies(req.cap, t)) {
        return Decision::Deny(Deny::Denylisted(why));
    }
    for e in extensions {
        if let Some(reason) = e.check(req, pack, denylist) {
            return Decision::Deny(Deny::Extension {
                name: e.name(),
                reason,
            });
        }
    }
    match pack.approval.as_str() {
        "always" => Decision::NeedsApproval {
            score: 0,
            reasons: vec![format!(
                "pack {} requires approval for every effect",
                pack.id
            )],
        },
        "on-high-risk" => {
            let Some(r) = risk else {
                return Decision::Allow;
            };
            let programs = match (req.cap, req.command, req.target) {
                (Capability::ProcessExec, Some(command), _) => command.plan().names(),
                // Without a command line, the program asked for is the one that runs.
                (Capability::ProcessExec, None, Some(t)) => shell::programs(&[t.to_string()]),
                _ => Vec::new(),
            };
            let text = req
                .command
                .map(|c| c.text())
                .or(req.target.map(str::to_string))
                .unwrap_or_default();
            let (score, reasons) = r.score(&programs, &text);
            if score >= r.threshold {
                Decision::NeedsApproval { score, reasons }
            } else {
                Decision::Allow
            }
        }
        _ => Decision::Allow,
    }
}

/// The longest file target resolved (Linux's `PATH_MAX`); a longer one is not a path any
/// open would take, and is refused before it is resolved.
pub const MAX_FILE_TARGET_BYTES: usize = 4096;

/// The canonical form of `p`: symlinks resolved for the part that exists, the rest appended
/// lexically; `None` when `p` is not absolute or longer than [`MAX_FILE_TARGET_BYTES`].
pub fn canonical(p: &Path) -> Option<PathBuf> {
    if p.as_os_str().len() > MAX_FILE_TARGET_BYTES {
        return None;
    }
    let p = lexical(p)?;
    let mut existing = p.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        let name = existing.file_name()?.to_os_string();
        rest.push(name);
        if !existing.pop() {
            return None;
        }
    }
}

/// File-root confinement: a file system target must stay within the grants after its path is
/// canonicalised (symlinks and `..` resolved), and off the denylist.
#[derive(Debug)]
pub struct FileRoots;

impl Extension for FileRoots {
    fn name(&self) -> &'static str {
        "file roots"
    }

    fn check(&self, req: &Request<'_>, pack: &Pack, denylist: &Denylist) -> Option<String> {
        if !matches!(req.cap, Capability::FsRead | Capability::FsWrite) {
            return None;
        }
        let target = req.target?;
        let Some(real) = req
            .resolved
            .map(Path::to_path_buf)
            .or_else(|| canonical(Path::new(target)))
        else {
            return Some(format!(
                "{target} is not an absolute path of at most {MAX_FILE_TARGET_BYTES} bytes"
            ));
        };
        let real_s = real.to_string_lossy();
        let in_token = req
            .token
            .is_none_or(|t| t.grants.iter().any(|g| g.allows(req.cap, Some(&real_s))));
        if !in_token || !pack.allows(req.cap, Some(&real_s)) {
            return Some(format!(
                "{target} resolves to {real_s}, outside the granted roots"
            ));
        }
        denylist
            .denies(req.cap, &real_s)
            .map(|why| format!("{target} resolves to {real_s}: {why}"))
    }
}

/// What an allowed file decision confines its effect to: the resolved path and the
/// directory the grants that allowed it cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileScope {
    /// The target, canonical (as the decision saw it).
    pub path: PathBuf,
    /// The narrowest directory that both the caller's token (when there is one) and its pack
    /// grant `path` under: for each, the widest of its grants that cover `path`, and of those
    /// two the deeper (both lie above `path`, so one lies within the other). `/` when neither
    /// narrows it.
    pub scope: PathBuf,
}

/// The [`FileScope`] of `cap` on the canonical path `real` under `token` and `pack`; `None`
/// when they do not grant it.
pub fn file_scope(
    token: Option<&Token>,
    pack: &Pack,
    cap: Capability,
    real: &Path,
) -> Option<FileScope> {
    let real_s = real.to_str()?;
    let widest = |grants: &[loong_profiles::pack::Grant]| {
        grants
            .iter()
            .filter(|g| g.allows(cap, Some(real_s)))
            .filter_map(|g| match &g.scope {
                None => Some(PathBuf::from("/")),
                Some(s) => lexical(Path::new(s)),
            })
            .min_by_key(|p| p.components().count())
    };
    let from_pack = widest(&pack.grants)?;
    let from_token = match token {
        None => PathBuf::from("/"),
        Some(t) => widest(&t.grants)?,
    };
    let scope = if from_token.starts_with(&from_pack) {
        from_token
    } else {
        from_pack
    };
    real.starts_with(&scope).then(|| FileScope {
        path: real.to_path_buf(),
        scope,
    })
}

/// Shell rules: every program a command line would run (through pipes, `;`, `&&`,
/// subshells, substitutions, wrappers and `sh -c`) must be granted and off the denylist; a
/// program that runs code must be granted itself; a line that changes what programs run
/// (`PATH=…`) is denied.
#[derive(Debug)]
pub struct ShellRules;

impl Extension for ShellRules {
    fn name(&self) -> &'static str {
        "shell rules"
    }

    fn check(&self, req: &Request<'_>, pack: &Pack, denylist: &Denylist) -> Option<String> {
        if req.cap != Capability::ProcessExec {
            return None;
        }
        let plan = req.command?.plan();
        if let Some(why) = plan.refusals.first() {
            return Some(format!("the command line {why}"));
        }
        for prog in &plan.programs {
            let name = prog.name.as_str();
            if let Some(why) = denylist.denies(Capability::ProcessExec, name) {
                return Some(format!("the command line runs {name}: {why}"));
            }
            let in_token = req.token.is_none_or(|t| {
                t.grants
                    .iter()
                    .any(|g| g.allows(Capability::ProcessExec, Some(name)))
            });
            if !in_token || !pack.allows(Capability::ProcessExec, Some(name)) {
                let what = match prog.how {
                    How::Plain => "",
                    How::Code => ", which runs code from its arguments or input,",
                    How::Privileged => ", which runs a program with other privileges,",
                };
                return Some(format!(
                    "the command line runs {name}{what} and {name} itself is not granted"
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use loong_profiles::pack::Grant;
    use proptest::prelude::*;

    use super::*;

    const PATHS: &[&str] = &["/a", "/a/b", "/a/b/c", "/c", "/c/../a/b"];
    const HOSTS: &[&str] = &["x.com", "*.x.com", "api.x.com", "y.org"];
    const NAMES: &[&str] = &["cat", "grep", "rm", "*"];

    fn grant() -> impl Strategy<Value = Grant> {
        (0..Capability::ALL.len(), 0..6usize).prop_map(|(c, s)| {
            let cap = Capability::ALL[c];
            let scope = match (cap.scope_kind(), s) {
                (_, 0) => None,
                (loong_profiles::pack::ScopeKind::Paths, s) => {
                    Some(PATHS[s % PATHS.len()].to_string())
                }
                (loong_profiles::pack::ScopeKind::Hosts, s) => {
                    Some(HOSTS[s % HOSTS.len()].to_string())
                }
                (loong_profiles::pack::ScopeKind::Names, s) => {
                    Some(NAMES[s % NAMES.len()].to_string())
                }
                (loong_profiles::pack::ScopeKind::None, _) => None,
            };
            Grant { cap, scope }
        })
    }

    fn target() -> impl Strategy<Value = (usize, Option<String>)> {
        (0..Capability::ALL.len(), 0..8usize).prop_map(|(c, s)| {
            let cap = Capability::ALL[c];
            let t = match cap.scope_kind() {
                loong_profiles::pack::ScopeKind::Paths => Some(
                    [
                        "/a/b/file",
                        "/a/x",
                        "/c/d",
                        "/a/b/../../c",
                        "/z",
                        "/a",
                        "/c",
                        "/a/b/c/d",
                    ][s]
                        .to_string(),
                ),
                loong_profiles::pack::ScopeKind::Hosts => Some(
                    [
                        "x.com",
                        "api.x.com",
                        "y.org",
                        "evil.com",
                        "a.b.x.com",
                        "x.com:443",
                        "y.org:80",
                        "z",
                    ][s]
                        .to_string(),
                ),
                loong_profiles::pack::ScopeKind::Names => {
                    Some(["cat", "grep", "rm", "dd", "ls", "cat", "rm", "sh"][s].to_string())
                }
                loong_profiles::pack::ScopeKind::None => None,
            };
            (c, t)
        })
    }

    fn pack(grants: Vec<Grant>) -> Pack {
        Pack {
            id: "p".into(),
            domain: "d".into(),
            version: "1".into(),
            summary: String::new(),
            grants,
            connectors: Vec::new(),
            approval: "never".into(),
        }
    }

    fn token(grants: Vec<Grant>) -> Token {
        Token {
            id: "t".into(),
            pack: "p".into(),
            agent: "a".into(),
            grants,
            issued_ms: 0,
            expires_ms: i64::MAX,
            generation: 0,
            revoked_ms: None,
        }
    }

    /// Denies everything; a tighten-only extension at its most severe.
    struct DenyAll;
    impl Extension for DenyAll {
        fn name(&self) -> &'static str {
            "deny all"
        }
        fn check(&self, _: &Request<'_>, _: &Pack, _: &Denylist) -> Option<String> {
            Some("no".into())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_allow_outside_token_and_pack(pg in proptest::collection::vec(grant(), 0..6), tg in proptest::collection::vec(grant(), 0..6), (c, t) in target(), operator in any::<bool>()) {
            let (p, tok) = (pack(pg), token(tg));
            let cap = Capability::ALL[c];
            let req = Request { token: (!operator).then_some(&tok), cap, target: t.as_deref(), command: None, resolved: None };
            if decide(&req, &p, &Denylist::default(), &[], None) == Decision::Allow {
                prop_assert!(p.allows(cap, t.as_deref()), "allowed outside the pack");
                if !operator {
                    prop_assert!(tok.grants.iter().any(|g| g.allows(cap, t.as_deref())), "allowed outside the token");
                }
            }
        }

        #[test]
        fn the_denylist_beats_full_access((c, t) in target()) {
            let cap = Capability::ALL[c];
            let Some(t) = t else { return Ok(()) };
            let full = pack(Capability::ALL.iter().map(|c| Grant { cap: *c, scope: None }).collect());
            let deny = Denylist { paths: vec![lexical(Path::new(&t)).unwrap_or_default()], hosts: vec![t.clone()], programs: vec![t.clone()] };
            let req = Request { token: None, cap, target: Some(&t), command: None, resolved: None };
            prop_assert!(matches!(decide(&req, &full, &deny, &[], None), Decision::Deny(Deny::Denylisted(_))));
        }

        #[test]
        fn everything_beneath_a_file_scope_is_granted_by_token_and_pack(pg in proptest::collection::vec(grant(), 0..6), tg in proptest::collection::vec(grant(), 0..6), (c, t) in target(), operator in any::<bool>()) {
            let (p, tok) = (pack(pg), token(tg));
            let cap = Capability::ALL[c];
            let Some(real) = t.as_deref().and_then(|t| lexical(Path::new(t))) else { return Ok(()) };
            if let Some(f) = file_scope((!operator).then_some(&tok), &p, cap, &real) {
                prop_assert!(real.starts_with(&f.scope));
                let below = f.scope.join("any/file");
                let below = below.to_string_lossy();
                prop_assert!(p.allows(cap, Some(&below)), "the scope reaches outside the pack");
                if !operator {
                    prop_assert!(tok.grants.iter().any(|g| g.allows(cap, Some(&below))), "the scope reaches outside the token");
                }
            }
        }

        #[test]
        fn extensions_never_turn_a_deny_into_anything_else(pg in proptest::collection::vec(grant(), 0..6), tg in proptest::collection::vec(grant(), 0..6), (c, t) in target()) {
            let (p, tok) = (pack(pg), token(tg));
            let req = Request { token: Some(&tok), cap: Capability::ALL[c], target: t.as_deref(), command: None, resolved: None };
            let before = decide(&req, &p, &Denylist::default(), &[], None);
            let with = decide(&req, &p, &Denylist::default(), &[&FileRoots, &ShellRules], None);
            if before != Decision::Allow {
                prop_assert_eq!(&with, &before, "an extension changed a denial");
            }
            prop_assert!(decide(&req, &p, &Denylist::default(), &[&DenyAll], None) != Decision::Allow);
        }
    }

    #[test]
    fn file_roots_follow_symlinks() {
        let dir = tempfile::tempdir().expect("dir");
        let granted = dir.path().join("granted");
        std::fs::create_dir(&granted).expect("mkdir");
        std::fs::write(dir.path().join("secret"), "s").expect("secret");
        std::os::unix::fs::symlink(dir.path().join("secret"), granted.join("link")).expect("link");
        let g = Grant::parse(&format!("fs.read:{}", granted.display())).expect("grant");
        let (p, tok) = (pack(vec![g.clone()]), token(vec![g]));
        let via_link = granted.join("link").display().to_string();
        let plain = granted.join("plain.txt").display().to_string();
        let req = |t: &'_ str| {
            decide(
                &Request {
                    token: Some(&tok),
                    cap: Capability::FsRead,
                    target: Some(t),
                    command: None,
                    resolved: None,
                },
                &p,
                &Denylist::default(),
                &[&FileRoots],
                None,
            )
        };
        assert!(
            matches!(
                req(&via_link),
                Decision::Deny(Deny::Extension {
                    name: "file roots",
                    ..
                })
            ),
            "{:?}",
            req(&via_link)
        );
        assert_eq!(req(&plain), Decision::Allow);
    }

    #[test]
    fn a_file_target_longer_than_path_max_is_not_resolved_name_by_name() {
        // Resolving pops one name per failed canonicalize, each copying the whole path: a
        // path of 100,000 names (a call's input may be 1 MiB) cost loongd seconds of copying.
        let dir = tempfile::tempdir().expect("dir");
        let real = dir.path().canonicalize().expect("real");
        let long = format!("{}{}", real.display(), "/a".repeat(100_000));
        let started = std::time::Instant::now();
        assert!(
            canonical(Path::new(&long)).is_none(),
            "a target of {} bytes was resolved",
            long.len()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // The control: a path of PATH_MAX bytes is resolved (its missing part lexically).
        let room = MAX_FILE_TARGET_BYTES - real.as_os_str().len();
        let at_max = format!("{}{}", real.display(), "/a".repeat(room / 2));
        assert!(at_max.len() <= MAX_FILE_TARGET_BYTES);
        assert_eq!(canonical(Path::new(&at_max)), Some(PathBuf::from(&at_max)));
    }

    #[test]
    fn a_file_decision_hands_over_the_narrowest_scope_that_token_and_pack_both_grant() {
        let g = |s: &str| Grant::parse(s).expect("grant");
        let p = pack(vec![g("fs.read:/srv"), g("fs.read:/srv/docs/deep")]);
        let scope = |tok: Option<&Token>, path: &str| {
            file_scope(tok, &p, Capability::FsRead, Path::new(path)).map(|f| f.scope)
        };
        // The operator: the pack's widest grant that covers the path.
        assert_eq!(scope(None, "/srv/docs/deep/a"), Some(PathBuf::from("/srv")));
        // A token narrower than the pack: its own scope; wider (unscoped): the pack's.
        let narrow = token(vec![g("fs.read:/srv/docs"), g("fs.read:/srv/docs/x")]);
        assert_eq!(
            scope(Some(&narrow), "/srv/docs/x/a"),
            Some(PathBuf::from("/srv/docs"))
        );
        let wide = token(vec![g("fs.read")]);
        assert_eq!(
            scope(Some(&wide), "/srv/docs/a"),
            Some(PathBuf::from("/srv"))
        );
        // Not granted by one of them, or another capability: no scope at all.
        assert_eq!(scope(Some(&narrow), "/srv/other/a"), None);
        assert_eq!(scope(None, "/etc/hostname"), None);
        assert_eq!(
            file_scope(None, &p, Capability::FsWrite, Path::new("/srv/a")),
            None
        );
    }

    #[test]
    fn shell_rules_see_the_whole_command_line() {
        let p = pack(vec![
            Grant::parse("process.exec:sh").expect("g"),
            Grant::parse("process.exec:ls").expect("g"),
            Grant::parse("process.exec:grep").expect("g"),
        ]);
        let deny = Denylist {
            programs: vec!["dd".into()],
            ..Denylist::default()
        };
        let run = |argv: &[&str]| {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            decide(
                &Request {
                    token: None,
                    cap: Capability::ProcessExec,
                    target: Some(&argv[0]),
                    command: Some(CommandLine::Argv(&argv)),
                    resolved: None,
                },
                &p,
                &deny,
                &[&ShellRules],
                None,
            )
        };
        assert_eq!(run(&["sh", "-c", "ls | grep x"]), Decision::Allow);
        assert!(matches!(
            run(&["sh", "-c", "ls; cat /etc/passwd"]),
            Decision::Deny(Deny::Extension { .. })
        ));
        assert!(
            matches!(run(&["sh", "-c", "ls $(dd if=/dev/zero)"]), Decision::Deny(Deny::Extension { reason, .. }) if reason.contains("dd: dd is denylisted"))
        );
    }
    /// A `shell.exec` command line decided as the tool decides it: under `grants` (on a token
    /// of a pack that grants every program), with `dd` denylisted.
    fn shell_exec(grants: &[&str], command: &str) -> Decision {
        let g: Vec<Grant> = grants
            .iter()
            .map(|g| Grant::parse(g).expect("grant"))
            .collect();
        let (p, tok) = (
            pack(vec![Grant::parse("process.exec").expect("g")]),
            token(g),
        );
        let deny = Denylist {
            programs: vec!["dd".into()],
            ..Denylist::default()
        };
        let line = CommandLine::Script(command);
        let first = line.plan().programs.first().map(|p| p.name.clone());
        decide(
            &Request {
                token: Some(&tok),
                cap: Capability::ProcessExec,
                target: first.as_deref(),
                command: Some(line),
                resolved: None,
            },
            &p,
            &deny,
            &[&ShellRules],
            None,
        )
    }

    #[test]
    fn shell_exec_runs_only_what_the_token_grants() {
        const ECHO_CAT: &[&str] = &["process.exec:echo", "process.exec:cat"];
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum E {
            Allow,
            Deny,
        }
        use E::{Allow, Deny};
        let table: &[(&[&str], &str, E)] = &[
            // The shell shell.exec starts is the tool's; what it runs is decided.
            (ECHO_CAT, "echo hi | cat", Allow),
            (ECHO_CAT, "echo hi; cat /dev/null", Allow),
            (ECHO_CAT, "echo hi && cat x || echo no", Allow),
            (ECHO_CAT, "echo \"$(echo nested)\" | cat", Allow),
            (ECHO_CAT, "echo hi 2>&1 | cat >|out", Allow),
            (ECHO_CAT, "(echo a; cat b) > out", Allow),
            (ECHO_CAT, "echo 'sh -c id | bash'", Allow),
            (ECHO_CAT, "FOO=bar echo hi", Allow),
            (ECHO_CAT, "for i in 1 2; do echo $i; done", Allow),
            (ECHO_CAT, "/bin/echo hi; /usr/bin/cat f", Allow),
            // A wrapper is decided as what it runs.
            (ECHO_CAT, "env echo hi", Allow),
            (ECHO_CAT, "env -i FOO=1 cat f", Allow),
            (ECHO_CAT, "nice -n 5 echo hi", Allow),
            (ECHO_CAT, "nice -10 echo hi", Allow),
            (ECHO_CAT, "timeout -s KILL 5 cat f", Allow),
            (ECHO_CAT, "nohup echo hi", Allow),
            (ECHO_CAT, "setsid -w echo hi", Allow),
            (ECHO_CAT, "stdbuf -oL cat", Allow),
            (ECHO_CAT, "xargs -0 -n1 cat < list", Allow),
            (ECHO_CAT, "xargs < list", Allow),
            (ECHO_CAT, "command echo hi; exec cat f", Allow),
            (ECHO_CAT, "time echo hi", Allow),
            // A shell, however it is reached.
            (ECHO_CAT, "echo id | sh", Deny),
            (ECHO_CAT, "sh -c id", Deny),
            (ECHO_CAT, "echo id | bash", Deny),
            (ECHO_CAT, "echo id | /bin/sh", Deny),
            (ECHO_CAT, "\"s\"h -c id", Deny),
            (ECHO_CAT, "s\\h -c id", Deny),
            (ECHO_CAT, "$SHELL -c id", Deny),
            (ECHO_CAT, "echo $(sh -c id)", Deny),
            (ECHO_CAT, "echo `bash`", Deny),
            (ECHO_CAT, "cat <(sh -c id)", Deny),
            (ECHO_CAT, "xargs sh", Deny),
            (ECHO_CAT, "echo id | xargs -I{} sh -c '{}'", Deny),
            (ECHO_CAT, "env sh", Deny),
            (ECHO_CAT, "env -S 'sh -c id'", Deny),
            (ECHO_CAT, "nice sh", Deny),
            (ECHO_CAT, "timeout 5 bash -c id", Deny),
            (ECHO_CAT, "setsid bash", Deny),
            (ECHO_CAT, "exec sh", Deny),
            (ECHO_CAT, "command sh", Deny),
            // Programs that run code, unless granted themselves.
            (ECHO_CAT, "find . -exec cat {} +", Deny),
            (ECHO_CAT, "python3 -c 'import os'", Deny),
            (ECHO_CAT, "nohup python3 x.py", Deny),
            (ECHO_CAT, "awk 'BEGIN{system(\"id\")}'", Deny),
            (ECHO_CAT, "sed -e '1e id' f", Deny),
            (ECHO_CAT, "perl -e 'system(\"id\")'", Deny),
            (ECHO_CAT, "busybox sh", Deny),
            (ECHO_CAT, "busybox echo hi", Deny),
            (ECHO_CAT, "eval 'echo hi'", Deny),
            (ECHO_CAT, ". ./script", Deny),
            (ECHO_CAT, "trap 'sh' EXIT; echo hi", Deny),
            (ECHO_CAT, "sudo echo hi", Deny),
            (ECHO_CAT, "echo hi | tee f", Deny),
            // A wrapper option the list does not know: decided as code.
            (ECHO_CAT, "env --bogus echo hi", Deny),
            (ECHO_CAT, "timeout --bogus 5 echo hi", Deny),
            // Another program under a granted name, or a changed search path.
            (ECHO_CAT, "./echo hi", Deny),
            (ECHO_CAT, "/tmp/cat f", Deny),
            (ECHO_CAT, "/bin/../tmp/echo hi", Deny),
            (ECHO_CAT, "PATH=. echo hi", Deny),
            (ECHO_CAT, "export PATH=.; echo hi", Deny),
            (ECHO_CAT, "env PATH=. echo hi", Deny),
            (ECHO_CAT, "LD_PRELOAD=/tmp/x.so cat f", Deny),
            // Text the shell reads as commands where a naive reader sees quotes.
            (ECHO_CAT, "echo hi # a comment", Allow),
            (ECHO_CAT, "echo hi # it's\nsh -c id\necho '", Deny),
            (ECHO_CAT, "cat <<EOF\necho '\nEOF\nsh -c id\necho '", Deny),
            (ECHO_CAT, "echo $(echo \")\"; sh -c id)", Deny),
            (ECHO_CAT, "echo `echo ')'; sh`", Deny),
            (ECHO_CAT, "echo hi &>x sh -c id", Deny),
            (ECHO_CAT, "echo $'\\''; sh -c id; echo '", Deny),
            // Blanks are space and tab only: another space-like character is part of a word,
            // so a `#` after it starts no comment.
            (ECHO_CAT, "echo\r#;sh -c id", Deny),
            (ECHO_CAT, "echo\u{b}#;sh -c id", Deny),
            (ECHO_CAT, "echo\u{a0}#;sh -c id", Deny),
            (ECHO_CAT, "echo\u{c}# x\nsh", Deny),
            // A word the shell computes names no granted program, and splits or globs into
            // other words before a wrapper's command.
            (ECHO_CAT, "$(echo 'sh -c id ')echo", Deny),
            (ECHO_CAT, "c$(echo)at f", Deny),
            (ECHO_CAT, "\"$(echo /tmp/)cat\" f", Deny),
            (ECHO_CAT, "`echo /tmp/`echo", Deny),
            (ECHO_CAT, "x='5 sh -c id'; nice -n $x cat", Deny),
            (ECHO_CAT, "nice -n * cat", Deny),
            (ECHO_CAT, "env -i$(echo ' sh -c id') cat", Deny),
            (ECHO_CAT, "timeout ${T} cat f", Deny),
            (ECHO_CAT, "nice -n \"$x\" cat f", Allow),
            (ECHO_CAT, "nice -n 5 cat $x *", Allow),
            (ECHO_CAT, "FOO=$(echo a) echo $FOO", Allow),
            // Nested backticks are unescaped before their command is read; a `case` pattern's
            // `)` does not end a substitution; a line continuation is not read.
            (ECHO_CAT, "echo `echo \\`sh -c id\\``", Deny),
            (ECHO_CAT, "echo \"$(case x in x) sh -c id;; esac)\"", Deny),
            (
                ECHO_CAT,
                "cat <\\\n<EOF\necho '\nEOF\nsh -c id\necho '",
                Deny,
            ),
            (ECHO_CAT, "echo `echo \\`echo hi\\``", Allow),
            (ECHO_CAT, "echo \"$(echo x)\" '\\\n'", Deny),
            (ECHO_CAT, "echo a\0", Deny),
            // A `)` inside a parameter expansion, backticks or a nested quoted substitution
            // does not end the substitution around it.
            (ECHO_CAT, "echo \"$(echo ${x:-)}; sh -c id)\"", Deny),
            (
                ECHO_CAT,
                "echo \"$(echo `echo )`; sh -c id; echo `echo x`)\"",
                Deny,
            ),
            (ECHO_CAT, "echo \"$(echo \"$(echo ')')\"; sh -c id)\"", Deny),
            (ECHO_CAT, "echo \"$(echo \"$(echo ')')\" `echo )`)\"", Allow),
            // for, read and getopts set the variables they name.
            (ECHO_CAT, "for PATH in .; do cat x; done", Deny),
            (ECHO_CAT, "for f in a b; do cat $f; done", Allow),
            (
                &["process.exec:read", "process.exec:cat"],
                "read PATH < f; cat x",
                Deny,
            ),
            (
                &["process.exec:read", "process.exec:cat"],
                "read -r LD_PRELOAD < f; cat x",
                Deny,
            ),
            (
                &["process.exec:getopts", "process.exec:cat"],
                "getopts a: PATH; cat x",
                Deny,
            ),
            (
                &["process.exec:read", "process.exec:cat"],
                "read -r l < f; cat $l",
                Allow,
            ),
            (ECHO_CAT, "echo ${LD_PRELOAD:=/tmp/x.so} | cat", Deny),
            (ECHO_CAT, "echo \"${PATH=.}\"", Deny),
            (ECHO_CAT, "echo ${x:=a} ${y=b} ${PATH:-.} | cat", Allow),
            // A quoted name makes a command of what looks like an assignment.
            (ECHO_CAT, "'x=/tmp/a' echo", Deny),
            (ECHO_CAT, "x\\=./sh echo", Deny),
            (ECHO_CAT, "\"x\"=./sh cat f", Deny),
            (ECHO_CAT, "x='./sh' cat f", Allow),
            (ECHO_CAT, "x=\"$(echo a)\" y=`echo b` echo", Allow),
            // Quotes inside a double-quoted ${…} are quotes or text by operator in /bin/sh.
            (ECHO_CAT, "echo \"${x:-\"'\"}\"; sh -c id; echo \"'\"", Deny),
            (
                ECHO_CAT,
                "echo \"$(echo \"${x:-\"'\"}\"; sh -c id; echo \"'\")\"",
                Deny,
            ),
            (ECHO_CAT, "echo \"${x:-a}${HOME}\" | cat", Allow),
            // Other grants.
            (
                &["process.exec:find", "process.exec:cat"],
                "find . -name x -exec cat {} +",
                Allow,
            ),
            (
                &["process.exec:find", "process.exec:cat"],
                "find . -exec sh -c id \\;",
                Deny,
            ),
            (
                &["process.exec:find", "process.exec:cat"],
                "find . -execdir bash \\;",
                Deny,
            ),
            (
                &["process.exec:awk", "process.exec:echo"],
                "echo x | awk '{print}'",
                Allow,
            ),
            (
                &["process.exec:sh", "process.exec:echo"],
                "echo id | sh",
                Allow,
            ),
            (
                &["process.exec:sudo", "process.exec:echo"],
                "sudo -u root echo hi",
                Allow,
            ),
            (&["process.exec:sudo", "process.exec:echo"], "sudo sh", Deny),
            // A privileged wrapper named without a program runs a shell ($SHELL, else sh).
            (
                &["process.exec:unshare", "process.exec:echo"],
                "echo id | unshare -r",
                Deny,
            ),
            (
                &["process.exec:nsenter", "process.exec:echo"],
                "echo id | nsenter -t 1 -a",
                Deny,
            ),
            (
                &["process.exec:chroot", "process.exec:echo"],
                "echo id | chroot /",
                Deny,
            ),
            (
                &["process.exec:doas", "process.exec:echo"],
                "echo id | doas -s",
                Deny,
            ),
            (
                &["process.exec:unshare", "process.exec:echo"],
                "unshare -r echo hi",
                Allow,
            ),
            (
                &[
                    "process.exec:unshare",
                    "process.exec:sh",
                    "process.exec:echo",
                ],
                "echo id | unshare -r",
                Allow,
            ),
            (
                &["process.exec:flock", "process.exec:echo"],
                "SHELL=/usr/bin/python3 flock -c 'echo hi' f",
                Deny,
            ),
            (
                &["process.exec:flock", "process.exec:echo"],
                "flock -c 'echo hi' f",
                Allow,
            ),
            (
                &["process.exec:busybox", "process.exec:echo"],
                "busybox echo hi",
                Allow,
            ),
            (&["process.exec:./echo"], "./echo hi", Allow),
            (&["process.exec:*"], "python3 -c 'import os' | sh", Allow),
            (&["process.exec:*"], "PATH=. echo hi", Deny),
            (&["process.exec:*"], "env dd if=/dev/zero", Deny),
            (&["process.exec:*"], "busybox dd", Deny),
        ];
        assert!(table.len() >= 40);
        let mut wrong = Vec::new();
        for (grants, command, expect) in table {
            let got = shell_exec(grants, command);
            let as_e = if got == Decision::Allow { Allow } else { Deny };
            if as_e != *expect {
                wrong.push(format!(
                    "{grants:?} {command:?}: expected {expect:?}, got {got:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        // A denial names the program and why.
        assert!(matches!(
            shell_exec(ECHO_CAT, "echo id | python3"),
            Decision::Deny(super::Deny::Extension { reason, .. })
                if reason == "the command line runs python3, which runs code from its arguments or input, and python3 itself is not granted"
        ));
        assert!(matches!(
            shell_exec(ECHO_CAT, "PATH=. echo"),
            Decision::Deny(super::Deny::Extension { reason, .. })
                if reason == "the command line sets PATH, which changes what programs run"
        ));
    }
}
