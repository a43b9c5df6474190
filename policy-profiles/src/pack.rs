//! Capabilities, scoped grants, vertical packs and the denylist, as data.
//!
//! A grant is written `CAPABILITY` or `CAPABILITY:SCOPE`: `fs.read:/srv/docs` (a path prefix),
//! `net.egress:*.example.com` (a host pattern), `tool.invoke:echo` (a name). A capability
//! without a scope grants it everywhere.

use std::{
    fmt,
    path::{Component, Path, PathBuf},
    str::FromStr,
};

use toml_edit::TableLike;

use loong_sandbox::{NetGrant, NetGrantError};

use crate::{doc::Ctx, Problem};

/// What an effect needs. Closed: a new capability is a new variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    FsRead,
    FsWrite,
    NetEgress,
    ProcessExec,
    ToolInvoke,
    ConnectorInvoke,
    MemoryRead,
    MemoryWrite,
    BrowserControl,
    ChannelSend,
    ControlRead,
    ControlWrite,
    ControlApprovals,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 13] = [
        Capability::FsRead,
        Capability::FsWrite,
        Capability::NetEgress,
        Capability::ProcessExec,
        Capability::ToolInvoke,
        Capability::ConnectorInvoke,
        Capability::MemoryRead,
        Capability::MemoryWrite,
        Capability::BrowserControl,
        Capability::ChannelSend,
        Capability::ControlRead,
        Capability::ControlWrite,
        Capability::ControlApprovals,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::FsRead => "fs.read",
            Capability::FsWrite => "fs.write",
            Capability::NetEgress => "net.egress",
            Capability::ProcessExec => "process.exec",
            Capability::ToolInvoke => "tool.invoke",
            Capability::ConnectorInvoke => "connector.invoke",
            Capability::MemoryRead => "memory.read",
            Capability::MemoryWrite => "memory.write",
            Capability::BrowserControl => "browser.control",
            Capability::ChannelSend => "channel.send",
            Capability::ControlRead => "control.read",
            Capability::ControlWrite => "control.write",
            Capability::ControlApprovals => "control.approvals",
        }
    }

    /// The kind of scope it takes.
    pub fn scope_kind(self) -> ScopeKind {
        match self {
            Capability::FsRead | Capability::FsWrite => ScopeKind::Paths,
            Capability::NetEgress | Capability::BrowserControl => ScopeKind::Hosts,
            Capability::ProcessExec | Capability::ToolInvoke | Capability::ConnectorInvoke => {
                ScopeKind::Names
            }
            _ => ScopeKind::None,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a capability or grant does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("unknown capability `{name}`; known: {}", Capability::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "))]
    UnknownCapability { name: String },
    #[error("`{cap}` takes no scope (`{grant}`)")]
    NoScope { cap: Capability, grant: String },
    #[error("the scope of `{0}` must be an absolute path")]
    NotAbsolute(String),
    #[error("`{grant}`: {source} (a `net.egress` or `browser.control` scope is HOST:PORT, or HOST for every port)")]
    BadHosts {
        grant: String,
        source: NetGrantError,
    },
    #[error("`{0}` has an empty scope")]
    EmptyScope(String),
}

impl FromStr for Capability {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Capability, GrantError> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| GrantError::UnknownCapability {
                name: s.to_string(),
            })
    }
}

/// What a capability's scope ranges over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// Absolute path prefixes.
    Paths,
    /// Host patterns (`example.com`, `*.example.com`, optionally `:PORT`).
    Hosts,
    /// Names (tools, connectors, programs).
    Names,
    /// No scope: the capability is all or nothing.
    None,
}

/// A grant: a capability, everywhere or within one scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub cap: Capability,
    /// `None`: everywhere.
    pub scope: Option<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            None => write!(f, "{}", self.cap),
            Some(s) => write!(f, "{}:{s}", self.cap),
        }
    }
}

/// Normalises an absolute path lexically (`.` and `..` resolved); `None` if not absolute.
pub fn lexical(p: &Path) -> Option<PathBuf> {
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Some(out)
}

/// A `net.egress` scope or target as a grant (`HOST:PORT`, or `HOST` for every port): the one
/// grammar of `sandbox.net`, `--allow-net` and `[builtins] shell_net`.
fn host_scope(s: &str) -> Option<NetGrant> {
    NetGrant::parse_scope(s).ok()
}

/// Whether the scope `pattern` admits every destination of `target` (one `HOST:PORT`, or a
/// pattern asked for as a whole, as `sandbox run --allow-net` does).
fn host_matches(pattern: &str, target: &str) -> bool {
    match (host_scope(pattern), host_scope(target)) {
        (Some(p), Some(t)) => p.covers(&t),
        _ => false,
    }
}

