//! The witness: the latest signed checkpoint (sequence, head hash, time, key id, signature),
//! kept in a file outside the database (`audit.witness_file`, ideally on another file system),
//! so that a trail cut back together with its checkpoints is still caught. Written atomically
//! (a temporary file beside it, fsync, rename, fsync of the directory) after every commit that
//! signed a checkpoint; `audit verify` and loongd's start check the database against it.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// The witness file's format tag.
pub const WITNESS_FORMAT: &str = "loong-audit-witness-v1";
/// A witness file longer than this is not one (it holds one short JSON object).
pub const MAX_WITNESS_BYTES: u64 = 4096;
/// The default witness file inside the home (an operator should move it to another file
/// system with `audit.witness_file`).
pub const DEFAULT_WITNESS_FILE: &str = "audit.witness";

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub seq: u64,
    pub hash: [u8; 32],
    pub time_ms: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// Why a witness file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("audit witness file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit witness file {} is not a witness ({why}); restore it from the SIEM's last checkpoint line or a backup", path.display())]
    Malformed { path: PathBuf, why: String },
}

impl Witness {
    /// Its JSON form (the witness file's content, and the SIEM lanes' checkpoint line).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format": WITNESS_FORMAT, "seq": self.seq, "hash": hex::encode(self.hash),
            "time_ms": self.time_ms, "key_id": self.key_id,
            "signature": hex::encode(&self.signature),
        })
    }

    fn from_json(v: &serde_json::Value) -> Result<Witness, String> {
        if v["format"] != WITNESS_FORMAT {
            return Err(format!("its format is not {WITNESS_FORMAT}"));
        }
        let hex_of = |k: &str| {
            v[k].as_str()
                .and_then(|s| hex::decode(s).ok())
                .ok_or_else(|| format!("`{k}` is not hex"))
        };
        let hash = <[u8; 32]>::try_from(hex_of("hash")?.as_slice())
            .map_err(|_| "`hash` is not 32 bytes".to_string())?;
        Ok(Witness {
            seq: v["seq"].as_u64().ok_or("`seq` is not a number")?,
            hash,
            time_ms: v["time_ms"].as_i64().ok_or("`time_ms` is not a number")?,
            key_id: v["key_id"].as_str().unwrap_or_default().to_string(),
            signature: hex_of("signature")?,
        })
    }
}

/// Reads the witness at `path`; `None` when there is no file.
pub fn read(path: &Path) -> Result<Option<Witness>, WitnessError> {
    let io = |source| WitnessError::Io {
        path: path.to_path_buf(),
        source,
    };
    let malformed = |why: String| WitnessError::Malformed {
        path: path.to_path_buf(),
        why,
    };
    let text = match crate::home::read_bounded(path, MAX_WITNESS_BYTES) {
        Ok(crate::home::Bounded::Read(b)) => {
            String::from_utf8(b).map_err(|_| malformed("not UTF-8".to_string()))?
        }
        Ok(crate::home::Bounded::TooLarge(len)) => {
            return Err(malformed(format!("{len} bytes, above {MAX_WITNESS_BYTES}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| malformed(format!("not JSON: {e}")))?;
    Witness::from_json(&v).map(Some).map_err(malformed)
}

/// The temporary file a witness is written to before it is renamed into place.
fn temporary(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp"))
}

/// Creates the temporary file afresh: whatever is at its name (a file left by a crash, or a
/// symlink planted while loongd was stopped) is unlinked, never followed, and the new file is
/// created exclusively.
fn create_temporary(tmp: &Path) -> std::io::Result<fs::File> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
}

/// Checks that a witness can be written at `path` (its directory exists and is writable), so
/// that a misplaced witness stops loongd's start instead of its first checkpoint.
pub fn probe(path: &Path) -> Result<(), WitnessError> {
    let tmp = temporary(path);
    let io = |source| WitnessError::Io {
        path: path.to_path_buf(),
        source,
    };
    create_temporary(&tmp).map_err(io)?;
    fs::remove_file(&tmp).map_err(io)
}

/// Replaces the witness at `path` with `w`, atomically and durably.
pub fn write(path: &Path, w: &Witness) -> Result<(), WitnessError> {
    let io = |source| WitnessError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temporary(path);
    let mut f = create_temporary(&tmp).map_err(io)?;
    f.write_all(format!("{}\n", w.to_json()).as_bytes())
        .map_err(io)?;
    // The data and its size (fdatasync): the timestamps need not be on disk, and flushing
    // them would wait for a journal commit of everything else the machine wrote.
    f.sync_data().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own and waits at most a few seconds for its answer (a
    /// read that blocks on a FIFO never answers).
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    #[test]
    fn a_witness_that_is_a_fifo_or_a_link_to_a_device_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo.witness");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let zero = dir.path().join("zero.witness");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("link");
        for path in [fifo, zero] {
            let shown = path.display().to_string();
            let got = within_seconds(move || read(&path).map_err(|e| e.to_string()));
            let err = got
                .unwrap_or_else(|| panic!("{shown}: the read hung"))
                .expect_err("refused");
            assert!(err.contains("not a regular file"), "{shown}: {err}");
        }
        // The control: a witness written in place is read back.
        let good = dir.path().join("good.witness");
        write(&good, &sample()).expect("write");
        assert_eq!(read(&good).expect("read"), Some(sample()));
    }

    fn sample() -> Witness {
        Witness {
            seq: 512,
            hash: [7u8; 32],
            time_ms: 1_700_000_000_000,
            key_id: "0011223344556677".into(),
            signature: vec![9u8; 64],
        }
    }

    #[test]
    fn a_written_witness_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.witness");
        assert_eq!(read(&path).expect("reads"), None);
        probe(&path).expect("writable");
        write(&path, &sample()).expect("writes");
        assert_eq!(read(&path).expect("reads"), Some(sample()));
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("audit.witness")]);
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.witness");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").expect("victim");
        let tmp = temporary(&path);
        for step in ["probe", "write"] {
            std::os::unix::fs::symlink(&victim, &tmp).expect("plant");
            if step == "probe" {
                probe(&path).expect("writable");
            } else {
                write(&path, &sample()).expect("writes");
            }
            assert_eq!(
                fs::read_to_string(&victim).expect("victim"),
                "keep",
                "{step}"
            );
        }
        assert_eq!(read(&path).expect("reads"), Some(sample()));
        assert!(!fs::symlink_metadata(&path).expect("witness").is_symlink());
    }

    #[test]
    fn what_is_not_a_witness_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.witness");
        for (body, why) in [
            ("not json".to_string(), "not JSON"),
            ("{\"format\":\"other\"}".into(), "its format is not"),
            (
                " ".repeat(MAX_WITNESS_BYTES as usize + 1),
                "bytes, above 4096",
            ),
            (
                sample()
                    .to_json()
                    .to_string()
                    .replace("\"hash\":\"07", "\"hash\":\"zz"),
                "`hash` is not hex",
            ),
        ] {
            fs::write(&path, body).expect("write");
            let e = read(&path).expect_err("refused").to_string();
            assert!(e.contains(why) && e.contains("audit.witness"), "{e}");
        }
        let missing = dir.path().join("no-such-dir/audit.witness");
        assert!(probe(&missing).is_err());
    }
}
