//! The connection broker: a worker of a kind with a broker socket (an HTTP connector,
//! `web.fetch`) has no network of its own; loongd connects for each call, to the addresses
//! its endpoint was pinned to at discovery, or to a fetch's URL resolved and checked now, and
//! passes the connected socket beside the call.

use std::{net::SocketAddr, time::Duration};

use loong_ipc::{FailureKind, PluginFailure};

use super::{kind::Wire, net};
use crate::egress::resolve::{Refusal, Resolver};

/// The longest loongd spends connecting to a connector's endpoint (less when the call's own
/// timeout is shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection a call of `wire` carries, made now: `None` for a kind without a broker.
/// A fetch's input becomes what its worker reads (`{host, path}`).
pub(super) async fn route(
    wire: &Wire,
    plugin: &str,
    input: &mut Vec<u8>,
    resolver: &Resolver,
) -> Result<Option<std::net::TcpStream>, PluginFailure> {
    let Wire::Http {
        spec,
        addrs,
        fetch_allow_private,
    } = wire
    else {
        return Ok(None);
    };
    // A connector's addresses were pinned at discovery; a fetch resolves its URL now.
    let resolved;
    let addrs: &[SocketAddr] = if spec.fetch {
        let (found, target) = fetch_route(input, *fetch_allow_private, resolver).await?;
        *input = target;
        resolved = found;
        &resolved
    } else {
        addrs
    };
    connect(addrs, spec.timeout_ms)
        .await
        .map(Some)
        .map_err(|why| {
            PluginFailure::new(
                FailureKind::ConnectFailed,
                format!("plugin {plugin}: {why}"),
            )
        })
}

/// A `web.fetch` call's route: its URL's host looked up once now, every address checked, and
/// the input the worker gets (`{host, path}`). The connection is made to exactly these
/// addresses: nothing looks the name up again.
pub(crate) async fn fetch_route(
    input: &[u8],
    allow_private: bool,
    resolver: &Resolver,
) -> Result<(Vec<std::net::SocketAddr>, Vec<u8>), PluginFailure> {
    let url = serde_json::from_slice::<serde_json::Value>(input)
        .ok()
        .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(String::from))
        .ok_or_else(|| PluginFailure::new(FailureKind::ToolError, "web.fetch needs `url`"))?;
    let (host, port, path) = loong_profiles::plugin::parse_endpoint(&url)
        .map_err(|e| PluginFailure::new(FailureKind::ToolError, format!("web.fetch: {e}")))?;
    let addrs = resolver
        .vet_for(&host, port, allow_private, net::FETCH_PRIVATE_SETTING)
        .await
        .map_err(|e| {
            let kind = match e {
                Refusal::Never { .. } | Refusal::Private { .. } => FailureKind::AddressRefused,
                _ => FailureKind::ConnectFailed,
            };
            PluginFailure::new(kind, format!("web.fetch {url}: {e}"))
        })?;
    let header = match (port, host.contains(':')) {
        (80, false) => host,
        (80, true) => format!("[{host}]"),
        (p, false) => format!("{host}:{p}"),
        (p, true) => format!("[{host}]:{p}"),
    };
    let target = serde_json::json!({ "host": header, "path": path }).to_string();
    Ok((addrs, target.into_bytes()))
}

/// Connects to the first of `addrs` that answers, within the call's timeout (at most
/// [`CONNECT_TIMEOUT`]); returns the socket as a blocking std stream to pass on.
async fn connect(
    addrs: &[std::net::SocketAddr],
    timeout_ms: u64,
) -> Result<std::net::TcpStream, String> {
    let limit = Duration::from_millis(timeout_ms).min(CONNECT_TIMEOUT);
    let mut why = String::from("no address to connect to");
    for addr in addrs {
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let s = s.into_std().map_err(|e| e.to_string())?;
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Ok(Err(e)) => why = format!("connecting to {addr}: {e}"),
            Err(_) => {
                why = format!(
                    "connecting to {addr}: no answer within {} ms",
                    limit.as_millis()
                )
            }
        }
    }
    Err(why)
}
