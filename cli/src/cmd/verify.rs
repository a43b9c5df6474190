//! `loongctl plugins verify DIR`: what an operator checks before installing a package. It
//! runs as the operator, reads the package itself, and asks loongd only for its keyring: the
//! signature must be by a key in the keyring that is active, verify over the message its
//! file list rebuilds, and that list must match every file's hash now. Exit 0 when all of
//! it holds, [`exit::VERIFY_FAILED`] otherwise.

use std::path::Path;

use loong_ipc::{
    package::{self, FileState, PackageSignature, SIGNATURE_FILE},
    ControlRequest, ControlResponse, KeyView,
};

use crate::{exit, text::Esc, Failure};

/// What was found, for printing.
#[derive(Debug, Default)]
struct Report {
    /// Path, sha256 now (or as signed, for a removed file), and how it compares with the
    /// signed list (`None`: unsigned).
    files: Vec<(String, String, Option<FileState>)>,
    signer: Option<KeyView>,
    problems: Vec<String>,
}

fn keyring(layout: &loong_ipc::paths::Layout) -> Result<Vec<KeyView>, Failure> {
    let mut all = Vec::new();
    crate::paging::each(
        layout,
        &crate::paging::PageArgs::default(),
        ControlRequest::KeyList,
        |r| match r {
            ControlResponse::Keys(k) => Some(k),
            _ => None,
        },
        |k| k.id.clone(),
        |k| {
            all.push(k.clone());
            Ok(())
        },
    )?;
    Ok(all)
}

/// Checks `sig` against the keyring and `now`, filling `report`.
fn check(sig: &PackageSignature, keys: &[KeyView], now: &package::PackageDigest, r: &mut Report) {
    let Some(key) = keys.iter().find(|k| k.id == sig.key_id) else {
        r.problems.push(format!(
            "signed by key {}, which is not in loongd's keyring (`loongctl keys add`)",
            sig.key_id
        ));
        return;
    };
    r.signer = Some(key.clone());
    if key.state != "active" {
        r.problems.push(format!(
            "signed by key {} ({}), which is {}",
            key.id, key.name, key.state
        ));
        return;
    }
    let verifies = sig.message().is_some_and(|message| {
        let public: Option<[u8; 32]> = hex::decode(&key.public)
            .ok()
            .and_then(|b| b.as_slice().try_into().ok());
        let signature: Option<[u8; 64]> = hex::decode(&sig.signature)
            .ok()
            .and_then(|b| b.as_slice().try_into().ok());
        match (public, signature) {
            (Some(p), Some(s)) => ed25519_dalek::VerifyingKey::from_bytes(&p).is_ok_and(|v| {
                v.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&s))
                    .is_ok()
            }),
            _ => false,
        }
    });
    if !verifies {
        r.problems.push(format!(
            "the signature does not verify under key {} ({})",
            key.id, key.name
        ));
        return;
    }
    // The signed list is now authenticated: every file compared with it.
    let hashes: std::collections::BTreeMap<&str, &str> = sig
        .files
        .iter()
        .map(|(p, h)| (p.as_str(), h.as_str()))
        .chain(
            now.files
                .iter()
                .map(|f| (f.path.as_str(), f.sha256.as_str())),
        )
        .collect();
    for (path, state) in package::compare(&sig.files, now) {
        let hash = hashes.get(path.as_str()).copied().unwrap_or_default();
        if state != FileState::Same {
            r.problems.push(format!(
                "{} is {} since it was signed",
                path,
                state.as_str()
            ));
        }
        r.files.push((path, hash.to_string(), Some(state)));
    }
}

/// `plugins verify DIR`.
pub(crate) fn verify_dir(
    layout: &loong_ipc::paths::Layout,
    dir: &Path,
    json: bool,
) -> Result<u8, Failure> {
    let mut r = Report::default();
    let now = package::digest(dir);
    let sig_path = dir.join(SIGNATURE_FILE);
    let sig = match std::fs::metadata(&sig_path) {
        Err(_) => {
            r.problems.push(format!(
                "{}: unsigned; nothing proves its publisher",
                dir.display()
            ));
            None
        }
        Ok(m) if m.len() > package::MAX_SIGNATURE_BYTES as u64 => {
            r.problems.push(format!(
                "{}: over {} bytes",
                sig_path.display(),
                package::MAX_SIGNATURE_BYTES
            ));
            None
        }
        Ok(_) => match std::fs::read(&sig_path)
            .map_err(|e| e.to_string())
            .and_then(|b| PackageSignature::parse(&b).map_err(|e| e.to_string()))
        {
            Ok(sig) => Some(sig),
            Err(e) => {
                r.problems.push(format!("{}: {e}", sig_path.display()));
                None
            }
        },
    };
    match (&now, &sig) {
        (Err(e), _) => r.problems.push(e.to_string()),
        (Ok(now), Some(sig)) => check(sig, &keyring(layout)?, now, &mut r),
        (Ok(now), None) => {
            r.files = now
                .files
                .iter()
                .map(|f| (f.path.clone(), f.sha256.clone(), None))
                .collect()
        }
    }
    print(dir, &r, json);
    Ok(if r.problems.is_empty() {
        exit::OK
    } else {
        exit::VERIFY_FAILED
    })
}

fn label(state: Option<FileState>) -> &'static str {
    state.map_or("unsigned", FileState::as_str)
}

fn print(dir: &Path, r: &Report, json: bool) {
    let signer = r.signer.as_ref();
    if json {
        let files: Vec<serde_json::Value> = r
            .files
            .iter()
            .map(|(p, h, s)| serde_json::json!({"path": p, "sha256": h, "state": label(*s)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "dir": dir.display().to_string(), "ok": r.problems.is_empty(),
                "signer": signer.map(|k| &k.id), "signer_name": signer.map(|k| &k.name),
                "tier": signer.map(|k| &k.tier), "key_state": signer.map(|k| &k.state),
                "files": files, "problems": r.problems,
            })
        );
        return;
    }
    // File names, the signature file's text and the key's fields are foreign: each is shown
    // escaped, one line each.
    let dir = dir.display().to_string();
    for (path, hash, state) in &r.files {
        println!("  {:<8} {}  {}", label(*state), Esc(hash), Esc(path));
    }
    if let Some(k) = signer {
        println!(
            "  signer   {} ({}), tier {}, {}",
            Esc(&k.id),
            Esc(&k.name),
            Esc(&k.tier),
            Esc(&k.state)
        );
    }
    for p in &r.problems {
        println!("  FAIL     {}", Esc(p));
    }
    if r.problems.is_empty() {
        println!("{}: the signature holds for every file", Esc(&dir));
    } else {
        println!("{}: {} problem(s)", Esc(&dir), r.problems.len());
    }
}
