//! The secrets `http_json` manifests name as `${secret:NAME}`: set, listed and removed by
//! the operator over the control socket, kept by loongd in one file of its home,
//! `secrets.json` (mode 0600, owned by loongd's user, outside every sandbox: the home is
//! hidden from all of them). Not in `state.db`, so that no other store, journal or backup
//! of the state carries a value. A value leaves this module only for a connector's call to
//! its own endpoint ([`crate::workers`] fills in the headers), and is redacted from what the
//! call answers.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use loong_ipc::SecretView;
use loong_profiles::plugin::headers::{
    check_secret_value, valid_secret_name, MAX_SECRET_NAME_BYTES,
};
use serde::{Deserialize, Serialize};

/// The file in the home.
pub const SECRETS_FILE: &str = "secrets.json";
/// The most secrets one home holds.
pub const MAX_SECRETS: usize = 256;
/// The most hosts one secret may be bound to.
pub const MAX_SECRET_HOSTS: usize = 16;
/// Longest host name a secret is bound to.
pub const MAX_HOST_BYTES: usize = 253;
/// Largest store file read at start: every secret at its largest, escaped, with its hosts.
pub const MAX_STORE_BYTES: u64 = 8 * 1024 * 1024;

static STORE: OnceLock<Secrets> = OnceLock::new();

/// Why a secret request or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret name {0:?} is not [A-Za-z0-9_.-]{{1,{MAX_SECRET_NAME_BYTES}}}")]
    BadName(String),
    #[error("secret {name:?}: {why}")]
    BadValue { name: String, why: String },
    #[error("no secret named {0:?}; `loongctl secrets list` shows the names")]
    Unknown(String),
    #[error("{MAX_SECRETS} secrets are set already; remove one with `loongctl secrets rm NAME`")]
    Full,
    #[error("secret {name:?}: --host {host:?} is not HOST, HOST:PORT, [IPV6]:PORT or http://HOST:PORT (at most {MAX_SECRET_HOSTS} hosts of at most {MAX_HOST_BYTES} bytes)")]
    BadHost { name: String, host: String },
    #[error("secret {0:?}: name the endpoint host it may be sent to with --host HOST (repeatable); a secret bound to no host would go to any package that names it")]
    NoHost(String),
    #[error("the secret store {path}: {why}")]
    Store { path: String, why: String },
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    value: String,
    set_ms: u64,
    /// The only endpoint hosts the value may be sent to; none (a store written before every
    /// secret was bound): sent nowhere.
    #[serde(default)]
    hosts: Vec<String>,
}

/// What a connector's call finds for a secret it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Value(String),
    /// Set, but bound to other hosts.
    NotFor(Vec<String>),
    Missing,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    version: u32,
    secrets: BTreeMap<String, Entry>,
}

