//! One vetted lookup: a name is resolved once per connection by loongd's own resolver
//! (`[egress] resolver`, or the system's configuration), every address of the answer is
//! checked against the ranges a service on the internet never has
//! ([`super::ranges::special_range`]), and the caller dials exactly those addresses.
//! A name whose answer holds any refused address is refused whole, so a resolver that mixes
//! a public address with a private one cannot steer a connection inward.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use hickory_resolver::{
    config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    TokioResolver,
};

use super::ranges::{special_range, Special};

/// The setting that lets a connector reach loopback, private and link-local addresses.
pub(crate) const CONNECTOR_PRIVATE_SETTING: &str = "sandbox.allow_private_network";
/// The setting that lets `web.fetch` reach them.
pub(crate) const FETCH_PRIVATE_SETTING: &str = "[builtins] fetch_allow_private";

/// The most addresses one connection is dialled to, in order.
pub const MAX_PINNED_ADDRS: usize = 16;

/// The longest name looked up (RFC 1035).
pub const MAX_NAME_BYTES: usize = loong_sandbox::net_grant::MAX_NAME_BYTES;

/// Why loongd's resolver could not be built from `[egress]`.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("[egress] resolver {addr}: {why}; give the IP:PORT of a DNS server that answers over UDP and TCP")]
    Build { addr: SocketAddr, why: String },
}

/// Why a connection to a host was refused before any connection was made.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("`{host}` is not a host name or an IP address; give a name such as api.example.com, or an address")]
    BadHost { host: String },
    #[error("{host} does not resolve ({why}, asking {source_of}); check the name, or the resolver in [egress] resolver")]
    Unresolved {
        host: String,
        why: String,
        source_of: String,
    },
    #[error("{host}: no answer within {} ms from {source_of}; check that the resolver answers, or raise [egress] lookup_timeout_ms", .timeout.as_millis())]
    TimedOut {
        host: String,
        timeout: Duration,
        source_of: String,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("{host} resolves to {addr}, {range}; nothing can reach it")]
    Never {
        host: String,
        addr: IpAddr,
        range: Special,
    },
    #[error("{host} resolves to {addr}, {range}; set {setting} to true to reach it (a name with any such address in its answer is refused whole)")]
    Private {
        host: String,
        addr: IpAddr,
        range: Special,
        /// The setting that allows it, for the caller's kind of connection.
        setting: &'static str,
    },
}

/// loongd's resolver: built once at start from `[egress]`, shared by every caller.
#[derive(Debug)]
pub struct Resolver {
    /// The resolver, or why the system's configuration gave none (names are then refused
    /// with that reason; IP literals still work).
    inner: Result<TokioResolver, String>,
    /// The deadline of one lookup.
    timeout: Duration,
    /// Who is asked, for messages ("the resolver 10.0.0.53:53").
    source_of: String,
}

