//! loongd's side of sandboxes: the spawner it owns, `doctor`, and `sandbox run` with its
//! stdio relayed over the control connection.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use loong_ipc::{
    ControlResponse, DoctorReport, ErrorKind, MechanismReport, RemoteError, SandboxExit,
    SandboxRunRequest, StreamChunk, TierReport, INTERRUPTS_TO_KILL, MAX_CHUNK_BYTES,
};
use loong_sandbox::{
    host::CgroupSupport, subids::IdMode, Killer, Limits, NetGrant, SandboxSpec, SpawnError,
    SpecError, StdioSpec, Tier,
};
use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt, Interest},
    net::unix::{pipe, UCred},
    sync::{mpsc, oneshot, OwnedSemaphorePermit},
};
use tracing::Instrument;

use crate::{
    audit::{Field, Kind},
    effects::{self, Actor, Effect, Principal},
    egress,
    request::{RequestIo, StopCause, StopCell},
    Kernel,
};

fn unavailable(msg: impl Into<String>) -> RemoteError {
    RemoteError::new(ErrorKind::SandboxUnavailable, msg)
}

/// Whose ids sandboxes run as, and what that mode lacks (for `doctor` and the start record).
fn ids_report(kernel: &Kernel) -> (String, Option<String>, Vec<String>) {
    let own_uid_allowed = kernel.config.sandbox.rootless_own_uid;
    let Ok(spawner) = &kernel.spawner else {
        return ("unknown".into(), None, Vec::new());
    };
    let ids = spawner.ids();
    let cgroup = !spawner.host().has(loong_sandbox::Mechanism::Cgroup);
    let mut lacks = Vec::new();
    let detail = match ids {
        IdMode::Root => {
            lacks.push("loongd holds root's spawning capabilities (the root unit keeps six); use the rootless mode where it suffices".into());
            None
        }
        IdMode::Subordinate { user, uid, gid } => {
            if let CgroupSupport::V2Placement { missing, .. } = &spawner.host().cgroup {
                lacks.push(format!("the delegated cgroup v2 subtree lacks the {} controller{}: each sandbox gets a child cgroup of its own (killed through cgroup.kill), but --memory is RLIMIT_AS per process and --pids is RLIMIT_NPROC (which counts the sandbox's own uid only)", missing.join(" and "), if missing.len() > 1 { "s" } else { "" }));
            } else if cgroup {
                lacks.push("no delegated cgroup v2 subtree: --memory and --pids are rlimits (RLIMIT_NPROC counts the sandbox's own uid only)".into());
            }
            lacks.push(
                "sandboxes cannot share the spawn server's network namespace (each makes its own)"
                    .into(),
            );
            Some(format!(
                "user {user}: uids {}..{}, gids {}..{} (one id per live sandbox)",
                uid.start,
                uid.start + uid.count - 1,
                gid.start,
                gid.start + gid.count - 1
            ))
        }
        IdMode::OwnUid(missing) => {
            if own_uid_allowed {
                lacks.push("DEGRADED ([sandbox] rootless_own_uid = true): sandboxes run as loongd's own uid, so an escape owns loongd's state".into());
            } else {
                lacks.push("every sandbox is refused until the cause is fixed (or [sandbox] rootless_own_uid = true accepts loongd's own uid, degraded)".into());
            }
            if cgroup {
                lacks
                    .push("no delegated cgroup v2 subtree: --memory and --pids are rlimits".into());
            }
            Some(missing.to_string())
        }
    };
    let mode = match (ids, own_uid_allowed) {
        (IdMode::OwnUid(_), true) => "rootless degraded (loongd's own uid)".to_string(),
        (IdMode::OwnUid(_), false) => {
            "rootless without subordinate ids (sandboxes refused)".to_string()
        }
        (m, _) => m.name().to_string(),
    };
    (mode, detail, lacks)
}

/// The `sandbox_ids` field of `daemon.started`: the mode, why it is degraded or refused.
pub(crate) fn ids_record(kernel: &Kernel) -> serde_json::Value {
    let (mode, detail, lacks) = ids_report(kernel);
    serde_json::json!({
        "mode": mode,
        "detail": detail,
        "own_uid_allowed": kernel.config.sandbox.rootless_own_uid,
        "lacks": lacks,
    })
}

