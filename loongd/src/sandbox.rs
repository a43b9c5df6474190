//! loongd's side of sandboxes: the spawner it owns, `doctor`, and `sandbox run` with its
//! stdio relayed over the control connection.

use std::{path::PathBuf, sync::Arc, time::Duration};

use loong_ipc::{
    ControlResponse, DoctorReport, ErrorKind, MechanismReport, RemoteError, SandboxExit,
    SandboxRunRequest, StreamChunk, TierReport, MAX_CHUNK_BYTES,
};
use loong_sandbox::{
    Killer, Limits, NetGrant, SandboxSpec, SpawnError, Spawner, SpawnerConfig, SpecError,
    StdioSpec, Tier,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::{pipe, UCred},
    sync::mpsc,
};

use crate::{audit::Kind, control::RequestIo, Kernel};

/// Starts the spawner with the bundled tier profiles; loongd's own paths are hidden from
/// every sandbox.
pub(crate) fn start_spawner(
    kernel_paths: Vec<PathBuf>,
    uid: u32,
    gid: u32,
) -> Result<Arc<Spawner>, String> {
    let profiles = loong_profiles::bundled().map_err(|ps| {
        let lines: Vec<String> = ps.iter().map(ToString::to_string).collect();
        format!("bundled tier profiles are invalid:\n{}", lines.join("\n"))
    })?;
    let mut config = SpawnerConfig::new(profiles);
    config.hidden = kernel_paths;
    config.sandbox_id = (uid, gid);
    if !config.helper.exists() {
        return Err(format!(
            "the sandbox helper {} is missing; install loong-spawn next to loongd",
            config.helper.display()
        ));
    }
    Spawner::start(config)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn unavailable(msg: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::SandboxUnavailable, msg)
}

/// `loongctl doctor`.
pub(crate) fn doctor(kernel: &Kernel) -> DoctorReport {
    let spawner = match &kernel.spawner {
        Ok(s) => s,
        Err(e) => {
            return DoctorReport {
                mechanisms: Vec::new(),
                tiers: Vec::new(),
                landlock_abi: 0,
                root: nix::unistd::Uid::effective().is_root(),
                error: Some(e.clone()),
            }
        }
    };
    let host = spawner.host();
    DoctorReport {
        mechanisms: host
            .mechanisms
            .iter()
            .map(|(m, a)| MechanismReport {
                name: m.name().into(),
                available: a.available,
                detail: a.detail.clone(),
                fix: a.fix.clone(),
            })
            .collect(),
        tiers: Tier::ALL
            .iter()
            .map(|t| {
                let missing: Vec<String> = host
                    .missing_for(*t)
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect();
                TierReport {
                    tier: t.to_string(),
                    enforceable: missing.is_empty(),
                    missing,
                }
            })
            .collect(),
        landlock_abi: host.landlock_abi,
        root: host.root,
        error: None,
    }
}

fn spec_from(
    req: &SandboxRunRequest,
    decided: DecidedGrants,
    allow_degraded: bool,
) -> Result<SandboxSpec, RemoteError> {
    let bad = |m: String| RemoteError::new(ErrorKind::BadRequest, m);
    let tier: Tier = req.tier.parse().map_err(bad)?;
    let net = req
        .allow_net
        .iter()
        .map(|g| g.parse::<NetGrant>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    Ok(SandboxSpec {
        tier: Some(tier),
        program: PathBuf::from(&req.program),
        args: req.args.iter().map(Into::into).collect(),
        env: req.env.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
        // What the decisions resolved and allowed, refused at planning if it changed since.
        read: decided.read,
        write: decided.write,
        decided_grants: true,
        net,
        limits: Limits {
            memory_bytes: req.memory_bytes,
            pids: req.pids,
            timeout: req.timeout_ms.map(Duration::from_millis),
            cpu_secs: req.cpu_secs,
        },
        allow_degraded: req.allow_degraded || allow_degraded,
        pass_fds: 0,
        // A request never carries kernel overrides or a package: loongd's own workers only.
        kernel: Default::default(),
        package: None,
    })
}

fn spawn_error(e: SpawnError) -> RemoteError {
    match e {
        SpawnError::Spec(SpecError::Unavailable { .. } | SpecError::NetUnenforced { .. }) => {
            unavailable(e.to_string())
        }
        SpawnError::Spec(s) => RemoteError::new(ErrorKind::BadRequest, s.to_string()),
        SpawnError::Setup { .. } | SpawnError::Helper { .. } | SpawnError::Stopped => {
            unavailable(e.to_string())
        }
        SpawnError::Cgroup(_) | SpawnError::Seccomp(_) => {
            RemoteError::new(ErrorKind::Internal, e.to_string())
        }
    }
}

/// Kills the sandbox if the request is dropped (cancelled, deadline, client gone) before the
/// sandbox has been waited for.
struct KillOnDrop(Option<Killer>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            let _ = k.kill();
        }
    }
}

fn receiver(fd: Option<std::os::fd::OwnedFd>) -> Option<pipe::Receiver> {
    fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok())
}