impl Grant {
    /// Parses `CAP` or `CAP:SCOPE`.
    pub fn parse(s: &str) -> Result<Grant, GrantError> {
        let (cap, scope) = match s.split_once(':') {
            Some((c, sc)) => (c, Some(sc.to_string())),
            None => (s, None),
        };
        let cap: Capability = cap.parse()?;
        if let Some(sc) = &scope {
            match cap.scope_kind() {
                ScopeKind::None => {
                    return Err(GrantError::NoScope {
                        cap,
                        grant: s.to_string(),
                    })
                }
                ScopeKind::Paths if lexical(Path::new(sc)).is_none() => {
                    return Err(GrantError::NotAbsolute(s.to_string()));
                }
                _ if sc.is_empty() => return Err(GrantError::EmptyScope(s.to_string())),
                ScopeKind::Hosts => {
                    NetGrant::parse_scope(sc).map_err(|source| GrantError::BadHosts {
                        grant: s.to_string(),
                        source,
                    })?;
                }
                _ => {}
            }
        }
        Ok(Grant { cap, scope })
    }

    /// Whether this grant allows `cap` on `target` (a path, host or name; `None` when the
    /// request names no target, which only an unscoped grant allows).
    pub fn allows(&self, cap: Capability, target: Option<&str>) -> bool {
        if self.cap != cap {
            return false;
        }
        let Some(scope) = &self.scope else {
            return true;
        };
        let Some(target) = target else { return false };
        match cap.scope_kind() {
            ScopeKind::Paths => match (lexical(Path::new(scope)), lexical(Path::new(target))) {
                (Some(root), Some(t)) => t.starts_with(root),
                _ => false,
            },
            ScopeKind::Hosts => host_matches(scope, target),
            ScopeKind::Names => scope == "*" || scope == target,
            ScopeKind::None => false,
        }
    }

    /// Whether this grant covers all of `other` (so `other` may be delegated under it).
    pub fn covers(&self, other: &Grant) -> bool {
        if self.cap != other.cap {
            return false;
        }
        match (&self.scope, &other.scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(o)) => self.allows(self.cap, Some(o)),
        }
    }
}

/// A vertical pack: a namespace of grants and connectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    pub id: String,
    pub domain: String,
    pub version: String,
    pub summary: String,
    pub grants: Vec<Grant>,
    pub connectors: Vec<String>,
    /// The approval preset: `never`, `on-high-risk` or `always`.
    pub approval: String,
}

impl Pack {
    /// Whether the pack grants `cap` on `target`.
    pub fn allows(&self, cap: Capability, target: Option<&str>) -> bool {
        self.grants.iter().any(|g| g.allows(cap, target))
    }

    /// Whether every grant of `wanted` lies within this pack's grants.
    pub fn covers(&self, wanted: &Grant) -> bool {
        self.grants.iter().any(|g| g.covers(wanted))
    }
}

fn strings(
    c: &mut Ctx<'_>,
    t: &dyn TableLike,
    key: &str,
) -> Vec<(String, Option<std::ops::Range<usize>>)> {
    let Some(item) = t.get(key) else {
        return Vec::new();
    };
    let Some(arr) = item.as_array() else {
        c.add(item.span(), key, "expected an array of strings");
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in arr.iter() {
        match v.as_str() {
            Some(s) => out.push((s.to_string(), v.span())),
            None => c.add(v.span(), key, "expected a string"),
        }
    }
    out
}

/// Parses a pack file; `Err` holds every problem.
pub fn parse_pack(text: &str, file: &str) -> Result<Pack, Vec<Problem>> {
    let (mut c, doc) = crate::doc::open(
        text,
        file,
        &[
            "id",
            "domain",
            "version",
            "summary",
            "grants",
            "connectors",
            "approval",
        ],
    )?;
    let root = doc.as_table() as &dyn TableLike;
    let text_field = |c: &mut Ctx<'_>, key: &str| {
        c.string(root, key, "", None)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let id = text_field(&mut c, "id");
    if !id.is_empty()
        && !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        c.add(
            root.get("id").and_then(|i| i.span()),
            "id",
            format!("`{id}` may hold only letters, digits, `-` and `_`"),
        );
    }
    let domain = text_field(&mut c, "domain");
    let version = text_field(&mut c, "version");
    let summary = root
        .get("summary")
        .and_then(|i| i.as_str())
        .unwrap_or_default()
        .to_string();
    let approval = root
        .get("approval")
        .and_then(|i| i.as_str())
        .unwrap_or("on-high-risk")
        .to_string();
    if !["never", "on-high-risk", "always"].contains(&approval.as_str()) {
        c.add(
            root.get("approval").and_then(|i| i.span()),
            "approval",
            "expected \"never\", \"on-high-risk\" or \"always\"",
        );
    }
    let mut grants = Vec::new();
    for (g, span) in strings(&mut c, root, "grants") {
        match Grant::parse(&g) {
            Ok(g) => grants.push(g),
            Err(e) => c.add(span, "grants", e.to_string()),
        }
    }
    let connectors = strings(&mut c, root, "connectors")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    if c.problems.is_empty() {
        Ok(Pack {
            id,
            domain,
            version,
            summary,
            grants,
            connectors,
            approval,
        })
    } else {
        Err(c.problems)
    }
}

