//! The registry: an immutable snapshot of the clients file, swapped in whole.
//!
//! The clients are kept in the pieces of the file they were read from
//! ([`clients_file::pieces`]), and a piece whose text is unchanged is shared with the
//! registry being replaced instead of read again. With 100 000 clients, a reload after a
//! small edit reads a few kilobytes and builds an index, rather than parsing 18 MB and
//! holding a second copy of every client next to the first.
//!
//! Authentication does the same work whoever asks: the secret is hashed, and exactly
//! [`MAX_SECRETS`] fixed-length digests are compared in constant time, a known client's or
//! decoys for an unknown one. Only then is the outcome branched on, and every failure looks
//! the same to the caller.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    ops::Range,
    sync::{Arc, OnceLock},
    time::Duration,
};

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
    fn new(spec: ClientSpec, counters: Arc<ClientCounters>) -> Self {
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
        let mut audiences = spec.audiences;
        audiences.retain(|a| a != "*");
        // A registry lives long and holds many lists: each keeps only the room it uses.
        audiences.shrink_to_fit();
        let mut scopes = spec.scopes;
        scopes.shrink_to_fit();
        Self {
            id: spec.id,
            audiences,
            any_audience,
            scopes,
            token_ttl: spec.token_ttl,
            disabled: spec.disabled,
            counters,
            slots,
        }
    }

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

/// A clients file's text, cut into pieces, each with its SHA-256.
#[derive(Debug)]
pub struct CutText<'t> {
    text: &'t str,
    pieces: Vec<(Range<usize>, [u8; 32])>,
}

impl<'t> CutText<'t> {
    pub fn new(text: &'t str) -> Self {
        let pieces = clients_file::pieces(text)
            .into_iter()
            .map(|range| {
                let digest = sha256(text.as_bytes().get(range.clone()).unwrap_or_default());
                (range, digest)
            })
            .collect();
        Self { text, pieces }
    }

    /// Stands for the whole text: equal digests mean equal texts. Made from the pieces'
    /// digests, so the text is hashed once.
    pub fn digest(&self) -> [u8; 32] {
        let mut all = digest::Context::new(&digest::SHA256);
        for (_, piece) in &self.pieces {
            all.update(piece);
        }
        all.finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }
}

/// The clients read from one piece of the file, shared by every registry whose file has
/// that piece unchanged.
#[derive(Debug)]
struct Piece {
    /// The SHA-256 of the piece's text; `None` for clients not read piece by piece.
    digest: Option<[u8; 32]>,
    clients: Box<[Client]>,
    /// Each client's id hashed with [`id_hash`], so that a registry sharing the piece
    /// indexes it without reading the ids again.
    hashes: Box<[u64]>,
}

impl Piece {
    fn new(digest: Option<[u8; 32]>, specs: Vec<ClientSpec>, previous: Option<&Registry>) -> Self {
        let clients: Box<[Client]> = specs
            .into_iter()
            .map(|spec| {
                let counters = previous
                    .and_then(|p| p.get(&spec.id))
                    .map_or_else(Arc::default, |c| c.counters.clone());
                Client::new(spec, counters)
            })
            .collect();
        let hashes = clients.iter().map(|c| id_hash(&c.id)).collect();
        Self {
            digest,
            clients,
            hashes,
        }
    }
}

/// One keyed hasher for every registry of the process: hashes kept in a shared piece stay
/// valid, and ids made to collide cannot be prepared in advance.
fn id_hash(id: &str) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(id)
}

/// Where a client is in the registry: `pieces[piece].clients[at]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    piece: u32,
    at: u32,
}

impl Place {
    const EMPTY: Self = Self {
        piece: u32::MAX,
        at: u32::MAX,
    };
}

/// Every client, by id.
#[derive(Debug)]
pub struct Registry {
    pieces: Vec<Arc<Piece>>,
    /// Open addressing with linear probing, at most half full, so a miss ends soon.
    index: Box<[Place]>,
    len: usize,
    /// Compared against when the client id is unknown, so that path does the same work.
    decoys: [Slot; MAX_SECRETS],
}