impl Resolver {
    /// The resolver `[egress]` configures: `resolver = "IP:PORT"`, or (absent) the system's
    /// name servers from /etc/resolv.conf. Search domains are never applied: a name is asked
    /// as written, once.
    pub fn from_config(cfg: &crate::config::EgressConfig) -> Result<Resolver, ResolveError> {
        let timeout = Duration::from_millis(cfg.lookup_timeout_ms);
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let (inner, source_of) = match cfg.resolver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
                let r = build(config, opts).map_err(|why| ResolveError::Build { addr, why })?;
                (Ok(r), format!("the resolver {addr}"))
            }
            None => {
                let source = "the system's resolvers (/etc/resolv.conf)".to_string();
                let inner = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| format!("reading /etc/resolv.conf: {e}"))
                    .and_then(|(config, _)| {
                        let config = ResolverConfig::from_parts(
                            None,
                            Vec::new(),
                            config.name_servers().to_vec(),
                        );
                        build(config, opts)
                    });
                if let Err(why) = &inner {
                    tracing::warn!(%why, "no system resolver: names will not resolve; set [egress] resolver");
                }
                (inner, source)
            }
        };
        Ok(Resolver {
            inner,
            timeout,
            source_of,
        })
    }

    /// Resolves `host` once (an IP literal, with or without brackets, is not looked up),
    /// checks every address, and returns the addresses to dial, in order (at most
    /// [`MAX_PINNED_ADDRS`]). Loopback, private, link-local and the like are refused unless
    /// `allow_private`; unspecified, documentation, broadcast and multicast never pass. A
    /// refusal names `sandbox.allow_private_network`.
    pub async fn vet(
        &self,
        host: &str,
        port: u16,
        allow_private: bool,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        self.vet_for(host, port, allow_private, CONNECTOR_PRIVATE_SETTING)
            .await
    }

    /// [`Resolver::vet`], naming `setting` (the one that allows private answers for this
    /// caller) in a refusal.
    pub async fn vet_for(
        &self,
        host: &str,
        port: u16,
        allow_private: bool,
        setting: &'static str,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let ips = self.lookup(host).await?;
        check(host, &ips, allow_private, setting)?;
        Ok(ips
            .into_iter()
            .take(MAX_PINNED_ADDRS)
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// [`Resolver::vet`] from blocking code on loongd's (multi-threaded) runtime or one of
    /// its blocking threads.
    pub fn vet_blocking(
        &self,
        host: &str,
        port: u16,
        allow_private: bool,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let fut = self.vet(host, port, allow_private);
        // Blocking in place needs a multi-threaded runtime; anywhere else the name is refused
        // (fail closed) rather than the caller's thread panicking.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(fut))
            }
            _ => Err(Refusal::Unresolved {
                host: host.to_string(),
                why: "loongd resolves names on its multi-threaded runtime only".into(),
                source_of: self.source_of.clone(),
            }),
        }
    }

    /// The addresses of `host`: the literal itself, or one lookup's answer.
    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, Refusal> {
        let inner = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let bad = || Refusal::BadHost {
            host: host.chars().take(MAX_NAME_BYTES + 1).collect(),
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if inner.len() != host.len()
            || name.is_empty()
            || name.len() > MAX_NAME_BYTES
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            || name.split('.').any(str::is_empty)
        {
            return Err(bad());
        }
        let resolver = self.inner.as_ref().map_err(|why| Refusal::Unresolved {
            host: host.to_string(),
            why: why.clone(),
            source_of: self.source_of.clone(),
        })?;
        let answer = tokio::time::timeout(self.timeout, resolver.lookup_ip(name))
            .await
            .map_err(|_| Refusal::TimedOut {
                host: host.to_string(),
                timeout: self.timeout,
                source_of: self.source_of.clone(),
            })?;
        let ips: Vec<IpAddr> = match answer {
            Ok(found) => found.iter().collect(),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(Refusal::Unresolved {
                    host: host.to_string(),
                    why: e.to_string().to_lowercase(),
                    source_of: self.source_of.clone(),
                })
            }
        };
        if ips.is_empty() {
            return Err(Refusal::NoAddress {
                host: host.to_string(),
            });
        }
        Ok(ips)
    }
}

fn build(config: ResolverConfig, opts: ResolverOpts) -> Result<TokioResolver, String> {
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| e.to_string())
}

