//! Building the sandbox's root: its own tmpfs, `pivot_root` into it with the old root kept at
//! `/oldroot`, the root assembled in place from the plan's steps, then the old root detached
//! and its mount point removed (a root bound from the host's takes bubblewrap's path instead:
//! a tmpfs base, the root under `/newroot`, a second `pivot_root`). Every bind source
//! (resolved by the plan) is opened without following a symlink and bound through that
//! descriptor, so a name swapped for a symlink after planning is refused, not followed. Every
//! mount point is reached the same way from the base, name by name (a deeper grant's lies in
//! the host directory of the grant above it, which its writers can swap for a symlink), and
//! mounted through its descriptor.

use std::{
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::{symlink, DirBuilderExt, OpenOptionsExt},
    },
    path::{Component, Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::Failure;
use crate::{plan::MountOp, worker::open_beneath};
use std::os::fd::BorrowedFd;

/// Where the helper's own descriptors are named while the root is built: the host's procfs,
/// under the old root (the mount follows `N` there to the object the descriptor holds).
const OLD_ROOT_FDS: &str = "/oldroot/proc/self/fd";
/// Size of the base tmpfs that holds the two pivot points.
const BASE_TMPFS_BYTES: u64 = 1 << 20;
/// Size of the new root's own tmpfs (directories and mount points only).
const ROOT_TMPFS_BYTES: u64 = 4 << 20;
/// Device nodes in the minimal `/dev`, with their (major, minor) numbers.
const DEV_NODES: [(&str, u64, u64); 5] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

fn fail<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> Failure + 'a {
    move |e| Failure::new(step, e as i32, path.display().to_string())
}

fn io_fail<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Failure + 'a {
    move |e| {
        Failure::new(
            step,
            e.raw_os_error().unwrap_or(libc::EIO),
            path.display().to_string(),
        )
    }
}

/// `dst` (absolute inside the sandbox) placed under `root`.
fn under(root: &Path, dst: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in dst.components() {
        if let Component::Normal(n) = c {
            p.push(n);
        }
    }
    p
}

fn mkdirs(p: &Path) -> Result<(), Failure> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(io_fail("mkdir", p))
}

fn tmpfs(dst: &Path, size: u64, mode: u32) -> Result<(), Failure> {
    let data = format!("size={size},mode={mode:o}");
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(fail("mount tmpfs", dst))
}

/// The mount flags a bind's remount keeps from what it binds: each of the kernel's `ST_*`
/// bits (`linux/statfs.h`, as `statvfs` reports them) with the `MS_*` flag that keeps it.
/// Named by value and read raw ([`sys::statvfs_flags`]): nix names `ST_NOSYMFOLLOW` on no
/// libc and `ST_RELATIME` on glibc only, and drops the bits it does not name, so a
/// `nosymfollow` bind came back without it.
const KEPT_FLAGS: [(libc::c_ulong, MsFlags); 8] = [
    (0x0001, MsFlags::MS_RDONLY),     // ST_RDONLY
    (0x0002, MsFlags::MS_NOSUID),     // ST_NOSUID
    (0x0004, MsFlags::MS_NODEV),      // ST_NODEV
    (0x0008, MsFlags::MS_NOEXEC),     // ST_NOEXEC
    (0x0400, MsFlags::MS_NOATIME),    // ST_NOATIME
    (0x0800, MsFlags::MS_NODIRATIME), // ST_NODIRATIME
    (0x1000, MsFlags::MS_RELATIME),   // ST_RELATIME
    (ST_NOSYMFOLLOW, MS_NOSYMFOLLOW),
];

/// `MS_NOSYMFOLLOW`, which nix does not name.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);
/// `ST_NOSYMFOLLOW` (`linux/statfs.h`).
const ST_NOSYMFOLLOW: libc::c_ulong = 0x2000;

/// The `MS_*` flags a remount must keep for a mount whose `statvfs` flags are `raw`. The
/// access-time mode is one setting, which a remount naming any access-time flag resets to
/// `relatime` unless told otherwise: a mount that is neither `noatime` nor `relatime` is
/// `strictatime`, kept so (a `nodiratime` one came back `relatime`, or, where the mode is
/// locked in a user namespace, failed).
fn kept_flags(raw: libc::c_ulong) -> MsFlags {
    let mut kept = MsFlags::empty();
    for (have, keep) in KEPT_FLAGS {
        if raw & have != 0 {
            kept |= keep;
        }
    }
    if !kept.intersects(MsFlags::MS_NOATIME | MsFlags::MS_RELATIME) {
        kept |= MsFlags::MS_STRICTATIME;
    }
    kept
}

/// Re-applies a bind mount's flags, keeping those the kernel has locked (a bind made inside
/// a user namespace may not drop `nosuid`, `nodev`, `noexec` or `ro` inherited from the host).
fn remount_bind(dst: &Path, mut flags: MsFlags) -> Result<(), Failure> {
    let raw = crate::sys::statvfs_flags(dst).map_err(io_fail("statvfs", dst))?;
    flags |= kept_flags(raw);
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
        None::<&str>,
    )
    .map_err(fail("remount bind", dst))
}

/// A grant's or a system path's bind; `below` says whether its flags are set on the mounts
/// below it too (all but the trusted tier's root, a bind of the host's whole tree whose
/// `/dev`, `/proc` and the rest keep their own flags).
fn bind(src: &Path, dst: &Path, writable: bool, below: bool) -> Result<SourceId, Failure> {
    bind_with(src, dst, writable, MsFlags::MS_NODEV, below)
}

/// The identity (`st_dev`, `st_ino`) of a bind source as it was pinned: what a prepared
/// root is keyed on, so a name swapped for another object builds another root.
pub(crate) type SourceId = (u64, u64);

/// Opens `src` (absolute) for a bind without following any symlink on its path
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from `/`): the plan resolved every source
/// already, so a symlink met now was swapped in since, and is refused (`ELOOP`), not followed.
fn pin_source(src: &Path) -> Result<OwnedFd, Failure> {
    let top = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")
        .map_err(io_fail("open / for a bind source", src))?;
    pin_source_in(top.as_fd(), src)
}

