//! Where a connector may connect: the addresses its endpoint resolves to, pinned at discovery,
//! each checked against the address ranges a service on the internet never has.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// The most addresses one endpoint is pinned to.
pub const MAX_PINNED_ADDRS: usize = 16;

/// Why an address is not a public one, or `None` for a public unicast address.
pub(crate) fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_range(v4),
            None => v6_range(v6),
        },
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("an unspecified (this-network) address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives here)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("a broadcast, multicast or reserved address")
    } else {
        None
    }
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique local (private) address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// Resolves `host:port` once and checks every answer: with `allow_private`, loopback, private
/// and link-local answers are accepted; unspecified, broadcast and multicast never are.
/// Blocking (the system resolver): call it off the async runtime.
pub(crate) fn pin(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .take(MAX_PINNED_ADDRS)
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    for a in &addrs {
        let Some(range) = special_range(a.ip()) else {
            continue;
        };
        let never = range.starts_with("an unspecified") || range.contains("multicast");
        if never || !allow_private {
            let fix = if never {
                "a connector cannot reach it"
            } else {
                "set sandbox.allow_private_network to true to reach it"
            };
            return Err(format!("{host} resolves to {}, {range}; {fix}", a.ip()));
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_named() {
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("carrier-grade")),
            ("0.0.0.0", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("::1", Some("loopback")),
            ("fd00::1", Some("unique local")),
            ("fe80::1", Some("link-local")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ] {
            let got = special_range(ip.parse().expect("an address"));
            match want {
                None => assert_eq!(got, None, "{ip}"),
                Some(w) => assert!(got.is_some_and(|g| g.contains(w)), "{ip}: {got:?}"),
            }
        }
    }

    #[test]
    fn pinning_refuses_private_answers_unless_allowed() {
        let err = pin("localhost", 80, false).expect_err("loopback refused");
        assert!(err.contains("allow_private_network"), "{err}");
        let ok = pin("127.0.0.1", 80, true).expect("allowed");
        assert_eq!(ok, ["127.0.0.1:80".parse::<SocketAddr>().expect("addr")]);
        let err = pin("0.0.0.0", 80, true).expect_err("never");
        assert!(err.contains("cannot reach"), "{err}");
    }
}
