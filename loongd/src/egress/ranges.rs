//! The address ranges a service on the internet never has (loopback, private, link-local,
//! carrier-grade NAT, metadata, benchmarking, documentation, …), and every IPv6 form that
//! carries an IPv4 address in one of them: what every resolved address is checked against.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not a public unicast one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Special {
    /// The range, as an operator reads it ("a loopback address").
    pub(crate) range: &'static str,
    /// The IPv6 form that carries the IPv4 address in that range, if any ("NAT64").
    pub(crate) via: Option<&'static str>,
    /// Whether no setting makes it reachable (unspecified, broadcast, multicast, reserved).
    pub(crate) never: bool,
}

impl std::fmt::Display for Special {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.via {
            Some(via) => write!(f, "{} carried in its {via} form", self.range),
            None => f.write_str(self.range),
        }
    }
}

const fn refused(range: &'static str) -> Option<Special> {
    Some(Special {
        range,
        via: None,
        never: false,
    })
}

const fn never(range: &'static str) -> Option<Special> {
    Some(Special {
        range,
        via: None,
        never: true,
    })
}

/// Why an address is not a public one, or `None` for a public unicast address. An IPv6
/// address that carries an IPv4 one (mapped, translated, IPv4-compatible, NAT64, 6to4,
/// Teredo) is judged by the IPv4 address it carries, since that is where a connection to it
/// can end up.
pub(crate) fn special_range(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<Special> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        never("an unspecified (this-network) address")
    } else if ip.is_loopback() {
        refused("a loopback address")
    } else if ip.is_private() {
        refused("a private address")
    } else if ip.is_link_local() {
        refused("a link-local address (cloud metadata lives here)")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        refused("a shared (carrier-grade NAT) address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        refused("a benchmarking address (198.18.0.0/15, which networks use inside themselves)")
    } else if o[..3] == [192, 0, 0] && !matches!(o[3], 9 | 10) {
        // 192.0.0.9 and 192.0.0.10 are globally reachable anycast services (PCP, TURN).
        refused("an IETF protocol assignment address (192.0.0.0/24: NAT64 discovery, DS-Lite)")
    } else if matches!(o[..3], [192, 0, 2] | [198, 51, 100] | [203, 0, 113]) {
        never("a documentation address")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        never("a broadcast, multicast or reserved address")
    } else {
        None
    }
}

/// The IPv4 addresses an IPv6 address carries, with the name of the form; empty for none.
fn embedded_v4(ip: Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => vec![("IPv4-mapped", low)],
        // ::ffff:0:a.b.c.d (SIIT)
        [0, 0, 0, 0, 0xffff, 0, _, _] => vec![("IPv4-translated", low)],
        // ::a.b.c.d (deprecated; `::` and `::1` are named before this is asked)
        [0, 0, 0, 0, 0, 0, _, _] => vec![("IPv4-compatible", low)],
        // 64:ff9b::a.b.c.d (the well-known NAT64 prefix, RFC 6052)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => vec![("NAT64", low)],
        // 2002:AABB:CCDD::/48 (6to4: the IPv4 address in bits 16..48)
        [0x2002, hi, lo, ..] => vec![(
            "6to4",
            Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8),
        )],
        // 2001:0:SERVER:FLAGS:PORT:CLIENT (Teredo: the client's address inverted)
        [0x2001, 0, hi, lo, ..] => vec![
            (
                "Teredo server",
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8),
            ),
            ("Teredo client", Ipv4Addr::from(!u32::from(low))),
        ],
        _ => Vec::new(),
    }
}