/// [`pin_source`] below the root `top` (a host root held from before a template was entered).
fn pin_source_in(top: BorrowedFd<'_>, src: &Path) -> Result<OwnedFd, Failure> {
    use std::os::unix::ffi::OsStrExt;
    let rel = src.strip_prefix("/").unwrap_or(src).as_os_str().as_bytes();
    let rel = if rel.is_empty() { b"." } else { rel };
    let rel = std::ffi::CString::new(rel)
        .map_err(|_| Failure::new("bind source", libc::EINVAL, src.display().to_string()))?;
    crate::openat::openat2_bits(
        top,
        &rel,
        libc::O_PATH,
        0,
        crate::worker::BENEATH_NO_SYMLINKS,
    )
    .map_err(io_fail("open bind source without symlinks", src))
}

/// The `/oldroot/proc/self/fd` name of `fd`: a mount or `statvfs` given it acts on the
/// object the descriptor holds, whatever its path names now.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    Path::new(OLD_ROOT_FDS).join(fd.as_raw_fd().to_string())
}

/// A mount point inside the new root, reached without following any symlink: the new root's
/// directories below a grant are the host's, which whoever may write the grant can swap for
/// a symlink at any moment, so a path walked now could lead anywhere on the host (where the
/// helper would create directories and files as root, and mount).
struct Target {
    /// The directory that holds the mount point, opened from `/` (the base) name by name.
    parent: OwnedFd,
    name: std::ffi::OsString,
    /// The whole path, for errors.
    shown: PathBuf,
}

impl Target {
    /// `dst` (absolute, below the base's `/newroot`), its missing directories made on the
    /// way, each name opened beneath the last with `openat2(RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS)`; the last name is left as it is.
    fn walk(dst: &Path) -> Result<Target, Failure> {
        let shown = dst.to_path_buf();
        let mut names: Vec<&std::ffi::OsStr> = dst
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let name = names
            .pop()
            .ok_or_else(|| Failure::new("mount point", libc::EINVAL, dst.display().to_string()))?
            .to_os_string();
        let mut parent = base()?;
        for n in names {
            parent = child_dir(&parent, n, dst)?;
        }
        Ok(Target {
            parent,
            name,
            shown,
        })
    }

    /// [`Target::walk`], and the last name made a directory (`dir`) or an empty file when
    /// it is missing.
    fn make(dst: &Path, dir: bool) -> Result<Target, Failure> {
        let t = Target::walk(dst)?;
        if dir {
            child_dir(&t.parent, &t.name, dst)?;
        } else {
            match t.open() {
                Ok(_) => {}
                Err(f) if f.errno == libc::ENOENT => {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;
                    open_beneath(t.parent.as_fd(), Path::new(&t.name), flags, 0o644)
                        .map_err(io_fail("create bind target", dst))?;
                }
                Err(f) => return Err(f),
            }
        }
        Ok(t)
    }

    /// The mount point (or, once something is mounted there, the mount's root), opened
    /// `O_PATH` without following a symlink.
    fn open(&self) -> Result<OwnedFd, Failure> {
        open_beneath(self.parent.as_fd(), Path::new(&self.name), libc::O_PATH, 0)
            .map_err(io_fail("open mount point without symlinks", &self.shown))
    }

    /// The mount made at this point, checked to be the one holding `want` (`st_dev`,
    /// `st_ino`) at its root: what a remount then acts on.
    fn mounted(&self, want: &nix::sys::stat::FileStat) -> Result<OwnedFd, Failure> {
        let fd = self.open()?;
        let got = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(fail("stat mount", &self.shown))?;
        if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino) {
            return Err(Failure::new(
                "mount point changed while the root was built",
                libc::EXDEV,
                self.shown.display().to_string(),
            ));
        }
        Ok(fd)
    }
}

/// The base (`/` while the root is built, a tmpfs of the helper's own).
fn base() -> Result<OwnedFd, Failure> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")
        .map(OwnedFd::from)
        .map_err(io_fail("open the base", Path::new("/")))
}

/// The directory `name` beneath `dir`, made when missing; never through a symlink.
fn child_dir(dir: &OwnedFd, name: &std::ffi::OsStr, shown: &Path) -> Result<OwnedFd, Failure> {
    let open = || {
        open_beneath(
            dir.as_fd(),
            Path::new(name),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
    };
    match open() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // mkdirat makes no directory through a symlink at `name` (EEXIST, then the open
            // refuses it).
            match nix::sys::stat::mkdirat(
                Some(dir.as_raw_fd()),
                name,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(fail("mkdir", shown)(e)),
            }
            open().map_err(io_fail("open directory without symlinks", shown))
        }
        r => r.map_err(io_fail("open directory without symlinks", shown)),
    }
}

/// A bind mount; `extra` are flags besides `nosuid` (device nodes need `nodev` off). The
/// source is pinned first ([`pin_source`]) and bound through its descriptor onto a mount
/// point reached without symlinks ([`Target`]), so what is bound is what was opened, where
/// it was planned; the remount acts on that mount only.
fn bind_with(
    src: &Path,
    dst: &Path,
    writable: bool,
    extra: MsFlags,
    below: bool,
) -> Result<SourceId, Failure> {
    let pinned = pin_source(src)?;
    let meta = nix::sys::stat::fstat(pinned.as_raw_fd()).map_err(fail("stat bind source", src))?;
    bind_pinned(&pinned, &meta, dst, writable, extra, below)?;
    Ok((meta.st_dev, meta.st_ino))
}

/// The identity of every bind source of `ops`, in order, pinned as a bind pins it (from `/`,
/// without following a symlink): what [`build_template`] reports for the same sources.
pub(crate) fn source_ids(ops: &[MountOp]) -> Result<Vec<SourceId>, Failure> {
    source_ids_in(host_root()?.as_fd(), ops)
}

/// This process's root, held (`O_PATH`) to find bind sources from once another root is entered.
pub(crate) fn host_root() -> Result<OwnedFd, Failure> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/")
        .map(OwnedFd::from)
        .map_err(io_fail("open / for the bind sources", Path::new("/")))
}