/// What no grant, no pack and no approval can allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denylist {
    /// Path prefixes.
    pub paths: Vec<PathBuf>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Program names (anywhere in a command line) and tool names.
    pub programs: Vec<String>,
}

/// Parses a denylist file; `Err` holds every problem.
pub fn parse_denylist(text: &str, file: &str) -> Result<Denylist, Vec<Problem>> {
    let (mut c, doc) = crate::doc::open(text, file, &["paths", "hosts", "programs"])?;
    let root = doc.as_table() as &dyn TableLike;
    let mut paths = Vec::new();
    for (p, span) in strings(&mut c, root, "paths") {
        match lexical(Path::new(&p)) {
            Some(p) => paths.push(p),
            None => c.add(span, "paths", format!("`{p}` is not an absolute path")),
        }
    }
    let mut hosts = Vec::new();
    for (h, span) in strings(&mut c, root, "hosts") {
        match NetGrant::parse_scope(&h) {
            Ok(_) => hosts.push(h),
            Err(e) => c.add(
                span,
                "hosts",
                format!("{e} (write HOST:PORT, or HOST for every port)"),
            ),
        }
    }
    let programs = strings(&mut c, root, "programs")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    if c.problems.is_empty() {
        Ok(Denylist {
            paths,
            hosts,
            programs,
        })
    } else {
        Err(c.problems)
    }
}