/// `loongctl doctor`.
pub(crate) fn doctor(kernel: &Kernel) -> DoctorReport {
    let (ids_mode, ids_detail, ids_lacks) = ids_report(kernel);
    let spawner = match &kernel.spawner {
        Ok(s) => s,
        Err(e) => {
            return DoctorReport {
                mechanisms: Vec::new(),
                tiers: Vec::new(),
                landlock_abi: 0,
                root: nix::unistd::Uid::effective().is_root(),
                error: Some(e.to_string()),
                egress_sandboxes: 0,
                egress_open: 0,
                ids_mode,
                ids_detail,
                ids_lacks,
                ids_own_uid: false,
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
        egress_sandboxes: egress::state().0 as u64,
        egress_open: egress::state().1 as u64,
        ids_mode,
        ids_detail,
        ids_lacks,
        ids_own_uid: matches!(spawner.ids(), IdMode::OwnUid(_)),
    }
}

/// Refuses a run whose `--memory` or `--pids` this host can hold only as rlimits (no cgroup
/// with the memory and pids controllers), unless it runs degraded (`--allow-degraded`,
/// `[sandbox] allow_degraded`): `RLIMIT_AS` bounds each process, not the sandbox, and
/// `RLIMIT_NPROC` counts every process of the uid.
fn limits_enforceable(host: &loong_sandbox::Host, spec: &SandboxSpec) -> Result<(), RemoteError> {
    let asked = spec.limits.memory_bytes.is_some() || spec.limits.pids.is_some();
    if !asked || spec.allow_degraded || host.has(loong_sandbox::Mechanism::Cgroup) {
        return Ok(());
    }
    let lacks = match &host.cgroup {
        CgroupSupport::V2Placement { dir, missing } => format!(
            "the delegated cgroup {} lacks the {} controller{}",
            dir.display(),
            missing.join(" and "),
            if missing.len() > 1 { "s" } else { "" }
        ),
        _ => "loongd has no writable cgroup with the memory and pids controllers".to_string(),
    };
    Err(unavailable(format!(
        "--memory and --pids cannot be enforced as cgroup limits: {lacks}; pass --allow-degraded (or set [sandbox] allow_degraded = true) to run with RLIMIT_AS per process and RLIMIT_NPROC per uid instead, or delegate a cgroup v2 subtree with those controllers"
    )))
}

fn spec_from(
    req: &SandboxRunRequest,
    decided: DecidedGrants,
    allow_degraded: bool,
) -> Result<SandboxSpec, RemoteError> {
    let bad = |m: &dyn std::fmt::Display| RemoteError::new(ErrorKind::BadRequest, m.to_string());
    let tier: Tier = req.tier.parse().map_err(|e| bad(&e))?;
    let net = req
        .allow_net
        .iter()
        .map(|g| g.parse::<NetGrant>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
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
        egress: None,
        gate: None,
    })
}

fn spawn_error(e: SpawnError) -> RemoteError {
    match e {
        SpawnError::Spec(SpecError::Unavailable { .. } | SpecError::NetUnenforced { .. }) => {
            unavailable(e.to_string())
        }
        SpawnError::Spec(s) => RemoteError::new(ErrorKind::BadRequest, s.to_string()),
        SpawnError::Setup { .. }
        | SpawnError::Helper { .. }
        | SpawnError::Stopped
        | SpawnError::OwnUid(_) => unavailable(e.to_string()),
        SpawnError::Cgroup(_) | SpawnError::Seccomp(_) => {
            RemoteError::new(ErrorKind::Internal, e.to_string())
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

/// What a run's decisions left: the grants as decided, and the commits of the allowed
/// decisions' records, queued but perhaps not yet durable. The sandbox is built while they
/// commit; its payload waits on a gate that opens only once every one of them has (an
/// allowed decision is recorded before its effect, the payload running).
#[derive(Debug, Default)]
struct Decided {
    grants: DecidedGrants,
    commits: Vec<crate::audit::Commit>,
}

/// Decides every effect a run asks for; the first denial is the answer. Once all are allowed
/// (some perhaps after waiting for an approval), the token is checked once more, so nothing
/// spawns under a token that died meanwhile. Returns the resolved paths of the file grants,
/// which are what the sandbox binds, and the commits of the allowed decisions' records
/// (queued in order, each before the next decision's, so the trail reads as before).
async fn authorize(
    kernel: &Kernel,
    req: &SandboxRunRequest,
    cred: &UCred,
    io: &RequestIo,
) -> Result<Decided, RemoteError> {
    use loong_profiles::pack::Capability;
    // What is decided (and shown to an approver) is the program and its arguments: a variable
    // that makes it run other code (LD_PRELOAD of a library in a granted directory) or another
    // program by the same name (PATH) would run what nobody decided, so none is passed in, as
    // a shell.exec line setting one is denied.
    if let Some((name, _)) = req
        .env
        .iter()
        .find(|(name, _)| crate::authority::shell::is_exec_variable(name))
    {
        return Err(effects::denied(
            loong_ipc::DenialStage::Request,
            Capability::ProcessExec,
            &req.program,
            &format!("--env {name}: a variable that changes which program runs, or makes it run other code, is not passed into a sandbox"),
        ));
    }
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
    // A network grant is decided as what it is, in its canonical form (a pattern is decided
    // whole); one that does not parse is the request's error, before anything is decided.
    for g in &req.allow_net {
        let grant = g
            .parse::<NetGrant>()
            .map_err(|e| RemoteError::new(ErrorKind::BadRequest, e.to_string()))?;
        checks.push((Capability::NetEgress, grant.to_string(), None));
    }
    let mut token = None;
    let mut decided = DecidedGrants::default();
    let mut commits = Vec::new();
    let argv_all = argv.clone();
    let actor = Actor::operator(
        cred.uid(),
        req.token.as_ref().map(loong_ipc::BearerSecret::expose),
        io,
    );
    for (cap, target, argv) in &checks {
        let effect = Effect {
            cap: *cap,
            target,
            command: argv.map(crate::authority::shell::CommandLine::Argv),
            call: None,
            run: Some(&argv_all),
        };
        let mut allowed = effects::authorize_unrecorded(kernel, &actor, &effect).await?;
        if let Some(event) = allowed.record.take() {
            commits.push(kernel.audit.queue(event).await.map_err(effects::internal)?);
        }
        token = allowed.token;
        let into = match cap {
            Capability::FsRead => &mut decided.read,
            Capability::FsWrite => &mut decided.write,
            _ => continue,
        };
        let file = allowed.file.ok_or_else(|| {
            effects::denied(
                loong_ipc::DenialStage::Request,
                cap,
                target,
                "the path could not be resolved to one the grants cover; give a plain absolute path",
            )
        })?;
        into.push(file.path);
    }
    effects::recheck(
        kernel,
        &actor,
        token.as_deref(),
        Capability::ProcessExec,
        &req.program,
    )
    .await?;
    Ok(Decided {
        grants: decided,
        commits,
    })
}

/// Builds the spec for `req` with the grants as decided and spawns it on the spawner's
/// thread, its payload behind a gate that opens once the decisions' records are committed
/// (a failed commit closes it: nothing runs, and the run is refused with the audit error);
/// returns the child with the tier and timeout it runs under.
async fn spawn(
    kernel: &Kernel,
    req: &SandboxRunRequest,
    decided: Decided,
    cred: &UCred,
    correlation: Arc<str>,
    asked: &Arc<serde_json::Value>,
) -> Result<
    (
        loong_sandbox::Child,
        (Option<Tier>, Option<Duration>),
        Option<(mpsc::Receiver<egress::Ask>, Broker)>,
    ),
    RemoteError,
> {
    let spawner = kernel
        .spawner
        .clone()
        .map_err(|e| unavailable(e.to_string()))?;
    let Decided {
        grants: decided,
        commits,
    } = decided;
    let mut spec = spec_from(req, decided, kernel.config.sandbox.allow_degraded)?;
    limits_enforceable(spawner.host(), &spec)?;
    // Without records to wait for (none, or all committed already), no gate.
    let gate = if commits.is_empty() {
        None
    } else {
        let (r, w) = std::io::pipe()
            .map_err(|e| unavailable(format!("cannot create the sandbox's gate pipe: {e}")))?;
        spec.gate = Some(Arc::new(std::os::fd::OwnedFd::from(r)));
        Some(w)
    };
    // A network grant is served by the egress broker: each connection is decided on this
    // request's effect path (the run's own task answers), then vetted and audited.
    let mut asks = None;
    if !spec.net.is_empty() {
        let (ours, theirs) = loong_sandbox::egress::pair()
            .map_err(|e| unavailable(format!("cannot create the egress socket: {e}")))?;
        let (tx, rx) = mpsc::channel(egress::DECISION_QUEUE);
        let broker = Broker(
            egress::Egress {
                owner: egress::Owner {
                    actor: format!("uid:{}", cred.uid()),
                    correlation: correlation.to_string(),
                    plugin: None,
                },
                grants: spec.net.clone(),
                allow_private: false,
                audit: kernel.audit.clone(),
                decide: Some(tx),
                max_connections: kernel.config.egress.max_connections as usize,
                max_bytes: kernel.config.egress.max_bytes,
                resolver: kernel.resolver.clone(),
                private_setting: None,
            },
            ours,
        );
        spec.egress = Some(Arc::new(theirs));
        asks = Some((rx, broker));
    }
    let limits = (spec.tier, spec.limits.timeout);
    // Planned and handed to the spawn server here, on the runtime, and the helper's report
    // watched here too: no other thread is woken for the run, and the spawner thread is not
    // held while the decisions commit. A request dropped before its sandbox is reported
    // started (its client gone) kills it; its program may have run (its gate was opened):
    // its start and end are recorded (`Started`).
    let orphan = Orphan {
        audit: kernel.audit.clone(),
        runtime: tokio::runtime::Handle::current(),
        actor: Principal::Operator { uid: cred.uid() }.shared_name(),
        correlation: correlation.clone(),
        asked: asked.clone(),
    };
    // Awaited (the server's lock, its answer, its restart): a request dropped here (its
    // client gone) records its refusal (`Unstarted`); nothing ran.
    let mut unstarted = Unstarted(Some(orphan));
    let pending = spawner
        .start_spawn(
            spec,
            [StdioSpec::Pipe, StdioSpec::Pipe, StdioSpec::Pipe],
            Vec::new(),
        )
        .await;
    let orphan = unstarted.0.take();
    let started = Started {
        pending: Some(pending.map_err(spawn_error)?),
        orphan,
    };
    // The sandbox is built by the spawn side while the records commit here.
    let (opened, child) = tokio::join!(open_gate(commits, gate, GATE_DEADLINE), started.exec());
    match (opened, child) {
        (Ok(()), Ok(child)) => Ok((child, limits, asks)),
        (Ok(()), Err(e)) => Err(e),
        (Err(e), child) => {
            // Unreachable with a gate that stayed shut; killed all the same.
            if let Ok(child) = child {
                let _ = child.kill();
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            }
            Err(e)
        }
    }
}

/// A started sandbox on its way to its request: dropped before the helper reported its
/// payload running (the request is gone), it kills the sandbox and records the run
/// ([`Orphan`]).
struct Started {
    pending: Option<loong_sandbox::Pending>,
    orphan: Option<Orphan>,
}

impl Started {
    /// Waits on the runtime for the helper's report (readable once the payload exec'd or a
    /// step failed, or when it is due), then takes the child: nothing is recorded here any
    /// more. A failed setup is waited for on the blocking pool (the helper is killed and
    /// reaped there).
    async fn exec(mut self) -> Result<loong_sandbox::Child, RemoteError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(unavailable("the spawn was already taken"));
        };
        if let Ok(fd) = pending.report().try_clone_to_owned() {
            // As in `helper_gone`: an `OwnedFd` owned by the `AsyncFd` cannot be swapped or
            // closed under the registration.
            #[allow(deprecated)]
            let registered = AsyncFd::with_interest(fd, Interest::READABLE);
            if let Ok(fd) = registered {
                let due = tokio::time::Instant::from_std(pending.due());
                let _ = tokio::time::timeout_at(due, fd.readable()).await;
            }
        }
        // Readable (or due): the line is read without waiting.
        let ran = pending.exec_reported();
        self.orphan = None;
        let Some(pending) = self.pending.take() else {
            return Err(unavailable("the spawn was already taken"));
        };
        if ran {
            return pending.finish().map_err(spawn_error);
        }
        tokio::task::spawn_blocking(move || pending.finish())
            .await
            .map_err(|e| RemoteError::new(ErrorKind::Internal, e.to_string()))?
            .map_err(spawn_error)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let (Some(pending), Some(orphan)) = (self.pending.take(), self.orphan.take()) {
            let child = pending.abandon();
            let _ = child.kill();
            orphan.record(child);
        }
    }
}

/// A run whose decisions allowed it, while its sandbox is asked of the spawn server: dropped
/// there (its client gone), it records the run's refusal (`cause: client_gone`), so the
/// trail never holds an allowed run with neither a refusal nor an end. Nothing ran: the plan
/// is sent only once the server has answered, and a helper it forked without one exits.
struct Unstarted(Option<Orphan>);

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(orphan) = self.0.take() {
            orphan.refuse();
        }
    }
}

