//! Where a Loong home keeps its files, and so where its control socket is.
//!
//! loongd and loongctl resolve a home the same way, which is why this lives in the one crate
//! they share: the control socket's address is part of the protocol's contract.
//!
//! Resolution order: `--home DIR`, then `LOONG_HOME`, then `$XDG_STATE_HOME/loong`, then
//! `~/.local/state/loong`. `--system` selects the system layout instead.

use std::path::{Path, PathBuf};

/// The environment variable naming a home.
pub const HOME_ENV: &str = "LOONG_HOME";
/// The longest socket path the kernel accepts (`sun_path` is 108 bytes, one for the NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// The system layout's state directory.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/loong";
/// The system layout's configuration directory.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/loong";
/// The system layout's runtime directory (holds the socket).
pub const SYSTEM_RUN_DIR: &str = "/run/loong";

/// Every path one daemon instance uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The state directory: databases, plugins, logs; what "home" means.
    pub home: PathBuf,
    /// `loongd.toml`.
    pub config_file: PathBuf,
    /// The directory holding the socket, mode 0700.
    pub run_dir: PathBuf,
    /// The control socket, mode 0600.
    pub socket: PathBuf,
    /// The lock file that keeps a second daemon off this home.
    pub lock_file: PathBuf,
    /// Where a detached daemon's log goes.
    pub log_file: PathBuf,
}

/// A home that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// No home was given and neither `XDG_STATE_HOME` nor `HOME` is set.
    #[error(
        "no home given: pass --home DIR or set LOONG_HOME (neither XDG_STATE_HOME nor HOME is set)"
    )]
    NoHome,
    /// The socket path would not fit in `sun_path`.
    #[error("control socket path {} is {len} bytes, above the kernel's limit of {MAX_SOCKET_PATH_BYTES}; choose a shorter --home", path.display())]
    SocketPathTooLong { path: PathBuf, len: usize },
    /// The home is empty text.
    #[error("the home path is empty")]
    Empty,
}

impl Layout {
    /// The layout of a per-user home rooted at `home`, made absolute against the current
    /// directory.
    pub fn user(home: &Path) -> Result<Layout, LayoutError> {
        if home.as_os_str().is_empty() {
            return Err(LayoutError::Empty);
        }
        let home = std::path::absolute(home).map_err(|_| LayoutError::Empty)?;
        let run_dir = home.join("run");
        Layout {
            config_file: home.join("loongd.toml"),
            socket: run_dir.join("loongd.sock"),
            run_dir,
            lock_file: home.join("loongd.lock"),
            log_file: home.join("log").join("loongd.log"),
            home,
        }
        .checked()
    }

    /// The system layout: `/var/lib/loong`, `/etc/loong/loongd.toml`, `/run/loong/loongd.sock`.
    pub fn system() -> Layout {
        let home = PathBuf::from(SYSTEM_STATE_DIR);
        Layout {
            config_file: Path::new(SYSTEM_CONFIG_DIR).join("loongd.toml"),
            run_dir: PathBuf::from(SYSTEM_RUN_DIR),
            socket: Path::new(SYSTEM_RUN_DIR).join("loongd.sock"),
            lock_file: Path::new(SYSTEM_RUN_DIR).join("loongd.lock"),
            log_file: home.join("log").join("loongd.log"),
            home,
        }
    }

    /// Resolves the layout from the command line (`--home`, `--system`) and the environment.
    pub fn resolve(home: Option<&Path>, system: bool) -> Result<Layout, LayoutError> {
        Layout::resolve_with(home, system, |k| std::env::var_os(k))
    }

    /// [`resolve`](Self::resolve) with the environment given as a function, for tests.
    pub fn resolve_with(
        home: Option<&Path>,
        system: bool,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Layout, LayoutError> {
        if system {
            return Ok(Layout::system());
        }
        if let Some(h) = home {
            return Layout::user(h);
        }
        let non_empty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(h) = non_empty(HOME_ENV) {
            return Layout::user(&h);
        }
        if let Some(x) = non_empty("XDG_STATE_HOME") {
            return Layout::user(&x.join("loong"));
        }
        if let Some(h) = non_empty("HOME") {
            return Layout::user(&h.join(".local/state/loong"));
        }
        Err(LayoutError::NoHome)
    }

    fn checked(self) -> Result<Layout, LayoutError> {
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_BYTES {
            return Err(LayoutError::SocketPathTooLong {
                path: self.socket,
                len,
            });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn resolution_order() {
        let all = [
            ("LOONG_HOME", "/a"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        let home = |l: Result<Layout, LayoutError>| l.map(|l| l.home);
        assert_eq!(
            home(Layout::resolve_with(
                Some(Path::new("/cli")),
                false,
                env(&all)
            )),
            Ok("/cli".into())
        );
        assert_eq!(
            home(Layout::resolve_with(None, false, env(&all))),
            Ok("/a".into())
        );
        assert_eq!(
            home(Layout::resolve_with(None, false, env(&all[1..]))),
            Ok("/x/loong".into())
        );
        assert_eq!(
            home(Layout::resolve_with(None, false, env(&all[2..]))),
            Ok("/h/.local/state/loong".into())
        );
        assert_eq!(
            home(Layout::resolve_with(
                None,
                false,
                env(&[("LOONG_HOME", "")])
            )),
            Err(LayoutError::NoHome)
        );
        let sys = Layout::resolve_with(Some(Path::new("/cli")), true, env(&all)).expect("system");
        assert_eq!(sys.socket, PathBuf::from("/run/loong/loongd.sock"));
        assert_eq!(sys.config_file, PathBuf::from("/etc/loong/loongd.toml"));
    }

    #[test]
    fn socket_path_length_is_checked() {
        let long = format!("/{}", "d".repeat(100));
        assert!(matches!(
            Layout::user(Path::new(&long)),
            Err(LayoutError::SocketPathTooLong { len: 117, .. })
        ));
        assert!(Layout::user(Path::new("/tmp/short")).is_ok());
    }
}
