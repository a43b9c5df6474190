//! The effect path: every effect loongd carries out, whoever asks, goes through here.
//!
//! ```text
//! Actor + Effect ──decide──▶ Outcome + policy.decision record
//!                  │ denied: recorded, answered Denied { stage, reason }
//!                  │ needs approval: recorded, then approval::wait (a window, an approver,
//!                  │                 the approval's deadline, or the request's)
//!                  ▼ allowed
//!               record  (the decision and `tool.invoked` queued as one commit)
//!                  ▼
//!              recheck  (a token that waited for an approval must still hold)
//!                  ▼
//!             dispatch  (a worker pool: `invoke::call`; the spawner: `sandbox::run`)
//!                  ▼
//!       record_outcome  (`tool.completed` | `tool.failed` with its class; `sandbox.exited`)
//! ```
//!
//! An [`Actor`] says who asks (an operator connection by its uid, presenting a token or
//! acting with the operator's pack) and which call chain the effect belongs to; an [`Effect`]
//! says what is asked (capability, target, command line, a tool's input). Failures are
//! [`RemoteError`]s with a typed [`ErrorDetail`]: the stage that denied, the approval that
//! is pending or expired, the class of a worker failure. `control/*_api.rs` only translate
//! wire requests into these calls and their results into replies.

pub(crate) mod approval;
pub(crate) mod browser;
pub(crate) mod chain;
pub(crate) mod invoke;

use loong_ipc::{Denial, DenialStage, ErrorDetail, ErrorKind, RemoteError};
use loong_profiles::pack::Capability;

use std::sync::Arc;

use crate::{
    audit::{detail, Event, Field, Kind},
    authority::{
        approvals::EffectDetail,
        decide::{Deny, FileScope},
        shell::CommandLine,
        Bearer, Decision, Outcome,
    },
    request::RequestIo,
    Kernel,
};

pub(crate) fn internal(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(ErrorKind::Internal, e.to_string())
}

/// Who asks for an effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Principal {
    /// An operator connection, by its peer's uid (SO_PEERCRED).
    Operator { uid: u32 },
    /// A worker making a kernel call for the call it serves, by its number.
    Worker { worker: u64 },
    /// A person in a channel's operator chat, pressing an approval's button: the platform's
    /// user id, as the channel's worker (by its number) handed it over.
    ChatOperator { worker: u64, user: i64 },
}

impl Principal {
    /// How audit records name it.
    pub(crate) fn name(self) -> String {
        match self {
            Principal::Operator { uid } => format!("uid:{uid}"),
            Principal::Worker { worker } => format!("worker:{worker}"),
            Principal::ChatOperator { worker, user } => {
                format!("chat-user:{user} worker:{worker}")
            }
        }
    }

    /// [`Principal::name`], shared: each thread keeps the last principal it named, so the
    /// records of one operator's calls share one name instead of formatting it per record.
    pub(crate) fn shared_name(self) -> Arc<str> {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(Principal, Arc<str>)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((p, name)) if *p == self => name.clone(),
                _ => {
                    let name: Arc<str> = Arc::from(self.name());
                    *last = Some((self, name.clone()));
                    name
                }
            }
        })
    }
}

/// The call chain an effect belongs to. An operator's request is the root of its own chain
/// (depth 0); a worker's kernel call is a link of the chain it serves, and is decided under
/// that chain's authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// The root call's correlation id.
    pub root: Arc<str>,
    /// The call that asked for this one (`None` at the root).
    pub parent: Option<String>,
    /// How many calls lie between this one and the root (0 at the root).
    pub depth: u32,
    /// This call's own id, its records' correlation: the root's correlation at the root,
    /// `PARENT.N` for the parent's `N`th kernel call.
    pub call: Arc<str>,
    /// The manifest capabilities every plugin above this call declares (`None`: no plugin
    /// asked for it): a nested call of a built-in has its effect only within them, so that no
    /// plugin gets through another plugin or a built-in what its own manifest does not say.
    pub declared: Option<std::sync::Arc<Vec<String>>>,
    /// For a nested call: the plugin (or built-in) whose worker asked for it.
    pub caller: Option<String>,
}

impl Chain {
    /// The chain a request starts: itself, at depth 0.
    pub(crate) fn root(correlation: impl Into<Arc<str>>) -> Chain {
        let correlation = correlation.into();
        Chain {
            root: correlation.clone(),
            parent: None,
            depth: 0,
            call: correlation,
            declared: None,
            caller: None,
        }
    }

    /// The `n`th kernel call made by this call's worker.
    pub(crate) fn child(&self, n: u64) -> Chain {
        Chain {
            root: self.root.clone(),
            parent: Some(self.call.to_string()),
            depth: self.depth.saturating_add(1),
            call: Arc::from(format!("{}.{n}", self.call)),
            declared: self.declared.clone(),
            caller: None,
        }
    }