/// What records a run whose request was dropped after its gate opened and before it
/// received its child: the program ran, killed as soon as the child was taken.
struct Orphan {
    audit: crate::audit::Audit,
    runtime: tokio::runtime::Handle,
    actor: Arc<str>,
    correlation: Arc<str>,
    /// What the run asked for, as `sandbox.spawned` records it.
    asked: Arc<serde_json::Value>,
}

impl Orphan {
    /// Records the refusal of a run dropped before its sandbox was started (`Unstarted`).
    fn refuse(self) {
        let Orphan {
            audit,
            runtime,
            actor,
            correlation,
            asked,
        } = self;
        let why =
            unavailable("the client went away while the sandbox was being started; nothing ran");
        let detail = serde_json::json!({
            "request": &*asked, "reason": why.message, "class": why.kind.to_string(),
            "cause": StopCause::ClientGone.name(),
        });
        let event = crate::audit::Event {
            kind: Kind::SandboxRefused,
            actor,
            correlation,
            detail: detail.into(),
        };
        runtime.spawn(async move { audit.record_later(event).await });
    }

    /// Records the killed run's start and end (`cause: client_gone`) once it has exited.
    fn record(self, child: loong_sandbox::Child) {
        let Orphan {
            audit,
            runtime,
            actor,
            correlation,
            asked,
        } = self;
        runtime.spawn(async move {
            let pid = child.pid();
            let report = tokio::task::spawn_blocking(move || child.wait()).await;
            let (code, signal) = match report {
                Ok(Ok(r)) => (r.code, r.signal),
                _ => (None, Some(nix::sys::signal::Signal::SIGKILL as i32)),
            };
            let event = |kind, detail| crate::audit::Event {
                kind,
                actor: actor.clone(),
                correlation: correlation.clone(),
                detail,
            };
            let exited = serde_json::json!({
                "tier": asked["tier"], "program": asked["program"],
                "cause": StopCause::ClientGone.name(), "code": code, "signal": signal,
            });
            let spawned = spawned_detail(&asked, pid, None);
            let events = vec![
                event(Kind::SandboxSpawned, spawned),
                event(Kind::SandboxExited, exited.into()),
            ];
            if audit.queue_all(events).await.is_err() {
                tracing::error!("the audit writer has stopped; a dropped run's start and end could not be queued");
            }
        });
    }
}