impl Denylist {
    /// Whether `target` of `cap` is denylisted.
    pub fn denies(&self, cap: Capability, target: &str) -> Option<String> {
        match cap.scope_kind() {
            ScopeKind::Paths => {
                let t = lexical(Path::new(target))?;
                self.paths
                    .iter()
                    .find(|p| t.starts_with(p))
                    .map(|p| format!("path {} is denylisted", p.display()))
            }
            // Any overlap denies; a target or entry that does not parse denies (fail closed).
            ScopeKind::Hosts => {
                let Some(t) = host_scope(target) else {
                    return Some(format!("host {target} is not HOST:PORT"));
                };
                self.hosts
                    .iter()
                    .find(|h| host_scope(h).is_none_or(|h| h.overlaps(&t)))
                    .map(|h| format!("host {h} is denylisted"))
            }
            ScopeKind::Names => {
                let base = Path::new(target)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(target);
                self.programs
                    .iter()
                    .find(|p| *p == base || *p == target)
                    .map(|p| format!("{p} is denylisted"))
            }
            ScopeKind::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_scopes_and_coverage() {
        let g = |s: &str| Grant::parse(s).expect("valid");
        assert!(g("fs.read:/srv/docs").allows(Capability::FsRead, Some("/srv/docs/a/b.txt")));
        assert!(!g("fs.read:/srv/docs").allows(Capability::FsRead, Some("/srv/docs/../secret")));
        assert!(!g("fs.read:/srv/docs").allows(Capability::FsRead, Some("/srv/docsx")));
        assert!(!g("fs.read:/srv/docs").allows(Capability::FsWrite, Some("/srv/docs/a")));
        assert!(g("net.egress:*.example.com")
            .allows(Capability::NetEgress, Some("api.example.com:443")));
        assert!(!g("net.egress:*.example.com").allows(Capability::NetEgress, Some("example.com")));
        assert!(g("net.egress:api.example.com:443")
            .allows(Capability::NetEgress, Some("API.example.com:443")));
        assert!(!g("net.egress:api.example.com:443")
            .allows(Capability::NetEgress, Some("api.example.com:80")));
        assert!(g("fs.read").covers(&g("fs.read:/x")));
        assert!(!g("fs.read:/x").covers(&g("fs.read")));
        assert!(g("fs.read:/x").covers(&g("fs.read:/x/y")));
        assert!(g("net.egress:*.a.com").covers(&g("net.egress:*.b.a.com")));
        assert!(!g("net.egress:b.a.com").covers(&g("net.egress:*.a.com")));
    }

    /// A `net.egress` scope is the grant grammar of `sandbox.net` and `--allow-net` (with the
    /// port optional): port `*`, suffix patterns that never admit the bare domain or a longer
    /// look-alike, and every malformed scope refused at parsing, naming what to write.
    #[test]
    fn host_scopes_share_the_grant_grammar() {
        let g = |s: &str| Grant::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let egress = |scope: &str, target: &str| {
            g(&format!("net.egress:{scope}")).allows(Capability::NetEgress, Some(target))
        };
        assert!(egress("*.example.test:443", "a.example.test:443"));
        assert!(egress("*.example.test:443", "a.b.example.test:443"));
        assert!(!egress("*.example.test:443", "example.test:443"));
        assert!(!egress("*.example.test:443", "example.test.evil:443"));
        assert!(!egress("*.example.test:443", "evilexample.test:443"));
        assert!(!egress("*.example.test:443", "a.example.test:444"));
        assert!(egress("*.example.test:*", "a.example.test:444"));
        assert!(egress("api.example.test:*", "api.example.test:8443"));
        assert!(egress("[::1]:8080", "[::1]:8080"));
        assert!(!egress("[::1]:8080", "127.0.0.1:8080"));
        // A pattern asked for as a whole (`sandbox run --allow-net`) needs a scope covering it.
        assert!(egress("*.example.test:*", "*.example.test:443"));
        assert!(!egress("*.example.test:443", "*.example.test:*"));
        assert!(!egress("a.example.test:443", "*.example.test:443"));
        assert!(g("net.egress:*.a.com:*").covers(&g("net.egress:x.a.com:443")));
        assert!(!g("net.egress:*.a.com:443").covers(&g("net.egress:x.a.com:*")));
        for bad in [
            "*",
            "*.",
            "**.x",
            "a.*.com",
            "a..com",
            "example.com:0",
            "example.com:65536",
            "user@example.com:443",
            "example.com/path",
            "exämple.com",
        ] {
            let err = Grant::parse(&format!("net.egress:{bad}"))
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains(&format!("`net.egress:{bad}`")) && err.contains("network grant"),
                "{bad}: {err}"
            );
        }
        // The denylist reads the same grammar and denies on any overlap.
        let d = parse_denylist(
            "hosts = [\"*.evil.test\", \"db.internal:5432\"]\n",
            "d.toml",
        )
        .expect("denylist");
        assert!(d.denies(Capability::NetEgress, "a.evil.test:443").is_some());
        assert!(d.denies(Capability::NetEgress, "*.test:443").is_some());
        assert!(d
            .denies(Capability::NetEgress, "db.internal:5432")
            .is_some());
        assert!(d
            .denies(Capability::NetEgress, "db.internal:5433")
            .is_none());
        assert!(d.denies(Capability::NetEgress, "evil.test:443").is_none());
        let problems = parse_denylist("hosts = [\"*\"]\n", "d.toml").expect_err("refused");
        assert!(
            problems[0].to_string().contains("`*` alone"),
            "{problems:?}"
        );
        let err = |s: &str| Grant::parse(s).map_err(|e| e.to_string());
        assert_eq!(
            err("memory.read:/x"),
            Err("`memory.read` takes no scope (`memory.read:/x`)".into())
        );
        assert_eq!(
            err("fs.read:relative"),
            Err("the scope of `fs.read:relative` must be an absolute path".into())
        );
        assert!(matches!(
            Grant::parse("fs.teleport"),
            Err(GrantError::UnknownCapability { name }) if name == "fs.teleport"
        ));
    }

    #[test]
    fn pack_problems_are_all_reported() {
        let text = "id = \"bad id!\"\ndomain = \"d\"\nversion = \"1\"\ncolour = 1\ngrants = [\"fs.read:rel\", \"bogus.cap\", \"tool.invoke:echo\"]\napproval = \"sometimes\"\n";
        let p: Vec<String> = parse_pack(text, "p.toml")
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            p,
            vec![
                "p.toml:4: colour: unknown key; expected one of: id, domain, version, summary, grants, connectors, approval",
                "p.toml:1: id: `bad id!` may hold only letters, digits, `-` and `_`",
                "p.toml:6: approval: expected \"never\", \"on-high-risk\" or \"always\"",
                "p.toml:5: grants: the scope of `fs.read:rel` must be an absolute path",
                "p.toml:5: grants: unknown capability `bogus.cap`; known: fs.read, fs.write, net.egress, process.exec, tool.invoke, connector.invoke, memory.read, memory.write, browser.control, channel.send, control.read, control.write, control.approvals",
            ]
        );
    }
}