/// [`source_ids`] with each source found below `top`.
pub(crate) fn source_ids_in(
    top: BorrowedFd<'_>,
    ops: &[MountOp],
) -> Result<Vec<SourceId>, Failure> {
    ops.iter()
        .filter_map(|op| match op {
            MountOp::Bind { src, .. } => Some(src),
            _ => None,
        })
        .map(|src| {
            let pinned = pin_source_in(top, src)?;
            let meta =
                nix::sys::stat::fstat(pinned.as_raw_fd()).map_err(fail("stat bind source", src))?;
            let fs = nix::sys::statfs::fstatfs(&pinned).map_err(fail("statfs bind source", src))?;
            if unpreparable_fs(fs.filesystem_type().0 as i64) {
                return Err(Failure::new(
                    "bind source on a FUSE or network file system (its root is not prepared)",
                    libc::EREMOTE,
                    src.display().to_string(),
                ));
            }
            Ok((meta.st_dev, meta.st_ino))
        })
        .collect()
}

/// File systems no prepared root binds from (`statfs` magic numbers): FUSE (a server that
/// may stall a builder in an uninterruptible sleep) and network file systems (which may
/// stall the same way, and whose objects the host does not alone decide).
const UNPREPARABLE_FS: [i64; 11] = [
    0x6573_5546, // FUSE (fuse, fuseblk)
    0x6969,      // NFS
    0x517b,      // SMB
    0xff53_4d42, // CIFS
    0xfe53_4d42, // SMB2
    0x00c3_6400, // Ceph
    0x0102_1997, // 9P
    0x5346_414f, // AFS (kAFS)
    0x6b41_4653, // AFS (OpenAFS)
    0x7375_7245, // Coda
    0x0bd0_0bd0, // Lustre
];

/// Whether a file system of `magic` is one no prepared root binds from.
fn unpreparable_fs(magic: i64) -> bool {
    UNPREPARABLE_FS.contains(&magic)
}

/// One of the minimal `/dev`'s nodes bound from `src`, writable, once the descriptor bound
/// is known to hold that very node: a character device with its (major, minor). Whatever else
/// stands at that name in loongd's `/dev` (a regular file left by `rm /dev/null` and a
/// redirection, another device) is refused, not handed to every sandbox.
fn bind_node(src: &Path, dst: &Path, major: u64, minor: u64) -> Result<(), Failure> {
    let pinned = pin_source(src)?;
    let meta = nix::sys::stat::fstat(pinned.as_raw_fd()).map_err(fail("stat bind source", src))?;
    if !is_char_device(&meta, major, minor) {
        return Err(Failure::new(
            "check device node",
            libc::ENODEV,
            format!("{} (want {major}:{minor})", src.display()),
        ));
    }
    bind_pinned(&pinned, &meta, dst, true, MsFlags::empty(), true)
}

/// Whether `meta` is the character device (`major`, `minor`).
fn is_char_device(meta: &nix::sys::stat::FileStat, major: u64, minor: u64) -> bool {
    meta.st_mode & libc::S_IFMT == libc::S_IFCHR
        && meta.st_rdev == nix::sys::stat::makedev(major, minor)
}

/// [`bind_with`] for a source already pinned (and stat'ed) by the caller.
fn bind_pinned(
    pinned: &OwnedFd,
    meta: &nix::sys::stat::FileStat,
    dst: &Path,
    writable: bool,
    extra: MsFlags,
    below: bool,
) -> Result<(), Failure> {
    let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let target = Target::make(dst, is_dir)?;
    let at = target.open()?;
    mount(
        Some(fd_path(pinned).as_path()),
        fd_path(&at).as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind", dst))?;
    let mounted = target.mounted(meta)?;
    if !below {
        let mut flags = MsFlags::MS_NOSUID | extra;
        if !writable {
            flags |= MsFlags::MS_RDONLY;
        }
        return remount_bind(&fd_path(&mounted), flags);
    }
    // The bind is recursive (MS_REC); a remount would not be: a mount below the source on
    // the host (a tmpfs, another file system) would keep its own flags, writable under a
    // read-only grant. The flags are set on every mount of the bind at once, in one call
    // that only sets (the flags the kernel locked on a bind made in a user namespace stay).
    let mut attrs = crate::sys::MOUNT_ATTR_NOSUID;
    if extra.contains(MsFlags::MS_NODEV) {
        attrs |= crate::sys::MOUNT_ATTR_NODEV;
    }
    if !writable {
        attrs |= crate::sys::MOUNT_ATTR_RDONLY;
    }
    crate::sys::mount_set_recursive(mounted.as_fd(), attrs)
        .map_err(io_fail("set flags on the mounts below a bind", dst))
}

/// A file system of its own (`tmpfs`, `proc`) mounted at `dst`, reached without symlinks.
fn mount_fs(
    fstype: &'static str,
    dst: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Failure> {
    let target = Target::make(dst, true)?;
    let at = target.open()?;
    mount(
        Some(fstype),
        fd_path(&at).as_path(),
        Some(fstype),
        flags,
        data,
    )
    .map_err(fail("mount", dst))
}

/// A tmpfs at `d` with the minimal device nodes: made with `mknod` when we are root outside
/// any user namespace (cheap), else bound from the host's `/dev` (a user namespace may not
/// create device nodes).
fn dev_nodes(host_dev: &Path, d: &Path) -> Result<(), Failure> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::PermissionsExt;
    if nix::unistd::Uid::effective().is_root() {
        // No nodev here: the nodes must work. Nothing else can be created on it later.
        let data = "size=65536,mode=755";
        mount_fs(
            "tmpfs",
            d,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(data),
        )?;
        // Root without CAP_MKNOD (a service with PrivateDevices=, which removes it) binds the
        // nodes from its own /dev instead, as a user namespace does: the same five nodes.
        let mut bind = false;
        for (node, major, minor) in DEV_NODES {
            let p = d.join(node);
            if !bind {
                match mknod(
                    &p,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o666),
                    makedev(major, minor),
                ) {
                    Ok(()) => {
                        fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                            .map_err(io_fail("chmod", &p))?;
                        continue;
                    }
                    Err(nix::errno::Errno::EPERM) => bind = true,
                    Err(e) => return Err(fail("mknod", &p)(e)),
                }
            }
            bind_node(&host_dev.join(node), &p, major, minor)?;
        }
    } else {
        mount_fs(
            "tmpfs",
            d,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=65536,mode=755"),
        )?;
        for (node, major, minor) in DEV_NODES {
            bind_node(&host_dev.join(node), &d.join(node), major, minor)?;
        }
    }
    Ok(())
}

