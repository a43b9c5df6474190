//! Whose ids a sandbox runs as. loongd as root drops each sandbox to `sandbox.uid`/`gid`.
//! loongd as an ordinary user confines with user namespaces, and a sandbox must then never
//! run as loongd's own uid (an escape would own loongd's state): each live sandbox gets one id
//! of loongd's user's subordinate range (`/etc/subuid`, `/etc/subgid`), written into its user
//! namespace by the setuid `newuidmap`/`newgidmap` (Debian's `uidmap`).
//!
//! Without a range or the tools, every spawn is refused naming what to add, unless the
//! operator chose the degraded mode (`[sandbox] rootless_own_uid`), which keeps sandboxes on
//! loongd's own uid.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where `newuidmap` is looked for: fixed paths, never `PATH`.
pub const NEWUIDMAP: [&str; 2] = ["/usr/bin/newuidmap", "/bin/newuidmap"];
/// Where `newgidmap` is looked for.
pub const NEWGIDMAP: [&str; 2] = ["/usr/bin/newgidmap", "/bin/newgidmap"];
/// The subordinate uid ranges.
pub const SUBUID_FILE: &str = "/etc/subuid";
/// The subordinate gid ranges.
pub const SUBGID_FILE: &str = "/etc/subgid";
/// The uid and gid a sandbox has inside its user namespace in this mode (`nobody`, as under
/// root), each mapped to the sandbox's own subordinate id.
pub const INSIDE_SANDBOX_ID: u32 = 65534;
/// The most sandboxes one range serves at once (ids beyond this in a wider range are unused).
pub const MAX_SLOTS: u32 = 65536;

/// One subordinate range: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// The ids sandboxes run as, decided once when the spawner starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMode {
    /// loongd is root: sandboxes drop to the configured uid and gid.
    Root,
    /// loongd is not root; each live sandbox has its own id from these ranges.
    Subordinate {
        user: String,
        uid: SubRange,
        gid: SubRange,
    },
    /// loongd is not root and cannot map subordinate ids, for the reason given. Spawns are
    /// refused unless the operator allowed the degraded mode.
    OwnUid(Missing),
}

/// Why subordinate ids cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("loongd's uid {uid} has no entry in the user database (/etc/passwd); newuidmap needs one: create the user (the package's sysusers.d creates `loong`)")]
    NoUser { uid: u32 },
    #[error("{file} gives the user {user} (uid {uid}) no subordinate range; add one, e.g. `usermod --add-subuids 2000000-2065535 --add-subgids 2000000-2065535 {user}` (the package's postinst does this for `loong`)")]
    NoRange {
        file: &'static str,
        user: String,
        uid: u32,
    },
    #[error("{tool} is not installed as a setuid-root program at {}; install Debian's `uidmap` package", .paths.join(" or "))]
    NoTool {
        tool: &'static str,
        paths: Vec<&'static str>,
    },
    #[error("loongd runs with no_new_privs (systemd's NoNewPrivileges=, or a directive that implies it for a unit without capabilities), so the setuid newuidmap cannot map ids and no idmap server listens on {}: start loong-idmap.socket (the package ships it), or run loongd without no_new_privs", crate::helper::idmap::IDMAP_SOCKET)]
    NoNewPrivs,
}

impl IdMode {
    /// The mode for this process: root, or the subordinate ranges of its user.
    pub fn detect() -> IdMode {
        let uid = nix::unistd::Uid::effective();
        if uid.is_root() {
            return IdMode::Root;
        }
        match subordinate(uid.as_raw(), Path::new(SUBUID_FILE), Path::new(SUBGID_FILE)) {
            Ok((user, uid, gid)) => IdMode::Subordinate { user, uid, gid },
            Err(m) => IdMode::OwnUid(m),
        }
    }

    /// The name `loongctl doctor` shows.
    pub fn name(&self) -> &'static str {
        match self {
            IdMode::Root => "root",
            IdMode::Subordinate { .. } => "rootless with subordinate ids",
            IdMode::OwnUid(_) => "rootless without subordinate ids",
        }
    }
}

