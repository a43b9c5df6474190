//! The connection broker: a worker of a kind with a broker socket (an HTTP connector,
//! `web.fetch`) has no network of its own; loongd connects for each call, to the addresses
//! its endpoint was pinned to at discovery, or to a fetch's URL resolved and checked now, and
//! passes the connected socket beside the call.

use std::{net::SocketAddr, time::Duration};

use loong_ipc::{message::worker::MAX_CALL_HEADER_BYTES, FailureKind, PluginFailure};

use loong_profiles::plugin::headers;

use super::{kind::Wire, net};
use crate::egress::resolve::{Refusal, Resolver};
use crate::secrets::Lookup;

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
        ..
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

/// A header as the worker gets it, and a secret used in one (name, value).
pub(super) type Header = (String, String);

/// The headers a connector's call carries, its secrets filled in from the store, and the
/// secrets used (to redact from what the call answers). Empty for `web.fetch` and every other
/// kind: a secret goes only with a connector's call, over the connection to that connector's
/// own pinned endpoint. A secret that is not set fails the call, naming it and the command
/// that sets it; nothing is connected.
pub(super) fn headers(
    wire: &Wire,
    plugin: &str,
) -> Result<(Vec<Header>, Vec<Header>), PluginFailure> {
    let Wire::Http {
        spec,
        headers,
        addrs,
        ..
    } = wire
    else {
        return Ok(Default::default());
    };
    if spec.fetch || headers.is_empty() {
        return Ok(Default::default());
    }
    let store = crate::secrets::store();
    let host = spec.server_name.as_str();
    // Every pinned address has the endpoint's port.
    let port = addrs.first().map_or(0, SocketAddr::port);
    let authority = crate::secrets::authority(host, port);
    // The binding that would admit this endpoint: TLS, the host; plain HTTP, http://HOST:PORT.
    let allow = if spec.tls {
        host.to_string()
    } else {
        format!("{}{authority}", crate::secrets::PLAIN)
    };
    let (mut out, mut used): (Vec<Header>, Vec<Header>) = (Vec::new(), Vec::new());
    for (name, template) in headers {
        let fail = |why: String| {
            PluginFailure::new(
                FailureKind::ToolError,
                format!("plugin {plugin}: header {name:?}: {why}"),
            )
        };
        // Each secret named, for this endpoint's host; one bound to other hosts fails the
        // call, one not set fails it below (naming the command that sets it).
        let names = headers::secret_names(template).unwrap_or_default();
        for secret in &names {
            let secret = *secret;
            if used.iter().any(|(u, _)| u == secret) {
                continue;
            }
            match store.map_or(Lookup::Missing, |s| s.get(secret, host, port, spec.tls)) {
                Lookup::Value(v) => used.push((secret.to_string(), v)),
                Lookup::NotFor(hosts) => {
                    let bound = if hosts.is_empty() {
                        "is bound to no host".to_string()
                    } else {
                        format!("may be sent only to {}", hosts.join(", "))
                    };
                    return Err(fail(format!(
                        "the secret {secret:?} {bound}, not to {authority}; to allow it, set it again with `loongctl secrets set {secret} --host {allow}` (and each host it serves)"
                    )));
                }
                Lookup::Missing => {}
            }
        }
        // Its size filled in, before it is built: a value may name one secret many times.
        let filled = names.iter().fold(name.len() + template.len(), |n, s| {
            let v = used
                .iter()
                .find(|(u, _)| u == s)
                .map_or(0, |(_, v)| v.len());
            n.saturating_add(v)
        });
        if filled > MAX_CALL_HEADER_BYTES {
            return Err(fail(format!(
                "with its secrets filled in it is about {filled} bytes, over the {MAX_CALL_HEADER_BYTES}-byte limit of one header"
            )));
        }
        let lookup = |n: &str| used.iter().find(|(u, _)| u == n).map(|(_, v)| v.clone());
        let value = headers::substitute(template, lookup).map_err(|e| fail(e.to_string()))?;
        out.push((name.clone(), value));
    }
    Ok((out, used))
}

/// A `web.fetch` call's route: its URL's host looked up once now, every address checked, and
/// the input the worker gets (`{host, path, tls, server_name}`). The connection is made to
/// exactly these addresses: nothing looks the name up again.
pub(crate) async fn fetch_route(
    input: &[u8],
    allow_private: bool,
    resolver: &Resolver,
) -> Result<(Vec<std::net::SocketAddr>, Vec<u8>), PluginFailure> {
    let url = serde_json::from_slice::<serde_json::Value>(input)
        .ok()
        .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(String::from))
        .ok_or_else(|| PluginFailure::new(FailureKind::ToolError, "web.fetch needs `url`"))?;
    let endpoint = loong_profiles::plugin::parse_endpoint(&url)
        .map_err(|e| PluginFailure::new(FailureKind::ToolError, format!("web.fetch: {e}")))?;
    let (host, port) = (endpoint.host.clone(), endpoint.port);
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
    // An https URL is fetched over TLS to its host, verified by the worker; never in plain.
    let target = serde_json::json!({
        "host": endpoint.host_header(),
        "path": endpoint.target,
        "tls": endpoint.https,
        "server_name": endpoint.host,
    })
    .to_string();
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