/// The old root's mount point while the root is built; no step may name a sandbox path
/// below it ([`reserved_dst`]).
const OLD_ROOT: &str = "/oldroot";

/// The first plan step, if any, whose sandbox path lies at or below [`OLD_ROOT`]: built there,
/// it would be made in the old root (the host's), not in the sandbox's.
fn reserved_dst(ops: &[MountOp]) -> Option<&Path> {
    let old = Path::new(OLD_ROOT);
    ops.iter()
        .map(|op| match op {
            MountOp::Tmpfs { dst, .. }
            | MountOp::Bind { dst, .. }
            | MountOp::Symlink { dst, .. }
            | MountOp::Proc { dst }
            | MountOp::Dev { dst } => dst.as_path(),
        })
        .find(|dst| under(Path::new("/"), dst).starts_with(old))
}

/// The first path of a plan step (a source or a sandbox path; a symlink's target is its
/// content, not a path walked here) that is not absolute or holds a `..`: the root is built
/// name by name ([`under`], [`Target::walk`]), which would read `a/../b` as `a/b`, a path the
/// plan never named, where the kernel (an exec, landlock) reads `b`.
fn unwalkable_path(ops: &[MountOp]) -> Option<&Path> {
    let walkable = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    ops.iter()
        .flat_map(|op| match op {
            MountOp::Bind { src, dst, .. } => [Some(src.as_path()), Some(dst.as_path())],
            MountOp::Tmpfs { dst, .. }
            | MountOp::Symlink { dst, .. }
            | MountOp::Proc { dst }
            | MountOp::Dev { dst } => [Some(dst.as_path()), None],
        })
        .flatten()
        .find(|p| !walkable(p))
}

/// Whether the plan binds the host's root as the sandbox's (the trusted tier).
fn binds_root(ops: &[MountOp]) -> bool {
    ops.iter()
        .any(|op| matches!(op, MountOp::Bind { dst, .. } if dst == Path::new("/")))
}

/// The sandbox path a step acts on.
fn op_dst(op: &MountOp) -> &Path {
    match op {
        MountOp::Tmpfs { dst, .. }
        | MountOp::Bind { dst, .. }
        | MountOp::Symlink { dst, .. }
        | MountOp::Proc { dst }
        | MountOp::Dev { dst } => dst,
    }
}

/// Whether sandbox path `p` is `at` or lies below it.
fn at_or_below(p: &Path, at: &Path) -> bool {
    under(Path::new("/"), p).starts_with(under(Path::new("/"), at))
}

/// Whether step `i` of `ops` is mounted fresh by every run on a prepared root rather than
/// kept in the template: a procfs (it belongs to the run's pid namespace), and a tmpfs that
/// is not below a bind (writable scratch space such as `/tmp`; a tmpfs below a bind masks a
/// host path, and is kept, read-only).
fn fresh_per_run(ops: &[MountOp], i: usize) -> bool {
    match &ops[i] {
        MountOp::Proc { .. } => true,
        MountOp::Tmpfs { dst, .. } => !ops
            .iter()
            .any(|op| matches!(op, MountOp::Bind { dst: b, .. } if at_or_below(dst, b))),
        _ => false,
    }
}

/// Whether a root built from `ops` may be prepared once and entered by many runs
/// ([`build_template`], [`enter`]): a root of its own (not the host's bound whole), every
/// path walkable, and every step a run mounts fresh reachable inside the template's own
/// read-only tmpfs (below no bind) with nothing of the plan at or below it after it (a later
/// step there would be built in the template and then covered by the run's fresh mount).
pub(crate) fn preparable(ops: &[MountOp]) -> bool {
    if ops.is_empty()
        || binds_root(ops)
        || unwalkable_path(ops).is_some()
        || reserved_dst(ops).is_some()
    {
        return false;
    }
    // A tmpfs kept in the template (below a bind) is shared and read-only there: only a
    // mask, which gives no one but its owner (root) any access, may be; a writable one would
    // be the run's own in a root built for it.
    let kept_tmpfs_masks = ops.iter().enumerate().all(|(i, op)| match op {
        MountOp::Tmpfs { mode, .. } if !fresh_per_run(ops, i) => mode & MASK_ACCESS == 0,
        _ => true,
    });
    kept_tmpfs_masks
        && (0..ops.len()).filter(|&i| fresh_per_run(ops, i)).all(|i| {
            let dst = op_dst(&ops[i]);
            under(Path::new("/"), dst) != Path::new("/")
                && !ops
                    .iter()
                    .any(|op| matches!(op, MountOp::Bind { dst: b, .. } if at_or_below(dst, b)))
                // A later step below it (built in the template, then covered by the run's
                // fresh mount) or covering it (in a root built for the run, it hides the fresh
                // mount; in a copy of the template, the run's fresh mount would be on top).
                && !ops[i + 1..].iter().any(|later| {
                    at_or_below(op_dst(later), dst) || at_or_below(dst, op_dst(later))
                })
        })
}

/// The mode bits of a tmpfs root that give anyone but its owner access: a tmpfs below a bind
/// with none of them is a mask (loongd's own paths hidden inside a bound system path).
const MASK_ACCESS: u32 = 0o077;

/// How [`build`] treats the steps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// A run's own root, every step mounted.
    Run,
    /// A template ([`build_template`]).
    Template,
}

/// Builds the new root from `ops` and makes it `/`. Runs in a new mount namespace.
pub(super) fn build_root(ops: &[MountOp]) -> Result<(), Failure> {
    build(ops, Build::Run).map(|_| ())
}