fn v6_range(ip: Ipv6Addr) -> Option<Special> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return never("an unspecified address");
    }
    if ip.is_loopback() {
        return refused("a loopback address");
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // 64:ff9b:1::/48 (RFC 8215) is for translators inside one network only, and where
        // the IPv4 address sits depends on the prefix length the network chose.
        return refused("a local-use NAT64 address");
    }
    for (via, v4) in embedded_v4(ip) {
        if let Some(inner) = v4_range(v4) {
            return Some(Special {
                via: Some(via),
                ..inner
            });
        }
    }
    if s[0] & 0xfe00 == 0xfc00 {
        refused("a unique local (private) address")
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        refused("a link-local or site-local address")
    } else if ip.is_multicast() {
        never("a multicast address")
    } else if s[0] == 0x2001 && s[1] == 0xdb8
        || s[0] == 0x3fff && s[1] < 0x1000
        || s[..4] == [0x100, 0, 0, 0]
    {
        // 2001:db8::/32 and 3fff::/20 (RFC 9637) are documentation; 100::/64 discards.
        never("a documentation or discard-only address")
    } else if s[..3] == [0x2001, 2, 0] {
        refused("a benchmarking address (2001:2::/48, which networks use inside themselves)")
    } else if s[0] == 0x2001 && matches!(s[1] & 0xfff0, 0x10 | 0x20) {
        never("an ORCHID address (2001:10::/28, 2001:20::/28: identifiers, not locators)")
    } else {
        None
    }
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
            let got = special_range(ip.parse().expect("an address")).map(|g| g.to_string());
            match want {
                None => assert_eq!(got, None, "{ip}"),
                Some(w) => assert!(got.as_ref().is_some_and(|g| g.contains(w)), "{ip}: {got:?}"),
            }
        }
    }

    /// Every IPv6 form that carries a refused IPv4 address is refused as that address, named
    /// with its form; the same forms carrying a public IPv4 address are public.
    #[test]
    fn ipv6_forms_carrying_a_refused_ipv4_address_are_refused() {
        for (ip, want) in [
            ("::ffff:127.0.0.1", "loopback address carried in its IPv4-mapped form"),
            ("::ffff:0:127.0.0.1", "loopback address carried in its IPv4-translated form"),
            ("::127.0.0.1", "loopback address carried in its IPv4-compatible form"),
            ("::169.254.169.254", "link-local address (cloud metadata lives here) carried in its IPv4-compatible form"),
            ("::10.0.0.1", "private address carried in its IPv4-compatible form"),
            ("64:ff9b::7f00:1", "loopback address carried in its NAT64 form"),
            ("64:ff9b::a9fe:a9fe", "link-local address (cloud metadata lives here) carried in its NAT64 form"),
            ("64:ff9b::c0a8:1", "private address carried in its NAT64 form"),
            ("64:ff9b:1::5db8:d822", "local-use NAT64"),
            ("64:ff9b:1:7f00:1::", "local-use NAT64"),
            ("2002:7f00:1::1", "loopback address carried in its 6to4 form"),
            ("2002:a9fe:a9fe::", "link-local address (cloud metadata lives here) carried in its 6to4 form"),
            ("2002:0a00:0001:1::1", "private address carried in its 6to4 form"),
            ("2001:0:7f00:1::1", "loopback address carried in its Teredo server form"),
            // Client 127.0.0.1, inverted: 80ff:fffe.
            ("2001:0:5db8:d822:0:0:80ff:fffe", "loopback address carried in its Teredo client form"),
            ("2001:0:5db8:d822:0:0:5601:5656", "link-local address (cloud metadata lives here) carried in its Teredo client form"),
            ("::0.0.0.2", "unspecified (this-network) address carried in its IPv4-compatible form"),
            ("64:ff9b::e000:1", "multicast or reserved address carried in its NAT64 form"),
            ("fec0::1", "site-local"),
            ("2001:db8::1", "documentation"),
        ] {
            let got = special_range(ip.parse().expect("an address")).map(|g| g.to_string());
            assert!(
                got.as_ref().is_some_and(|g| g.contains(want)),
                "{ip}: {got:?}, expected {want:?}"
            );
        }
        // Controls: a public IPv6 address, and each form carrying a public IPv4 address
        // (93.184.216.34 = 5db8:d822; as a Teredo client, inverted: a247:27dd).
        for ip in [
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:0:5db8:d822:0:0:a247:27dd",
        ] {
            assert_eq!(special_range(ip.parse().expect("an address")), None, "{ip}");
        }
    }

    /// The IPv4 and IPv6 ranges no service on the internet has beyond loopback, private and
    /// link-local: benchmarking (which networks use inside themselves), IETF protocol
    /// assignments, documentation and ORCHID, also carried in an IPv6 form; the two globally
    /// reachable anycast addresses among the protocol assignments stay reachable.
    #[test]
    fn benchmarking_protocol_and_documentation_ranges_are_not_public() {
        for (ip, want) in [
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.254", Some("benchmarking")),
            ("::ffff:198.18.0.1", Some("benchmarking")),
            ("64:ff9b::c612:1", Some("benchmarking")),
            ("192.0.0.170", Some("protocol assignment")),
            ("192.0.0.8", Some("protocol assignment")),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("2001:2::1", Some("benchmarking")),
            ("2001:10::1", Some("ORCHID")),
            ("2001:20::1", Some("ORCHID")),
            ("3fff::1", Some("documentation")),
            // Controls: the anycast protocol addresses, and neighbours of each range.
            ("192.0.0.9", None),
            ("192.0.0.10", None),
            ("198.17.255.254", None),
            ("198.20.0.1", None),
            ("192.0.1.1", None),
            ("2001:3::1", None),
            ("2001:30::1", None),
            ("3fff:1000::1", None),
        ] {
            let got = special_range(ip.parse().expect("an address"));
            match want {
                None => assert_eq!(got, None, "{ip}"),
                Some(w) => assert!(
                    got.as_ref().is_some_and(|g| g.to_string().contains(w)),
                    "{ip}: {got:?}, expected {w:?}"
                ),
            }
        }
        assert!(
            special_range("192.0.2.1".parse().expect("an address")).is_some_and(|g| g.never),
            "documentation addresses are never reachable"
        );
    }
}
