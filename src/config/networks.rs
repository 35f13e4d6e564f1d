//! Which networks may relay without AUTH (`server.relay_networks`) or send PROXY headers
//! (`listener.proxy_networks`), and how client addresses are matched against them.
//!
//! An entry that covers "too much" turns the relay into an open relay (or lets anyone forge a
//! client address), so a set is judged by the union of what it covers, not entry by entry:
//! `0.0.0.0/1` + `128.0.0.0/1` is all of IPv4 as surely as `0.0.0.0/0` is. IPv4-mapped IPv6
//! networks (`::ffff:0:0/96` and anything containing it) are judged as the IPv4 space they cover,
//! because a dual-stack `[::]` listener sees IPv4 clients as `::ffff:a.b.c.d`.
//!
//! Thresholds (a relay set is a few office and server networks; a proxy set is a few balancers):
//!
//! | set            | family | shortest prefix | most addresses in the union                 |
//! |----------------|--------|-----------------|---------------------------------------------|
//! | relay_networks | IPv4   | /8              | 2^24 (one /8) of public space               |
//! | relay_networks | IPv6   | /32             | 2^96 (one /32) of non-local space           |
//! | proxy_networks | IPv4   | /16             | 2^16 (one /16), private space included      |
//! | proxy_networks | IPv6   | /48             | 2^80 (one /48), private space included      |
//!
//! "Public" leaves out space no Internet client can come from (RFC 1918, loopback, CGNAT,
//! link-local, `0/8`; ULA, link-local and loopback for IPv6), so `10/8 + 172.16/12 + 192.168/16`
//! or `fc00::/7` is accepted while two public /9s are not. Proxy sets get no such exemption:
//! a whole private /8 of possible forgers is still too many.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// How wide a set of networks may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub v4_min_prefix: u8,
    pub v4_max_addresses: u128,
    pub v6_min_prefix: u8,
    pub v6_max_addresses: u128,
    /// Whether private/local space counts towards the address budget.
    pub count_private: bool,
    /// What the set is, for messages ("relay without AUTH", ...).
    pub what: &'static str,
}

pub const RELAY_LIMITS: Limits = Limits {
    v4_min_prefix: 8,
    v4_max_addresses: 1 << 24,
    v6_min_prefix: 32,
    v6_max_addresses: 1 << 96,
    count_private: false,
    what: "relay without AUTH",
};

pub const PROXY_LIMITS: Limits = Limits {
    v4_min_prefix: 16,
    v4_max_addresses: 1 << 16,
    v6_min_prefix: 48,
    v6_max_addresses: 1 << 80,
    count_private: true,
    what: "send a PROXY header (and so choose their own client address)",
};

/// IPv4 space no Internet client can connect from.
const V4_LOCAL: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
];

/// IPv6 space no Internet client can connect from: loopback, ULA, link-local.
const V6_LOCAL: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
];

/// `::ffff:0:0/96`: every IPv4 address, as a dual-stack socket shows it.
const V4_MAPPED: (Ipv6Addr, u8) = (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

/// The client address as policy should see it: an IPv4 client on a dual-stack socket
/// (`::ffff:10.0.0.1`) becomes plain `10.0.0.1`, so IPv4 `relay_networks` match it.
pub fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// A configured network in the form client addresses are matched in: an IPv4-mapped IPv6
/// network (`::ffff:10.0.0.0/104`) becomes the IPv4 network it maps (`10.0.0.0/8`), since
/// [`canonical_peer`] turns such clients into IPv4 addresses.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if v4_mapped_net().contains(&n) => {
            let v4 = n
                .network()
                .to_ipv4_mapped()
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            // prefix_len() >= 96 here, so the IPv4 prefix is 0..=32 and the constructor cannot fail.
            Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net)
        }
        other => other.trunc(),
    }
}

/// Whether `ip` (any form) is in one of `nets` (as returned by [`canonical_net`]).
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