    /// What a record says of the chain beyond its correlation: nothing at the root.
    fn detail(&self) -> Option<serde_json::Value> {
        (self.depth > 0).then(
            || serde_json::json!({ "root": &*self.root, "parent": self.parent, "depth": self.depth }),
        )
    }
}

/// Who asks, under what authority, for which chain.
#[derive(Debug, Clone)]
pub(crate) struct Actor<'a> {
    pub who: Principal,
    /// The authority it acts under: a presented bearer secret, the operator's own pack, or
    /// (a kernel call) the chain root's token by its public id.
    pub bearer: Bearer<'a>,
    pub chain: Chain,
    /// The request's handle, for notes to the asker while it waits (an approval's note) and
    /// for the approval it waits for.
    pub io: Option<&'a RequestIo>,
}

impl<'a> Actor<'a> {
    /// An operator connection's request, under `token` (`None`: the operator's pack).
    pub(crate) fn operator(uid: u32, token: Option<&'a str>, io: &'a RequestIo) -> Actor<'a> {
        Actor {
            who: Principal::Operator { uid },
            bearer: token.map_or(Bearer::Operator, Bearer::Secret),
            chain: Chain::root(io.correlation()),
            io: Some(io),
        }
    }

    /// The correlation id of this actor's records (shared, not copied).
    pub(crate) fn correlation(&self) -> Arc<str> {
        self.chain.call.clone()
    }

    /// A record of `kind` by this actor, in its chain.
    pub(crate) fn event(&self, kind: Kind, mut detail: serde_json::Value) -> Event {
        if let (Some(chain), Some(map)) = (self.chain.detail(), detail.as_object_mut()) {
            map.insert("chain".into(), chain);
        }
        Event::new(kind, self.who.shared_name(), self.correlation(), detail)
    }

    /// A record of `kind` by this actor, in its chain, its detail the object of `fields`
    /// written once as its stored text: the bytes [`Actor::event`] stores for the same fields
    /// as a JSON object.
    pub(crate) fn record(&self, kind: Kind, fields: &[(&str, Field<'_>)]) -> Event {
        let chain = [
            ("root", Field::Str(&self.chain.root)),
            ("parent", Field::OptStr(self.chain.parent.as_deref())),
            ("depth", Field::U64(u64::from(self.chain.depth))),
        ];
        let extra = (self.chain.depth > 0).then_some(("chain", Field::Object(&chain)));
        Event::new(
            kind,
            self.who.shared_name(),
            self.correlation(),
            detail::object(fields, extra),
        )
    }
}

/// One effect as the decision pipeline and an approver see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effect<'a> {
    pub cap: Capability,
    /// The path, `HOST:PORT`, program or tool it is on.
    pub target: &'a str,
    /// For `process.exec`: the whole command line, or the script of `shell.exec`.
    pub command: Option<CommandLine<'a>>,
    /// For a tool call: the tool and its input (an approver sees its digest and a preview).
    pub call: Option<(&'a str, &'a str)>,
    /// For a path or destination a sandbox run asks for: the run's command line. Shown to
    /// an approver (what will read, write or connect), never decided on.
    pub run: Option<&'a [String]>,
}

impl Effect<'_> {
    /// What an approver is shown beside the capability and target.
    pub(crate) fn detail(&self) -> EffectDetail {
        let mut d = match self.call {
            Some((tool, input)) => EffectDetail::tool_call(tool, input),
            None => EffectDetail::default(),
        };
        d.argv = match self.command {
            Some(CommandLine::Argv(a)) => a.to_vec(),
            // The shell the tool starts, shown with the whole script it runs.
            Some(CommandLine::Script(s)) => vec!["/bin/sh".into(), "-c".into(), s.into()],
            None => self.run.map(<[String]>::to_vec).unwrap_or_default(),
        };
        d
    }
}

/// An effect that may go ahead.
#[derive(Debug)]
pub(crate) struct Authorized {
    /// The allowed decision's record, not yet queued (`None`: already committed).
    pub record: Option<Event>,
    /// The public id of the token it was decided under, to re-check at dispatch.
    pub token: Option<String>,
    /// For a file effect: the resolved target and its scope, which the effect must use.
    pub file: Option<FileScope>,
}

/// A denial of `cap` on `target` at `stage`, typed, with `reason` for people.
pub(crate) fn denied(
    stage: DenialStage,
    cap: impl std::fmt::Display,
    target: &str,
    reason: &str,
) -> RemoteError {
    let cap = cap.to_string();
    RemoteError::new(
        ErrorKind::Denied,
        format!("{cap} on {target} denied: {reason}"),
    )
    .with_detail(ErrorDetail::Denied(Denial::new(stage, cap, target, reason)))
}