/// A run's egress broker, not yet serving: its exit task starts it once the run's start
/// records are queued, so that every record of the run's connections (a decision, a
/// refusal the broker counts) follows them in the trail.
struct Broker(egress::Egress, std::os::fd::OwnedFd);

/// How long a run's payload waits at its gate for its decisions' commit: half the spawn's
/// setup timeout, which starts earlier (when the plan is sent). So the gate opens only while
/// the run still waits for the payload's `execve`, never for a payload it gave up on, and a
/// stuck audit trail holds the run's helper for a bounded time; the run is refused, and
/// nothing ran.
const GATE_DEADLINE: Duration =
    Duration::from_secs(loong_sandbox::spawn::SETUP_TIMEOUT.as_secs() / 2);

/// Waits for every commit of a run's decisions, then opens its payload's gate, if they are
/// committed `within` ([`GATE_DEADLINE`] for a run). A failed or late commit returns its
/// error with the gate shut: its end (dropped here) makes the payload exit without running.
async fn open_gate(
    commits: Vec<crate::audit::Commit>,
    gate: Option<std::io::PipeWriter>,
    within: Duration,
) -> Result<(), RemoteError> {
    use std::io::Write;
    let deadline = tokio::time::Instant::now() + within;
    let stuck = || {
        unavailable(format!(
            "the run's decisions were not recorded within {:?} (the audit trail is stuck); nothing ran",
            within
        ))
    };
    // Nothing else to do for the run until its records are on disk: this thread commits
    // them when the audit writer has not taken them yet (`commit_here`).
    let all = async {
        for c in commits {
            c.commit_here().await.map_err(effects::internal)?;
        }
        Ok::<(), RemoteError>(())
    };
    tokio::time::timeout_at(deadline, all)
        .await
        .map_err(|_| stuck())??;
    // A commit made here cannot be cut short by the deadline: one that ended past it leaves
    // the gate shut, as the deadline promises (the run's setup may have given up on it).
    if tokio::time::Instant::now() > deadline {
        return Err(stuck());
    }
    if let Some(mut gate) = gate {
        // One byte into an empty pipe: never blocks. A helper that died first is the
        // spawn's error, reported by the spawner.
        let _ = gate.write_all(&[loong_sandbox::plan::GATE_OPEN]);
    }
    Ok(())
}

/// Answers the egress broker's questions for a run: `net.egress` on each connection's
/// `HOST:PORT`, decided under the run's token (or the operator's pack) and recorded. A
/// decision that needs an approval is allowed only for a destination the run's own grants
/// were approved for at its start (a connection cannot wait for an operator).
async fn answer_egress(
    kernel: &Kernel,
    actor: &Actor<'_>,
    granted: &[String],
    asks: Option<mpsc::Receiver<egress::Ask>>,
) {
    use loong_profiles::pack::Capability;
    let Some(mut asks) = asks else {
        return std::future::pending().await;
    };
    while let Some((target, reply)) = asks.recv().await {
        let answer = match effects::decide(
            kernel,
            actor,
            Capability::NetEgress,
            Some(&target),
            None,
        ) {
            Err(e) => Err(e.message),
            // The decision is on disk before the connection it allows is made: a commit that
            // fails (disk full, a fail-closed lane down) refuses the connection.
            Ok((outcome, event)) => match effects::record(kernel, event).await {
                Err(e) => Err(format!("its decision could not be recorded: {}", e.message)),
                Ok(()) => {
                    let approved_at_start = granted.iter().any(|g| g.eq_ignore_ascii_case(&target));
                    match &outcome.decision {
                    Ok(crate::authority::Decision::Allow) => Ok(()),
                    Ok(crate::authority::Decision::NeedsApproval { .. }) if approved_at_start => Ok(()),
                    Ok(crate::authority::Decision::NeedsApproval { .. }) => Err(
                        "it needs an approval, which a connection cannot wait for; grant it with --allow-net when the run starts".to_string(),
                    ),
                    _ => Err(outcome.reason().unwrap_or_else(|| "not allowed".into())),
                }
                }
            },
        };
        let _ = reply.send(answer);
    }
    std::future::pending().await
}

