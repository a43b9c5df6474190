//! Building the sandbox's root, bubblewrap style: a tmpfs base, `pivot_root` into it with the
//! old root kept at `/oldroot`, the new root assembled under `/newroot` from the plan's
//! steps, then a second `pivot_root` that leaves the old root unreachable. Every bind source
//! (resolved by the plan) is opened without following a symlink and bound through that
//! descriptor, so a name swapped for a symlink after planning is refused, not followed.

use std::{
    fs, io,
    os::unix::fs::{symlink, DirBuilderExt},
    path::{Component, Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::Failure;
use crate::plan::MountOp;

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

/// Re-applies a bind mount's flags, keeping those the kernel has locked (a bind made inside
/// a user namespace may not drop `nosuid`, `nodev`, `noexec` or `ro` inherited from the host).
fn remount_bind(dst: &Path, mut flags: MsFlags) -> Result<(), Failure> {
    let st = nix::sys::statvfs::statvfs(dst).map_err(fail("statvfs", dst))?;
    use nix::sys::statvfs::FsFlags;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if st.flags().contains(have) {
            flags |= keep;
        }
    }
    mount(
        None::<&str>,
        dst,
        None::<&str>,
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
        None::<&str>,
    )
    .map_err(fail("remount bind", dst))
}

fn bind(src: &Path, dst: &Path, writable: bool) -> Result<(), Failure> {
    bind_with(src, dst, writable, MsFlags::MS_NODEV)
}

/// Opens `src` (absolute) for a bind without following any symlink on its path
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from `/`): the plan resolved every source
/// already, so a symlink met now was swapped in since, and is refused (`ELOOP`), not followed.
fn pin_source(src: &Path) -> Result<std::os::fd::OwnedFd, Failure> {
    use std::os::{fd::AsFd, unix::ffi::OsStrExt, unix::fs::OpenOptionsExt};
    let top = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")
        .map_err(io_fail("open / for a bind source", src))?;
    let rel = src.strip_prefix("/").unwrap_or(src).as_os_str().as_bytes();
    let rel = if rel.is_empty() { b"." } else { rel };
    let rel = std::ffi::CString::new(rel)
        .map_err(|_| Failure::new("bind source", libc::EINVAL, src.display().to_string()))?;
    crate::openat::openat2_bits(
        top.as_fd(),
        &rel,
        libc::O_PATH,
        0,
        crate::worker::BENEATH_NO_SYMLINKS,
    )
    .map_err(io_fail("open bind source without symlinks", src))
}

/// A bind mount; `extra` are flags besides `nosuid` (device nodes need `nodev` off). The
/// source is pinned first ([`pin_source`]) and bound through its descriptor, so what is bound
/// is what was opened.
fn bind_with(src: &Path, dst: &Path, writable: bool, extra: MsFlags) -> Result<(), Failure> {
    use std::os::fd::AsRawFd;
    let pinned = pin_source(src)?;
    let meta = nix::sys::stat::fstat(pinned.as_raw_fd()).map_err(fail("stat bind source", src))?;
    let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let by_fd = Path::new(OLD_ROOT_FDS).join(pinned.as_raw_fd().to_string());
    let src = by_fd.as_path();
    if is_dir {
        mkdirs(dst)?;
    } else {
        if let Some(parent) = dst.parent() {
            mkdirs(parent)?;
        }
        if !dst.exists() {
            fs::File::create(dst).map_err(io_fail("create bind target", dst))?;
        }
    }
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind", dst))?;
    let mut flags = MsFlags::MS_NOSUID | extra;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    remount_bind(dst, flags)
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
        mount(
            Some("tmpfs"),
            d,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(data),
        )
        .map_err(fail("mount tmpfs", d))?;
        for (node, major, minor) in DEV_NODES {
            let p = d.join(node);
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            )
            .map_err(fail("mknod", &p))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o666))
                .map_err(io_fail("chmod", &p))?;
        }
    } else {
        tmpfs(d, 64 << 10, 0o755)?;
        for (node, _, _) in DEV_NODES {
            bind_with(&host_dev.join(node), &d.join(node), true, MsFlags::empty())?;
        }
    }
    Ok(())
}

/// Builds the new root from `ops` and makes it `/`. Runs in a new mount namespace.
pub(super) fn build_root(ops: &[MountOp]) -> Result<(), Failure> {
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
    let base = Path::new("/tmp");
    tmpfs(base, BASE_TMPFS_BYTES, 0o755)?;
    mkdirs(&base.join("newroot"))?;
    mkdirs(&base.join("oldroot"))?;
    nix::unistd::pivot_root(base, &base.join("oldroot"))
        .map_err(fail("pivot_root into the base", base))?;
    nix::unistd::chdir("/").map_err(fail("chdir", root))?;
    let old = Path::new("/oldroot");
    let new = Path::new("/newroot");
    tmpfs(new, ROOT_TMPFS_BYTES, 0o755)?;

    for op in ops {
        match op {
            MountOp::Tmpfs { dst, size, mode } => {
                let d = under(new, dst);
                mkdirs(&d)?;
                tmpfs(&d, *size, *mode)?;
            }
            MountOp::Bind { src, dst, writable } => {
                bind(&under(old, src), &under(new, dst), *writable)?
            }
            MountOp::Symlink { target, dst } => {
                let d = under(new, dst);
                if let Some(parent) = d.parent() {
                    mkdirs(parent)?;
                }
                symlink(target, &d).map_err(io_fail("symlink", &d))?;
            }
            MountOp::Proc { dst } => {
                let d = under(new, dst);
                mkdirs(&d)?;
                mount(
                    Some("proc"),
                    &d,
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(fail("mount proc", &d))?;
            }
            MountOp::Dev { dst } => {
                let d = under(new, dst);
                mkdirs(&d)?;
                dev_nodes(&old.join("dev"), &d)?;
                for (name, target) in [
                    ("fd", "/proc/self/fd"),
                    ("stdin", "/proc/self/fd/0"),
                    ("stdout", "/proc/self/fd/1"),
                    ("stderr", "/proc/self/fd/2"),
                ] {
                    symlink(target, d.join(name)).map_err(io_fail("symlink", &d))?;
                }
            }
        }
    }

    umount2(old, MntFlags::MNT_DETACH).map_err(fail("detach the old root", old))?;
    nix::unistd::chdir(new).map_err(fail("chdir", new))?;
    nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root into the new root", new))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detach the base", base))?;
    nix::unistd::chdir("/").map_err(fail("chdir", root))?;
    // The root's own tmpfs holds only mount points: make it read-only (unless the root is a
    // bind of the host's, as in the trusted tier, which keeps its own flags).
    if ops
        .iter()
        .any(|op| matches!(op, MountOp::Bind { dst, .. } if dst == Path::new("/")))
    {
        return Ok(());
    }
    remount_bind(
        root,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
}