fn subordinate(
    uid: u32,
    subuid: &Path,
    subgid: &Path,
) -> Result<(String, SubRange, SubRange), Missing> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or(Missing::NoUser { uid })?;
    let no_range = |file| Missing::NoRange {
        file,
        user: user.name.clone(),
        uid,
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let u = range_for(&read(subuid), &user.name, uid).ok_or_else(|| no_range(SUBUID_FILE))?;
    let g = range_for(&read(subgid), &user.name, uid).ok_or_else(|| no_range(SUBGID_FILE))?;
    for (tool, paths) in [("newuidmap", NEWUIDMAP), ("newgidmap", NEWGIDMAP)] {
        if find_tool(&paths).is_none() {
            return Err(Missing::NoTool {
                tool,
                paths: paths.to_vec(),
            });
        }
    }
    // Under no_new_privs the tools are run by the idmap server (`loong-idmap.socket`).
    if no_new_privs() && !idmap_server() {
        return Err(Missing::NoNewPrivs);
    }
    Ok((user.name, u, g))
}

/// The first usable range for `user` (by name or uid) in the text of `/etc/subuid` or
/// `/etc/subgid`: `NAME:START:COUNT` a line. A range that would reach id 0, wrap past
/// `u32::MAX`, or include the owner's own id is skipped (a sandbox must never get those).
pub fn range_for(text: &str, user: &str, uid: u32) -> Option<SubRange> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (name, start, count) = (f.next()?, f.next()?, f.next()?);
        if f.next().is_some() || (name != user && name != uid.to_string()) {
            return None;
        }
        let start: u32 = start.parse().ok()?;
        let count: u32 = count.parse().ok()?;
        let end = start.checked_add(count)?;
        (start > 0 && count > 0 && !(start..end).contains(&uid)).then_some(SubRange {
            start,
            count: count.min(MAX_SLOTS),
        })
    })
}

/// The first of `paths` that is a regular file owned by root with the setuid bit.
pub fn find_tool(paths: &[&'static str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o4000 != 0)
    })
}

/// Whether an idmap server's socket is there (`loong-spawn --idmap`, `loong-idmap.socket`).
fn idmap_server() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(crate::helper::idmap::IDMAP_SOCKET).is_ok_and(|m| m.file_type().is_socket())
}

/// Whether this process has `no_new_privs` set (setuid programs then run without their owner).
pub fn no_new_privs() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("NoNewPrivs:") && l.trim_end().ends_with('1'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, want: Option<(u32, u32)>) {
        let got = range_for(text, "loong", 998).map(|r| (r.start, r.count));
        assert_eq!(got, want, "{text:?}");
    }

    #[test]
    fn ranges_by_name_or_uid_and_the_unusable_ones_skipped() {
        check("loong:100000:65536\n", Some((100000, 65536)));
        check("998:200000:10\n", Some((200000, 10)));
        check("other:100000:65536\nloong:300000:5\n", Some((300000, 5)));
        // Another user's range, garbage, and nothing at all.
        check("other:100000:65536\n", None);
        check("loong:abc:10\nloong:1:\nloong\n\n", None);
        check("", None);
        // A range that starts at 0 would map the sandbox to root; one that holds loongd's own
        // uid would give a sandbox loongd's uid; one that wraps is malformed.
        check("loong:0:65536\n", None);
        check("loong:900:200\n", None);
        check("loong:4294967295:2\n", None);
        check("loong:100000:0\n", None);
        // A wide range serves at most MAX_SLOTS sandboxes at once; a bad line is passed over.
        check(
            "loong:0:5\nloong:100000:4000000\n",
            Some((100000, MAX_SLOTS)),
        );
    }

    #[test]
    fn names_say_which_mode() {
        assert_eq!(IdMode::Root.name(), "root");
        let m = IdMode::OwnUid(Missing::NoUser { uid: 5 });
        assert_eq!(m.name(), "rootless without subordinate ids");
        assert!(Missing::NoRange {
            file: SUBUID_FILE,
            user: "loong".into(),
            uid: 998
        }
        .to_string()
        .contains("usermod --add-subuids"));
    }
}
