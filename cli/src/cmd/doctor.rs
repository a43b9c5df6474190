//! `loongctl doctor [--json]`: which confinement mechanisms this host has, and which tiers
//! loongd can fully enforce (exit 6 when a tier cannot be).

use loong_ipc::{paths::Layout, ControlRequest, ControlResponse};
use serde::Serialize;

use crate::{
    connect, exit,
    text::{esc_join, Esc},
    Failure, REQUEST_DEADLINE,
};

/// The JSON shape of `doctor --json` (stable field names, docs/cli.md).
#[derive(Debug, Serialize)]
struct DoctorJson<'a> {
    root: bool,
    landlock_abi: i32,
    error: Option<&'a str>,
    mechanisms: Vec<MechanismJson<'a>>,
    tiers: Vec<TierJson<'a>>,
    egress_sandboxes: u64,
    egress_open: u64,
    /// Whose ids sandboxes run as, the ranges or why none, and what the mode lacks.
    ids_mode: &'a str,
    ids_detail: Option<&'a str>,
    ids_lacks: &'a [String],
    ids_own_uid: bool,
    /// Channels whose poller reports a problem (a 409 conflict, a failure).
    channels: Vec<ChannelJson>,
}

#[derive(Debug, Serialize)]
struct ChannelJson {
    name: String,
    conflict: Option<String>,
    last_error: Option<String>,
}

