//! The control socket: accepting operator connections and serving the control API.

mod agent_api;
mod audit_api;
mod authority_api;
mod channels_api;
pub(crate) mod chat_api;
mod connection;
mod handlers;
mod paging;
mod peer;
mod plugins_api;
mod secrets_api;
mod sink;
mod tools_api;
mod wire;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use loong_ipc::{HandshakeReply, RejectReason};
use tokio::{net::UnixListener, task::JoinSet};

use crate::Kernel;

/// How long shutdown waits for connections to finish their requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (for example when out of file descriptors).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The chat channels' turn runner (`channels_api::run_turns`).
pub(crate) use channels_api::run_turns as run_channel_turns;

/// Accepts connections until shutdown, then lets them finish for up to [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(listener: UnixListener, kernel: Arc<Kernel>) {
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 0;
    let max = kernel.config.control.max_clients;
    let mut refusals = peer::Refusals::new(std::time::Instant::now());
    let mut window = tokio::time::interval(peer::REFUSAL_WINDOW);
    window.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = kernel.shut_down() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_id += 1;
                    // The peer is checked before it holds anything: no slot, no task, no hello.
                    let cred = match stream.peer_cred() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(conn = next_id, error = %e, "cannot read the peer's credentials; closing");
                            continue;
                        }
                    };
                    // Without its groups a peer is judged by its uid and primary group only.
                    let groups = loong_sandbox::peer::peer_groups(std::os::fd::AsFd::as_fd(&stream)).unwrap_or_else(|e| {
                        tracing::warn!(conn = next_id, error = %e, "cannot read the peer's groups; judging by its uid and primary group");
                        Vec::new()
                    });
                    let class = peer::classify(&cred, &groups, kernel.allowed_gid);
                    if class == peer::Class::Refused {
                        connection::reject_now(&stream, &HandshakeReply::Rejected(RejectReason::PeerNotAllowed { uid: cred.uid() }));
                        drop(stream);
                        // Recorded one by one up to a bound per window, then counted per uid.
                        let (events, one_by_one) = refusals.refused(std::time::Instant::now(), next_id, cred.uid(), cred.pid());
                        if one_by_one {
                            tracing::warn!(conn = next_id, uid = cred.uid(), "refused a control connection from uid {}: not loongd's uid, root or the allowed group", cred.uid());
                        }
                        if !events.is_empty() {
                            conns.spawn(peer::record(kernel.clone(), events));
                        }
                        continue;
                    }
                    let limit = peer::slot_limit(class, max);
                    if kernel.connected.fetch_add(1, Ordering::Relaxed) >= limit {
                        kernel.connected.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(conn = next_id, limit, "refused a control connection: too many connections");
                        connection::reject_now(&stream, &HandshakeReply::Rejected(RejectReason::TooManyConnections { limit }));
                        continue;
                    }
                    let slot = connection::ClientSlot(kernel.clone());
                    conns.spawn(connection::serve(stream, kernel.clone(), next_id, slot, cred));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the control socket failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = window.tick() => {
                let events = refusals.roll(std::time::Instant::now());
                if !events.is_empty() {
                    tracing::warn!(records = events.len(), "refused control connections were counted in the last window; see peer.refused");
                    conns.spawn(peer::record(kernel.clone(), events));
                }
            }
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a control connection task failed");
                }
            }
        }
    }
    drop(listener);
    // Refusals still counted are recorded before the trail closes.
    peer::record(kernel.clone(), refusals.drain()).await;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "connections still busy after the shutdown grace period; closing them"
        );
        conns.shutdown().await;
    }
}