impl Registry {
    /// Validates clients-file text and builds its registry; see [`Self::load`].
    pub fn parse(text: &str, previous: Option<&Self>) -> Result<Self, ClientsFileError> {
        Self::load(&CutText::new(text), previous)
    }

    /// Validates clients-file text and builds its registry. Pieces of the text that
    /// `previous` was read from too are shared with it, not read again; counters of clients
    /// that `previous` has carry over either way.
    pub fn load(text: &CutText<'_>, previous: Option<&Self>) -> Result<Self, ClientsFileError> {
        let known: HashMap<[u8; 32], &Arc<Piece>> = previous
            .into_iter()
            .flat_map(|p| &p.pieces)
            .filter_map(|piece| Some((piece.digest?, piece)))
            .collect();
        let unread: Vec<Range<usize>> = text
            .pieces
            .iter()
            .filter(|(_, digest)| !known.contains_key(digest))
            .map(|(range, _)| range.clone())
            .collect();
        // A piece outside the usual shape, a client that does not validate: the whole
        // text's parse says what is wrong, or reads it the general way.
        let Some(read) = clients_file::read_pieces(text.text, &unread) else {
            return Self::parse_whole(text.text, previous);
        };
        let mut read = read.into_iter();
        let pieces = text
            .pieces
            .iter()
            .map(|(_, digest)| match known.get(digest) {
                Some(&piece) => Arc::clone(piece),
                None => Arc::new(Piece::new(
                    Some(*digest),
                    read.next().unwrap_or_default(),
                    previous,
                )),
            })
            .collect();
        match Self::index(pieces) {
            (registry, false) => Ok(registry),
            // The same id in two pieces: the whole text's parse names both places.
            (_, true) => Self::parse_whole(text.text, previous),
        }
    }

    fn parse_whole(text: &str, previous: Option<&Self>) -> Result<Self, ClientsFileError> {
        clients_file::parse(text).map(|specs| Self::from_specs(specs, previous))
    }

    /// Builds a registry from validated clients, whose ids [`clients_file::parse`] has made
    /// sure are unique (were one repeated, `get` would find the first). Counters of clients
    /// that `previous` has carry over.
    pub fn from_specs(specs: Vec<ClientSpec>, previous: Option<&Self>) -> Self {
        let piece = Piece::new(None, specs, previous);
        Self::index(vec![Arc::new(piece)]).0
    }

    /// Indexes the clients of `pieces`, and says whether an id repeats (only its first
    /// client is indexed then).
    fn index(pieces: Vec<Arc<Piece>>) -> (Self, bool) {
        let len: usize = pieces.iter().map(|p| p.clients.len()).sum();
        let mut index = vec![Place::EMPTY; (2 * len).next_power_of_two().max(8)].into_boxed_slice();
        let mut repeated = false;
        for (p, piece) in pieces.iter().enumerate() {
            for (at, (client, &hash)) in piece.clients.iter().zip(&piece.hashes).enumerate() {
                // A file that large could not have been read into memory.
                let place = Place {
                    piece: u32::try_from(p).expect("fewer than 2^32 pieces"),
                    at: u32::try_from(at).expect("fewer than 2^32 clients in a piece"),
                };
                match probe(&index, &pieces, &client.id, hash) {
                    Ok(_) => repeated = true,
                    Err(free) => index[free] = place,
                }
            }
        }
        let registry = Self {
            pieces,
            index,
            len,
            decoys: decoy_slots(),
        };
        (registry, repeated)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.pieces.iter().flat_map(|p| p.clients.iter())
    }

    pub fn get(&self, id: &str) -> Option<&Client> {
        let place = self.index[probe(&self.index, &self.pieces, id, id_hash(id)).ok()?];
        Some(&self.pieces[place.piece as usize].clients[place.at as usize])
    }