/// Builds a prepared root (a template) from `ops` (which [`preparable`] accepts) in this
/// process's own new mount namespace, exactly as [`build_root`] builds a run's, except for
/// the steps every run mounts fresh ([`fresh_per_run`]), whose mount points are only made,
/// and except that nothing of it is writable: the root's tmpfs, `/dev` and the masks are
/// read-only mounts (a run shares their superblocks with every other run on the template).
/// Returns the identity of each bind source as it was bound.
pub(crate) fn build_template(ops: &[MountOp]) -> Result<Vec<SourceId>, Failure> {
    if !preparable(ops) {
        return Err(Failure::new(
            "prepare root",
            libc::EINVAL,
            "this plan's root cannot be prepared",
        ));
    }
    // Every source checked where the run checks it, FUSE and network file systems refused.
    source_ids(ops)?;
    build(ops, Build::Template)
}

/// In a run whose mount namespace is a copy of a template's (entered with `setns`, then
/// unshared): mounts what is the run's own, the fresh procfs and tmpfs of
/// [`fresh_per_run`]. Each mount point is reached without following a symlink and lies in
/// the template's read-only tmpfs (never below a bind, [`preparable`]), which nothing can
/// change, so its path names the directory checked.
pub(super) fn enter(ops: &[MountOp]) -> Result<(), Failure> {
    for (i, op) in ops.iter().enumerate() {
        if !fresh_per_run(ops, i) {
            continue;
        }
        let dst = under(Path::new("/"), op_dst(op));
        let at = Target::walk(&dst)?.open()?;
        let st = nix::sys::stat::fstat(at.as_raw_fd()).map_err(fail("stat mount point", &dst))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Failure::new(
                "mount point",
                libc::ENOTDIR,
                dst.display().to_string(),
            ));
        }
        match op {
            MountOp::Tmpfs { size, mode, .. } => {
                let data = format!("size={size},mode={mode:o}");
                mount(
                    Some("tmpfs"),
                    &dst,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(data.as_str()),
                )
                .map_err(fail("mount", &dst))?;
            }
            MountOp::Proc { .. } => mount(
                Some("proc"),
                &dst,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(fail("mount", &dst))?,
            _ => {}
        }
    }
    Ok(())
}

/// Whether step `i` of `ops` is a mount a template keeps (a bind, `/dev`, a mask): what
/// [`template_marks`] checks is still in place.
fn kept_mount(ops: &[MountOp], i: usize) -> bool {
    match &ops[i] {
        MountOp::Bind { .. } | MountOp::Dev { .. } => true,
        MountOp::Tmpfs { .. } => !fresh_per_run(ops, i),
        MountOp::Symlink { .. } | MountOp::Proc { .. } => false,
    }
}

/// The identity (`st_dev`, `st_ino`) of the root of every mount a template keeps
/// ([`kept_mount`]), in plan order, each checked to be a mount's root at its path (reached
/// from `/` without following a symlink, nothing created on the way). A host user who
/// unlinks or renames the host directory entry a mask or a nested grant is mounted on makes
/// the kernel detach that mount from every namespace, a template's included, or moves it
/// with the entry: what is then at the path is no mount root, or another object. The builder
/// records them once the template is built; a run on a copy of it compares before it uses
/// the copy, and any difference (or a kernel that does not say what a mount root is) means
/// the template is not used.
pub(crate) fn template_marks(ops: &[MountOp]) -> Result<Vec<SourceId>, Failure> {
    let top = base()?;
    (0..ops.len())
        .filter(|&i| kept_mount(ops, i))
        .map(|i| {
            let dst = op_dst(&ops[i]);
            let rel = under(Path::new(""), dst);
            let fd = open_beneath(top.as_fd(), &rel, libc::O_PATH, 0)
                .map_err(io_fail("open a prepared mount without symlinks", dst))?;
            let (id, root) = crate::sys::mount_root_id(fd.as_fd())
                .map_err(io_fail("statx a prepared mount", dst))?;
            if !root {
                return Err(Failure::new(
                    "a prepared mount is gone",
                    libc::ESTALE,
                    dst.display().to_string(),
                ));
            }
            Ok(id)
        })
        .collect()
}

/// The mount at `dst` (reached without symlinks) made read-only, not the mounts below it (a
/// later step's bind keeps the flags the plan gives it).
fn read_only(dst: &Path) -> Result<(), Failure> {
    let at = Target::walk(dst)?.open()?;
    crate::sys::mount_set_one(at.as_fd(), crate::sys::MOUNT_ATTR_RDONLY)
        .map_err(io_fail("make a prepared mount read-only", dst))
}

