//! Where a connector may connect: the addresses its endpoint resolves to (one lookup by
//! loongd's [`Resolver`]), pinned at discovery, each checked against the ranges of
//! [`crate::egress::ranges`].

use std::net::SocketAddr;

pub(crate) use crate::egress::resolve::FETCH_PRIVATE_SETTING;
use crate::egress::resolve::{Refusal, Resolver};

/// [`Resolver::vet_blocking`] a connector's endpoint (allowed by
/// [`crate::egress::resolve::CONNECTOR_PRIVATE_SETTING`]): one lookup, every answer checked. Blocking: call it from
/// loongd's multi-threaded runtime or one of its blocking threads.
pub(crate) fn pin(
    resolver: &Resolver,
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Refusal> {
    resolver.vet_blocking(host, port, allow_private)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver with the system's configuration: the tests below ask it only for IP
    /// literals and `localhost` (the hosts file), never the network.
    fn system() -> Resolver {
        Resolver::from_config(&crate::config::EgressConfig::default()).expect("a resolver")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_embedded_unreachable_address_is_never_reachable() {
        let r = system();
        let err = pin(&r, "64:ff9b::e000:1", 80, true)
            .expect_err("multicast via NAT64")
            .to_string();
        assert!(err.contains("nothing can reach it"), "{err}");
        let err = pin(&r, "[64:ff9b::7f00:1]", 80, false)
            .expect_err("loopback via NAT64")
            .to_string();
        assert!(err.contains("allow_private_network"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn pinning_refuses_private_answers_unless_allowed() {
        let r = system();
        let err = pin(&r, "localhost", 80, false)
            .expect_err("loopback refused")
            .to_string();
        assert!(
            err.contains("localhost resolves to") && err.contains("allow_private_network"),
            "{err}"
        );
        // A fetch's refusal names its own setting, not the connectors'.
        let err = r
            .vet_for("localhost", 80, false, FETCH_PRIVATE_SETTING)
            .await
            .expect_err("loopback refused")
            .to_string();
        assert!(err.contains("[builtins] fetch_allow_private"), "{err}");
        let ok = pin(&r, "127.0.0.1", 80, true).expect("allowed");
        assert_eq!(ok, ["127.0.0.1:80".parse::<SocketAddr>().expect("addr")]);
        let err = pin(&r, "0.0.0.0", 80, true).expect_err("never").to_string();
        assert!(err.contains("nothing can reach it"), "{err}");
    }
}