/// `loongctl sandbox run`.
pub(crate) async fn run(
    kernel: &Kernel,
    req: SandboxRunRequest,
    cred: &UCred,
    mut io: RequestIo,
) -> Result<ControlResponse, RemoteError> {
    // Shared by the run's records, not copied for each.
    let actor = Principal::Operator { uid: cred.uid() }.shared_name();
    let correlation: Arc<str> = io.correlation().into();
    let event = |kind, detail| crate::audit::Event {
        kind,
        actor: actor.clone(),
        correlation: correlation.clone(),
        detail,
    };
    let asked = Arc::new(serde_json::json!({
        "tier": req.tier, "program": req.program, "args": req.args, "read": req.read, "write": req.write,
        "allow_net": req.allow_net, "timeout_ms": req.timeout_ms, "memory_bytes": req.memory_bytes,
        "pids": req.pids, "cpu_secs": req.cpu_secs, "allow_degraded": req.allow_degraded,
        "env": req.env.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
    }));
    // Counted from here, so that loongd's stop waits for a run still deciding or starting
    // too (its records queued before `daemon.stopped`), and refuses to start it.
    let slot = kernel.reapers.enter();
    // The decision pipeline first: every effect the run asks for, under the presented token
    // (or the operator's pack). Nothing spawns unless all are allowed.
    // A run still deciding (an approval may wait long) when loongd's stop ends runs is
    // refused then, not waited for.
    let stopping = || unavailable("loongd is stopping; the run was not started");
    let decided = tokio::select! {
        () = kernel.reapers.stopping() => Err(stopping()),
        d = authorize(kernel, &req, cred, &io) => d,
    };
    let spawned = match decided {
        Err(e) => Err(e),
        Ok(_) if kernel.reapers.is_stopping() => Err(stopping()),
        Ok(decided) => spawn(kernel, &req, decided, cred, correlation.clone(), &asked).await,
    };
    let (mut child, (tier, timeout), asks) = match spawned {
        Ok(c) => c,
        Err(e) => {
            // Every refusal, by the pipeline or by the spawner, records what was asked.
            let detail = serde_json::json!({ "request": &*asked, "reason": e.message, "class": e.kind.to_string() });
            kernel
                .audit
                .record_later(event(Kind::SandboxRefused, detail.into()))
                .await;
            return Err(e);
        }
    };
    let max_output = req
        .max_output_bytes
        .unwrap_or(kernel.config.sandbox.max_output_bytes);
    crate::metrics::sandbox_spawned(tier);
    let program = req.program.clone();
    let mut degraded: Vec<String> = child
        .degraded
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    // Limits no cgroup holds ran as rlimits only because the run is degraded
    // (`limits_enforceable`): recorded as such.
    let cgroup = loong_sandbox::Mechanism::Cgroup;
    if (req.memory_bytes.is_some() || req.pids.is_some())
        && kernel.spawner.as_ref().is_ok_and(|s| !s.host().has(cgroup))
        && !degraded.iter().any(|d| d == cgroup.name())
    {
        degraded.push(cgroup.name().to_string());
    }
    let spawned_detail = spawned_detail(&asked, child.pid(), Some(&degraded));
    let mut held = vec![event(Kind::SandboxSpawned, spawned_detail)];
    if degraded.is_empty() {
        tracing::info!(uid = cred.uid(), tier = ?tier, program, pid = child.pid(), "sandbox started");
    } else {
        tracing::warn!(uid = cred.uid(), tier = ?tier, program, pid = child.pid(), degraded = ?degraded, "sandbox started DEGRADED: the tier is not fully enforced");
        let detail =
            serde_json::json!({ "tier": req.tier, "program": req.program, "missing": degraded });
        held.push(event(Kind::SandboxDegraded, detail.into()));
    }
    // A run with a network grant records its connections (and their decisions) as they are
    // made: its exit task queues its start at once and only then starts its egress broker,
    // so the start precedes every record of them in the trail. Queued by the exit task, not
    // here: a request dropped while the queue is full would lose the start and leave its
    // program running unkilled, with no task to record its end.
    let (asks, broker) = asks.unzip();
    // A killer that cannot be made (no descriptor left) fails the run only after its exit
    // task is started: the program is killed, and its start and end are still recorded.
    let killer = child.killer();
    // A request without an input channel (none but a sandbox run has one) feeds an empty
    // stdin. An input that ended before the run started (loongctl with stdin on
    // `/dev/null` sends its end with the request) closes the program's stdin here, without
    // the pipe's registration with the runtime and its removal.
    let mut input = io.input.take().unwrap_or_else(|| mpsc::channel(1).1);
    let first = input.try_recv().ok();
    let stdin = child
        .stdin
        .take()
        .filter(|_| !matches!(first, Some(StreamChunk::StdinEnd)))
        .and_then(|fd| pipe::Sender::from_owned_fd(fd).ok());
    let stdout = receiver(child.stdout.take());
    let stderr = receiver(child.stderr.take());
    let ended = Arc::new(Mutex::new(Ended::default()));
    // The exit is waited for and recorded by a task of its own, so `sandbox.exited` is
    // written however this request ends: finished, or dropped (client gone, cancelled,
    // deadline), in which case the guard kills the sandbox and the record says why.
    let (relay_done, relay_done_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    // Told by the exit task once every process of the sandbox is gone: the relay supervises
    // the run (its limits, interrupts, loongd's stop, the client) until then, whether or not
    // the program's output has ended (a program may close its stdout and stderr and run on).
    let (exited_tx, mut exited) = oneshot::channel();
    if killer.is_err() {
        lock(&ended).killed.get_or_insert("internal");
        let _ = child.kill();
    }
    let detail = serde_json::json!({ "tier": req.tier, "program": req.program });
    tokio::spawn(
        record_exit(Reaper {
            _slot: slot,
            audit: kernel.audit.clone(),
            event: event(Kind::SandboxExited, detail.into()),
            child,
            relay_done: relay_done_rx,
            exited: exited_tx,
            ended: ended.clone(),
            degraded,
            held,
            broker,
            exit: exit_tx,
        })
        .in_current_span(),
    );
    let killer = match killer {
        Ok(k) => Arc::new(k),
        Err(e) => {
            // `relay_done`, dropped here, lets the exit task record the killed run.
            drop(relay_done);
            return Err(RemoteError::new(
                ErrorKind::Internal,
                format!("cannot hold the sandbox's pidfd: {e}"),
            ));
        }
    };
    let mut guard = KillOnDrop {
        killer: killer.clone(),
        ended: ended.clone(),
        stop: io.stop_cell(),
        relay_done: Some(relay_done),
    };

    // Stdin and interrupts: fed beside the relay (a branch of its `select!`, polled with it,
    // not a task of its own that another thread would be woken for), so a program that does
    // not read its stdin stalls neither its output nor the queue behind it once its stdin
    // is closed.
    let (interrupt_tx, interrupts) = mpsc::channel::<()>(INTERRUPTS_TO_KILL as usize);
    let feeder = async {
        feed(stdin, first, input, interrupt_tx).await;
        std::future::pending::<()>().await
    };

    let egress_actor = Actor::operator(
        cred.uid(),
        req.token.as_ref().map(loong_ipc::BearerSecret::expose),
        &io,
    );
    tokio::select! {
        () = relay(
            Relay {
                io: &io,
                killer: &killer,
                ended: &ended,
                deadline: timeout.map(|t| tokio::time::Instant::now() + t),
                max_output,
            },
            [stdout, stderr],
            interrupts,
            &mut exited,
        ) => {}
        () = answer_egress(kernel, &egress_actor, &req.allow_net, asks) => {}
        () = feeder => {}
        // loongd's stop does not wait for a run: once its connections are closed (as
        // `loongd_stopped`), it is killed, its relay drains, and its end is recorded before
        // the daemon's last record (`Reapers::stop_all`).
        () = async {
            kernel.reapers.stopping().await;
            lock(&ended).killed.get_or_insert(STOPPED);
            let _ = killer.kill();
            std::future::pending::<()>().await
        } => {}
    }
    guard.finish();
    exit_rx.await.map_err(|_| {
        RemoteError::new(
            ErrorKind::Internal,
            "the sandbox's exit was not recorded; see loongd's log",
        )
    })?
}

/// What the relay of one run works with.
struct Relay<'a> {
    io: &'a RequestIo,
    killer: &'a Killer,
    ended: &'a Mutex<Ended>,
    deadline: Option<tokio::time::Instant>,
    max_output: u64,
}

