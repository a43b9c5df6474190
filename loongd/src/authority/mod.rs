//! The kernel's authority: packs, the denylist, capability tokens and the decision pipeline.
//! All of it lives in loongd; no worker ever holds a token's grants or mints one.

pub mod approvals;
pub mod channels;
pub mod db;
pub mod decide;
pub mod keys;
pub mod memory;
pub mod shell;
pub mod tokens;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use loong_profiles::{
    pack::{parse_denylist, parse_pack, Capability, Denylist, Pack},
    risk::{parse_risk, RiskProfile},
};

pub use decide::{Decision, Deny};
pub use tokens::{Token, TokenDenial, TokenError, TokenStore};

/// The pack loongctl acts with when no token is given.
pub const OPERATOR_PACK: &str = "operator";
/// Where operator packs live in the home.
pub const PACK_DIR: &str = "packs";
/// Most operator pack files read.
pub const MAX_PACK_FILES: usize = 256;
/// Bound on a pack file and on the risk profile.
pub const MAX_POLICY_FILE_BYTES: u64 = 1 << 20;
/// Bound on the risk profile's signature file (128 hex digits and white space).
pub const MAX_POLICY_SIGNATURE_BYTES: u64 = 4096;

/// Why the authority could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("policy data has problems:\n{}", .0.join("\n"))]
    Problems(Vec<String>),
    #[error(transparent)]
    Tokens(#[from] TokenError),
}

/// Why the operator's risk profile is refused (loongd then does not start).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: {len} bytes is above the {MAX_POLICY_FILE_BYTES}-byte limit for a policy file"
    )]
    TooLarge { path: String, len: u64 },
    #[error("{path}: its sha256 {actual} does not match the pinned {pinned}")]
    PinMismatch {
        path: String,
        actual: String,
        pinned: String,
    },
    #[error("{signature}: {source} (a signature is required)")]
    SignatureUnreadable {
        signature: String,
        source: std::io::Error,
    },
    #[error("{signature}: not a signature (128 hex digits)")]
    NotASignature { signature: String },
    #[error("{signature}: no active trust anchor signed {path} (forged, changed after signing, or signed by a revoked key)")]
    Unsigned { signature: String, path: String },
    #[error("reading the keyring to check the signature: {0}")]
    Keyring(#[from] keys::KeyError),
    #[error("{path}: not UTF-8 text")]
    NotText { path: String },
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
}

/// What a request was decided as, and on whose behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Result<Decision, TokenDenial>,
    pub pack: String,
    pub agent: Option<String>,
    /// The public id of the token it was decided under (`None`: the operator, or a secret
    /// that matches no token).
    pub token: Option<String>,
    /// For `fs.read` and `fs.write` that is not denied: the resolved target and the scope
    /// the grants confine it to, which the effect must be bound to.
    pub file: Option<decide::FileScope>,
}

impl Outcome {
    /// Whether the effect may happen.
    pub fn allowed(&self) -> bool {
        self.decision == Ok(Decision::Allow)
    }

    /// Why not, for an error message.
    pub fn reason(&self) -> Option<String> {
        match &self.decision {
            Ok(Decision::Allow) => None,
            Ok(Decision::Deny(d)) => Some(d.to_string()),
            Ok(Decision::NeedsApproval { score, reasons }) => Some(format!(
                "needs approval (risk {score}: {})",
                reasons.join(", ")
            )),
            Err(t) => Some(t.to_string()),
        }
    }
}