/// The channels whose poller reports a problem (none when loongd answers no channel list).
fn channel_problems(layout: &Layout) -> Vec<ChannelJson> {
    match crate::request(layout, ControlRequest::ChannelList) {
        Ok(ControlResponse::Channels(all)) => all
            .into_iter()
            .filter(|c| c.conflict.is_some() || c.last_error.is_some())
            .map(|c| ChannelJson {
                name: c.name,
                conflict: c.conflict,
                last_error: c.last_error,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Serialize)]
struct MechanismJson<'a> {
    name: &'a str,
    available: bool,
    detail: &'a str,
    fix: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct TierJson<'a> {
    tier: &'a str,
    enforceable: bool,
    missing: &'a [String],
}

pub(crate) fn run(layout: &Layout, json: bool) -> Result<u8, Failure> {
    let mut client = connect(layout)?;
    let ControlResponse::Doctor(r) =
        client.call::<_, ControlResponse>(ControlRequest::Doctor, REQUEST_DEADLINE)?
    else {
        return Err(anyhow::anyhow!("unexpected answer to doctor").into());
    };
    let all_ok = r.error.is_none() && !r.ids_own_uid && r.tiers.iter().all(|t| t.enforceable);
    let channels = channel_problems(layout);
    if json {
        let j = DoctorJson {
            root: r.root,
            landlock_abi: r.landlock_abi,
            error: r.error.as_deref(),
            mechanisms: r
                .mechanisms
                .iter()
                .map(|m| MechanismJson {
                    name: &m.name,
                    available: m.available,
                    detail: &m.detail,
                    fix: m.fix.as_deref(),
                })
                .collect(),
            tiers: r
                .tiers
                .iter()
                .map(|t| TierJson {
                    tier: &t.tier,
                    enforceable: t.enforceable,
                    missing: &t.missing,
                })
                .collect(),
            egress_sandboxes: r.egress_sandboxes,
            egress_open: r.egress_open,
            ids_mode: &r.ids_mode,
            ids_detail: r.ids_detail.as_deref(),
            ids_lacks: &r.ids_lacks,
            ids_own_uid: r.ids_own_uid,
            channels,
        };
        println!(
            "{}",
            crate::text::json_text(&serde_json::to_string_pretty(&j)?)
        );
    } else {
        if let Some(e) = &r.error {
            println!("sandboxes unavailable: {}", Esc(e));
        }
        println!(
            "loongd runs as {}; landlock ABI {}",
            if r.root {
                "root"
            } else {
                "an unprivileged user"
            },
            r.landlock_abi
        );
        println!("sandbox ids: {}", Esc(&r.ids_mode));
        if let Some(d) = &r.ids_detail {
            println!("  {}", Esc(d));
        }
        for l in &r.ids_lacks {
            println!("  lacks: {}", Esc(l));
        }
        println!();
        for m in &r.mechanisms {
            let mark = if m.available { "ok     " } else { "MISSING" };
            println!("  {mark} {:<13} {}", Esc(&m.name), Esc(&m.detail));
            if let (false, Some(fix)) = (m.available, &m.fix) {
                println!("          fix: {}", Esc(fix));
            }
        }
        println!();
        for t in &r.tiers {
            if t.enforceable {
                println!("  {:<10} fully enforced", Esc(&t.tier));
            } else {
                println!(
                    "  {:<10} NOT enforceable: missing {}",
                    Esc(&t.tier),
                    esc_join(&t.missing, ", ")
                );
            }
        }
        println!();
        println!(
            "egress broker: {} sandboxes, {} open connections",
            r.egress_sandboxes, r.egress_open
        );
        for c in &channels {
            match (&c.conflict, &c.last_error) {
                (Some(conflict), _) => {
                    println!("channel {}: CONFLICT: {}", Esc(&c.name), Esc(conflict));
                }
                (None, Some(e)) => println!("channel {}: {}", Esc(&c.name), Esc(e)),
                (None, None) => {}
            }
        }
    }
    Ok(if all_ok {
        exit::OK
    } else {
        exit::SANDBOX_UNAVAILABLE
    })
}

/// The mode loongd gives the home, its log directory and the run directory (no group).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The widest mode of the run directory loongd makes (a group allowed: search only).
pub const RUN_DIR_WIDEST_MODE: u32 = 0o710;
/// The mode loongd gives the files it keeps private.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// One repair done, or one left with the command that does it.
#[derive(Debug, Serialize)]
struct Repair {
    what: &'static str,
    path: String,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct FixReport {
    fixed: Vec<Repair>,
    not_fixed: Vec<Repair>,
}

impl FixReport {
    fn fixed(&mut self, what: &'static str, path: &std::path::Path, detail: String) {
        self.fixed.push(Repair {
            what,
            path: path.display().to_string(),
            detail,
            fix: None,
        });
    }

    fn left(&mut self, what: &'static str, path: &std::path::Path, detail: String, fix: String) {
        self.not_fixed.push(Repair {
            what,
            path: path.display().to_string(),
            detail,
            fix: Some(fix),
        });
    }
}

/// Narrows `path`'s mode to within `widest` (never adds a bit), when it is ours and not a
/// symbolic link; creates a missing directory when `create`.
fn tighten(report: &mut FixReport, path: &std::path::Path, widest: u32, dir: bool, create: bool) {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if create {
                match std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(widest)
                    .create(path)
                {
                    Ok(()) => report.fixed(
                        "missing_directory",
                        path,
                        format!("created with mode {widest:o}"),
                    ),
                    Err(e) => report.left(
                        "missing_directory",
                        path,
                        format!("cannot create it: {e}"),
                        format!("mkdir -m {widest:o} -p {}", path.display()),
                    ),
                }
            }
            return;
        }
        Err(e) => {
            report.left(
                "unreadable",
                path,
                format!("cannot inspect it: {e}"),
                format!("ls -ld {}", path.display()),
            );
            return;
        }
    };
    if meta.file_type().is_symlink() || meta.is_dir() != dir {
        report.left(
            "unexpected_type",
            path,
            format!(
                "is not a {} (loongd would refuse it)",
                if dir { "directory" } else { "regular file" }
            ),
            format!("move {} away and start loongd again", path.display()),
        );
        return;
    }
    let ours = nix::unistd::Uid::effective().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != ours {
        report.left(
            "foreign_owner",
            path,
            format!("owned by uid {}, not by this user (uid {ours})", meta.uid()),
            format!("chown {ours} {}", path.display()),
        );
        return;
    }
    let narrowed = mode & widest;
    if narrowed == mode {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(narrowed)) {
        Ok(()) => report.fixed(
            "loose_mode",
            path,
            format!("mode {mode:o} narrowed to {narrowed:o}"),
        ),
        Err(e) => report.left(
            "loose_mode",
            path,
            format!("mode {mode:o} is looser than {widest:o}: {e}"),
            format!("chmod {narrowed:o} {}", path.display()),
        ),
    }
}

