//! `loongctl keys generate | add | list | revoke | rotate | sign`. Private keys stay on this
//! side: loongctl generates them and signs with them; loongd holds public keys only.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use ed25519_dalek::{Signer, SigningKey};
use loong_ipc::{
    message::control::rotation_message, paths::Layout, ControlRequest, ControlResponse, KeyView,
};
use sha2::{Digest, Sha256};

use super::audit::rfc3339;
use crate::{exit, paging::PageArgs, text::Esc, Failure};

/// `loongctl keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a key pair: the private key goes to FILE (mode 0600, never overwritten); the
    /// public key and its id are printed.
    Generate {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Add a trust anchor to loongd's keyring.
    Add {
        #[arg(long)]
        name: String,
        /// The public key: 64 hex digits, or @FILE holding them.
        #[arg(long)]
        public: String,
        /// official or verified-community.
        #[arg(long, default_value = "verified-community")]
        tier: String,
    },
    /// Trust anchors by id.
    List {
        /// Print JSON (an array of {id, name, tier, public, added_ms, state, replaced_by}).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a trust anchor.
    Revoke { id: String },
    /// Replace key ID by a new key, signing the new public key with the old private key.
    Rotate {
        id: String,
        /// The old private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The new public key: 64 hex digits, or @FILE.
        #[arg(long)]
        new_public: String,
    },
    /// Sign FILE (a policy file) with a private key: writes FILE.sig.
    Sign {
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        file: PathBuf,
    },
}

pub(crate) fn key_id(public: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

/// The first line of a private key file `keys generate` writes, so that a private key is
/// never mistaken for a public one (`keys add --public @FILE` refuses it).
pub const PRIVATE_KEY_LABEL: &str = "loong-ed25519-private-key v1";

/// A private key file: [`PRIVATE_KEY_LABEL`] then 64 hex digits (older files: the digits
/// alone).
pub(crate) fn read_secret(path: &Path) -> Result<SigningKey, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the private key {}", path.display()))?;
    let digits = text
        .trim()
        .strip_prefix(PRIVATE_KEY_LABEL)
        .unwrap_or(&text)
        .trim();
    let bytes = hex::decode(digits)
        .map_err(|_| anyhow!("{}: not a private key (64 hex digits)", path.display()))?;
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("{}: not a private key (64 hex digits)", path.display()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// A public key given as 64 hex digits or `@FILE`. A file that holds a private key (the
/// label `keys generate` writes, or, for a file made before the label, 64 hex digits that
/// only its owner may read, as `keys generate` leaves it) is refused, naming it: its seed must
/// never become a trust anchor.
fn public_arg(flag: &str, s: &str) -> Result<String, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let Some(f) = s.strip_prefix('@') else {
        return Ok(s.trim().to_string());
    };
    let refuse = |why: &str| {
        Failure {
        code: exit::USAGE,
        error: anyhow!(
            "{flag} @{f}: {why}; give the public key `keys generate` printed (64 hex digits) or a file holding only it"
        ),
    }
    };
    let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
    if text.contains(PRIVATE_KEY_LABEL) {
        return Err(refuse("the file holds a private key"));
    }
    let private_mode = std::fs::metadata(f).is_ok_and(|m| m.permissions().mode() & 0o077 == 0);
    if private_mode {
        return Err(refuse(
            "the file is readable by its owner only, like a private key from `keys generate`",
        ));
    }
    Ok(text.trim().to_string())
}

fn call(layout: &Layout, req: ControlRequest) -> Result<Vec<KeyView>, Failure> {
    match crate::request(layout, req)? {
        ControlResponse::Keys(k) => Ok(k),
        other => Err(anyhow!("unexpected answer: {other:?}").into()),
    }
}

fn print(k: &KeyView) {
    println!(
        "{}  {:<8} {:<18} {:<20} added {}{}",
        Esc(&k.id),
        Esc(&k.state),
        Esc(&k.tier),
        Esc(&k.name),
        rfc3339(k.added_ms),
        k.replaced_by
            .as_deref()
            .map(|r| format!("  replaced by {}", Esc(r)))
            .unwrap_or_default()
    );
}

pub(crate) fn run(layout: &Layout, cmd: KeysCommand) -> Result<u8, Failure> {
    match cmd {
        KeysCommand::Generate { out } => {
            let mut secret = [0u8; 32];
            getrandom::getrandom(&mut secret).map_err(|e| anyhow!("no randomness: {e}"))?;
            let key = SigningKey::from_bytes(&secret);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| {
                    format!(
                        "creating {} (an existing file is never overwritten)",
                        out.display()
                    )
                })?;
            f.write_all(format!("{PRIVATE_KEY_LABEL}\n{}\n", hex::encode(secret)).as_bytes())?;
            f.sync_all()?;
            let public = key.verifying_key().to_bytes();
            println!("public: {}", hex::encode(public));
            println!("id: {}", key_id(&public));
            Ok(exit::OK)
        }
        KeysCommand::Add { name, public, tier } => {
            call(
                layout,
                ControlRequest::KeyAdd {
                    name,
                    tier,
                    public: public_arg("--public", &public)?,
                },
            )?
            .iter()
            .for_each(print);
            Ok(exit::OK)
        }
        KeysCommand::List { json, page } => crate::paging::print_list(
            layout,
            &page,
            json,
            ControlRequest::KeyList,
            |r| match r {
                ControlResponse::Keys(ks) => Some(ks),
                _ => None,
            },
            |k| k.id.clone(),
            |k| serde_json::json!({ "id": k.id, "name": k.name, "tier": k.tier, "public": k.public, "added_ms": k.added_ms, "state": k.state, "replaced_by": k.replaced_by }),
            print,
        ),
        KeysCommand::Revoke { id } => {
            call(layout, ControlRequest::KeyRevoke { id })?
                .iter()
                .for_each(print);
            Ok(exit::OK)
        }
        KeysCommand::Rotate {
            id,
            key,
            new_public,
        } => {
            let old = read_secret(&key)?;
            let new_public = public_arg("--new-public", &new_public)?;
            let bytes: [u8; 32] = hex::decode(&new_public)
                .ok()
                .and_then(|b| b.as_slice().try_into().ok())
                .ok_or_else(|| Failure {
                    code: exit::USAGE,
                    error: anyhow!("--new-public: expected 64 hex digits"),
                })?;
            let signature = hex::encode(old.sign(&rotation_message(&bytes)).to_bytes());
            call(
                layout,
                ControlRequest::KeyRotate {
                    old_id: id,
                    new_public,
                    signature,
                },
            )?
            .iter()
            .for_each(print);
            Ok(exit::OK)
        }
        KeysCommand::Sign { key, file } => {
            let k = read_secret(&key)?;
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sig_path = PathBuf::from(format!("{}.sig", file.display()));
            std::fs::write(&sig_path, hex::encode(k.sign(&data).to_bytes()))
                .with_context(|| format!("writing {}", sig_path.display()))?;
            println!(
                "signed {} with key {} → {}",
                file.display(),
                key_id(&k.verifying_key().to_bytes()),
                sig_path.display()
            );
            Ok(exit::OK)
        }
    }
}