impl Relay<'_> {
    /// Kills the sandbox, noting why unless an earlier reason is noted.
    fn kill(&self, why: &'static str) {
        lock(self.ended).killed.get_or_insert(why);
        let _ = self.killer.kill();
    }
}

/// Relays the program's stdout and stderr until both end and the sandbox has exited
/// (`exited`: its exit task saw every process of it gone; a program may close its output and
/// run on), acting meanwhile on interrupts, the wall-clock limit, the output limit and a
/// client that is gone; after a kill the pipes are drained to their end.
async fn relay(
    r: Relay<'_>,
    [mut stdout, mut stderr]: [Option<pipe::Receiver>; 2],
    mut interrupts: mpsc::Receiver<()>,
    exited: &mut oneshot::Receiver<()>,
) {
    let (mut relayed, mut interrupted) = (0u64, 0u32);
    let mut gone = false;
    while stdout.is_some() || stderr.is_some() || !gone {
        let killed = lock(r.ended).killed.is_some();
        let (read, which_out) = tokio::select! {
            x = relay_read(&mut stdout, r.io, killed), if stdout.is_some() => (x, true),
            x = relay_read(&mut stderr, r.io, killed), if stderr.is_some() => (x, false),
            // Dropped unsent, the exit task ended without seeing the end (it panicked or was
            // aborted): the sandbox is killed, not left running unsupervised.
            told = &mut *exited, if !gone => {
                if told.is_err() {
                    r.kill("internal");
                }
                gone = true;
                continue;
            }
            Some(()) = interrupts.recv(), if !killed => {
                interrupted += 1;
                lock(r.ended).interrupts = interrupted;
                if interrupted >= INTERRUPTS_TO_KILL {
                    r.kill("interrupted");
                } else {
                    let _ = r.killer.interrupt();
                }
                continue;
            }
            _ = async { match r.deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } }, if !killed => {
                r.kill("timeout");
                continue;
            }
        };
        let (bytes, share) = match read {
            Ok(Relayed::Bytes(bytes, share)) => (bytes, share),
            Ok(Relayed::Drained) => continue,
            Ok(Relayed::End) | Err(_) => {
                if which_out {
                    stdout = None;
                } else {
                    stderr = None;
                }
                continue;
            }
        };
        relayed += bytes.len() as u64;
        lock(r.ended).relayed = relayed;
        if relayed > r.max_output {
            r.kill("output_limit");
            continue;
        }
        let chunk = if which_out {
            StreamChunk::Stdout(bytes)
        } else {
            StreamChunk::Stderr(bytes)
        };
        if !r.io.emit_within(chunk, share).await {
            r.kill(StopCause::ClientGone.name());
        }
    }
}

/// Bytes read from a sandbox's stdout or stderr at a time, and so the largest output chunk
/// loongd queues; with the connection's output budget (`OUTPUT_BUDGET_BYTES`) it bounds what
/// a client that reads slowly costs.
pub(crate) const RELAY_CHUNK_BYTES: usize = 8 * 1024;
const _: () = assert!(RELAY_CHUNK_BYTES <= MAX_CHUNK_BYTES);

/// How a run is ending, as the relay saw it; read when the exit is recorded.
#[derive(Debug, Default)]
struct Ended {
    /// Why loongd killed the sandbox, first reason only (`None`: it ended by itself).
    killed: Option<&'static str>,
    relayed: u64,
    interrupts: u32,
}

fn lock(m: &Mutex<Ended>) -> std::sync::MutexGuard<'_, Ended> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kills the sandbox if the request is dropped (cancelled, deadline, client gone) before its
/// relay finished, noting why for the exit record.
struct KillOnDrop {
    killer: Arc<Killer>,
    ended: Arc<Mutex<Ended>>,
    stop: StopCell,
    relay_done: Option<oneshot::Sender<()>>,
}

impl KillOnDrop {
    /// The relay finished: the exit may be recorded; nothing is killed.
    fn finish(&mut self) {
        if let Some(done) = self.relay_done.take() {
            let _ = done.send(());
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.relay_done.take().is_some() {
            let why = self.stop.get().map_or("dropped", |c| c.name());
            lock(&self.ended).killed.get_or_insert(why);
            let _ = self.killer.kill();
        }
    }
}

/// Resolves once the sandbox has ended and then its relay has (or was dropped): the relay
/// supervises the run until told (`exited`) that the sandbox has ended. The end is the
/// helper's `exit` line ([`loong_sandbox::Child::try_exit_line`]: every process of the
/// sandbox gone, its pid namespace's init reaped; the helper, which tears the run's
/// namespaces down as it exits, is not waited for), which is returned; or, where that line
/// does not end a run ([`loong_sandbox::Child::ends_at_exit_line`]) or the report ended
/// without it (a helper killed), the helper gone, its pidfd readable: the caller then reads
/// the report. A report that cannot be read kills the sandbox and waits for its helper the
/// same way. Both are awaited on the runtime, not on a blocking thread per sandbox.
async fn run_ended(
    relay_done: oneshot::Receiver<()>,
    exited: oneshot::Sender<()>,
    child: &mut loong_sandbox::Child,
) -> Option<std::io::Result<loong_sandbox::ExitReport>> {
    let reported = loop {
        match child.try_exit_line() {
            Ok(Some(report)) => break Some(Ok(report)),
            Ok(None) if !child.report_closed() && child.ends_at_exit_line() => {
                readable(child.report_fd()).await;
            }
            other => {
                if let Err(e) = &other {
                    tracing::error!(error = %e, "a sandbox's report could not be read; killing it");
                    let _ = child.kill();
                }
                readable(child.pidfd()).await;
                break None;
            }
        }
    };
    let _ = exited.send(());
    let _ = relay_done.await;
    reported
}

/// Resolves once `fd` is readable (or has hung up). A descriptor readable already is seen
/// without registering it with the runtime's reactor: no copy of it, no registration and
/// removal, no round of the reactor. One the reactor cannot watch (no descriptor left to
/// copy it, or the reactor refuses it) is polled every [`UNWATCHED_POLL`], its registration
/// tried again each time: never a return before it is readable, never a busy loop.
async fn readable(fd: std::os::fd::BorrowedFd<'_>) {
    let ready = || {
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(0)
        )
    };
    while !ready() {
        // The safe constructor is deprecated for descriptors a type could swap or close
        // under the registration; an `OwnedFd` owned by the `AsyncFd` can do neither, and
        // the replacement is `unsafe`, which this crate does not allow.
        #[allow(deprecated)]
        let registered = fd
            .try_clone_to_owned()
            .and_then(|fd| AsyncFd::with_interest(fd, Interest::READABLE));
        match registered {
            Ok(fd) => {
                let _ = fd.readable().await;
                return;
            }
            Err(_) => tokio::time::sleep(UNWATCHED_POLL).await,
        }
    }
}

