//! Reading a package's files: the one check every package gets ([`check_package`]), the
//! manifest as it is found, and each file opened beneath the package's directory through no
//! link and without blocking, within its cap.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{source, Bridge, ManifestError, ManifestSource, PluginManifest};

/// The checks every package gets, the same wherever it comes from: `loongctl plugins doctor`,
/// loongd's install and its discovery (`plugins reload`, start) all call this one function, so
/// a package one of them refuses the others refuse with the same message. It reads the
/// manifest ([`PluginManifest::load_dir`]: `loong.plugin.json` or an embedded source manifest,
/// every field, capabilities against the bridge's grants, the program and granted paths on
/// this host) and, for a WASM plugin, the module ([`PluginManifest::read_checked_module`]: a
/// WebAssembly module of the sha256 the manifest pins). What only loongd holds is checked by
/// loongd after it: the package's directory name, its signature against the keyring, the
/// operator's pins and address policy in loongd.toml, and the load in a worker.
pub fn check_package(dir: &Path) -> Result<(PluginManifest, Option<Vec<u8>>), ManifestError> {
    let m = PluginManifest::load_dir(dir)?;
    let module = match m.bridge {
        Bridge::Wasm => Some(m.read_checked_module()?),
        Bridge::Foreign(_) | Bridge::Http(_) => None,
    };
    Ok((m, module))
}

/// The manifest text of a package as [`PluginManifest::load_dir`] finds it (its file, its
/// JSON text and where it came from), for a reader that shows it (`plugins doctor`).
pub fn find_manifest(dir: &Path) -> Result<(PathBuf, Vec<u8>, ManifestSource), ManifestError> {
    source::find(dir).map(|f| (f.path, f.text, f.source))
}

/// The file `name` directly in the package directory `dir`, read as every package file is
/// (beneath the directory, through no symlink, without blocking, a regular file only), or
/// `None` when there is none. Over `limit` bytes is [`ManifestError::TooLarge`], read no
/// further. What loongd reads a package's signature file with.
pub fn read_package_file(
    dir: &Path,
    name: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, ManifestError> {
    let root = open_package_dir(dir)?;
    match read_beneath_capped(&root, dir, Path::new(name), limit) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ManifestError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Opens a package directory `dir` for [`open_beneath`].
pub(super) fn open_package_dir(dir: &Path) -> Result<std::fs::File, ManifestError> {
    use loong_sandbox::openat::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECTORY.bits())
        .open(dir)
        .map_err(|source| ManifestError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Opens the file `rel` beneath the package directory `root` (at `dir`) as loongd's staging
/// copy opens a package's entries: through no symlink (at any component), not across a mount,
/// without blocking (a FIFO opens at once), and only a regular file passes its `fstat`. So a
/// package's files are read from inside it whatever it swaps in while it is read.
pub(super) fn open_beneath(
    root: &std::fs::File,
    dir: &Path,
    rel: &Path,
) -> Result<std::fs::File, ManifestError> {
    use loong_sandbox::openat;
    use std::os::fd::AsFd;
    let path = dir.join(rel);
    let how = openat::beneath_read_only();
    let name = rel.to_str().ok_or_else(|| ManifestError::Parse {
        path: path.clone(),
        message: "the file name is not UTF-8".into(),
    })?;
    let fd = openat::openat2(root.as_fd(), name, how).map_err(|source| {
        let link_or_mount = [nix::errno::Errno::ELOOP, nix::errno::Errno::EXDEV]
            .iter()
            .any(|e| source.raw_os_error() == Some(*e as i32));
        if link_or_mount {
            ManifestError::NotRegular { path: path.clone() }
        } else {
            ManifestError::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|source| ManifestError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ManifestError::NotRegular { path });
    }
    Ok(file)
}

/// At most `limit` bytes of the package file `rel` (see [`open_beneath`]).
pub(super) fn read_beneath(
    root: &std::fs::File,
    dir: &Path,
    rel: &Path,
    limit: u64,
) -> Result<Vec<u8>, ManifestError> {
    let file = open_beneath(root, dir, rel)?;
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|source| ManifestError::Io {
            path: dir.join(rel),
            source,
        })?;
    Ok(bytes)
}

/// [`read_beneath`], refusing a file over `limit` bytes.
pub(super) fn read_beneath_capped(
    root: &std::fs::File,
    dir: &Path,
    rel: &Path,
    limit: u64,
) -> Result<Vec<u8>, ManifestError> {
    let bytes = read_beneath(root, dir, rel, limit + 1)?;
    if bytes.len() as u64 > limit {
        return Err(ManifestError::TooLarge {
            path: dir.join(rel),
            limit,
        });
    }
    Ok(bytes)
}