/// Whose authority an effect is decided under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// The operator's own pack.
    Operator,
    /// The holder of this bearer secret.
    Secret(&'a str),
    /// The token with this public id (a call chain's root).
    Id(&'a str),
}

/// Packs, denylist and tokens.
#[derive(Debug)]
pub struct Authority {
    pub tokens: TokenStore,
    /// The agent's conversations, by session (in the same file).
    pub memory: memory::MemoryStore,
    /// The chat channels: configuration, offsets, inbox and outbox (in the same file).
    pub channels: channels::ChannelStore,
    pub approvals: approvals::ApprovalStore,
    pub keys: keys::Keyring,
    risk: RiskProfile,
    packs: BTreeMap<String, Pack>,
    denylist: Denylist,
}

impl Authority {
    /// Loads the bundled packs and denylist, the operator's packs from `HOME/packs/*.toml`,
    /// and the token table. Every problem in every file is reported at once. loongd's own
    /// home is always denylisted.
    pub fn load(home: &Path) -> Result<Authority, AuthorityError> {
        let mut problems = Vec::new();
        let mut packs = BTreeMap::new();
        match loong_profiles::bundled_packs() {
            Ok(ps) => packs.extend(ps.into_iter().map(|p| (p.id.clone(), p))),
            Err(ps) => problems.extend(ps.iter().map(ToString::to_string)),
        }
        let dir = home.join(PACK_DIR);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        if files.len() > MAX_PACK_FILES {
            problems.push(format!(
                "{}: {} pack files, at most {MAX_PACK_FILES} are read",
                dir.display(),
                files.len()
            ));
            files.truncate(MAX_PACK_FILES);
        }
        for f in files {
            let name = f.display().to_string();
            match crate::home::read_bounded(&f, MAX_POLICY_FILE_BYTES)
                .map_err(|e| format!("{name}: {e}"))
                .and_then(|b| match b {
                    crate::home::Bounded::Read(b) => {
                        String::from_utf8(b).map_err(|_| format!("{name}: not UTF-8 text"))
                    }
                    crate::home::Bounded::TooLarge(len) => Err(format!(
                        "{name}: {len} bytes is above the {MAX_POLICY_FILE_BYTES}-byte limit for a policy file"
                    )),
                })
                .and_then(|t| {
                    parse_pack(&t, &name).map_err(|ps| {
                        ps.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                }) {
                Ok(p) if packs.contains_key(&p.id) => {
                    problems.push(format!("{name}: id: pack `{}` is already defined", p.id))
                }
                Ok(p) => {
                    packs.insert(p.id.clone(), p);
                }
                Err(e) => problems.push(e),
            }
        }
        let mut denylist = parse_denylist(loong_profiles::DENYLIST, "denylist.toml")
            .unwrap_or_else(|ps| {
                problems.extend(ps.iter().map(ToString::to_string));
                Denylist::default()
            });
        denylist.paths.push(home.to_path_buf());
        if let Err(why) = shell::check_runners() {
            problems.extend(why.problems);
        }
        let risk = parse_risk(loong_profiles::RISK, "risk/default.toml").unwrap_or_else(|ps| {
            problems.extend(ps.iter().map(ToString::to_string));
            RiskProfile::default()
        });
        if !problems.is_empty() {
            return Err(AuthorityError::Problems(problems));
        }
        let state = home.join("state.db");
        Ok(Authority {
            memory: memory::MemoryStore::open(&state)?,
            channels: channels::ChannelStore::open(&state)?,
            tokens: TokenStore::open(&state)?,
            approvals: approvals::ApprovalStore::open(&state)?,
            keys: keys::Keyring::open(&state)?,
            risk,
            packs,
            denylist,
        })
    }

    /// Loads the operator's risk profile named by `[policy]`, checking its pin and signature;
    /// the bundled one when none is named. `Err` says why it is refused (loongd then refuses
    /// to start). The `Ok` detail is what the audit records.
    pub fn load_risk_profile(
        &mut self,
        policy: &crate::config::PolicyConfig,
    ) -> Result<serde_json::Value, ProfileError> {
        use sha2::{Digest, Sha256};
        let Some(path) = &policy.risk_profile else {
            return Ok(serde_json::json!({ "profile": "bundled" }));
        };
        let shown = path.display().to_string();
        let bytes =
            match crate::home::read_bounded(path, MAX_POLICY_FILE_BYTES).map_err(|source| {
                ProfileError::Read {
                    path: shown.clone(),
                    source,
                }
            })? {
                crate::home::Bounded::Read(b) => b,
                crate::home::Bounded::TooLarge(len) => {
                    return Err(ProfileError::TooLarge { path: shown, len })
                }
            };
        let sha = hex::encode(Sha256::digest(&bytes));
        if let Some(pin) = &policy.risk_profile_sha256 {
            if !pin.trim().eq_ignore_ascii_case(&sha) {
                return Err(ProfileError::PinMismatch {
                    path: shown,
                    actual: sha,
                    pinned: pin.trim().to_string(),
                });
            }
        }
        let sig_path = PathBuf::from(format!("{shown}.sig"));
        let signer = if sig_path.exists() || policy.risk_profile_signed {
            let signature = sig_path.display().to_string();
            let sig = match crate::home::read_bounded(&sig_path, MAX_POLICY_SIGNATURE_BYTES) {
                Ok(crate::home::Bounded::Read(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(crate::home::Bounded::TooLarge(_)) => String::new(),
                Err(source) => return Err(ProfileError::SignatureUnreadable { signature, source }),
            };
            let sig: [u8; 64] = hex::decode(sig.trim())
                .ok()
                .and_then(|b| b.as_slice().try_into().ok())
                .ok_or_else(|| ProfileError::NotASignature {
                    signature: signature.clone(),
                })?;
            let key = self
                .keys
                .verifier(&bytes, &sig)?
                .ok_or_else(|| ProfileError::Unsigned {
                    signature,
                    path: shown.clone(),
                })?;
            Some(key.id)
        } else {
            None
        };
        let text = String::from_utf8(bytes).map_err(|_| ProfileError::NotText {
            path: shown.clone(),
        })?;
        self.risk = parse_risk(&text, &shown)
            .map_err(|ps| ProfileError::Problems(ps.iter().map(ToString::to_string).collect()))?;
        Ok(serde_json::json!({ "profile": shown, "sha256": sha, "signer": signer }))
    }

    /// The pack `id`.
    pub fn pack(&self, id: &str) -> Option<&Pack> {
        self.packs.get(id)
    }

    /// Every pack.
    pub fn packs(&self) -> impl Iterator<Item = &Pack> {
        self.packs.values()
    }

    /// Whether `bearer` holds `cap` on some target: a valid token and its pack both grant
    /// it (the operator's pack alone without a token). What decides whether a built-in tool
    /// with that effect is offered to a model at all; each call is still decided on its own.
    pub fn holds_some(&self, bearer: Bearer<'_>, cap: Capability) -> bool {
        let token = match bearer {
            Bearer::Operator => None,
            Bearer::Secret(s) => match self.tokens.check(s) {
                Ok(Ok(t)) => Some(t),
                _ => return false,
            },
            Bearer::Id(id) => match self.tokens.check_id(id) {
                Ok(Ok(t)) => Some(t),
                _ => return false,
            },
        };
        let pack_id = token.as_ref().map_or(OPERATOR_PACK, |t| t.pack.as_str());
        let Some(pack) = self.packs.get(pack_id) else {
            return false;
        };
        pack.grants.iter().any(|g| g.cap == cap)
            && token.is_none_or(|t| t.grants.iter().any(|g| g.cap == cap))
    }

    /// Decides `cap` on `target` for the holder of the bearer secret `token` (the operator
    /// when `None`).
    pub fn decide(
        &self,
        token: Option<&str>,
        cap: Capability,
        target: Option<&str>,
        command: Option<shell::CommandLine<'_>>,
    ) -> Result<Outcome, TokenError> {
        let bearer = token.map_or(Bearer::Operator, Bearer::Secret);
        self.decide_as(bearer, cap, target, command)
    }

    /// Decides `cap` on `target` under `bearer`'s authority: the operator's pack, a presented
    /// secret, or a token loongd knows by its public id (a call chain's root, for a kernel
    /// call: the worker never holds a secret).
    pub fn decide_as(
        &self,
        bearer: Bearer<'_>,
        cap: Capability,
        target: Option<&str>,
        command: Option<shell::CommandLine<'_>>,
    ) -> Result<Outcome, TokenError> {
        let found = match bearer {
            Bearer::Operator => None,
            Bearer::Secret(secret) => Some((self.tokens.check(secret)?, secret)),
            Bearer::Id(id) => Some((self.tokens.check_id(id)?, id)),
        };
        let checked = match found {
            None => None,
            Some((Ok(t), _)) => Some(t),
            Some((Err(denial), presented)) => {
                // A dead token is named by its public id, so its trail shows the attempt.
                let token = match bearer {
                    Bearer::Id(id) => Some(id.to_string()),
                    _ => self.tokens.id_of(presented)?,
                };
                return Ok(Outcome {
                    decision: Err(denial),
                    pack: String::new(),
                    agent: None,
                    token,
                    file: None,
                });
            }
        };
        Ok(self.decide_checked(checked.as_ref(), cap, target, command))
    }

    /// Decides `cap` on `target` under `token`, a token checked already (valid when it was
    /// checked): no lookup of the token store, so that one request that decides many tools
    /// (a gateway listing) checks its bearer once.
    pub fn decide_for(
        &self,
        token: &Token,
        cap: Capability,
        target: Option<&str>,
        command: Option<shell::CommandLine<'_>>,
    ) -> Outcome {
        self.decide_checked(Some(token), cap, target, command)
    }

    /// Decides `cap` on `target` under `checked` (the operator's pack when `None`).
    fn decide_checked(
        &self,
        checked: Option<&Token>,
        cap: Capability,
        target: Option<&str>,
        command: Option<shell::CommandLine<'_>>,
    ) -> Outcome {
        let pack_id = checked
            .map_or(OPERATOR_PACK, |t| t.pack.as_str())
            .to_string();
        let Some(pack) = self.packs.get(&pack_id) else {
            return Outcome {
                decision: Ok(Decision::Deny(Deny::NotInPack)),
                pack: pack_id,
                token: checked.map(|t| t.id.clone()),
                agent: checked.map(|t| t.agent.clone()),
                file: None,
            };
        };
        // A file target is resolved once: the decision and the effect use the same path.
        let resolved = match cap {
            Capability::FsRead | Capability::FsWrite => {
                target.and_then(|t| decide::canonical(Path::new(t)))
            }
            _ => None,
        };
        let req = decide::Request {
            token: checked,
            cap,
            target,
            command,
            resolved: resolved.as_deref(),
        };
        let decision = decide::decide(
            &req,
            pack,
            &self.denylist,
            &[&decide::FileRoots, &decide::ShellRules],
            Some(&self.risk),
        );
        let file = match (&decision, &resolved) {
            (Decision::Deny(_), _) | (_, None) => None,
            (_, Some(real)) => decide::file_scope(req.token, pack, cap, real),
        };
        Outcome {
            decision: Ok(decision),
            pack: pack_id,
            token: checked.map(|t| t.id.clone()),
            agent: checked.map(|t| t.agent.clone()),
            file,
        }
    }
}