/// Checks every address of `host`'s answer: one refused address refuses the name.
pub(crate) fn check(
    host: &str,
    ips: &[IpAddr],
    allow_private: bool,
    setting: &'static str,
) -> Result<(), Refusal> {
    for &addr in ips {
        let Some(range) = special_range(addr) else {
            continue;
        };
        let host = host.to_string();
        if range.never {
            return Err(Refusal::Never { host, addr, range });
        }
        if !allow_private {
            return Err(Refusal::Private {
                host,
                addr,
                range,
                setting,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "../../../tests/all/dns_server.rs"]
mod dns_server;

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::dns_server::{DnsServer, TYPE_A};
    use super::*;
    use crate::config::EgressConfig;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

    fn resolver(addr: SocketAddr, timeout_ms: u64) -> Resolver {
        Resolver::from_config(&EgressConfig {
            resolver: Some(addr),
            lookup_timeout_ms: timeout_ms,
            ..EgressConfig::default()
        })
        .expect("a resolver")
    }

    fn server() -> DnsServer {
        let loopback = Ipv4Addr::LOCALHOST;
        DnsServer::start(vec![
            ("public.test".into(), vec![vec![PUBLIC]]),
            ("rebind.test".into(), vec![vec![PUBLIC], vec![loopback]]),
            (
                "mixed.test".into(),
                vec![vec![PUBLIC, Ipv4Addr::new(10, 0, 0, 7)]],
            ),
            (
                "private.test".into(),
                vec![vec![Ipv4Addr::new(10, 1, 2, 3)]],
            ),
            ("doc.test".into(), vec![vec![Ipv4Addr::new(192, 0, 2, 1)]]),
            ("empty.test".into(), vec![]),
        ])
    }

    /// Each call is one lookup, and it is the answer of that lookup that is checked and
    /// returned: a name that answers a public address and then loopback gets the public
    /// address once and a refusal next, never a loopback address to dial.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn each_vet_is_one_lookup_whose_every_address_is_checked() {
        let dns = server();
        let r = resolver(dns.addr, 2_000);
        assert_eq!(
            r.vet("public.test", 443, false).await.expect("public"),
            [SocketAddr::new(PUBLIC.into(), 443)]
        );
        assert_eq!(dns.queries("public.test", TYPE_A), 1);
        // The trailing dot and case are the same name, asked once more.
        r.vet("Public.Test.", 443, false).await.expect("public");
        assert_eq!(dns.queries("public.test", TYPE_A), 2);

        let first = r.vet("rebind.test", 80, false).await.expect("public first");
        assert_eq!(first, [SocketAddr::new(PUBLIC.into(), 80)]);
        assert_eq!(dns.queries("rebind.test", TYPE_A), 1);
        let err = r
            .vet("rebind.test", 80, false)
            .await
            .expect_err("loopback next")
            .to_string();
        assert!(
            err.contains("rebind.test resolves to 127.0.0.1, a loopback address")
                && err.contains("sandbox.allow_private_network"),
            "{err}"
        );
        assert_eq!(dns.queries("rebind.test", TYPE_A), 2);

        // One refused address among public ones refuses the name whole.
        let err = r
            .vet("mixed.test", 443, false)
            .await
            .expect_err("mixed")
            .to_string();
        assert!(
            err.contains("mixed.test resolves to 10.0.0.7, a private address"),
            "{err}"
        );
        // Control: allowed, every address is returned in the answer's order.
        assert_eq!(
            r.vet("mixed.test", 443, true).await.expect("allowed"),
            [
                SocketAddr::new(PUBLIC.into(), 443),
                SocketAddr::new(Ipv4Addr::new(10, 0, 0, 7).into(), 443)
            ]
        );
        let err = r
            .vet_for("private.test", 80, false, FETCH_PRIVATE_SETTING)
            .await
            .expect_err("private")
            .to_string();
        assert!(
            err.contains("private.test resolves to 10.1.2.3, a private address")
                && err.contains("[builtins] fetch_allow_private"),
            "{err}"
        );
        r.vet("private.test", 80, true).await.expect("allowed");
        // Documentation addresses are never reachable, whatever is allowed.
        let err = r
            .vet("doc.test", 80, true)
            .await
            .expect_err("never")
            .to_string();
        assert!(
            err.contains("192.0.2.1") && err.contains("nothing can reach it"),
            "{err}"
        );
        // No address, no name.
        assert!(matches!(
            r.vet("empty.test", 80, true).await,
            Err(Refusal::NoAddress { .. })
        ));
        assert!(r.vet("absent.test", 80, true).await.is_err());
    }

    /// IP literals are checked, not looked up; malformed names are refused before any query.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn literals_are_not_looked_up_and_bad_names_not_asked() {
        let dns = server();
        let r = resolver(dns.addr, 2_000);
        let err = r.vet("127.0.0.1", 80, false).await.expect_err("loopback");
        assert!(matches!(err, Refusal::Private { .. }), "{err}");
        assert_eq!(
            r.vet("[::1]", 80, true).await.expect("allowed"),
            ["[::1]:80".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            r.vet("93.184.216.34", 80, false).await.expect("public"),
            [SocketAddr::new(PUBLIC.into(), 80)]
        );
        for bad in [
            "a..test",
            "",
            ".",
            "exa mple.test",
            "[public.test]",
            "a/b.test",
        ] {
            let err = r.vet(bad, 80, true).await.expect_err(bad);
            assert!(matches!(err, Refusal::BadHost { .. }), "{bad}: {err}");
        }
        assert_eq!(dns.queries("public.test", TYPE_A), 0);
    }

    /// A resolver that never answers is given up on at the lookup's deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_silent_resolver_times_out_at_the_deadline() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let r = resolver(silent.local_addr().expect("addr"), 200);
        let started = std::time::Instant::now();
        let err = r.vet("public.test", 80, false).await.expect_err("timeout");
        assert!(matches!(err, Refusal::TimedOut { .. }), "{err}");
        assert!(err.to_string().contains("lookup_timeout_ms"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