/// How often a descriptor the runtime cannot watch ([`readable`]) is polled.
const UNWATCHED_POLL: Duration = Duration::from_millis(5);

/// `sandbox.exited`'s cause for a run killed by loongd's stop.
const STOPPED: &str = "loongd_stopped";

/// How long loongd's stop waits for the runs it kills (and those it refuses while they are
/// still deciding) to record their ends.
pub(crate) const REAP_GRACE: Duration = Duration::from_secs(5);

/// The sandbox runs still to record their end: each counted from its request's start until
/// its exit task's records are committed (or have failed), so that loongd's stop ends them
/// and waits for their records instead of dropping them with its runtime.
#[derive(Debug)]
pub(crate) struct Reapers(
    Arc<tokio::sync::watch::Sender<usize>>,
    tokio::sync::watch::Sender<bool>,
);

impl Default for Reapers {
    fn default() -> Reapers {
        Reapers(
            Arc::new(tokio::sync::watch::Sender::new(0)),
            tokio::sync::watch::Sender::new(false),
        )
    }
}

impl Reapers {
    /// Whether loongd's stop has begun ending runs: a run decided after that is not started.
    fn is_stopping(&self) -> bool {
        *self.1.borrow()
    }

    /// Resolves once loongd's stop ends the runs still going ([`Reapers::stop_all`]).
    async fn stopping(&self) {
        let mut rx = self.1.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Kills every run still going (their requests outlive their connections at loongd's
    /// stop) and waits up to `limit` for their ends to be recorded; `false` if some are not.
    pub(crate) async fn stop_all(&self, limit: Duration) -> bool {
        self.1.send_replace(true);
        self.drained(limit).await
    }

    /// Counts one more run, until the returned slot is dropped.
    fn enter(&self) -> ReaperSlot {
        self.0.send_modify(|n| *n += 1);
        ReaperSlot(self.0.clone())
    }

    /// Waits up to `limit` for every run's records; `false` if some are still to come.
    async fn drained(&self, limit: Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// One run counted in [`Reapers`].
struct ReaperSlot(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for ReaperSlot {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Everything the exit record needs, owned by the task that writes it.
struct Reaper {
    /// Held until the run's records are written: loongd's stop waits for it.
    _slot: ReaperSlot,
    audit: crate::audit::Audit,
    event: crate::audit::Event,
    child: loong_sandbox::Child,
    relay_done: oneshot::Receiver<()>,
    /// Sent once every process of the sandbox is gone (the relay supervises until then).
    exited: oneshot::Sender<()>,
    ended: Arc<Mutex<Ended>>,
    degraded: Vec<String>,
    /// The run's start records (`sandbox.spawned`, `sandbox.degraded`) not yet queued: they
    /// go with `sandbox.exited` when the run ends within `LINGER`, else when it passes.
    held: Vec<crate::audit::Event>,
    /// A run with a network grant: its egress broker, started once the run's start is
    /// queued (its connections wait in the egress socket until then).
    broker: Option<Broker>,
    exit: oneshot::Sender<Result<ControlResponse, RemoteError>>,
}

/// Waits for the relay to end (or be dropped) and the sandbox to exit, records
/// `sandbox.exited` with the cause, then hands the exit to the request if it still waits:
/// the client hears of the exit only once it is in the audit trail.
async fn record_exit(mut r: Reaper) {
    if let Some(Broker(egress, ours)) = r.broker.take() {
        let held = std::mem::take(&mut r.held);
        if r.audit.queue_all(held).await.is_err() {
            tracing::error!("the audit writer has stopped; a sandbox's start could not be queued");
        }
        egress::serve(egress, ours);
    }
    let reported = {
        let ended = run_ended(r.relay_done, r.exited, &mut r.child);
        tokio::pin!(ended);
        // The run's start records wait for its end, to share its commit (one writer wake-up and
        // one `fsync` for the run's end instead of two), for at most `LINGER`: a run that lasts
        // longer has them committed then, as `record_later` would have.
        if !r.held.is_empty() {
            tokio::select! {
                reported = &mut ended => reported,
                () = tokio::time::sleep(crate::audit::LINGER) => {
                    let held = std::mem::take(&mut r.held);
                    // Acknowledged to nobody, but not "later": the writer commits it at once
                    // instead of lingering once more.
                    if r.audit.queue_all(held).await.is_err() {
                        tracing::error!("the audit writer has stopped; a sandbox's start could not be queued");
                    }
                    (&mut ended).await
                }
            }
        } else {
            (&mut ended).await
        }
    };
    let mut child = r.child;
    // Once the helper is gone its report is read here, on the runtime, without a hand-off
    // to the blocking pool; a cgroup's removal (which may pause while the kernel empties
    // it) and a pidfd that could not be watched still go there.
    let waited = match reported.or_else(|| child.try_wait()) {
        Some(report) if !child.holds_cgroup() => Ok(report),
        Some(report) => {
            tokio::task::spawn_blocking(move || {
                drop(child);
                report
            })
            .await
        }
        None => tokio::task::spawn_blocking(move || child.wait()).await,
    };
    let report = match waited {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "waiting for a sandbox failed");
            let _ = r.exit.send(Err(RemoteError::new(
                ErrorKind::Internal,
                format!("waiting for the sandbox: {e}"),
            )));
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "the task waiting for a sandbox failed");
            let _ = r
                .exit
                .send(Err(RemoteError::new(ErrorKind::Internal, e.to_string())));
            return;
        }
    };
    let (killed, relayed, interrupts) = {
        let e = lock(&r.ended);
        (e.killed, e.relayed, e.interrupts)
    };
    let cause = killed.unwrap_or("exited");
    tracing::info!(code = ?report.code, signal = ?report.signal, cause, interrupts, "sandbox exited");
    let exit = SandboxExit {
        code: report.code,
        signal: report.signal,
        shell_code: report.shell_code(),
        timed_out: killed == Some("timeout"),
        output_limit_exceeded: killed == Some("output_limit"),
        oom_killed: report.oom_killed,
        user_us: report.user_us,
        system_us: report.system_us,
        max_rss_kib: report.max_rss_kib,
        degraded: r.degraded,
    };
    let mut event = r.event;
    if let Some(detail) = event.detail.object_mut() {
        let more = serde_json::json!({
            "code": exit.code, "signal": exit.signal, "cause": cause, "interrupts": interrupts,
            "timed_out": exit.timed_out, "output_limit_exceeded": exit.output_limit_exceeded,
            "oom_killed": exit.oom_killed, "user_us": exit.user_us, "system_us": exit.system_us,
            "max_rss_kib": exit.max_rss_kib, "relayed_bytes": relayed,
        });
        if let serde_json::Value::Object(more) = more {
            detail.extend(more);
        }
    }
    // The start records still held, then the exit: one group, committed together.
    let mut events = std::mem::take(&mut r.held);
    events.push(event);
    let recorded = match r.audit.queue_all(events).await {
        Ok(commit) => commit.commit_here().await,
        Err(e) => Err(e),
    };
    let answer = match recorded {
        Ok(_) => Ok(ControlResponse::SandboxExited(exit)),
        Err(e) => {
            tracing::error!(error = %e, "a sandbox's exit could not be recorded");
            Err(RemoteError::new(
                ErrorKind::Internal,
                format!("the sandbox exited but the audit trail failed: {e}"),
            ))
        }
    };
    let _ = r.exit.send(answer);
}

/// Feeds a program's stdin from the request's input (`first`, taken from it before the
/// run started, then the rest) and passes interrupts on. Input that arrives after the
/// program's stdin closed is read and dropped, so it never stalls the connection.
async fn feed(
    mut stdin: Option<pipe::Sender>,
    mut first: Option<StreamChunk>,
    mut input: mpsc::Receiver<StreamChunk>,
    interrupts: mpsc::Sender<()>,
) {
    loop {
        let chunk = match first.take() {
            Some(chunk) => chunk,
            None => match input.recv().await {
                Some(chunk) => chunk,
                None => break,
            },
        };
        match chunk {
            StreamChunk::Stdin(bytes) => {
                if let Some(pipe) = &mut stdin {
                    if pipe.write_all(&bytes).await.is_err() {
                        stdin = None;
                    }
                }
            }
            // The client's stdin ended: so does the program's.
            StreamChunk::StdinEnd => stdin = None,
            StreamChunk::Interrupt => {
                let _ = interrupts.try_send(());
            }
            StreamChunk::Stdout(_) | StreamChunk::Stderr(_) | StreamChunk::ApprovalPending(_) => {}
        }
    }
}

/// Reads up to [`RELAY_CHUNK_BYTES`] from an open pipe once the connection's output budget
/// has room for them, so a client that does not read stops the reading (and the program, on
/// its full pipe) before anything is allocated. After a kill the pipe is drained into a
/// scratch buffer instead (`Ok(None)` for bytes read), so its end is seen whatever the client
/// does. Never completes for a closed pipe (its select branch is off).
async fn relay_read(
    pipe: &mut Option<pipe::Receiver>,
    io: &RequestIo,
    killed: bool,
) -> std::io::Result<Relayed> {
    let Some(p) = pipe else {
        return std::future::pending().await;
    };
    if killed {
        let mut scratch = [0u8; DRAIN_BYTES];
        return match p.read(&mut scratch).await? {
            0 => Ok(Relayed::End),
            _ => Ok(Relayed::Drained),
        };
    }
    loop {
        // Readable first, then the budget: a share is never held while waiting for output
        // (stderr waiting for a share while stdout's sits idle would starve both).
        p.readable().await?;
        let Some(share) = io.reserve(RELAY_CHUNK_BYTES).await else {
            // The connection is gone: the relay ends as if the pipe had.
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        let mut bytes = vec![0u8; RELAY_CHUNK_BYTES];
        match p.try_read(&mut bytes) {
            Ok(0) => return Ok(Relayed::End),
            Ok(n) => {
                bytes.truncate(n);
                return Ok(Relayed::Bytes(bytes, share));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// What one [`relay_read`] got.
enum Relayed {
    /// Output to relay, with its share of the connection's output budget.
    Bytes(Vec<u8>, OwnedSemaphorePermit),
    /// Output of a killed sandbox, dropped.
    Drained,
    /// The pipe's end.
    End,
}

/// The scratch buffer a killed sandbox's output is drained through.
const DRAIN_BYTES: usize = 4096;

/// A `sandbox.spawned` record's detail: what was asked, the pid, and what the run lacks of
/// its tier (`None`: not known, for a run whose request was dropped while it started),
/// written once as its stored text, the request's JSON borrowed rather than copied.
fn spawned_detail(
    asked: &serde_json::Value,
    pid: u32,
    degraded: Option<&[String]>,
) -> crate::audit::Detail {
    let fields = [
        ("request", Field::Value(asked)),
        ("pid", Field::U64(u64::from(pid))),
        ("degraded", Field::Strs(degraded)),
    ];
    let known = if degraded.is_some() { 3 } else { 2 };
    crate::audit::detail::object(&fields[..known], None)
}

#[cfg(test)]
mod tests;
