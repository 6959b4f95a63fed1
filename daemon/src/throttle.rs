//! Brute-force protection for client authentication (RFC 6749 §2.3.1).
//!
//! The policy, in full:
//!
//! * Only **failed** authentications count; but an address past its limit is refused
//!   whatever it sends, the right secret too, until a failure is allowed again.
//! * **Per source address**: [`ADDRESS_BURST`] failures, then one more every
//!   [`ADDRESS_REFILL`]. An address past its limit gets `429` with `Retry-After` on every
//!   authenticated request, refused before any secret is hashed, until a failure is allowed
//!   again.
//! * **Per client id** (known or not, so that throttling reveals nothing about which ids
//!   exist): [`CLIENT_BURST`] failures from all addresses together, then one every
//!   [`CLIENT_REFILL`]. Past that limit a failed attempt for the id is answered `429` and
//!   costs its address [`GUARDED_COST`] failures instead of one, so a distributed guess at
//!   one id runs each address out quickly. The id itself is never locked: its real caller,
//!   from an address without failures, keeps getting tokens.
//! * The source address is the TCP peer, or — when the peer is one of `trusted_proxies` — the
//!   nearest `X-Forwarded-For` entry that is not itself a trusted proxy. IPv4 peers of a
//!   dual-stack listener (`::ffff:a.b.c.d`) are IPv4 addresses here. An IPv6 source is
//!   counted by its /64, the least one host is given: an attacker does not get a fresh
//!   burst from each of the 2^64 addresses of its network.
//! * The address is checked again just before the secret is, so requests sent together
//!   before a block (their bodies held back) are refused as they come in, not all tried.
//! * Only ids that could be registered are counted per id: a malformed one (too long,
//!   another character) cannot be a client, and would otherwise let each failure store up
//!   to the 16 KiB of a body.
//! * At most [`MAX_TRACKED`] addresses and as many ids are counted apart; past that,
//!   newcomers share one count, so that memory stays bounded whatever the attack.

use std::{
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::atomic::{
        AtomicBool, AtomicU64,
        Ordering::{Relaxed, SeqCst},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};
use http::HeaderMap;
use ipnet::IpNet;
use tokendealer_shared::clients_file::check_client_id;

/// Failures an address may make before it is throttled.
pub const ADDRESS_BURST: u32 = 20;
/// After the burst, one failure per this much time.
pub const ADDRESS_REFILL: Duration = Duration::from_secs(3);
/// Failures one client id may see, from all addresses, before it is guarded.
pub const CLIENT_BURST: u32 = 50;
pub const CLIENT_REFILL: Duration = Duration::from_secs(1);
/// What a failure against a guarded id costs its address.
pub const GUARDED_COST: u32 = 5;
/// The most addresses, and client ids, counted apart. Past it (an attack from more networks
/// or with more ids than that within a refill), newcomers share one count: memory stays
/// bounded, and a flood of fresh sources or ids is throttled as one.
pub const MAX_TRACKED: usize = 100_000;

/// The one count that newcomers share past [`MAX_TRACKED`]: an address no peer can have
/// (`::` is never a TCP source), and an id no client can have (ids are not empty).
const OVERFLOW_ADDRESS: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
const OVERFLOW_ID: &str = "";

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Why a request is refused with 429: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
}

/// The failure counters.
#[derive(Debug)]
pub struct Throttle {
    by_address: Keyed<IpAddr>,
    by_client: Keyed<String>,
    /// Addresses past their limit, until when: checked before any work is done.
    blocked: DashMap<IpAddr, Instant>,
    /// Whether `blocked` may hold an entry. Every request checks it, and almost always
    /// nothing is blocked: one shared load then replaces a lock on a map shard that every
    /// worker would otherwise take for the same loopback or proxy address.
    any_blocked: AtomicBool,
    trusted_proxies: Vec<IpNet>,
    /// Requests refused because their address was throttled.
    pub refused_address: AtomicU64,
    /// Failures answered 429 because their client id was guarded.
    pub refused_client: AtomicU64,
}

fn quota(burst: u32, refill: Duration) -> Quota {
    Quota::with_period(refill)
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("non-zero burst"))
}