/// Refuses a set of networks wider than `limits` allows; `Err` is one sentence for the admin.
pub fn check_width(nets: &[IpNet], limits: &Limits) -> Result<(), String> {
    let mut v4: Vec<Ipv4Net> = Vec::new();
    let mut v6: Vec<Ipv6Net> = Vec::new();
    for &net in nets {
        match net {
            IpNet::V4(n) => v4.push(n.trunc()),
            IpNet::V6(n) => {
                let n = n.trunc();
                if n.contains(&v4_mapped_net()) {
                    // Covers every IPv4-mapped address: all of IPv4 is in the set.
                    return Err(format!(
                        "`{net}` contains ::ffff:0:0/96, i.e. every IPv4 address (as a dual-stack \
                         listener sees them), so everyone could {}",
                        limits.what
                    ));
                }
                match canonical_net(IpNet::V6(n)) {
                    IpNet::V4(mapped) => v4.push(mapped),
                    IpNet::V6(n) => v6.push(n),
                }
            }
        }
    }
    let local4 = nets_of(V4_LOCAL, Ipv4Net::new);
    let local6 = nets_of(V6_LOCAL, Ipv6Net::new);
    // Local space (e.g. all of fc00::/7) cannot reach us from the Internet: no prefix limit there.
    let exempt4 = |n: &Ipv4Net| !limits.count_private && local4.iter().any(|l| l.contains(n));
    let exempt6 = |n: &Ipv6Net| !limits.count_private && local6.iter().any(|l| l.contains(n));
    if let Some(n) = v4
        .iter()
        .find(|n| n.prefix_len() < limits.v4_min_prefix && !exempt4(n))
    {
        return Err(too_wide(&n.to_string(), limits.v4_min_prefix, limits));
    }
    if let Some(n) = v6
        .iter()
        .find(|n| n.prefix_len() < limits.v6_min_prefix && !exempt6(n))
    {
        return Err(too_wide(&n.to_string(), limits.v6_min_prefix, limits));
    }
    let v4 = Ipv4Net::aggregate(&v4);
    let size4: u128 = v4
        .iter()
        .map(|n| {
            let all = 1u128 << (32 - n.prefix_len());
            if limits.count_private {
                all
            } else {
                all - overlap(n, &local4, |a, b| a.contains(b), 32)
            }
        })
        .sum();
    if size4 > limits.v4_max_addresses {
        return Err(too_many("IPv4", size4, limits.v4_max_addresses, limits));
    }
    let v6 = Ipv6Net::aggregate(&v6);
    let size6: u128 = v6
        .iter()
        .map(|n| {
            // Only ::/0 would overflow, and it contains ::ffff:0:0/96 so it was refused above.
            let all = 1u128
                .checked_shl(u32::from(128 - n.prefix_len()))
                .unwrap_or(u128::MAX);
            if limits.count_private {
                all
            } else {
                all - overlap(n, &local6, |a, b| a.contains(b), 128)
            }
        })
        .fold(0u128, u128::saturating_add);
    if size6 > limits.v6_max_addresses {
        return Err(too_many("IPv6", size6, limits.v6_max_addresses, limits));
    }
    Ok(())
}

fn v4_mapped_net() -> Ipv6Net {
    Ipv6Net::new(V4_MAPPED.0, V4_MAPPED.1).unwrap_or_default()
}

fn nets_of<A: Copy, N, E>(list: &[(A, u8)], make: impl Fn(A, u8) -> Result<N, E>) -> Vec<N> {
    list.iter().filter_map(|&(a, p)| make(a, p).ok()).collect()
}

/// Addresses of `net` inside the (disjoint) `locals`. Two prefixes either nest or are disjoint.
fn overlap<N: PrefixLen>(
    net: &N,
    locals: &[N],
    contains: impl Fn(&N, &N) -> bool,
    bits: u8,
) -> u128 {
    locals
        .iter()
        .map(|l| {
            if contains(net, l) {
                1u128 << (bits - l.prefix())
            } else if contains(l, net) {
                1u128 << (bits - net.prefix())
            } else {
                0
            }
        })
        .sum()
}

trait PrefixLen {
    fn prefix(&self) -> u8;
}
impl PrefixLen for Ipv4Net {
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
}
impl PrefixLen for Ipv6Net {
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
}