/// [`build_root`] and [`build_template`].
///
/// One `pivot_root`: the root's own tmpfs (mounted over `/tmp` in this private namespace)
/// becomes `/` at once with the old root below it at [`OLD_ROOT`]; the steps are built in place
/// with their sources read from the old root, which is then detached and its mount point
/// removed. A root that is a bind of the host's (the trusted tier) cannot be built in place
/// (a mount over `/` would not be the process's root): it is assembled under `/newroot` of a
/// tmpfs base, then made `/` by a second `pivot_root`, as bubblewrap does.
fn build(ops: &[MountOp], how: Build) -> Result<Vec<SourceId>, Failure> {
    let template = how == Build::Template;
    let mut ids = Vec::new();
    // A template's own tmpfs mounts (masks, `/dev`), made read-only once every step is in
    // place: a later step below one (a grant below `/dev`) is still mounted on it.
    let mut read_only_after = Vec::new();
    if let Some(p) = unwalkable_path(ops) {
        return Err(Failure::new(
            "mount point",
            libc::EINVAL,
            format!(
                "{}: a plan path must be absolute, without `..`",
                p.display()
            ),
        ));
    }
    if let Some(dst) = reserved_dst(ops) {
        return Err(Failure::new(
            "mount point",
            libc::EINVAL,
            format!(
                "{}: sandbox paths below {OLD_ROOT} are reserved while the root is built; grant another path",
                dst.display()
            ),
        ));
    }
    let root = Path::new("/");
    // Nothing we do may propagate back to the host.
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("make mounts private", root))?;
    let old = Path::new(OLD_ROOT);
    let in_place = !binds_root(ops);
    let base = Path::new("/tmp");
    let new = if in_place {
        tmpfs(base, ROOT_TMPFS_BYTES, 0o755)?;
        mkdirs(&base.join("oldroot"))?;
        nix::unistd::pivot_root(base, &base.join("oldroot"))
            .map_err(fail("pivot_root into the new root", base))?;
        nix::unistd::chdir("/").map_err(fail("chdir", root))?;
        root
    } else {
        tmpfs(base, BASE_TMPFS_BYTES, 0o755)?;
        mkdirs(&base.join("newroot"))?;
        mkdirs(&base.join("oldroot"))?;
        nix::unistd::pivot_root(base, &base.join("oldroot"))
            .map_err(fail("pivot_root into the base", base))?;
        nix::unistd::chdir("/").map_err(fail("chdir", root))?;
        let new = Path::new("/newroot");
        tmpfs(new, ROOT_TMPFS_BYTES, 0o755)?;
        new
    };

    for (i, op) in ops.iter().enumerate() {
        // A template only makes the mount points of what each run mounts fresh.
        if template && fresh_per_run(ops, i) {
            Target::make(&under(new, op_dst(op)), true)?;
            continue;
        }
        match op {
            MountOp::Tmpfs { dst, size, mode } => {
                let data = format!("size={size},mode={mode:o}");
                let d = under(new, dst);
                mount_fs(
                    "tmpfs",
                    &d,
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(data.as_str()),
                )?;
                if template {
                    read_only_after.push(d);
                }
            }
            MountOp::Bind { src, dst, writable } => ids.push(bind(
                &under(old, src),
                &under(new, dst),
                *writable,
                dst != Path::new("/"),
            )?),
            MountOp::Symlink { target, dst } => {
                let d = under(new, dst);
                let t = Target::walk(&d)?;
                nix::unistd::symlinkat(target, Some(t.parent.as_raw_fd()), t.name.as_os_str())
                    .map_err(fail("symlink", &d))?;
            }
            MountOp::Proc { dst } => {
                mount_fs(
                    "proc",
                    &under(new, dst),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None,
                )?;
            }
            MountOp::Dev { dst } => {
                let d = under(new, dst);
                dev_nodes(&old.join("dev"), &d)?;
                for (name, target) in [
                    ("fd", "/proc/self/fd"),
                    ("stdin", "/proc/self/fd/0"),
                    ("stdout", "/proc/self/fd/1"),
                    ("stderr", "/proc/self/fd/2"),
                ] {
                    symlink(target, d.join(name)).map_err(io_fail("symlink", &d))?;
                }
                // Shared by every run on the template: nothing there takes a write but the
                // device nodes themselves (a write to a device is no file's state).
                if template {
                    read_only_after.push(d);
                }
            }
        }
    }
    for d in &read_only_after {
        read_only(d)?;
    }

    umount2(old, MntFlags::MNT_DETACH).map_err(fail("detach the old root", old))?;
    if in_place {
        // Its mount point goes too: the sandbox sees only what the plan put in its root.
        fs::remove_dir(old).map_err(io_fail("remove the old root's mount point", old))?;
    } else {
        nix::unistd::chdir(new).map_err(fail("chdir", new))?;
        nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root into the new root", new))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(fail("detach the base", base))?;
        nix::unistd::chdir("/").map_err(fail("chdir", root))?;
        // The root is a bind of the host's, which keeps its own flags.
        return Ok(ids);
    }
    // The root's own tmpfs holds only mount points: make it read-only.
    remount_bind(
        root,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bind of a `nosymfollow` mount, remounted as the helper remounts a bind (as root, where
    /// no flag is locked and a remount sets exactly the flags it is given), stays
    /// `nosymfollow`: the remount dropped it while the flags were read through nix's, which
    /// do not name it. On a thread of its own, in a mount namespace of its own, all private.
    #[test]
    fn a_remounted_bind_of_a_nosymfollow_mount_still_follows_no_symlink() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED mounts::tests::a_remounted_bind_…: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir(&src).expect("src");
        fs::create_dir(&dst).expect("dst");
        let (src2, dst2) = (src.clone(), dst.clone());
        let outcome = std::thread::spawn(
            move || -> Result<(libc::c_ulong, libc::c_ulong, libc::c_ulong), String> {
                let e = |what: &'static str| move |e: nix::Error| format!("{what}: {e}");
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(e("unshare"))?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(e("make / private"))?;
                mount(
                    Some("tmpfs"),
                    &src2,
                    Some("tmpfs"),
                    MS_NOSYMFOLLOW | MsFlags::MS_NOSUID,
                    Some("size=64k"),
                )
                .map_err(e("tmpfs"))?;
                mount(
                    Some(&src2),
                    &dst2,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(e("bind"))?;
                let raw = |p: &Path| crate::sys::statvfs_flags(p).map_err(|e| e.to_string());
                let bound = raw(&dst2)?;
                remount_bind(&dst2, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY)
                    .map_err(|f| format!("remount: {f:?}"))?;
                let remounted = raw(&dst2)?;
                let source = raw(&src2)?;
                Ok((bound, remounted, source))
            },
        )
        .join()
        .expect("the mounting thread");
        let (bound, remounted, source) = match outcome {
            Ok(flags) => flags,
            Err(e) if e.starts_with("unshare") || e.starts_with("tmpfs") => {
                eprintln!("SKIPPED mounts::tests::a_remounted_bind_…: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let nosymfollow = ST_NOSYMFOLLOW;
        if source & nosymfollow == 0 {
            // mount(2) ignores the flag before Linux 5.10.
            eprintln!("SKIPPED mounts::tests::a_remounted_bind_…: this kernel makes no nosymfollow mount ({source:#x})");
            return;
        }
        // Positive controls: the bind took the source's flags, and the remount took effect.
        assert_ne!(
            source & nosymfollow,
            0,
            "the tmpfs is nosymfollow: {source:#x}"
        );
        assert_ne!(
            bound & nosymfollow,
            0,
            "the bind is nosymfollow: {bound:#x}"
        );
        assert_ne!(
            remounted & 0x0001,
            0,
            "the remount made it read-only: {remounted:#x}"
        );
        assert_ne!(
            remounted & nosymfollow,
            0,
            "the remount kept nosymfollow: {remounted:#x}"
        );
    }

    /// Each kept flag's bit is the kernel's (`linux/statfs.h`), and each maps to the mount
    /// flag that keeps it, `nosymfollow` included (a remount dropped it: nix's flags lack it).
    #[test]
    fn a_remount_keeps_every_flag_statvfs_reports_nosymfollow_included() {
        use nix::sys::statvfs::FsFlags as F;
        let named = [
            (F::ST_RDONLY, MsFlags::MS_RDONLY),
            (F::ST_NOSUID, MsFlags::MS_NOSUID),
            (F::ST_NODEV, MsFlags::MS_NODEV),
            (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (F::ST_NOATIME, MsFlags::MS_NOATIME),
            (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (F::ST_RELATIME, MsFlags::MS_RELATIME),
        ];
        let relatime = MsFlags::MS_RELATIME;
        for ((bit, keep), (theirs, their_keep)) in KEPT_FLAGS.iter().zip(named) {
            assert_eq!(*bit, theirs.bits());
            assert_eq!(*keep, their_keep);
            // With the access-time mode the mount has: relatime here, unless the bit is one.
            assert_eq!(kept_flags(*bit | 0x1000), *keep | relatime);
        }
        assert_eq!(MS_NOSYMFOLLOW.bits(), 0x100);
        assert_eq!(
            kept_flags(ST_NOSYMFOLLOW | 0x1000),
            MS_NOSYMFOLLOW | relatime
        );
        assert_eq!(
            kept_flags(0x0001 | 0x2000 | 0x1000),
            MsFlags::MS_RDONLY | MS_NOSYMFOLLOW | relatime
        );
        // The access-time mode is kept whole: noatime, relatime, or else strictatime.
        assert_eq!(kept_flags(0x0400), MsFlags::MS_NOATIME);
        assert_eq!(
            kept_flags(0x0800),
            MsFlags::MS_NODIRATIME | MsFlags::MS_STRICTATIME
        );
        assert_eq!(kept_flags(0), MsFlags::MS_STRICTATIME);
        // Bits a remount does not carry (ST_SYNCHRONOUS, ST_MANDLOCK) keep nothing more.
        assert_eq!(kept_flags(0x0010 | 0x0040 | 0x1000), relatime);
        // The raw read agrees with nix's on a real mount, for the bits nix names.
        let raw = crate::sys::statvfs_flags(Path::new("/proc")).expect("statvfs /proc");
        let named = nix::sys::statvfs::statvfs("/proc")
            .expect("statvfs")
            .flags()
            .bits();
        assert_eq!(raw & named, named);
        assert_ne!(named, 0, "/proc is mounted nosuid, nodev, noexec");
    }

    /// A step whose sandbox path lies at or below the old root's mount point would be built in
    /// the host's root (the old root is there while the root is built): refused, whatever the
    /// spelling; its neighbours are not.
    #[test]
    fn a_step_below_the_old_root_s_mount_point_is_refused() {
        let bind = |dst: &str| MountOp::Bind {
            src: "/srv".into(),
            dst: dst.into(),
            writable: true,
        };
        for dst in ["/oldroot", "/oldroot/etc", "//oldroot/x", "/./oldroot/y"] {
            assert!(reserved_dst(&[bind("/usr"), bind(dst)]).is_some(), "{dst}");
        }
        for op in [
            MountOp::Tmpfs {
                dst: "/oldroot/t".into(),
                size: 1,
                mode: 0o755,
            },
            MountOp::Symlink {
                target: "/".into(),
                dst: "/oldroot/l".into(),
            },
            MountOp::Proc {
                dst: "/oldroot/proc".into(),
            },
            MountOp::Dev {
                dst: "/oldroot/dev".into(),
            },
        ] {
            assert!(reserved_dst(std::slice::from_ref(&op)).is_some(), "{op:?}");
        }
        // Controls: neighbouring names and the root itself are ordinary sandbox paths.
        for dst in ["/", "/oldroots", "/old", "/srv/oldroot", "/oldroo"] {
            assert!(reserved_dst(&[bind(dst)]).is_none(), "{dst}");
        }
    }

    /// A source or sandbox path with `..` (or not absolute) is refused before anything is
    /// mounted: built name by name, `/a/../b` would be `/a/b`. Plain paths, the root and a
    /// symlink's relative target pass.
    #[test]
    fn a_step_path_with_dotdot_is_refused() {
        let bind = |src: &str, dst: &str| MountOp::Bind {
            src: src.into(),
            dst: dst.into(),
            writable: false,
        };
        for op in [
            bind("/srv/private/../tool", "/srv/tool"),
            bind("/srv/tool", "/srv/private/../tool"),
            bind("srv/tool", "/srv/tool"),
            bind("/srv/tool", "srv/tool"),
            MountOp::Tmpfs {
                dst: "/tmp/../x".into(),
                size: 1,
                mode: 0o755,
            },
            MountOp::Symlink {
                target: "usr/bin".into(),
                dst: "/a/../bin".into(),
            },
            MountOp::Proc {
                dst: "/proc/..".into(),
            },
            MountOp::Dev {
                dst: "/x/../dev".into(),
            },
        ] {
            assert!(
                unwalkable_path(std::slice::from_ref(&op)).is_some(),
                "{op:?}"
            );
        }
        // Controls.
        for op in [
            bind("/", "/"),
            bind("/srv/tool", "/srv/tool"),
            bind("/srv/./tool", "//srv/tool/"),
            MountOp::Symlink {
                target: "../usr/bin".into(),
                dst: "/bin".into(),
            },
            MountOp::Proc {
                dst: "/proc".into(),
            },
        ] {
            assert!(
                unwalkable_path(std::slice::from_ref(&op)).is_none(),
                "{op:?}"
            );
        }
    }

    /// A balanced root (system binds, a mask below one, `/proc`, `/dev`, `/tmp`, grants) is
    /// prepared, with `/proc` and `/tmp` left to each run and the mask kept; roots whose fresh
    /// mounts would cover a step of the template, or lie below a bind, or that bind the
    /// host's root, are not.
    #[test]
    fn only_a_root_whose_fresh_mounts_cover_nothing_is_prepared() {
        let bind = |p: &str| MountOp::Bind {
            src: p.into(),
            dst: p.into(),
            writable: false,
        };
        let tmpfs = |p: &str| MountOp::Tmpfs {
            dst: p.into(),
            size: 4096,
            mode: 0o1777,
        };
        let proc_ = MountOp::Proc {
            dst: "/proc".into(),
        };
        let dev = MountOp::Dev { dst: "/dev".into() };
        let balanced = vec![
            bind("/usr"),
            bind("/etc"),
            MountOp::Symlink {
                target: "usr/bin".into(),
                dst: "/bin".into(),
            },
            // A mask, as plans make them (no access but its owner's).
            MountOp::Tmpfs {
                dst: "/etc/loong".into(),
                size: 4096,
                mode: 0o700,
            },
            proc_.clone(),
            dev.clone(),
            tmpfs("/tmp"),
            bind("/srv/grant"),
        ];
        assert!(preparable(&balanced));
        let fresh: Vec<usize> = (0..balanced.len())
            .filter(|&i| fresh_per_run(&balanced, i))
            .collect();
        assert_eq!(fresh, [4, 6], "only /proc and /tmp are the run's own");
        // A grant below /tmp would be covered by the run's fresh /tmp.
        let mut below_tmp = balanced.clone();
        below_tmp.push(bind("/tmp/work"));
        assert!(!preparable(&below_tmp));
        // A procfs below a bind, or at the root.
        assert!(!preparable(&[
            bind("/srv"),
            MountOp::Proc {
                dst: "/srv/proc".into()
            }
        ]));
        assert!(!preparable(&[MountOp::Proc { dst: "/".into() }]));
        // The host's root bound whole (the trusted tier), and no root at all.
        assert!(!preparable(&[
            MountOp::Bind {
                src: "/".into(),
                dst: "/".into(),
                writable: true
            },
            proc_
        ]));
        assert!(!preparable(&[]));
        // Control: a grant before /tmp, beside it, is fine.
        let mut beside = balanced.clone();
        beside.insert(0, bind("/tmpx"));
        assert!(preparable(&beside));
    }

    /// A root bound from a FUSE or network file system is not prepared (its builder could
    /// stall); the control: a local file system's root is.
    #[test]
    fn a_root_bound_from_fuse_or_a_network_file_system_is_not_prepared() {
        for magic in [0x6573_5546, 0x6969, 0xff53_4d42, 0x0102_1997] {
            assert!(unpreparable_fs(magic), "{magic:x}");
        }
        let local = |p: &str| {
            let fs = nix::sys::statfs::statfs(p).expect("statfs");
            unpreparable_fs(fs.filesystem_type().0 as i64)
        };
        assert!(!local("/"));
        assert!(!local(env!("CARGO_MANIFEST_DIR")));
        assert!(source_ids(&[MountOp::Bind {
            src: env!("CARGO_MANIFEST_DIR").into(),
            dst: "/x".into(),
            writable: false,
        }])
        .is_ok());
    }

    /// Two more shapes a template would change are not prepared: a step after a fresh mount
    /// that covers it (a root built for the run hides the fresh mount under it; a copy of the
    /// template would show it), and a tmpfs below a bind that is not a mask (kept, it would
    /// be shared and read-only instead of the run's own and writable). Controls: the same
    /// step before the fresh mount, and a mask (mode 0700) below a bind, are prepared.
    #[test]
    fn a_root_whose_steps_cover_a_fresh_mount_or_share_a_writable_tmpfs_is_not_prepared() {
        let bind = |p: &str| MountOp::Bind {
            src: p.into(),
            dst: p.into(),
            writable: false,
        };
        let tmpfs = |p: &str, mode: u32| MountOp::Tmpfs {
            dst: p.into(),
            size: 4096,
            mode,
        };
        let dev = MountOp::Dev { dst: "/dev".into() };
        // A later tmpfs at /var covering the run's fresh /var/tmp, and a later /dev over a
        // fresh /dev/shm.
        assert!(!preparable(&[
            bind("/usr"),
            tmpfs("/var/tmp", 0o1777),
            tmpfs("/var", 0o755)
        ]));
        assert!(!preparable(&[tmpfs("/dev/shm", 0o1777), dev.clone()]));
        // A writable tmpfs below a bind.
        assert!(!preparable(&[bind("/srv"), tmpfs("/srv/cache", 0o1777)]));
        assert!(!preparable(&[bind("/srv"), tmpfs("/srv/cache", 0o750)]));
        // Controls.
        assert!(preparable(&[dev, tmpfs("/dev/shm", 0o1777)]));
        assert!(preparable(&[bind("/usr"), tmpfs("/var", 0o755)]));
        assert!(preparable(&[bind("/etc"), tmpfs("/etc/loong", 0o700)]));
    }

    #[test]
    fn only_a_root_bound_from_the_host_is_built_under_a_base() {
        let bind = |dst: &str| MountOp::Bind {
            src: "/".into(),
            dst: dst.into(),
            writable: false,
        };
        assert!(binds_root(&[bind("/")]));
        assert!(!binds_root(&[
            bind("/usr"),
            MountOp::Proc { dst: "/".into() }
        ]));
    }

    #[test]
    fn a_dev_node_is_bound_only_when_it_is_that_character_device() {
        let stat = |p: &str| nix::sys::stat::stat(p).expect("stat");
        // Positive control: the host's /dev/null is 1:3.
        assert!(is_char_device(&stat("/dev/null"), 1, 3));
        // Another device, and no device at all.
        assert!(!is_char_device(&stat("/dev/zero"), 1, 3));
        let f = tempfile::NamedTempFile::new().expect("temp file");
        let file = nix::sys::stat::stat(f.path()).expect("stat file");
        assert!(!is_char_device(&file, 1, 3));
        assert!(!is_char_device(&stat("/dev"), 1, 3));
    }
}