/// The stage of the pipeline that denied `o` (`None`: it was not denied).
pub(crate) fn denial_stage(o: &Outcome) -> Option<DenialStage> {
    match &o.decision {
        Err(_) => Some(DenialStage::Token),
        Ok(Decision::Deny(Deny::NotInToken)) => Some(DenialStage::TokenGrants),
        Ok(Decision::Deny(Deny::NotInPack)) => Some(DenialStage::PackGrants),
        Ok(Decision::Deny(Deny::Denylisted(_))) => Some(DenialStage::Denylist),
        Ok(Decision::Deny(Deny::Extension { .. })) => Some(DenialStage::Extension),
        Ok(Decision::Allow | Decision::NeedsApproval { .. }) => None,
    }
}

/// The audit detail of a decision: the token by its public id, never the presented secret.
pub(crate) fn decision_detail(
    o: &Outcome,
    cap: Capability,
    target: Option<&str>,
    command: Option<CommandLine<'_>>,
) -> serde_json::Value {
    let (argv, script) = match command {
        Some(CommandLine::Argv(a)) => (Some(a), None),
        Some(CommandLine::Script(s)) => (None, Some(s)),
        None => (None, None),
    };
    serde_json::json!({
        "capability": cap.as_str(), "target": target, "argv": argv, "script": script,
        "token": o.token, "pack": o.pack, "agent": o.agent, "allowed": o.allowed(),
        "reason": o.reason(),
    })
}

/// The `policy.decision` record of `o` by `actor`: [`decision_detail`]'s fields, written
/// once as the record's stored text (the same bytes).
pub(crate) fn decision_record(
    actor: &Actor<'_>,
    o: &Outcome,
    cap: Capability,
    target: Option<&str>,
    command: Option<CommandLine<'_>>,
) -> Event {
    let (argv, script) = match command {
        Some(CommandLine::Argv(a)) => (Some(a), None),
        Some(CommandLine::Script(s)) => (None, Some(s)),
        None => (None, None),
    };
    let reason = o.reason();
    actor.record(
        Kind::PolicyDecision,
        &[
            ("capability", Field::Str(cap.as_str())),
            ("target", Field::OptStr(target)),
            ("argv", Field::Strs(argv)),
            ("script", Field::OptStr(script)),
            ("token", Field::OptStr(o.token.as_deref())),
            ("pack", Field::Str(&o.pack)),
            ("agent", Field::OptStr(o.agent.as_deref())),
            ("allowed", Field::Bool(o.allowed())),
            ("reason", Field::OptStr(reason.as_deref())),
        ],
    )
}

/// Decides `cap` on `target` for `actor`; returns the outcome and its `policy.decision`
/// record, not yet queued.
pub(crate) fn decide(
    kernel: &Kernel,
    actor: &Actor<'_>,
    cap: Capability,
    target: Option<&str>,
    command: Option<CommandLine<'_>>,
) -> Result<(Outcome, Event), RemoteError> {
    let outcome = kernel
        .authority
        .decide_as(actor.bearer, cap, target, command)
        .map_err(internal)?;
    crate::metrics::decided(
        cap,
        outcome.allowed(),
        matches!(outcome.decision, Ok(Decision::NeedsApproval { .. })),
    );
    let event = decision_record(actor, &outcome, cap, target, command);
    Ok((outcome, event))
}

/// Records `event` and waits until it is committed.
pub(crate) async fn record(kernel: &Kernel, event: Event) -> Result<(), RemoteError> {
    kernel
        .audit
        .record(event)
        .await
        .map(|_| ())
        .map_err(internal)
}

/// Decides one effect and waits for an approval when policy asks for one; the allowed
/// decision is committed before this returns. See [`authorize_unrecorded`].
pub(crate) async fn authorize(
    kernel: &Kernel,
    actor: &Actor<'_>,
    effect: &Effect<'_>,
) -> Result<Authorized, RemoteError> {
    let mut done = authorize_unrecorded(kernel, actor, effect).await?;
    if let Some(event) = done.record.take() {
        record(kernel, event).await?;
    }
    Ok(done)
}

