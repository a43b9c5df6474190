//! Where loongd finds the programs it starts: the spawn helper (`loong-spawn`) and the worker
//! binaries.
//!
//! A build tree and a per-user install keep them beside loongd; an installed package keeps
//! them out of `PATH`, in `PREFIX/lib/loong/` (Debian's `/usr/lib/loong/` for `/usr/bin/loongd`,
//! `/usr/local/lib/loong/` for `/usr/local/bin/loongd`). The first that exists wins; the
//! directory is derived from loongd's own path, never from the environment, so a caller
//! cannot point loongd at other programs.

use std::path::{Path, PathBuf};

/// The private program directory, relative to the directory holding loongd.
pub const LIB_DIR: &str = "../lib/loong";
/// Where the programs are looked for when loongd's own path is unknown (no `/proc`): the
/// system package's directory, an absolute path, so a bare name is never searched in `PATH`.
pub const SYSTEM_LIB_DIR: &str = "/usr/lib/loong";

/// The program `name` for the loongd at `exe`: beside it, else in [`LIB_DIR`] from it. When
/// neither exists, the path beside it (so the error that follows names where it was looked
/// for first).
pub fn find_for(exe: &Path, name: &str) -> PathBuf {
    let Some(dir) = exe.parent().filter(|d| d.is_absolute()) else {
        return Path::new(SYSTEM_LIB_DIR).join(name);
    };
    let beside = dir.join(name);
    if beside.exists() {
        return beside;
    }
    let private = dir.join(LIB_DIR).join(name);
    match std::fs::canonicalize(&private) {
        Ok(p) => p,
        Err(_) => beside,
    }
}

/// The program `name` for the running loongd (see [`find_for`]).
pub fn find(name: &str) -> PathBuf {
    match std::env::current_exe() {
        Ok(exe) => find_for(&exe, name),
        Err(_) => Path::new(SYSTEM_LIB_DIR).join(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_first_then_the_private_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("usr/bin");
        let lib = root.path().join("usr/lib/loong");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(&lib).expect("lib");
        let exe = bin.join("loongd");
        // Neither: the path beside loongd, named in the error that follows.
        assert_eq!(find_for(&exe, "loong-spawn"), bin.join("loong-spawn"));
        // Only in the private directory (the package's layout).
        std::fs::write(lib.join("loong-spawn"), b"").expect("write");
        let found = find_for(&exe, "loong-spawn");
        assert_eq!(
            found,
            std::fs::canonicalize(lib.join("loong-spawn")).expect("canon")
        );
        // Beside loongd wins (a build tree).
        std::fs::write(bin.join("loong-spawn"), b"").expect("write");
        assert_eq!(find_for(&exe, "loong-spawn"), bin.join("loong-spawn"));
        // loongd's path unknown or relative: the system directory, never a bare name that a
        // spawn would search for in PATH.
        for exe in [Path::new("loongd"), Path::new("")] {
            let found = find_for(exe, "loong-spawn");
            assert!(found.is_absolute(), "{}", found.display());
            assert_eq!(found, Path::new(SYSTEM_LIB_DIR).join("loong-spawn"));
        }
    }
}