/// The resolved paths a run's read and write grants were decided on (bound as decided).
#[derive(Debug, Default)]
struct DecidedGrants {
    read: Vec<PathBuf>,
    write: Vec<PathBuf>,
}

/// Decides every effect a run asks for; the first denial is the answer. Once all are allowed
/// (some perhaps after waiting for an approval), the token is checked once more, so nothing
/// spawns under a token that died meanwhile. Returns the resolved paths of the file grants,
/// which are what the sandbox binds.
async fn authorize(
    kernel: &Kernel,
    req: &SandboxRunRequest,
    cred: &UCred,
    io: &RequestIo,
) -> Result<DecidedGrants, RemoteError> {
    use crate::control::authority_api;
    use loong_profiles::pack::Capability;
    let argv: Vec<String> = std::iter::once(req.program.clone())
        .chain(req.args.iter().cloned())
        .collect();
    let program = std::path::Path::new(&req.program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(&req.program)
        .to_string();
    let mut checks: Vec<(Capability, String, Option<&[String]>)> =
        vec![(Capability::ProcessExec, program, Some(&argv))];
    checks.extend(
        req.read
            .iter()
            .map(|p| (Capability::FsRead, p.clone(), None)),
    );
    checks.extend(
        req.write
            .iter()
            .map(|p| (Capability::FsWrite, p.clone(), None)),
    );
    checks.extend(
        req.allow_net
            .iter()
            .map(|h| (Capability::NetEgress, h.clone(), None)),
    );
    let mut token = None;
    let mut decided = DecidedGrants::default();
    let argv_all = argv.clone();
    for (cap, target, argv) in &checks {
        let effect = authority_api::Effect {
            cap: *cap,
            target,
            command: argv.map(crate::authority::shell::CommandLine::Argv),
            call: None,
            run: Some(&argv_all),
        };
        let allowed = authority_api::authorize(
            kernel,
            cred,
            io,
            req.token.as_ref().map(loong_ipc::BearerSecret::expose),
            &effect,
        )
        .await?;
        token = allowed.token;
        let into = match cap {
            Capability::FsRead => &mut decided.read,
            Capability::FsWrite => &mut decided.write,
            _ => continue,
        };
        let file = allowed.file.ok_or_else(|| {
            RemoteError::new(
                ErrorKind::Denied,
                format!("{cap} on {target}: the path could not be resolved to one the grants cover; give a plain absolute path"),
            )
        })?;
        into.push(file.path);
    }
    authority_api::recheck(
        kernel,
        cred,
        io,
        token.as_deref(),
        Capability::ProcessExec,
        &req.program,
    )
    .await?;
    Ok(decided)
}

/// Builds the spec for `req` with the grants as decided and spawns it on the spawner's
/// thread; returns the child with the tier and timeout it runs under.
async fn spawn(
    kernel: &Kernel,
    req: &SandboxRunRequest,
    decided: DecidedGrants,
) -> Result<(loong_sandbox::Child, (Option<Tier>, Option<Duration>)), RemoteError> {
    let spawner = kernel.spawner.clone().map_err(unavailable)?;
    let spec = spec_from(req, decided, kernel.config.sandbox.allow_degraded)?;
    let limits = (spec.tier, spec.limits.timeout);
    let child = tokio::task::spawn_blocking(move || {
        spawner.spawn(
            spec,
            [StdioSpec::Pipe, StdioSpec::Pipe, StdioSpec::Pipe],
            Vec::new(),
        )
    })
    .await
    .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?
    .map_err(spawn_error)?;
    Ok((child, limits))
}

/// `loongctl sandbox run`.
pub(crate) async fn run(
    kernel: &Kernel,
    req: SandboxRunRequest,
    cred: &UCred,
    mut io: RequestIo,
) -> Result<ControlResponse, RemoteError> {
    let actor = format!("uid:{}", cred.uid());
    let correlation = io.correlation();
    let event = |kind, detail| crate::audit::Event {
        kind,
        actor: actor.clone(),
        correlation: correlation.clone(),
        detail,
    };
    let asked = serde_json::json!({
        "tier": req.tier, "program": req.program, "args": req.args, "read": req.read, "write": req.write,
        "allow_net": req.allow_net, "timeout_ms": req.timeout_ms, "memory_bytes": req.memory_bytes,
        "pids": req.pids, "cpu_secs": req.cpu_secs, "allow_degraded": req.allow_degraded,
    });
    // The decision pipeline first: every effect the run asks for, under the presented token
    // (or the operator's pack). Nothing spawns unless all are allowed.
    let spawned = match authorize(kernel, &req, cred, &io).await {
        Err(e) => Err(e),
        Ok(decided) => spawn(kernel, &req, decided).await,
    };
    let (mut child, (tier, timeout)) = match spawned {
        Ok(c) => c,
        Err(e) => {
            // Every refusal, by the pipeline or by the spawner, records what was asked.
            let detail = serde_json::json!({ "request": asked, "reason": e.message, "class": e.kind.to_string() });
            kernel
                .audit
                .record_later(event(Kind::SandboxRefused, detail))
                .await;
            return Err(e);
        }
    };
    let max_output = req
        .max_output_bytes
        .unwrap_or(kernel.config.sandbox.max_output_bytes);
    let program = req.program.clone();
    let degraded: Vec<String> = child
        .degraded
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let spawned_detail =
        serde_json::json!({ "request": asked, "pid": child.pid(), "degraded": degraded });
    kernel
        .audit
        .record_later(event(Kind::SandboxSpawned, spawned_detail))
        .await;
    if degraded.is_empty() {
        tracing::info!(uid = cred.uid(), tier = ?tier, program, pid = child.pid(), "sandbox started");
    } else {
        tracing::warn!(uid = cred.uid(), tier = ?tier, program, pid = child.pid(), degraded = ?degraded, "sandbox started DEGRADED: the tier is not fully enforced");
        let detail =
            serde_json::json!({ "tier": req.tier, "program": req.program, "missing": degraded });
        kernel
            .audit
            .record_later(event(Kind::SandboxDegraded, detail))
            .await;
    }
    let mut guard =
        KillOnDrop(Some(child.killer().map_err(|e| {
            RemoteError::new(ErrorKind::Internal, e.to_string())
        })?));
    let stdin = child
        .stdin
        .take()
        .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok());
    let mut stdout = receiver(child.stdout.take());
    let mut stderr = receiver(child.stderr.take());
    let waiter = tokio::task::spawn_blocking(move || child.wait());

    // Stdin: forwarded by its own task, so a program that does not read cannot stall output.
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Vec<u8>>(4);
    let feeder = tokio::spawn(async move {
        let Some(mut pipe) = stdin else { return };
        while let Some(bytes) = stdin_rx.recv().await {
            if pipe.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut stdin_tx = Some(stdin_tx);

    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut out_buf, mut err_buf) = (vec![0u8; MAX_CHUNK_BYTES], vec![0u8; MAX_CHUNK_BYTES]);
    let (mut relayed, mut exceeded, mut timed_out) = (0u64, false, false);
    let kill = |g: &KillOnDrop| {
        if let Some(k) = &g.0 {
            let _ = k.kill();
        }
    };
    while stdout.is_some() || stderr.is_some() {
        let (chunk, which_out) = tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => (r, true),
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => (r, false),
            input = io.input.recv(), if stdin_tx.is_some() => {
                match input {
                    Some(StreamChunk::Stdin(b)) => {
                        if let Some(tx) = &stdin_tx {
                            if tx.send(b).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    // End of input (or a client that stopped sending): close the program's stdin.
                    Some(StreamChunk::StdinEnd) | None => stdin_tx = None,
                    Some(_) => {}
                }
                continue;
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } }, if !timed_out => {
                timed_out = true;
                kill(&guard);
                continue;
            }
        };
        let n = match chunk {
            Ok(n) if n > 0 => n,
            _ => {
                if which_out {
                    stdout = None;
                } else {
                    stderr = None;
                }
                continue;
            }
        };
        if exceeded {
            continue; // draining after the kill
        }
        relayed += n as u64;
        if relayed > max_output {
            exceeded = true;
            kill(&guard);
            continue;
        }
        let buf = if which_out {
            &out_buf[..n]
        } else {
            &err_buf[..n]
        };
        let chunk = if which_out {
            StreamChunk::Stdout(buf.to_vec())
        } else {
            StreamChunk::Stderr(buf.to_vec())
        };
        if !io.emit(chunk).await {
            kill(&guard);
        }
    }
    drop(stdin_tx);
    feeder.abort();
    let report = waiter
        .await
        .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| {
            RemoteError::new(ErrorKind::Internal, format!("waiting for the sandbox: {e}"))
        })?;
    guard.0 = None;
    tracing::info!(tier = ?tier, code = ?report.code, signal = ?report.signal, timed_out, exceeded, "sandbox exited");
    let exit = SandboxExit {
        code: report.code,
        signal: report.signal,
        shell_code: report.shell_code(),
        timed_out,
        output_limit_exceeded: exceeded,
        oom_killed: report.oom_killed,
        user_us: report.user_us,
        system_us: report.system_us,
        max_rss_kib: report.max_rss_kib,
        degraded,
    };
    let detail = serde_json::json!({
        "tier": req.tier, "program": req.program, "code": exit.code, "signal": exit.signal,
        "timed_out": exit.timed_out, "output_limit_exceeded": exit.output_limit_exceeded,
        "oom_killed": exit.oom_killed, "user_us": exit.user_us, "system_us": exit.system_us,
        "max_rss_kib": exit.max_rss_kib, "relayed_bytes": relayed,
    });
    // The client hears of the exit only once it is in the audit trail.
    kernel
        .audit
        .record(event(Kind::SandboxExited, detail))
        .await
        .map_err(|e| {
            RemoteError::new(
                ErrorKind::Internal,
                format!("the sandbox exited but the audit trail failed: {e}"),
            )
        })?;
    Ok(ControlResponse::SandboxExited(exit))
}

/// Reads from an open pipe; never completes for a closed one (its select branch is off).
async fn read_some(pipe: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}