    /// Authenticates a client by secret at `now` (Unix seconds).
    ///
    /// Returns `None` for an unknown id, a wrong or expired secret, and a disabled client
    /// alike, after the same hashing and comparisons in every case.
    pub fn authenticate(&self, id: &str, secret: &str, now: i64) -> Option<&Client> {
        let presented = digest::digest(&digest::SHA256, secret.as_bytes());
        let client = self.get(id);
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

/// Looks `id` (hashed to `hash`) up in `index`: `Ok` with the slot that places it, or `Err`
/// with the empty slot where it would go.
fn probe(index: &[Place], pieces: &[Arc<Piece>], id: &str, hash: u64) -> Result<usize, usize> {
    let mask = index.len() - 1;
    // The low bits of a keyed hash are as good as any; the table is a power of two long.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "only the low bits are wanted"
    )]
    let mut slot = hash as usize & mask;
    // Never more than half full, so an empty slot always ends the walk.
    loop {
        let place = index[slot];
        if place == Place::EMPTY {
            return Err(slot);
        }
        let piece = &pieces[place.piece as usize];
        let at = place.at as usize;
        if piece.hashes[at] == hash && piece.clients[at].id == id {
            return Ok(slot);
        }
        slot = (slot + 1) & mask;
    }
}

/// From this many clients on, the clients a dropped registry alone held are freed by a
/// thread of its own.
const FREE_ELSEWHERE_FROM: usize = 10_000;

impl Drop for Registry {
    // The last reference to a replaced registry is often let go by a token request that was
    // still reading it. When most of the file changed, freeing what only this registry held
    // takes milliseconds, which that request, and every task queued on its worker thread,
    // would otherwise wait for.
    fn drop(&mut self) {
        let pieces = std::mem::take(&mut self.pieces);
        let freed: usize = pieces
            .iter()
            .filter(|p| Arc::strong_count(p) == 1)
            .map(|p| p.clients.len())
            .sum();
        if freed >= FREE_ELSEWHERE_FROM {
            free_elsewhere(pieces);
        }
    }
}

/// Frees `pieces` on a new thread that ends when it is done: mimalloc hands the pages a
/// thread emptied back to the system when the thread ends, where a long-lived thread that
/// only ever frees would hold on to them.
fn free_elsewhere(pieces: Vec<Arc<Piece>>) {
    // If no thread can be started, the closure is dropped here, and the pieces with it.
    let _detached = std::thread::Builder::new()
        .name("registry-free".into())
        .spawn(move || drop(pieces));
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
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
    sha256(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

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
    fn a_reload_shares_unchanged_pieces_and_keeps_counters() {
        let h = format_hash(&hash_secret("s"));
        // Enough clients for the file to be cut into several pieces.
        let text = |last_scope: &str| -> String {
            (0..300)
                .map(|i| {
                    let scope = if i == 299 { last_scope } else { "read" };
                    format!(
                        "[clients.c{i:03}]\nsecret_hashes = [\"{h}\"]\nscopes = [\"{scope}\"]\n\n"
                    )
                })
                .collect()
        };
        let before = Registry::parse(&text("read"), None).unwrap();
        assert!(before.pieces.len() > 2, "{} pieces", before.pieces.len());
        before
            .get("c299")
            .unwrap()
            .counters
            .issued
            .fetch_add(3, Relaxed);
        let after = Registry::parse(&text("write"), Some(&before)).unwrap();
        assert_eq!(after.len(), 300);
        let (first0, first1) = (before.get("c000").unwrap(), after.get("c000").unwrap());
        assert!(std::ptr::eq(first0, first1), "an unchanged piece is shared");
        let (last0, last1) = (before.get("c299").unwrap(), after.get("c299").unwrap());
        assert!(!std::ptr::eq(last0, last1), "a changed piece is read again");
        assert_eq!(last1.scopes, ["write"]);
        assert!(Arc::ptr_eq(&last0.counters, &last1.counters));
        assert_eq!(last1.counters.issued.load(Relaxed), 3);
        assert!(after.get("c300").is_none());
    }

    #[test]
    fn an_id_repeated_in_another_piece_is_the_parsers_error() {
        let h = format_hash(&hash_secret("s"));
        let table = |i: usize| format!("[clients.c{i:03}]\nsecret_hashes = [\"{h}\"]\n\n");
        let mut text: String = (0..300).map(table).collect();
        text.push_str(&table(0));
        let err = Registry::parse(&text, None).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        assert_eq!(err.line(), Some(901), "{err}");
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
