//! The registry: an immutable snapshot of the clients file, swapped in whole.
//!
//! Authentication does the same work whoever asks: the secret is hashed, and exactly
//! [`MAX_SECRETS`] fixed-length digests are compared in constant time, a known client's or
//! decoys for an unknown one. Only then is the outcome branched on, and every failure looks
//! the same to the caller.

use std::{collections::HashMap, sync::Arc, time::Duration};

use aws_lc_rs::{digest, rand::SecureRandom};
use subtle::{Choice, ConstantTimeEq};
use tokendealer_shared::clients_file::{self, ClientSpec, ClientsFileError, MAX_SECRETS};

use crate::stats::ClientCounters;

/// A registered client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    /// The audience allow-list without `"*"`.
    pub audiences: Vec<String>,
    /// Whether `"*"` was on the allow-list.
    pub any_audience: bool,
    pub scopes: Vec<String>,
    pub token_ttl: Option<Duration>,
    pub disabled: bool,
    /// Kept across reloads for as long as the id exists.
    pub counters: Arc<ClientCounters>,
    slots: [Slot; MAX_SECRETS],
}

impl Client {
    /// When a rotated-out secret stops working, if one is still live at `now`.
    pub fn old_secret_until(&self, now: i64) -> Option<i64> {
        self.slots
            .iter()
            .map(|s| s.expires)
            .filter(|&e| e != Slot::NEVER && e != Slot::EMPTY && e > now)
            .max()
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    digest: [u8; 32],
    /// Unix seconds after which this secret no longer authenticates; `i64::MIN` for an
    /// empty slot, so it never matches.
    expires: i64,
}

impl Slot {
    const NEVER: i64 = i64::MAX;
    const EMPTY: i64 = i64::MIN;
}

/// Every client, by id.
#[derive(Debug)]
pub struct Registry {
    clients: HashMap<String, Client>,
    /// Compared against when the client id is unknown, so that path does the same work.
    decoys: [Slot; MAX_SECRETS],
}

impl Registry {
    /// Validates clients-file text and builds its registry.
    /// Counters of clients that `previous` also has carry over.
    pub fn parse(text: &str, previous: Option<&Self>) -> Result<Self, ClientsFileError> {
        clients_file::parse(text).map(|specs| Self::from_specs(specs, previous))
    }

    /// Builds a registry from validated clients.
    pub fn from_specs(specs: Vec<ClientSpec>, previous: Option<&Self>) -> Self {
        let clients = specs
            .into_iter()
            .map(|spec| {
                let mut slots = [Slot {
                    digest: [0; 32],
                    expires: Slot::EMPTY,
                }; MAX_SECRETS];
                for (slot, secret) in slots.iter_mut().zip(&spec.secrets) {
                    *slot = Slot {
                        digest: secret.digest,
                        expires: secret.expires.map_or(Slot::NEVER, |t| t.as_second()),
                    };
                }
                let any_audience = spec.audiences.iter().any(|a| a == "*");
                let client = Client {
                    audiences: spec.audiences.into_iter().filter(|a| a != "*").collect(),
                    any_audience,
                    scopes: spec.scopes,
                    token_ttl: spec.token_ttl,
                    disabled: spec.disabled,
                    slots,
                    counters: previous
                        .and_then(|p| p.clients.get(&spec.id))
                        .map_or_else(Arc::default, |c| c.counters.clone()),
                    id: spec.id,
                };
                (client.id.clone(), client)
            })
            .collect();
        Self {
            clients,
            decoys: decoy_slots(),
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.clients.values()
    }

    pub fn get(&self, id: &str) -> Option<&Client> {
        self.clients.get(id)
    }

    /// Authenticates a client by secret at `now` (Unix seconds).
    ///
    /// Returns `None` for an unknown id, a wrong or expired secret, and a disabled client
    /// alike, after the same hashing and comparisons in every case.
    pub fn authenticate(&self, id: &str, secret: &str, now: i64) -> Option<&Client> {
        let presented = digest::digest(&digest::SHA256, secret.as_bytes());
        let client = self.clients.get(id);
        let slots = client.map_or(&self.decoys, |c| &c.slots);
        let mut matched = Choice::from(0);
        for slot in slots {
            // Expiry is not secret; only the digest comparison must not leak.
            let live = Choice::from(u8::from(now < slot.expires));
            matched |= slot.digest.ct_eq(presented.as_ref()) & live;
        }
        let client = client?;
        (bool::from(matched) && !client.disabled).then_some(client)
    }
}

fn decoy_slots() -> [Slot; MAX_SECRETS] {
    let mut slots = [Slot {
        digest: [0; 32],
        // Live, so the decoys cost exactly what a real client's slots cost; a random digest
        // that nobody knows the preimage of never matches.
        expires: Slot::NEVER,
    }; MAX_SECRETS];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    for slot in &mut slots {
        rng.fill(&mut slot.digest)
            .expect("system randomness is available");
    }
    slots
}

/// The SHA-256 digest the clients file stores for `secret`.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokendealer_shared::clients_file::format_hash;

    fn registry(entries: &str) -> Registry {
        Registry::from_specs(clients_file::parse(entries).unwrap(), None)
    }

    #[test]
    fn authenticates_current_and_unexpired_old_secrets() {
        let new = format_hash(&hash_secret("new"));
        let old = format_hash(&hash_secret("old"));
        let r = registry(&format!(
            "[clients.a]\nsecret_hashes = [\"{new}\", {{ hash = \"{old}\", expires = 2026-01-01T00:00:00Z }}]\n"
        ));
        let before: i64 = "2025-12-31T23:59:59Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let after = before + 1;
        assert!(r.authenticate("a", "new", after).is_some());
        assert!(r.authenticate("a", "old", before).is_some());
        assert!(
            r.authenticate("a", "old", after).is_none(),
            "expired at its time"
        );
        assert!(r.authenticate("a", "wrong", before).is_none());
        assert!(r.authenticate("b", "new", before).is_none());
    }

    #[test]
    fn disabled_client_is_refused_with_the_right_secret() {
        let h = format_hash(&hash_secret("s"));
        let r = registry(&format!(
            "[clients.a]\nsecret_hashes = [\"{h}\"]\ndisabled = true\n"
        ));
        assert!(r.authenticate("a", "s", 0).is_none());
    }

    #[test]
    fn star_audience_is_split_out() {
        let h = format_hash(&hash_secret("s"));
        let r = registry(&format!(
            "[clients.a]\nsecret_hashes = [\"{h}\"]\naudiences = [\"*\", \"x\"]\n"
        ));
        let c = r.get("a").unwrap();
        assert!(c.any_audience);
        assert_eq!(c.audiences, ["x"]);
    }
}