/// The store: the file and its contents in memory.
pub struct Secrets {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("path", &self.path)
            .field(
                "names",
                &self
                    .list()
                    .iter()
                    .map(|v| v.name.clone())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Opens the home's store for this process (the first open wins; a unit test's second
/// daemon shares it).
pub(crate) fn open(home: &Path) -> Result<(), SecretError> {
    if STORE.get().is_some() {
        return Ok(());
    }
    let _ = STORE.set(Secrets::open(home)?);
    Ok(())
}

/// This process's store, once [`open`]ed.
pub(crate) fn store() -> Option<&'static Secrets> {
    STORE.get()
}

impl Secrets {
    /// Reads `HOME/secrets.json` (none yet: empty) and makes sure it is 0600.
    pub fn open(home: &Path) -> Result<Secrets, SecretError> {
        let path = home.join(SECRETS_FILE);
        let bad = |why: String| SecretError::Store {
            path: path.display().to_string(),
            why,
        };
        // Opened without following a link, then judged by what was opened: a link, a FIFO,
        // another user's file or one past the bound is refused, and nothing is changed
        // through a name (the mode is set on the descriptor).
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path);
        let map = match opened {
            Ok(mut f) => {
                let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
                if !meta.file_type().is_file() {
                    return Err(bad("is not a regular file".into()));
                }
                if meta.uid() != nix::unistd::geteuid().as_raw() {
                    return Err(bad(format!(
                        "is owned by uid {}, not loongd's uid",
                        meta.uid()
                    )));
                }
                if meta.nlink() != 1 {
                    return Err(bad(format!(
                        "has {} names (a hard link to another file?); loongd keeps it as one file",
                        meta.nlink()
                    )));
                }
                if meta.len() > MAX_STORE_BYTES {
                    return Err(bad(format!(
                        "is {} bytes, over the {MAX_STORE_BYTES}-byte limit",
                        meta.len()
                    )));
                }
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| bad(e.to_string()))?;
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(&mut f, MAX_STORE_BYTES + 1),
                    &mut bytes,
                )
                .map_err(|e| bad(e.to_string()))?;
                if bytes.len() as u64 > MAX_STORE_BYTES {
                    return Err(bad(format!("grew over the {MAX_STORE_BYTES}-byte limit")));
                }
                // Placed, never quoted: serde's message may hold a string of the file.
                serde_json::from_slice::<File>(&bytes)
                    .map_err(|e| {
                        bad(format!(
                            "does not parse ({:?} error at line {}, column {}); restore it from a backup",
                            e.classify(),
                            e.line(),
                            e.column()
                        ))
                    })?
                    .secrets
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(bad("is a symbolic link; loongd keeps it as a file".into()))
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        // Judged again as `set` judges them: a file edited by hand must not hand the worker a
        // value that would split a request's head, or a name no manifest can write.
        if map.len() > MAX_SECRETS {
            return Err(bad(format!(
                "holds {} secrets, over {MAX_SECRETS}",
                map.len()
            )));
        }
        for (name, e) in &map {
            if !valid_secret_name(name) {
                return Err(bad(format!("the secret name {name:?} is not valid")));
            }
            check_secret_value(&e.value)
                .map_err(|why| bad(format!("the secret {name:?}: {why}")))?;
        }
        Ok(Secrets {
            path,
            map: Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the whole map: a new 0600 file beside the old one, synced, then renamed over it.
    fn save(&self, map: &BTreeMap<String, Entry>) -> Result<(), SecretError> {
        let bad = |e: std::io::Error| SecretError::Store {
            path: self.path.display().to_string(),
            why: e.to_string(),
        };
        let file = File {
            version: 1,
            secrets: map.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| SecretError::Store {
            path: self.path.display().to_string(),
            why: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(bad)?;
        f.write_all(&bytes).map_err(bad)?;
        f.sync_all().map_err(bad)?;
        std::fs::rename(&tmp, &self.path).map_err(bad)
    }

    /// Sets `name` to `value` (replacing it), sent only to `hosts` (at least one).
    pub fn set(
        &self,
        name: &str,
        value: &str,
        hosts: &[String],
    ) -> Result<SecretView, SecretError> {
        if !valid_secret_name(name) {
            return Err(SecretError::BadName(name.to_string()));
        }
        check_secret_value(value).map_err(|why| SecretError::BadValue {
            name: name.to_string(),
            why: why.to_string(),
        })?;
        if hosts.is_empty() {
            return Err(SecretError::NoHost(name.to_string()));
        }
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let bad_host = hosts.iter().find(|h| {
            // `http://HOST:PORT`: plain HTTP, to that port only.
            let (plain, h) = match h.strip_prefix(PLAIN) {
                Some(rest) => (true, rest),
                None => (false, h.as_str()),
            };
            h.is_empty()
                || h.len() > MAX_HOST_BYTES
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                || (h.contains(['[', ']']) && !(h.starts_with('[') && bound_port(h).is_some()))
                || (plain && bound_port(h).is_none())
        });
        if let Some(h) = bad_host.or(hosts.get(MAX_SECRET_HOSTS)) {
            return Err(SecretError::BadHost {
                name: name.to_string(),
                host: h.clone(),
            });
        }
        let mut map = self.lock();
        if !map.contains_key(name) && map.len() >= MAX_SECRETS {
            return Err(SecretError::Full);
        }
        let set_ms = u64::try_from(crate::now_ms()).unwrap_or(0);
        let mut next = map.clone();
        next.insert(
            name.to_string(),
            Entry {
                value: value.to_string(),
                set_ms,
                hosts: hosts.clone(),
            },
        );
        self.save(&next)?;
        *map = next;
        Ok(SecretView {
            name: name.to_string(),
            set_ms,
            hosts,
        })
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> Result<SecretView, SecretError> {
        let mut map = self.lock();
        let mut next = map.clone();
        let Some(old) = next.remove(name) else {
            return Err(SecretError::Unknown(name.to_string()));
        };
        self.save(&next)?;
        *map = next;
        Ok(SecretView {
            name: name.to_string(),
            set_ms: old.set_ms,
            hosts: old.hosts,
        })
    }

    /// Names and when each was set.
    pub fn list(&self) -> Vec<SecretView> {
        self.lock()
            .iter()
            .map(|(name, e)| SecretView {
                name: name.clone(),
                set_ms: e.set_ms,
                hosts: e.hosts.clone(),
            })
            .collect()
    }

    /// The value of `name` for a connector's call to `host` on `port`, over TLS or not. Over
    /// TLS, where the certificate names the host, a binding `HOST` admits any port and
    /// `HOST:PORT` (`[IPV6]:PORT`) that port. In plain HTTP only `http://HOST:PORT` admits
    /// it: without TLS nothing tells the listener on another port (another local user's, on
    /// loopback) from the service meant, and a binding made for TLS must not let the value
    /// cross a network in clear.
    pub(crate) fn get(&self, name: &str, host: &str, port: u16, tls: bool) -> Lookup {
        let authority = authority(host, port);
        let admits = |h: &String| {
            if tls {
                *h == host || *h == authority
            } else {
                h.strip_prefix(PLAIN) == Some(authority.as_str())
            }
        };
        match self.lock().get(name) {
            None => Lookup::Missing,
            Some(e) if !e.hosts.iter().any(admits) => Lookup::NotFor(e.hosts.clone()),
            Some(e) => Lookup::Value(e.value.clone()),
        }
    }
}

/// The prefix of a binding that admits plain HTTP.
pub const PLAIN: &str = "http://";

/// `host:port`, or `[host]:port` for an IPv6 address: a secret's binding to one port.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The port a binding names, when it has the form `[IPV6]:PORT` or `NAME:PORT`.
fn bound_port(h: &str) -> Option<u16> {
    let port = match h.strip_prefix('[') {
        Some(v6) => {
            let (addr, port) = v6.split_once("]:")?;
            if addr.is_empty() || addr.contains(['[', ']']) {
                return None;
            }
            port
        }
        None => h.rsplit_once(':')?.1,
    };
    port.parse::<u16>().ok().filter(|p| *p > 0)
}

/// The shortest start of a value that redaction replaces where a text ends in it (a quote cut
/// inside the value); a shorter one tells next to nothing of it.
pub const MIN_REDACTED_TAIL_BYTES: usize = 4;

/// The forms a value takes in what a call answers: as sent, inside a JSON string, inside a
/// Rust `{:?}` quote (a worker's message) and percent-encoded (a URL an upstream echoes).
fn forms(value: &str) -> Vec<String> {
    let inner = |quoted: String| {
        quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .map(String::from)
    };
    let json = serde_json::to_string(value).ok().and_then(inner);
    let debug = inner(format!("{value:?}"));
    let mut all = vec![value.to_string()];
    for f in [
        json,
        debug,
        Some(percent(value, true)),
        Some(percent(value, false)),
    ]
    .into_iter()
    .flatten()
    {
        if !f.is_empty() && !all.contains(&f) {
            all.push(f);
        }
    }
    all
}

/// `value` percent-encoded (RFC 3986: all but the unreserved bytes), in upper or lower hex.
fn percent(value: &str, upper: bool) -> String {
    value
        .bytes()
        .map(
            |b| match (b.is_ascii_alphanumeric() || b"-._~".contains(&b), upper) {
                (true, _) => char::from(b).to_string(),
                (false, true) => format!("%{b:02X}"),
                (false, false) => format!("%{b:02x}"),
            },
        )
        .collect()
}

/// `text` with each value in `used` (name, value) replaced by `[secret:NAME]`: in each of its
/// [`forms`], and where the text ends in the start of one (at least
/// [`MIN_REDACTED_TAIL_BYTES`] of it, or all of a shorter value), as when a quote of an
/// upstream's answer was cut inside the value.
pub(crate) fn redact(text: &str, used: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in used {
        if value.is_empty() {
            continue;
        }
        let mark = format!("[secret:{name}]");
        let forms = forms(value);
        for form in &forms {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), &mark);
            }
        }
        // A cut quote: the text ends (before a cut character's replacement and trailing
        // space) in a start of the value.
        let end = out
            .trim_end_matches(|c: char| c.is_whitespace() || c == char::REPLACEMENT_CHARACTER)
            .len();
        let cut = forms.iter().find_map(|form| {
            let longest = form.len().min(end);
            (MIN_REDACTED_TAIL_BYTES.min(form.len())..=longest)
                .rev()
                .filter(|n| form.is_char_boundary(*n) && out.is_char_boundary(end - n))
                .find(|n| out[end - n..end] == form[..*n])
        });
        if let Some(n) = cut {
            out.replace_range(end - n.., &mark);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_values_in_a_0600_file_and_refuses_bad_names_and_values() {
        let home = tempfile::tempdir().expect("home");
        let s = Secrets::open(home.path()).expect("open");
        let unbound = s.set("api_key", "v1", &[]).expect_err("bound to no host");
        assert!(matches!(unbound, SecretError::NoHost(_)), "{unbound}");
        s.set("api_key", "v1", &["api.example".into()])
            .expect("set");
        s.set("api_key", "v2", &["API.example".into()])
            .expect("replace");
        let path = home.path().join(SECRETS_FILE);
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Secrets::open(home.path()).expect("reopen");
        assert_eq!(
            again.get("api_key", "api.example", 443, true),
            Lookup::Value("v2".into())
        );
        assert_eq!(
            again.get("api_key", "evil.example", 443, true),
            Lookup::NotFor(vec!["api.example".into()])
        );
        assert_eq!(again.get("nope", "api.example", 443, true), Lookup::Missing);
        assert!(matches!(
            s.set("k", "v", &["a/b".into()]),
            Err(SecretError::BadHost { .. })
        ));
        assert_eq!(again.list().len(), 1);
        let h = ["api.example".to_string()];
        assert!(matches!(
            s.set("a b", "x", &h),
            Err(SecretError::BadName(_))
        ));
        assert!(matches!(
            s.set("k", "a\r\nHost: evil", &h),
            Err(SecretError::BadValue { .. })
        ));
        s.remove("api_key").expect("remove");
        assert!(matches!(s.remove("api_key"), Err(SecretError::Unknown(_))));
        assert_eq!(Secrets::open(home.path()).expect("reopen").list().len(), 0);
    }

    #[test]
    fn the_store_is_opened_as_loongds_own_bounded_file_never_through_a_link() {
        let home = tempfile::tempdir().expect("home");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        let target = elsewhere.path().join("victim.json");
        std::fs::write(&target, r#"{"version":1,"secrets":{}}"#).expect("target");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("mode");
        let path = home.path().join(SECRETS_FILE);
        std::os::unix::fs::symlink(&target, &path).expect("link");
        let err = Secrets::open(home.path()).expect_err("a link");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let mode = std::fs::metadata(&target)
            .expect("target")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "the link's target was changed");
        std::fs::remove_file(&path).expect("unlink");
        std::fs::hard_link(&target, &path).expect("hard link");
        let err = Secrets::open(home.path()).expect_err("a hard link");
        assert!(err.to_string().contains("hard link"), "{err}");
        let mode = std::fs::metadata(&target)
            .expect("target")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "the hard link's file was changed");
        std::fs::remove_file(&path).expect("unlink");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        let err = Secrets::open(home.path()).expect_err("a fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_file(&path).expect("unlink");
        let f = std::fs::File::create(&path).expect("big");
        f.set_len(MAX_STORE_BYTES + 1).expect("grow");
        let err = Secrets::open(home.path()).expect_err("too big");
        assert!(err.to_string().contains("byte limit"), "{err}");
        // The control: the same contents as a file of its own open, made 0600.
        std::fs::remove_file(&path).expect("unlink");
        std::fs::copy(&target, &path).expect("copy");
        Secrets::open(home.path()).expect("a plain file");
        let mode = std::fs::metadata(&path)
            .expect("store")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_store_that_does_not_parse_is_refused_without_quoting_it() {
        // serde quotes a mistyped string ("invalid type: string ..."): the error names the
        // place only, since any string in the file may be a value.
        let home = tempfile::tempdir().expect("home");
        std::fs::write(
            home.path().join(SECRETS_FILE),
            r#"{"version":1,"secrets":{"k":{"value":"v","set_ms":"SEKRIT-123","hosts":["h"]}}}"#,
        )
        .expect("store");
        let err = Secrets::open(home.path())
            .expect_err("mistyped")
            .to_string();
        assert!(
            err.contains("does not parse") && err.contains("line 1") && !err.contains("SEKRIT"),
            "{err}"
        );
    }

    #[test]
    fn a_store_edited_with_a_value_set_would_refuse_is_refused_naming_the_secret() {
        let home = tempfile::tempdir().expect("home");
        let path = home.path().join(SECRETS_FILE);
        for (text, expect) in [
            (
                r#"{"version":1,"secrets":{"k":{"value":"x\r\nHost: evil","set_ms":1,"hosts":["h"]}}}"#,
                "\"k\": the value holds a control character",
            ),
            (
                r#"{"version":1,"secrets":{"a/b":{"value":"v","set_ms":1,"hosts":["h"]}}}"#,
                "\"a/b\" is not valid",
            ),
        ] {
            std::fs::write(&path, text).expect("store");
            let err = Secrets::open(home.path()).expect_err(text).to_string();
            assert!(err.contains(expect) && !err.contains("evil"), "{err}");
        }
        // The control: the same entry with a clean value opens.
        std::fs::write(
            &path,
            r#"{"version":1,"secrets":{"k":{"value":"x","set_ms":1,"hosts":["h"]}}}"#,
        )
        .expect("store");
        Secrets::open(home.path()).expect("a clean store");
    }

    #[test]
    fn a_secret_bound_to_no_host_goes_nowhere() {
        // A store written before binding was required: its unbound entry is sent to no
        // endpoint (the control: a bound one is sent to its host).
        let home = tempfile::tempdir().expect("home");
        std::fs::write(
            home.path().join(SECRETS_FILE),
            r#"{"version":1,"secrets":{"old":{"value":"v","set_ms":1},"new":{"value":"w","set_ms":1,"hosts":["api.example"]}}}"#,
        )
        .expect("store");
        let s = Secrets::open(home.path()).expect("open");
        assert_eq!(
            s.get("old", "evil.example", 443, true),
            Lookup::NotFor(Vec::new())
        );
        assert_eq!(
            s.get("old", "api.example", 443, true),
            Lookup::NotFor(Vec::new())
        );
        assert_eq!(
            s.get("new", "api.example", 443, true),
            Lookup::Value("w".into())
        );
    }

    #[test]
    fn a_bare_host_admits_any_port_over_tls_and_plain_http_only_its_own_binding() {
        let home = tempfile::tempdir().expect("home");
        let s = Secrets::open(home.path()).expect("open");
        s.set(
            "k",
            "v",
            &[
                "API.example".into(),
                "10.0.0.5:8443".into(),
                "http://127.0.0.1:8080".into(),
            ],
        )
        .expect("set");
        s.set("k6", "w", &["http://[::1]:8443".into()])
            .expect("set v6");
        let v = || Lookup::Value("v".into());
        let refused = |l: Lookup| matches!(l, Lookup::NotFor(_));
        // Over TLS the certificate names the host: any port of a bare host; one port of a
        // HOST:PORT.
        assert_eq!(s.get("k", "api.example", 443, true), v());
        assert_eq!(s.get("k", "api.example", 8443, true), v());
        assert_eq!(s.get("k", "10.0.0.5", 8443, true), v());
        assert!(refused(s.get("k", "10.0.0.5", 9443, true)));
        // In plain HTTP only http://HOST:PORT admits it: not a bare host, not a TLS port
        // binding (the same port in clear), not another port.
        assert!(refused(s.get("k", "api.example", 80, false)));
        assert!(refused(s.get("k", "10.0.0.5", 8443, false)));
        assert_eq!(s.get("k", "127.0.0.1", 8080, false), v());
        assert!(refused(s.get("k", "127.0.0.1", 9999, false)));
        assert!(refused(s.get("k", "127.0.0.1", 8080, true)));
        assert_eq!(s.get("k6", "::1", 8443, false), Lookup::Value("w".into()));
        assert!(refused(s.get("k6", "::1", 443, false)));
        for bad in [
            "[::1]",
            "[::1]:",
            "[::1]:0",
            "[]:80",
            "a]:80",
            "[::1]:x",
            "http://127.0.0.1",
            "http://",
            "https://a.example",
        ] {
            assert!(
                matches!(
                    s.set("k", "v", &[bad.into()]),
                    Err(SecretError::BadHost { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn redaction_replaces_every_use_of_a_value() {
        let used = vec![("k".to_string(), "s3cr3t".to_string())];
        assert_eq!(
            redact("upstream said: denied for Bearer s3cr3t (s3cr3t)", &used),
            "upstream said: denied for Bearer [secret:k] ([secret:k])"
        );
        assert_eq!(redact("nothing here", &used), "nothing here");
        // Escaped as JSON, as a Rust quote and percent-encoded; and cut inside the value.
        let used = vec![("k".to_string(), "s3\"cr/et+1".to_string())];
        for text in [
            r#"{"echo":"s3\"cr/et+1"}"#,
            r#"redirected to "https://x/?t=s3\"cr/et+1""#,
            "https://x/?t=s3%22cr%2Fet%2B1",
            "https://x/?t=s3%22cr%2fet%2b1",
        ] {
            let out = redact(text, &used);
            assert!(
                out.contains("[secret:k]") && !out.contains("s3"),
                "{text}: {out}"
            );
        }
        for cut in [
            "denied: s3\"cr",
            "denied: s3\"cr/\u{fffd}",
            "denied: s3\"c  ",
        ] {
            assert_eq!(redact(cut, &used), "denied: [secret:k]", "{cut}");
        }
        // The control: a text ending in fewer bytes of it than the bound is left as it is.
        assert_eq!(redact("ends in s3\"", &used), "ends in s3\"");
    }
}