impl Throttle {
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            by_address: RateLimiter::keyed(quota(ADDRESS_BURST, ADDRESS_REFILL)),
            by_client: RateLimiter::keyed(quota(CLIENT_BURST, CLIENT_REFILL)),
            blocked: DashMap::new(),
            any_blocked: AtomicBool::new(false),
            trusted_proxies,
            refused_address: AtomicU64::new(0),
            refused_client: AtomicU64::new(0),
        }
    }

    /// The address a request comes from, seen through trusted proxies only.
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        // `::ffff:10.0.0.1` from a dual-stack listener is 10.0.0.1: the IPv4 networks of
        // `trusted_proxies` contain it, and it is one address, not two.
        let peer = peer.to_canonical();
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        // Each proxy appends the address it received from; walk back from the nearest.
        let mut source = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return source;
            };
            for hop in value.rsplit(',') {
                match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                    Ok(ip) if trusted(&ip) => source = ip,
                    Ok(ip) => return ip,
                    Err(_) => return source,
                }
            }
        }
        source
    }

    /// Before any work, and again just before the secret is checked: is this address
    /// currently refused?
    pub fn check(&self, address: IpAddr) -> Result<(), Throttled> {
        if !self.any_blocked.load(Relaxed) {
            return Ok(());
        }
        let address = counted(address);
        let Some(until) = self.blocked.get(&address).map(|u| *u) else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            self.refused_address.fetch_add(1, Relaxed);
            return Err(Throttled {
                retry_after: until - now,
            });
        }
        self.blocked.remove_if(&address, |_, u| *u <= now);
        Ok(())
    }

    /// Counts a failed authentication of `client_id` from `address`. `Err` means the failure
    /// is to be answered 429 rather than 401.
    pub fn failure(&self, address: IpAddr, client_id: Option<&str>) -> Result<(), Throttled> {
        let address = counted(address);
        // Past the cap a newcomer is counted with the other newcomers (one already counted
        // may be too: its count is then the shared one, as strict or stricter).
        let overflowing = self.by_address.len() >= MAX_TRACKED;
        let key = if overflowing {
            OVERFLOW_ADDRESS
        } else {
            address
        };
        let clock = self.by_address.clock();
        let guarded = match client_id {
            Some(id) if check_client_id(id).is_ok() => {
                let id = if self.by_client.len() >= MAX_TRACKED {
                    OVERFLOW_ID
                } else {
                    id
                };
                self.by_client.check_key(&id.to_owned()).err()
            }
            _ => None,
        };
        let cost = if guarded.is_some() { GUARDED_COST } else { 1 };
        let by_address = match self
            .by_address
            .check_key_n(&key, NonZeroU32::new(cost).expect("non-zero"))
        {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(not_until.wait_time_from(clock.now())),
            // More than the burst at once: wait for a whole refill.
            Err(_) => Some(ADDRESS_REFILL),
        };
        if let Some(wait) = by_address {
            let wait = wait.max(Duration::from_secs(1));
            // A shared count blocks no one address before its request is read: it answers
            // each failure 429, and holds no memory per address.
            if !overflowing {
                self.blocked.insert(address, Instant::now() + wait);
                self.any_blocked.store(true, SeqCst);
            }
            return Err(Throttled { retry_after: wait });
        }
        if let Some(not_until) = guarded {
            self.refused_client.fetch_add(1, Relaxed);
            let wait = not_until
                .wait_time_from(clock.now())
                .max(Duration::from_secs(1));
            return Err(Throttled { retry_after: wait });
        }
        Ok(())
    }

    /// Forgets counters that have fully refilled; run now and then so that memory follows
    /// the attackers of the last minutes, not of all time.
    pub fn sweep(&self) {
        self.by_address.retain_recent();
        self.by_client.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_client.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
        // Cleared only when nothing is left, and the map looked at again after clearing:
        // an address blocked meanwhile sets the flag itself after inserting, so whichever
        // order the two run in, the flag ends up set while the map holds a block. SeqCst
        // on the stores: one total order for the two writers, on any CPU.
        if self.blocked.is_empty() {
            self.any_blocked.store(false, SeqCst);
            if !self.blocked.is_empty() {
                self.any_blocked.store(true, SeqCst);
            }
        }
    }
}