/// Decides one effect and waits for an approval when policy asks for one: `Ok` only when it
/// may go ahead, with the public id of the token it was decided under and, for a file effect,
/// the resolved path and scope it was decided on; a denial is [`ErrorKind::Denied`] with its
/// stage, an unanswered approval [`ErrorKind::ApprovalPending`]. An allowed decision's record
/// is returned to the caller, who queues it with its own records (one commit) and awaits that
/// commit before it answers (`None`: already committed). A denial, or a decision that needs
/// an approval, is committed here first.
pub(crate) async fn authorize_unrecorded(
    kernel: &Kernel,
    actor: &Actor<'_>,
    effect: &Effect<'_>,
) -> Result<Authorized, RemoteError> {
    let (cap, target) = (effect.cap, effect.target);
    let (o, event) = decide(kernel, actor, cap, Some(target), effect.command)?;
    if o.allowed() {
        return Ok(Authorized {
            record: Some(event),
            token: o.token,
            file: o.file,
        });
    }
    record(kernel, event).await?;
    if matches!(o.decision, Ok(Decision::NeedsApproval { .. })) {
        // On the heap: a rare wait's large future would otherwise size every decision's
        // (and every call's) future, copied at each move.
        let waited = Box::pin(approval::wait(kernel, actor, &o, effect)).await;
        crate::metrics::approval_waited(cap, waited.is_ok());
        waited?;
        return Ok(Authorized {
            record: None,
            token: o.token,
            file: o.file,
        });
    }
    let stage = denial_stage(&o).unwrap_or(DenialStage::Request);
    Err(denied(stage, cap, target, &o.reason().unwrap_or_default()))
}

/// Checks the token an effect was decided under once more, right before the effect runs (an
/// approval may have kept it waiting while the token was revoked, expired or outlived by its
/// pack's generation). A dead token is a denial at the `dispatch` stage, audited as a
/// decision with its reason.
pub(crate) async fn recheck(
    kernel: &Kernel,
    actor: &Actor<'_>,
    token: Option<&str>,
    cap: Capability,
    target: &str,
) -> Result<(), RemoteError> {
    let Some(id) = token else {
        return Ok(());
    };
    let Err(denial) = kernel.authority.tokens.check_id(id).map_err(internal)? else {
        return Ok(());
    };
    let reason = format!("{denial} (checked again before it ran)");
    let detail = serde_json::json!({
        "capability": cap.as_str(), "target": target, "token": id, "allowed": false,
        "reason": reason, "stage": "dispatch",
    });
    crate::metrics::denied_at_dispatch(cap);
    record(kernel, actor.event(Kind::PolicyDecision, detail)).await?;
    Err(denied(DenialStage::Dispatch, cap, target, &reason))
}

/// An operator (uid 1000) acting on `chain` with no relay, for the effects' tests.
#[cfg(test)]
pub(crate) fn operator(chain: Chain) -> Actor<'static> {
    Actor {
        who: Principal::Operator { uid: 1000 },
        bearer: Bearer::Operator,
        chain,
        io: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::decide::Deny;

    fn actor(chain: Chain) -> Actor<'static> {
        operator(chain)
    }

    /// A `policy.decision` written once as its text stores the bytes its JSON value stored
    /// (`decision_detail` through `Actor::event`): every outcome, with and without a token,
    /// agent, command line or script, at the root and nested, hostile text included.
    #[test]
    fn a_decision_written_once_keeps_its_bytes() {
        let root = actor(Chain::root("conn-1/req-2"));
        let nested = actor(root.chain.child(3));
        let hostile = "rm -rf \"/\" \\ \u{0} \u{2028} é";
        let argv = vec!["/bin/sh".to_string(), "-c".into(), hostile.into()];
        let padded = format!("{hostile}{}", " ".repeat(20_000));
        let outcome = |decision, token: Option<&str>, agent: Option<&str>| Outcome {
            decision,
            pack: "ops".into(),
            agent: agent.map(String::from),
            token: token.map(String::from),
            file: None,
        };
        let outcomes = [
            outcome(Ok(Decision::Allow), None, None),
            outcome(Ok(Decision::Allow), Some("tok-1"), Some("bot")),
            outcome(Ok(Decision::Deny(Deny::NotInToken)), Some("tok-1"), None),
            outcome(
                Ok(Decision::Deny(Deny::Denylisted(hostile.into()))),
                None,
                Some(hostile),
            ),
            outcome(
                Ok(Decision::NeedsApproval {
                    score: 7,
                    reasons: vec!["a".into(), hostile.into()],
                }),
                Some("tok-2"),
                None,
            ),
        ];
        let commands = [
            None,
            Some(CommandLine::Argv(&argv)),
            Some(CommandLine::Script(hostile)),
            Some(CommandLine::Script(&padded)),
        ];
        for a in [&root, &nested] {
            for o in &outcomes {
                for command in commands {
                    for target in [None, Some(hostile), Some(padded.as_str())] {
                        let cap = Capability::ProcessExec;
                        let new = decision_record(a, o, cap, target, command);
                        let old = a.event(
                            Kind::PolicyDecision,
                            decision_detail(o, cap, target, command),
                        );
                        assert_eq!(new.kind, old.kind);
                        assert_eq!(new.actor, old.actor);
                        assert_eq!(new.correlation, old.correlation);
                        assert_eq!(new.detail.bounded(), old.detail.bounded());
                    }
                }
            }
        }
    }
}
