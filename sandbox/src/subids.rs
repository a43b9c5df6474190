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
    #[error("{file} gives the user {user} (uid {uid}) no usable subordinate range (one holding neither id 0, 65534, the user's own id, an id of /etc/passwd or /etc/group, nor another entry's ids); add one, e.g. `usermod --add-subuids 2000000-2065535 --add-subgids 2000000-2065535 {user}` (the package's postinst does this for `loong`)")]
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
    /// The slot claim file, which keeps two live sandboxes of this user (of two loongds) off
    /// one subordinate id, cannot be used, so no sandbox gets one.
    #[error("the slot claim file cannot be used, so no sandbox can be given a subordinate id without risking one another loongd of this user gives too: {why}; fix it and restart loongd")]
    NoClaims { why: String },
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
    let (passwd, group) = (read(Path::new(PASSWD_FILE)), read(Path::new(GROUP_FILE)));
    // No sandbox may run as an id a local user or group has (their primary gids included).
    let uids = database_ids(&passwd, 2);
    let mut gids = database_ids(&group, 2);
    gids.extend(database_ids(&passwd, 3));
    gids.push(user.gid.as_raw());
    let u =
        range_for(&read(subuid), &user.name, uid, &uids).ok_or_else(|| no_range(SUBUID_FILE))?;
    let g =
        range_for(&read(subgid), &user.name, uid, &gids).ok_or_else(|| no_range(SUBGID_FILE))?;
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

/// The id the kernel shows for an unmapped one (`nobody`, `nogroup`), which other services
/// run as: never a sandbox's.
pub const OVERFLOW_ID: u32 = 65534;
/// The local user database: no sandbox may run as an id a user there has.
pub const PASSWD_FILE: &str = "/etc/passwd";
/// The local group database: no sandbox may run as an id a group there has.
pub const GROUP_FILE: &str = "/etc/group";

/// The numeric field `field` (0-based) of every line of a `passwd`- or `group`-format text:
/// the ids its entries hold.
pub fn database_ids(text: &str, field: usize) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(field)?.trim().parse().ok())
        .collect()
}

/// A number as `newuidmap` may read it (`strtoul` with base 0: decimal, `0x` hex, `0`
/// octal): every reading, so another entry's range is taken under each.
fn lenient(s: &str) -> Vec<u64> {
    let s = s.trim();
    let mut out: Vec<u64> = s.parse::<u64>().ok().into_iter().collect();
    let radix = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        None
    };
    out.extend(radix);
    out
}

/// A number of loongd's own entry: plain decimal only (no sign, no leading zero), so this
/// code and `newuidmap` cannot read it differently.
fn canonical(s: &str) -> Option<u32> {
    let ok =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

/// The first usable range for `user` (by name or uid) in the text of `/etc/subuid` or
/// `/etc/subgid`: `NAME:START:COUNT` a line. Of a range only its first [`MAX_SLOTS`] ids are
/// used; a range is skipped when those would hold id 0, [`OVERFLOW_ID`], the owner's own id,
/// one of `reserved` (the ids of the user or group database) or an id of another entry's
/// range (another user's containers), or when it wraps past `u32::MAX` or is not plain
/// decimal: a sandbox must never run as an id anything else runs as.
pub fn range_for(text: &str, user: &str, uid: u32, reserved: &[u32]) -> Option<SubRange> {
    let uid_name = uid.to_string();
    let fields = |line: &str| -> Option<(String, String, String)> {
        let mut f = line.split(':');
        let t = (f.next()?, f.next()?, f.next()?);
        f.next()
            .is_none()
            .then(|| (t.0.to_string(), t.1.to_string(), t.2.to_string()))
    };
    let lines: Vec<(String, String, String)> = text.lines().filter_map(fields).collect();
    let own = |name: &str| name.trim() == user || name.trim() == uid_name;
    // Every reading of every other entry's range, as [start, end).
    let others: Vec<(u64, u64)> = lines
        .iter()
        .filter(|(name, _, _)| !own(name))
        .flat_map(|(_, start, count)| {
            let counts = lenient(count);
            lenient(start)
                .into_iter()
                .flat_map(move |s| counts.clone().into_iter().map(move |c| (s, s + c)))
        })
        .collect();
    lines
        .iter()
        .filter(|(name, _, _)| own(name))
        .find_map(|(_, start, count)| {
            let start = canonical(start)?;
            let count = canonical(count)?;
            start.checked_add(count)?;
            let count = count.min(MAX_SLOTS);
            let (lo, hi) = (u64::from(start), u64::from(start) + u64::from(count));
            let holds = |id: u32| (lo..hi).contains(&u64::from(id));
            let usable = start > 0
                && count > 0
                && ![uid, OVERFLOW_ID]
                    .into_iter()
                    .chain(reserved.iter().copied())
                    .any(holds)
                && !others.iter().any(|&(s, e)| s < hi && lo < e);
            usable.then_some(SubRange { start, count })
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
        let got = range_for(text, "loong", 998, &[]).map(|r| (r.start, r.count));
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
    fn a_range_holding_an_id_anything_else_runs_as_is_skipped() {
        let reserved = database_ids(
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbig:x:150000:150000::/:/bin/sh\n",
            2,
        );
        assert_eq!(reserved, vec![0, 1000, 150000]);
        let got = |text: &str| range_for(text, "loong", 998, &reserved).map(|r| (r.start, r.count));
        // Control: a range apart from everything is used.
        assert_eq!(got("loong:200000:65536\n"), Some((200000, 65536)));
        // A range over a local user's uid, over nobody (65534), or over another user's range
        // (either side, whichever comes first in the file) is skipped; the next one is used.
        for text in [
            "loong:500:1000\n",
            "loong:60000:10000\n",
            "loong:140000:20000\n",
            "podman:300000:65536\nloong:330000:65536\n",
            "loong:330000:65536\npodman:300000:65536\n",
            "998:300000:65536\npodman:300000:1\n",
        ] {
            assert_eq!(got(text), None, "{text:?}");
            assert_eq!(
                got(&format!("{text}loong:400000:65536\n")),
                Some((400000, 65536)),
                "{text:?}"
            );
        }
        // Another entry written as newuidmap may read it (hex, octal) is taken under that
        // reading too: 0x493e0 is 300000.
        assert_eq!(got("podman:0x493e0:65536\nloong:330000:65536\n"), None);
        assert_eq!(got("podman:01110340:65536\nloong:300000:65536\n"), None);
        // loongd's own entry must be plain decimal.
        for text in [
            "loong:+200000:65536\n",
            "loong:0200000:65536\n",
            "loong:0x30d40:10\n",
        ] {
            assert_eq!(got(text), None, "{text:?}");
        }
        // Only the ids used count: a range wider than MAX_SLOTS is checked on its first
        // MAX_SLOTS ids (a user past them does not make it unusable).
        let far = database_ids("far:x:1000000:1000000::/:/bin/sh\n", 2);
        assert_eq!(
            range_for("loong:200000:4000000\n", "loong", 998, &far).map(|r| r.start),
            Some(200000)
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