fn too_wide(net: &str, min: u8, limits: &Limits) -> String {
    format!(
        "`{net}` is wider than /{min}: that many addresses could {}. List only your own networks \
         (and use AUTH for the rest)",
        limits.what
    )
}

fn too_many(family: &str, size: u128, max: u128, limits: &Limits) -> String {
    format!(
        "together these networks cover about 2^{} {family} addresses (the limit is 2^{}), all of \
         which could {}. List only your own networks (and use AUTH for the rest)",
        127 - size.leading_zeros(),
        127 - max.leading_zeros(),
        limits.what
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("test net")).collect()
    }

    fn relay(list: &[&str]) -> Result<(), String> {
        check_width(&nets(list), &RELAY_LIMITS)
    }

    fn proxy(list: &[&str]) -> Result<(), String> {
        check_width(&nets(list), &PROXY_LIMITS)
    }

    #[test]
    fn ordinary_sets_pass() {
        relay(&["127.0.0.0/8", "::1/128"]).unwrap();
        relay(&[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ])
        .unwrap();
        relay(&["203.0.113.0/24", "2001:db8::/32", "fd00::/8"]).unwrap();
        relay(&["44.0.0.0/8"]).unwrap();
        relay(&["::ffff:10.0.0.0/104"]).unwrap();
        proxy(&["10.0.0.5/32", "10.0.1.0/24", "2001:db8:1::/48"]).unwrap();
        proxy(&[]).unwrap();
    }

    #[test]
    fn whole_or_most_of_ipv4_is_refused_however_written() {
        for set in [
            &["0.0.0.0/0"][..],
            &["0.0.0.0/1", "128.0.0.0/1"],
            &["0.0.0.0/7"],
            &["44.0.0.0/8", "45.0.0.0/8"],
            &["::ffff:0:0/96"],
            &["::ffff:0.0.0.0/97"],
            &["::/64"],
            &["::/0"],
        ] {
            let e = relay(set).expect_err(&format!("{set:?} must be refused"));
            assert!(e.contains("relay without AUTH"), "{e}");
        }
        // A /8 of public space plus one more address is over the budget.
        assert!(relay(&["44.0.0.0/8", "45.0.0.1/32"]).is_err());
    }

    #[test]
    fn wide_ipv6_is_refused() {
        assert!(relay(&["2000::/3"]).is_err());
        assert!(relay(&["2001:db8::/31"]).is_err());
        assert!(relay(&["2001:db8::/32", "2001:db9::/32"]).is_err());
        relay(&["fc00::/7"]).expect("local space has no prefix limit");
        assert!(relay(&["fc00::/6"]).is_err());
    }

    #[test]
    fn proxy_sets_are_stricter() {
        assert!(proxy(&["0.0.0.0/0"]).is_err());
        assert!(proxy(&["10.0.0.0/8"]).is_err());
        assert!(proxy(&["10.0.0.0/16", "10.1.0.0/16"]).is_err());
        assert!(proxy(&["::ffff:10.0.0.0/104"]).is_err());
        assert!(proxy(&["2001:db8::/32"]).is_err());
        proxy(&["10.0.0.0/16"]).unwrap();
    }

    #[test]
    fn mapped_clients_and_networks_match_as_ipv4() {
        let p: SocketAddr = "[::ffff:10.0.0.1]:25".parse().unwrap();
        assert_eq!(
            canonical_peer(p),
            "10.0.0.1:25".parse::<SocketAddr>().unwrap()
        );
        let set: Vec<IpNet> = nets(&["::ffff:10.0.0.0/104", "127.0.0.0/8"])
            .into_iter()
            .map(canonical_net)
            .collect();
        assert_eq!(set, nets(&["10.0.0.0/8", "127.0.0.0/8"]));
        assert!(contains(&set, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(contains(&set, "10.9.9.9".parse().unwrap()));
        assert!(!contains(&set, "::ffff:11.0.0.1".parse().unwrap()));
        assert!(!contains(&set, "::1".parse().unwrap()));
    }
}