/// Whether some process holds the home's lock (a loongd serving it).
fn lock_held(layout: &Layout) -> std::io::Result<bool> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&layout.lock_file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        // Released when `file` is dropped.
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// `loongctl doctor --fix [--json]`: repairs the home's directories, modes and a stale
/// socket, without loongd (it may be down, which is often why doctor is run); never widens a
/// mode, never touches a database's contents.
pub(crate) fn fix(layout: &Layout, json: bool) -> Result<u8, Failure> {
    use std::os::unix::fs::FileTypeExt;
    let mut r = FixReport::default();
    let system = layout == &Layout::system();
    let home_flag = if system {
        " --system".to_string()
    } else {
        format!(" --home {}", layout.home.display())
    };
    tighten(&mut r, &layout.home, PRIVATE_DIR_MODE, true, true);
    if let Some(log_dir) = layout.log_file.parent() {
        tighten(&mut r, log_dir, PRIVATE_DIR_MODE, true, true);
    }
    tighten(&mut r, &layout.run_dir, RUN_DIR_WIDEST_MODE, true, true);
    for file in [
        layout.home.join("secrets.json"),
        layout.lock_file.clone(),
        layout.log_file.clone(),
        layout.home.join("state.db"),
        layout.home.join("audit.db"),
    ] {
        tighten(&mut r, &file, PRIVATE_FILE_MODE, false, false);
    }
    match std::fs::symlink_metadata(&layout.socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => r.left(
            "socket",
            &layout.socket,
            format!("cannot inspect it: {e}"),
            format!("ls -l {}", layout.socket.display()),
        ),
        Ok(m) if !m.file_type().is_socket() => r.left(
            "socket",
            &layout.socket,
            "is not a socket: loongd will not start until it is moved".into(),
            format!(
                "mv {} {}.old",
                layout.socket.display(),
                layout.socket.display()
            ),
        ),
        Ok(_) => match lock_held(layout) {
            Ok(true) => {}
            Ok(false) => match std::fs::remove_file(&layout.socket) {
                Ok(()) => r.fixed(
                    "stale_socket",
                    &layout.socket,
                    "removed: no loongd holds the home's lock".into(),
                ),
                Err(e) => r.left(
                    "stale_socket",
                    &layout.socket,
                    format!("no loongd holds the home's lock, but it cannot be removed: {e}"),
                    format!("rm {}", layout.socket.display()),
                ),
            },
            Err(e) => r.left(
                "socket",
                &layout.socket,
                format!("cannot tell whether a loongd serves it: {e}"),
                format!("loongctl{home_flag} daemon status"),
            ),
        },
    }
    match std::fs::read_to_string(&layout.config_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => r.left(
            "config",
            &layout.config_file,
            format!("cannot read it: {e}"),
            format!("ls -l {}", layout.config_file.display()),
        ),
        Ok(text) => {
            if let Err(e) = loong_agent_wire::config::parse(&text) {
                r.left(
                    "config",
                    &layout.config_file,
                    format!("loongd would refuse it: {e}"),
                    format!(
                        "edit that key, or configure a provider with `loongctl{home_flag} onboard --force`"
                    ),
                );
            }
        }
    }
    if json {
        println!(
            "{}",
            crate::text::json_text(&serde_json::to_string_pretty(&r)?)
        );
    } else {
        if r.fixed.is_empty() && r.not_fixed.is_empty() {
            println!("nothing to fix in {}", layout.home.display());
        }
        for f in &r.fixed {
            println!("  fixed   {}: {}", Esc(&f.path), Esc(&f.detail));
        }
        for f in &r.not_fixed {
            println!("  NOT FIXED {}: {}", Esc(&f.path), Esc(&f.detail));
            if let Some(fix) = &f.fix {
                println!("          fix: {}", Esc(fix));
            }
        }
    }
    Ok(if r.not_fixed.is_empty() {
        exit::OK
    } else {
        exit::UNEXPECTED
    })
}