/// The address failures are counted by: an IPv6 address's /64 (the least a host is
/// given; RFC 4291 interface identifiers are the low 64 bits), an IPv4 address itself.
fn counted(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_throttled_after_its_burst_and_refused_early() {
        let t = Throttle::new(vec![]);
        let a = ip("192.0.2.1");
        for _ in 0..ADDRESS_BURST {
            assert!(t.check(a).is_ok());
            assert!(t.failure(a, Some("x")).is_ok());
        }
        let refused = t.failure(a, Some("x")).unwrap_err();
        assert!(refused.retry_after >= Duration::from_secs(1));
        assert!(t.check(a).is_err(), "refused before any work");
        assert!(
            t.check(ip("192.0.2.2")).is_ok(),
            "other addresses are not affected"
        );
        // The sweep forgets only expired blocks: the fast path must still see this one.
        t.sweep();
        assert!(t.check(a).is_err(), "still refused after a sweep");
    }

    #[test]
    fn a_guarded_client_is_not_locked_out_for_its_real_caller() {
        let t = Throttle::new(vec![]);
        // An attack spread over many addresses, each under its own limit.
        for i in 0..CLIENT_BURST {
            let attacker = IpAddr::from([198, 51, 100, u8::try_from(i).unwrap()]);
            assert!(t.failure(attacker, Some("victim")).is_ok());
        }
        let attacker = ip("203.0.113.9");
        assert!(
            t.failure(attacker, Some("victim")).is_err(),
            "guarded id answers 429"
        );
        // The guarded failure cost the attacker more than one.
        let mut allowed = 0;
        while t.failure(attacker, Some("other")).is_ok() {
            allowed += 1;
        }
        assert!(allowed <= ADDRESS_BURST - GUARDED_COST, "{allowed}");
        // The real caller's address has no failures: nothing stops it.
        assert!(t.check(ip("192.0.2.50")).is_ok());
    }

    #[test]
    fn an_ipv6_network_shares_one_budget() {
        let t = Throttle::new(vec![]);
        // Each failure from another address of the same /64.
        for i in 0..ADDRESS_BURST {
            let a = IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                1,
                0,
                0,
                0,
                u16::try_from(i).unwrap() + 1,
            ));
            assert!(t.failure(a, None).is_ok());
        }
        let fresh = ip("2001:db8:0:1:ffff:ffff:ffff:ffff");
        assert!(
            t.failure(fresh, None).is_err(),
            "a fresh address of the /64"
        );
        assert!(t.check(fresh).is_err());
        assert!(
            t.check(ip("2001:db8:0:2::1")).is_ok(),
            "the next /64 is another host"
        );
    }

    /// Past [`MAX_TRACKED`] sources or ids, newcomers share one count: the maps stop
    /// growing, and a flood of fresh sources is throttled as one source.
    #[test]
    fn past_the_cap_newcomers_share_one_count() {
        let t = Throttle::new(vec![]);
        let address = |i: usize| {
            IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | (u128::try_from(i).unwrap() << 64),
            ))
        };
        for i in 0..MAX_TRACKED {
            assert!(t.failure(address(i), Some(&format!("id-{i}"))).is_ok());
        }
        assert_eq!(t.by_address.len(), MAX_TRACKED);
        assert_eq!(t.by_client.len(), MAX_TRACKED);
        // Fresh networks and ids, one failure each: counted together, and throttled after
        // one burst as one source would be.
        let mut allowed = 0;
        for i in MAX_TRACKED..MAX_TRACKED + 100 {
            if t.failure(address(i), Some(&format!("id-{i}"))).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, ADDRESS_BURST, "one burst for all the newcomers");
        assert_eq!(t.by_address.len(), MAX_TRACKED + 1, "one shared entry");
        assert_eq!(t.by_client.len(), MAX_TRACKED + 1, "one shared entry");
        assert!(
            t.blocked.is_empty(),
            "no address blocked for the shared count"
        );
        assert!(t.check(address(MAX_TRACKED + 1)).is_ok());
    }

    #[test]
    fn malformed_ids_are_not_counted_per_id() {
        let t = Throttle::new(vec![]);
        let long = "x".repeat(tokendealer_shared::clients_file::MAX_CLIENT_ID_LEN + 1);
        for (i, id) in [long.as_str(), "a b", ""].into_iter().enumerate() {
            assert!(
                t.failure(
                    IpAddr::from([192, 0, 2, u8::try_from(i).unwrap()]),
                    Some(id)
                )
                .is_ok()
            );
        }
        assert_eq!(t.by_client.len(), 0, "nothing stored per id");
        assert!(t.failure(ip("192.0.2.9"), Some("svc-1")).is_ok());
        assert_eq!(t.by_client.len(), 1);
    }

    #[test]
    fn a_dual_stack_peer_is_its_ipv4_address() {
        let t = Throttle::new(vec!["127.0.0.1/32".parse().unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "::ffff:203.0.113.7".parse().unwrap());
        assert_eq!(
            t.source(ip("::ffff:127.0.0.1"), &headers),
            ip("203.0.113.7"),
            "the mapped peer is the trusted proxy; the mapped hop is IPv4"
        );
        assert_eq!(
            t.source(ip("::ffff:192.0.2.1"), &HeaderMap::new()),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let t = Throttle::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.1.1.1".parse().unwrap());
        assert_eq!(t.source(ip("10.0.0.1"), &headers), ip("203.0.113.7"));
        assert_eq!(
            t.source(ip("192.0.2.1"), &headers),
            ip("192.0.2.1"),
            "untrusted peer"
        );
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(t.source(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }
}
