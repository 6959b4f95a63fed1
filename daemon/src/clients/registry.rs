//! The registry: an immutable snapshot of the clients file, swapped in whole.
//!
//! The clients are kept in the pieces of the file they were read from
//! ([`clients_file::pieces`]), and a piece whose text is unchanged is shared with the
//! registry being replaced instead of read again. With 100 000 clients, a reload after a
//! small edit parses a few kilobytes and patches a copy of the index, rather than parsing
//! 18 MB, holding a second copy of every client next to the first and indexing them all.
//! The file itself is read a piece at a time ([`Builder`]), so its text is never all in
//! memory either, and only the pieces that are new are kept long enough to be parsed.
//!
//! A client is small: its audience and scope lists are shared with every other client that
//! has the same ones (most do), and it holds no other allocation than its id and counters.
//!
//! Authentication does the same work whoever asks: the secret is hashed, and exactly
//! [`MAX_SECRETS`] fixed-length digests are compared in constant time, a known client's or
//! decoys for an unknown one. Only then is the outcome branched on, and every failure looks
//! the same to the caller.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasher, RandomState},
    ops::Range,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use aws_lc_rs::{
    aead::{AES_128_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
    rand::SecureRandom,
};
use subtle::{Choice, ConstantTimeEq};
use tokendealer_shared::clients_file::{self, ClientSpec, ClientsFileError, MAX_SECRETS};

use crate::stats::ClientCounters;

/// A registered client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    /// The audience allow-list without `"*"`, shared by the clients that have the same.
    pub audiences: Arc<[String]>,
    /// Whether `"*"` was on the allow-list.
    pub any_audience: bool,
    /// The scope allow-list, shared by the clients that have the same.
    pub scopes: Arc<[String]>,
    pub token_ttl: Option<Duration>,
    pub disabled: bool,
    /// Kept across reloads for as long as the id exists.
    pub counters: Arc<ClientCounters>,
    slots: [Slot; MAX_SECRETS],
}

impl Client {
    fn new(spec: ClientSpec, counters: Arc<ClientCounters>, lists: &mut Lists) -> Self {
        let mut slots = [Slot {
            digest: [0; 4],
            expires: Slot::EMPTY,
        }; MAX_SECRETS];
        for (slot, secret) in slots.iter_mut().zip(&spec.secrets) {
            *slot = Slot {
                digest: words(&secret.digest),
                expires: secret.expires.map_or(Slot::NEVER, |t| t.as_second()),
            };
        }
        let any_audience = spec.audiences.iter().any(|a| a == "*");
        let mut audiences = spec.audiences;
        audiences.retain(|a| a != "*");
        // A registry lives long: the id keeps only the room it uses.
        let mut id = spec.id;
        id.shrink_to_fit();
        Self {
            id,
            audiences: lists.share(audiences),
            any_audience,
            scopes: lists.share(spec.scopes),
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
    /// The SHA-256 digest as words: compared in four constant-time steps rather than 32.
    digest: [u64; 4],
    /// Unix seconds after which this secret no longer authenticates; `i64::MIN` for an
    /// empty slot, so it never matches.
    expires: i64,
}

impl Slot {
    const NEVER: i64 = i64::MAX;
    const EMPTY: i64 = i64::MIN;
}

/// A SHA-256 digest as the words a [`Slot`] compares.
fn words(digest: &[u8; 32]) -> [u64; 4] {
    let mut words = [0; 4];
    for (word, bytes) in words.iter_mut().zip(digest.chunks_exact(8)) {
        *word = u64::from_ne_bytes(bytes.try_into().expect("chunks of eight bytes"));
    }
    words
}

/// Every audience or scope list of the process's clients, once: clients with equal lists
/// share one. A list stays here while a client holds it, and a little longer.
struct Interner {
    keys: RandomState,
    /// By the list's hash. Two different lists with the same hash (never seen in practice,
    /// and the hash is keyed) only cost the second one its sharing.
    lists: HashMap<u64, Arc<[String]>>,
    /// How many lists were left after the last sweep of those no client holds.
    kept: usize,
}

impl Interner {
    fn share(&mut self, list: Vec<String>) -> Arc<[String]> {
        let hash = self.keys.hash_one(list.as_slice());
        let shared = match self.lists.entry(hash) {
            Entry::Occupied(e) if **e.get() == *list => Arc::clone(e.get()),
            Entry::Occupied(_) => Arc::from(list),
            Entry::Vacant(e) => Arc::clone(e.insert(Arc::from(list))),
        };
        // Swept when it has doubled, so the sweeps cost no more than the lists added.
        if self.lists.len() >= 2 * self.kept.max(64) {
            self.lists.retain(|_, list| Arc::strong_count(list) > 1);
            self.lists.shrink_to_fit();
            self.kept = self.lists.len();
        }
        shared
    }
}

/// Shares lists through the process's [`Interner`], remembering the last few: neighbouring
/// clients mostly have the same lists, which then need no lock.
#[derive(Default)]
struct Lists {
    last: Vec<Arc<[String]>>,
}

impl Lists {
    fn share(&mut self, list: Vec<String>) -> Arc<[String]> {
        if let Some(known) = self.last.iter().find(|known| ***known == *list) {
            return Arc::clone(known);
        }
        static INTERNER: OnceLock<Mutex<Interner>> = OnceLock::new();
        let shared = INTERNER
            .get_or_init(|| {
                Mutex::new(Interner {
                    keys: RandomState::new(),
                    lists: HashMap::new(),
                    kept: 0,
                })
            })
            .lock()
            .expect("interner lock")
            .share(list);
        // A client has two lists; the four last seen cover both for the next client
        // whichever order they come in.
        if self.last.len() == 4 {
            self.last.remove(0);
        }
        self.last.push(Arc::clone(&shared));
        shared
    }
}

/// Stands for a text: a piece's, or a whole file's (made from its pieces' digests).
///
/// Equal texts have equal digests, and different texts different ones except by a chance
/// too small to matter that nobody can raise: the digest is the tag AES-GCM gives the text
/// as associated data, under a key drawn at random when the process starts and never shown.
/// That is GHASH, a universal hash, of the text at that key: two texts chosen without
/// knowing the key (and neither the key nor any digest ever leaves the process) have the
/// same digest with a chance of at most one in 2^128 per 16 bytes of the longer one. The
/// nonce is the same every time, as it must be for equal texts to have equal digests;
/// that would be unsafe if a digest were ever sent anywhere or anything were encrypted, and
/// neither ever is. It is several times cheaper than SHA-256, and a reload digests the
/// whole file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 16]);

impl Digest {
    fn of(text: &[u8]) -> Self {
        static KEY: OnceLock<LessSafeKey> = OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut key = [0; 16];
            aws_lc_rs::rand::SystemRandom::new()
                .fill(&mut key)
                .expect("system randomness is available");
            LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).expect("a 128-bit key"))
        });
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(text),
                &mut [],
            )
            .expect("a clients file is shorter than 2^61 bytes");
        Self(tag.as_ref().try_into().expect("the tag is 16 bytes"))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(…)")
    }
}

/// The digest of a text cut into pieces with these digests.
fn digest_of_pieces<'d>(pieces: impl IntoIterator<Item = &'d Digest>) -> Digest {
    let all: Vec<u8> = pieces.into_iter().flat_map(|d| d.0).collect();
    Digest::of(&all)
}

/// A clients file's text, cut into pieces, each with its digest.
#[derive(Debug)]
pub struct CutText<'t> {
    text: &'t str,
    pieces: Vec<(Range<usize>, Digest)>,
}

impl<'t> CutText<'t> {
    pub fn new(text: &'t str) -> Self {
        let pieces = clients_file::pieces(text)
            .into_iter()
            .map(|range| {
                let digest = Digest::of(text.as_bytes().get(range.clone()).unwrap_or_default());
                (range, digest)
            })
            .collect();
        Self { text, pieces }
    }

    /// Stands for the whole text: equal digests mean equal texts. Made from the pieces'
    /// digests, so the text is hashed once; the same as [`Builder::digest`] gives for the
    /// same text.
    pub fn digest(&self) -> Digest {
        digest_of_pieces(self.pieces.iter().map(|(_, digest)| digest))
    }
}

/// The clients read from one piece of the file, shared by every registry whose file has
/// that piece unchanged.
#[derive(Debug)]
struct Piece {
    /// The digest of the piece's text; `None` for clients not read piece by piece.
    digest: Option<Digest>,
    clients: Box<[Client]>,
    /// Each client's id hashed with [`id_hash`], so that a registry sharing the piece
    /// indexes it without reading the ids again.
    hashes: Box<[u64]>,
}

impl Piece {
    fn new(digest: Option<Digest>, specs: Vec<ClientSpec>, previous: Option<&Registry>) -> Self {
        let mut lists = Lists::default();
        let clients: Box<[Client]> = specs
            .into_iter()
            .map(|spec| {
                let counters = previous
                    .and_then(|p| p.get(&spec.id))
                    .map_or_else(Arc::default, |c| c.counters.clone());
                Client::new(spec, counters, &mut lists)
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

/// Where a client is in the registry: `table[piece].clients[at]`.
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

    fn new(slot: usize, at: usize) -> Self {
        // A file that large could not have been read into memory.
        Self {
            piece: u32::try_from(slot).expect("fewer than 2^32 pieces"),
            at: u32::try_from(at).expect("fewer than 2^32 clients in a piece"),
        }
    }
}

/// The length of an index for `len` clients: a power of two, at most half full.
fn index_len(len: usize) -> usize {
    (2 * len).next_power_of_two().max(8)
}

/// How many bytes of new pieces are parsed together: enough for all cores to share, few
/// enough that a file changed throughout never has much of its text in memory.
const BATCH: usize = 1 << 20;

/// A piece of the file being built from.
enum Part {
    /// The piece in this slot of the previous registry.
    Shared(u32),
    New(Arc<Piece>),
    /// New, waiting in the batch to be parsed.
    Pending,
}

/// Builds a registry from a clients file's pieces, handed over in the file's order (as
/// [`clients_file::read_in_pieces`] reads them). A piece the previous registry has is
/// shared with it; new pieces are parsed a batch at a time, on all cores.
pub struct Builder<'p> {
    previous: Option<&'p Registry>,
    /// The previous registry's pieces by digest, with their slots there.
    known: HashMap<Digest, u32>,
    parts: Vec<Part>,
    /// `parts` before this one are parsed.
    parsed: usize,
    /// The text of new pieces not parsed yet, and where each is in it.
    batch: String,
    batch_pieces: Vec<(Range<usize>, Digest)>,
    /// The digests of the pieces so far.
    digests: Vec<Digest>,
    bytes: usize,
    /// A piece was not UTF-8, outside the usual shape, or held a client that does not
    /// validate.
    refused: bool,
}

impl<'p> Builder<'p> {
    pub fn new(previous: Option<&'p Registry>) -> Self {
        let known = previous
            .into_iter()
            .flat_map(|p| p.table.iter().enumerate())
            .filter_map(|(slot, piece)| {
                let digest = piece.as_ref()?.digest?;
                Some((digest, u32::try_from(slot).ok()?))
            })
            .collect();
        Self {
            previous,
            known,
            parts: Vec::new(),
            parsed: 0,
            batch: std::mem::take(&mut *SPARE_BATCH.lock().expect("spare batch lock")),
            batch_pieces: Vec::new(),
            digests: Vec::new(),
            bytes: 0,
            refused: false,
        }
    }

    /// Takes the next piece. `false` when the file cannot be built from pieces (see
    /// [`Self::finish`]): further pieces are of no use then.
    pub fn piece(&mut self, text: &[u8]) -> bool {
        self.add(text, Digest::of(text))
    }

    fn add(&mut self, text: &[u8], digest: Digest) -> bool {
        if self.refused {
            return false;
        }
        self.digests.push(digest);
        self.bytes += text.len();
        if let Some(&slot) = self.known.get(&digest) {
            self.parts.push(Part::Shared(slot));
            return true;
        }
        let Ok(text) = std::str::from_utf8(text) else {
            self.refused = true;
            return false;
        };
        let start = self.batch.len();
        self.batch.push_str(text);
        self.batch_pieces.push((start..self.batch.len(), digest));
        self.parts.push(Part::Pending);
        self.batch.len() < BATCH || self.parse_batch(false)
    }

    /// Parses the pieces in the batch; `ends_file` when the last of them is the file's last.
    fn parse_batch(&mut self, ends_file: bool) -> bool {
        if self.refused || self.batch_pieces.is_empty() {
            return !self.refused;
        }
        let ranges: Vec<Range<usize>> = self.batch_pieces.iter().map(|(r, _)| r.clone()).collect();
        let (previous, batch_pieces) = (self.previous, &self.batch_pieces);
        let read = clients_file::read_pieces_with(&self.batch, &ranges, ends_file, |i, specs| {
            Arc::new(Piece::new(Some(batch_pieces[i].1), specs, previous))
        });
        self.batch.clear();
        self.batch_pieces.clear();
        let Some(read) = read else {
            self.refused = true;
            return false;
        };
        let mut read = read.into_iter();
        for part in &mut self.parts[self.parsed..] {
            if matches!(part, Part::Pending) {
                *part = Part::New(read.next().expect("a piece read for each one pending"));
            }
        }
        self.parsed = self.parts.len();
        true
    }

    /// Whether every piece so far was taken.
    pub fn accepted(&self) -> bool {
        !self.refused
    }

    /// Stands for the text handed over: the same as [`CutText::digest`] of it.
    pub fn digest(&self) -> Digest {
        digest_of_pieces(&self.digests)
    }

    /// How many bytes of text were handed over.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The registry; `None` when the file has to be read whole for [`clients_file::parse`]
    /// to say what is wrong with it, or to read it the general way: a piece was not UTF-8,
    /// outside the usual shape or held a client that does not validate, or an id is in two
    /// pieces.
    pub fn finish(mut self) -> Option<Registry> {
        let ends_file = matches!(self.parts.last(), Some(Part::Pending));
        if !self.parse_batch(ends_file) {
            return None;
        }
        let parts = std::mem::take(&mut self.parts);
        let (registry, repeated) = match self.previous {
            Some(previous) => Registry::patch(previous, parts),
            None => Registry::index(
                parts
                    .into_iter()
                    .filter_map(|part| match part {
                        Part::New(piece) => Some(piece),
                        Part::Shared(_) | Part::Pending => None,
                    })
                    .collect(),
            ),
        };
        (!repeated).then_some(registry)
    }
}

/// The batch buffer of the last [`Builder`], for the next: a reload then takes no memory
/// for it that the last one did not.
static SPARE_BATCH: Mutex<String> = Mutex::new(String::new());

impl Drop for Builder<'_> {
    fn drop(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        // One grown for a piece far larger than usual is let go.
        if batch.capacity() <= 2 * BATCH {
            batch.clear();
            if let Ok(mut spare) = SPARE_BATCH.lock() {
                *spare = batch;
            }
        }
    }
}

/// Every client, by id.
#[derive(Debug)]
pub struct Registry {
    /// The pieces, by slot. A piece shared with the registry this one replaced keeps its slot
    /// there, so that the index can be copied and patched rather than built again; `None`
    /// is a free slot.
    table: Vec<Option<Arc<Piece>>>,
    /// The slots of the pieces, in the file's order.
    order: Vec<u32>,
    /// Open addressing with linear probing, at most half full, so a miss ends soon.
    index: Box<[Place]>,
    len: usize,
    /// Compared against when the client id is unknown, so that path does the same work.
    decoys: [Slot; MAX_SECRETS],
    /// Every client's place in id order, for listings: sorted when first asked for, once
    /// per registry, rather than at every load (most are never listed) or every page.
    by_id: OnceLock<Box<[Place]>>,
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
        let mut builder = Builder::new(previous);
        for (range, digest) in &text.pieces {
            let piece = text.text.as_bytes().get(range.clone()).unwrap_or_default();
            if !builder.add(piece, *digest) {
                break;
            }
        }
        match builder.finish() {
            Some(registry) => Ok(registry),
            // A piece outside the usual shape, a client that does not validate, an id in
            // two pieces: the whole text's parse says what is wrong, or reads it the
            // general way.
            None => Self::parse_whole(text.text, previous),
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

    /// Whether every client was read piece by piece, so that a [`Builder`] can share
    /// this registry's pieces with the next.
    pub fn built_from_pieces(&self) -> bool {
        self.table.iter().flatten().all(|p| p.digest.is_some())
    }

    /// Indexes the clients of `pieces` afresh, and says whether an id repeats (only its
    /// first client is indexed then).
    fn index(pieces: Vec<Arc<Piece>>) -> (Self, bool) {
        let len: usize = pieces.iter().map(|p| p.clients.len()).sum();
        let table: Vec<_> = pieces.into_iter().map(Some).collect();
        let mut index = spare_index(index_len(len));
        index.fill(Place::EMPTY);
        let mut repeated = false;
        for slot in 0..table.len() {
            repeated |= insert(&mut index, &table, slot);
        }
        let registry = Self {
            order: (0..table.len())
                .map(|slot| u32::try_from(slot).expect("fewer than 2^32 pieces"))
                .collect(),
            table,
            index,
            len,
            decoys: decoy_slots(),
            by_id: OnceLock::new(),
        };
        (registry, repeated)
    }

    /// The registry of the file whose pieces are `parts`, made from `previous` when only a
    /// part of it changed: unchanged pieces keep their slots, so a copy of its index only
    /// loses the clients of the pieces gone and gains those of the new ones. Says whether
    /// an id repeats, as [`Self::index`] does.
    fn patch(previous: &Self, parts: Vec<Part>) -> (Self, bool) {
        let mut kept = vec![false; previous.table.len()];
        let mut repeated = false;
        let (mut len, mut added) = (0, 0);
        for part in &parts {
            match part {
                Part::Shared(slot) => {
                    let slot = *slot as usize;
                    let clients = previous.piece(slot).clients.len();
                    // The same piece twice in the file: its ids are in it twice.
                    repeated |= kept[slot] && clients > 0;
                    kept[slot] = true;
                    len += clients;
                }
                Part::New(piece) => {
                    len += piece.clients.len();
                    added += piece.clients.len();
                }
                Part::Pending => unreachable!("every piece is parsed before the registry is built"),
            }
        }
        let removed: usize = (previous.table.iter().zip(&kept))
            .filter(|(piece, kept)| piece.is_some() && !**kept)
            .map(|(piece, _)| piece.as_ref().map_or(0, |p| p.clients.len()))
            .sum();
        // Patching costs about what it changes; building afresh, what there is. A file
        // that grew or shrank past a power of two needs an index of another length.
        if previous.index.len() != index_len(len) || removed + added > len / 2 {
            let pieces = parts
                .into_iter()
                .map(|part| match part {
                    Part::Shared(slot) => Arc::clone(previous.piece(slot as usize)),
                    Part::New(piece) => piece,
                    Part::Pending => {
                        unreachable!("every piece is parsed before the registry is built")
                    }
                })
                .collect();
            return Self::index(pieces);
        }

        let mut index = spare_index(previous.index.len());
        index.copy_from_slice(&previous.index);
        let mut table = previous.table.clone();
        let mut free = Vec::new();
        for (slot, piece) in previous.table.iter().enumerate() {
            match piece {
                Some(piece) if !kept[slot] => {
                    for (at, &hash) in piece.hashes.iter().enumerate() {
                        remove(&mut index, &previous.table, Place::new(slot, at), hash);
                    }
                    table[slot] = None;
                    free.push(slot);
                }
                Some(_) => {}
                None => free.push(slot),
            }
        }
        // Lowest first.
        free.reverse();
        let mut order = Vec::with_capacity(parts.len());
        for part in parts {
            let slot = match part {
                Part::Shared(slot) => slot as usize,
                Part::New(piece) => {
                    let slot = free.pop().unwrap_or_else(|| {
                        table.push(None);
                        table.len() - 1
                    });
                    table[slot] = Some(piece);
                    repeated |= insert(&mut index, &table, slot);
                    slot
                }
                Part::Pending => unreachable!("every piece is parsed before the registry is built"),
            };
            order.push(u32::try_from(slot).expect("fewer than 2^32 pieces"));
        }
        while table.last().is_some_and(Option::is_none) {
            table.pop();
        }
        let registry = Self {
            table,
            order,
            index,
            len,
            decoys: decoy_slots(),
            by_id: OnceLock::new(),
        };
        (registry, repeated)
    }

    fn piece(&self, slot: usize) -> &Arc<Piece> {
        piece(&self.table, slot)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every client, in the file's order.
    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.order
            .iter()
            .flat_map(|&slot| self.piece(slot as usize).clients.iter())
    }

    pub fn get(&self, id: &str) -> Option<&Client> {
        let place = self.index[probe(&self.index, &self.table, id, id_hash(id)).ok()?];
        Some(self.at(place))
    }

    fn at(&self, place: Place) -> &Client {
        &self.piece(place.piece as usize).clients[place.at as usize]
    }

    /// The clients in id order, from the first whose id comes after `after`. The first call
    /// on a registry sorts it (for 100 000 clients, milliseconds: call it off the async
    /// workers); later ones find their start by binary search.
    pub fn in_id_order_after(&self, after: Option<&str>) -> impl Iterator<Item = &Client> {
        let sorted = self.by_id.get_or_init(|| {
            let mut places: Vec<Place> = self
                .order
                .iter()
                .flat_map(|&slot| {
                    (0..self.piece(slot as usize).clients.len())
                        .map(move |at| Place::new(slot as usize, at))
                })
                .collect();
            places.sort_unstable_by(|&a, &b| self.at(a).id.cmp(&self.at(b).id));
            places.into_boxed_slice()
        });
        let start = after.map_or(0, |after| {
            sorted.partition_point(|&place| self.at(place).id.as_str() <= after)
        });
        sorted[start..].iter().map(|&place| self.at(place))
    }

    /// Authenticates a client by secret at `now` (Unix seconds).
    ///
    /// Returns `None` for an unknown id, a wrong or expired secret, and a disabled client
    /// alike, after the same hashing and comparisons in every case.
    pub fn authenticate(&self, id: &str, secret: &str, now: i64) -> Option<&Client> {
        let presented = words(&sha256(secret.as_bytes()));
        let client = self.get(id);
        let slots = client.map_or(&self.decoys, |c| &c.slots);
        let mut matched = Choice::from(0);
        for slot in slots {
            // Expiry is not secret; only the digest comparison must not leak.
            let live = Choice::from(u8::from(now < slot.expires));
            matched |= slot.digest.as_slice().ct_eq(presented.as_slice()) & live;
        }
        let client = client?;
        // An empty secret is no secret, whatever hash a file holds for it (an import of the
        // seed's `{"id": ""}` would otherwise let `curl -u id:` in). Whether it is empty the
        // caller knows already, so this test leaks nothing.
        (bool::from(matched) && !client.disabled && !secret.is_empty()).then_some(client)
    }
}

/// The piece in `slot` of `table`, which the index or the file's order names.
fn piece(table: &[Option<Arc<Piece>>], slot: usize) -> &Arc<Piece> {
    table[slot].as_ref().expect("a slot in use holds a piece")
}

/// The index slot `hash` starts probing at.
fn home(index: &[Place], hash: u64) -> usize {
    // The low bits of a keyed hash are as good as any; the table is a power of two long.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "only the low bits are wanted"
    )]
    let home = hash as usize & (index.len() - 1);
    home
}

/// Looks `id` (hashed to `hash`) up in `index`: `Ok` with the slot that places it, or `Err`
/// with the empty slot where it would go.
fn probe(
    index: &[Place],
    table: &[Option<Arc<Piece>>],
    id: &str,
    hash: u64,
) -> Result<usize, usize> {
    let mask = index.len() - 1;
    let mut slot = home(index, hash);
    // Never more than half full, so an empty slot always ends the walk.
    loop {
        let place = index[slot];
        if place == Place::EMPTY {
            return Err(slot);
        }
        let piece = piece(table, place.piece as usize);
        let at = place.at as usize;
        if piece.hashes[at] == hash && piece.clients[at].id == id {
            return Ok(slot);
        }
        slot = (slot + 1) & mask;
    }
}

/// Indexes the clients of the piece in `slot` of `table`; says whether one of their ids
/// was indexed already (that client is then left out).
fn insert(index: &mut [Place], table: &[Option<Arc<Piece>>], slot: usize) -> bool {
    let piece = piece(table, slot);
    let mut repeated = false;
    for (at, (client, &hash)) in piece.clients.iter().zip(&piece.hashes).enumerate() {
        match probe(index, table, &client.id, hash) {
            Ok(_) => repeated = true,
            Err(free) => index[free] = Place::new(slot, at),
        }
    }
    repeated
}

/// Takes `place` (whose client's id hashes to `hash`) out of `index`, whose places are all
/// in `table`. The clients after it in its run move back to fill the gap, as far as their
/// own home slots allow, so that no lookup walks past an empty slot to reach them.
fn remove(index: &mut [Place], table: &[Option<Arc<Piece>>], place: Place, hash: u64) {
    let mask = index.len() - 1;
    let mut gap = home(index, hash);
    while index[gap] != place {
        if index[gap] == Place::EMPTY {
            return;
        }
        gap = (gap + 1) & mask;
    }
    let mut next = gap;
    loop {
        next = (next + 1) & mask;
        let moving = index[next];
        if moving == Place::EMPTY {
            break;
        }
        let hash = piece(table, moving.piece as usize).hashes[moving.at as usize];
        // It may fill the gap unless its home lies after the gap, up to where it is.
        let from_home = next.wrapping_sub(home(index, hash)) & mask;
        let from_gap = next.wrapping_sub(gap) & mask;
        if from_home >= from_gap {
            index[gap] = moving;
            gap = next;
        }
    }
    index[gap] = Place::EMPTY;
}

/// The index of the last registry dropped, for the next one to be built in: an index of a
/// large registry is megabytes, which each reload would otherwise take anew and give back
/// after the swap, leaving the allocator a hole to fill or (with its release of freed
/// memory delayed) the process that much larger for a while.
static SPARE_INDEX: Mutex<Option<Box<[Place]>>> = Mutex::new(None);

/// An index of `len` places, with anything in them.
fn spare_index(len: usize) -> Box<[Place]> {
    let spare = SPARE_INDEX.lock().map(|mut s| s.take()).ok().flatten();
    match spare {
        Some(index) if index.len() == len => index,
        // One of another length is let go, here, off the request path.
        _ => vec![Place::EMPTY; len].into_boxed_slice(),
    }
}

fn keep_spare_index(index: Box<[Place]>) {
    // Small ones are not worth keeping. A registry dropped while another is built (never
    // waited for: the drop may be on a request's path) lets its index go.
    if index.len() >= 4096
        && let Ok(mut spare) = SPARE_INDEX.try_lock()
    {
        *spare = Some(index);
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
        keep_spare_index(std::mem::take(&mut self.index));
        let table = std::mem::take(&mut self.table);
        let freed: usize = table
            .iter()
            .flatten()
            .filter(|p| Arc::strong_count(p) == 1)
            .map(|p| p.clients.len())
            .sum();
        if freed >= FREE_ELSEWHERE_FROM {
            free_elsewhere(table);
        }
    }
}

/// Frees `table` on a new thread that ends when it is done: mimalloc hands the pages a
/// thread emptied back to the system when the thread ends, where a long-lived thread that
/// only ever frees would hold on to them.
fn free_elsewhere(table: Vec<Option<Arc<Piece>>>) {
    // If no thread can be started, the closure is dropped here, and the pieces with it.
    let _detached = std::thread::Builder::new()
        .name("registry-free".into())
        .spawn(move || drop(table));
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn decoy_slots() -> [Slot; MAX_SECRETS] {
    let mut slots = [Slot {
        digest: [0; 4],
        // Live, so the decoys cost exactly what a real client's slots cost; a random digest
        // that nobody knows the preimage of never matches.
        expires: Slot::NEVER,
    }; MAX_SECRETS];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    for slot in &mut slots {
        let mut digest = [0; 32];
        rng.fill(&mut digest)
            .expect("system randomness is available");
        slot.digest = words(&digest);
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

    /// Listings page through the clients in id order, whatever the file's order and however
    /// the registry was built, starting after any id, listed or not.
    #[test]
    fn clients_in_id_order_after_an_id() {
        let hash = format_hash(&hash_secret("s"));
        let text: String = ["c", "a", "b-2", "aa", "b"]
            .iter()
            .map(|id| format!("[clients.{id}]\nsecret_hashes = [\"{hash}\"]\n\n"))
            .collect();
        let ids = |r: &Registry, after: Option<&str>| -> Vec<String> {
            r.in_id_order_after(after)
                .map(|c| c.id.to_string())
                .collect()
        };
        for r in [registry(&text), Registry::parse(&text, None).unwrap()] {
            assert_eq!(ids(&r, None), ["a", "aa", "b", "b-2", "c"]);
            assert_eq!(ids(&r, Some("aa")), ["b", "b-2", "c"]);
            assert_eq!(
                ids(&r, Some("ab")),
                ["b", "b-2", "c"],
                "after an id not listed"
            );
            assert_eq!(ids(&r, Some("")), ["a", "aa", "b", "b-2", "c"]);
            assert!(ids(&r, Some("c")).is_empty());
        }
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
    fn an_empty_secret_never_authenticates() {
        let h = format_hash(&hash_secret(""));
        let r = registry(&format!("[clients.a]\nsecret_hashes = [\"{h}\"]\n"));
        assert!(r.authenticate("a", "", 0).is_none());
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
        assert!(before.table.len() > 2, "{} pieces", before.table.len());
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
        assert_eq!(*last1.scopes, ["write"]);
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
        assert_eq!(*c.audiences, ["x"]);
    }

    /// The same clients, in the same order, found the same way.
    fn assert_same(patched: &Registry, fresh: &Registry, text: &str) {
        assert_eq!(patched.len(), fresh.len(), "{text}");
        let ids: Vec<&str> = fresh.iter().map(|c| c.id.as_str()).collect();
        let patched_ids: Vec<&str> = patched.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(patched_ids, ids);
        for client in fresh.iter() {
            let found = patched.get(&client.id).expect("every client is found");
            assert_eq!(found.id, client.id);
            assert_eq!(found.scopes, client.scopes);
            assert_eq!(found.audiences, client.audiences);
        }
        assert!(patched.get("not-a-client").is_none());
    }

    /// A small generator, so the test is the same every time.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(self.0 >> 33).unwrap() % n.max(1)
        }
    }

    #[test]
    fn a_patched_index_finds_what_a_fresh_one_does() {
        let h = format_hash(&hash_secret("s"));
        // Each client its own table; edits change, remove and add tables anywhere.
        let mut tables: Vec<(usize, String)> = (0..2_000).map(|i| (i, "read".to_owned())).collect();
        let render = |tables: &[(usize, String)]| -> String {
            tables
                .iter()
                .map(|(i, scope)| {
                    format!(
                        "[clients.c{i:05}]\nsecret_hashes = [\"{h}\"]\nscopes = [\"{scope}\"]\naudiences = [\"https://{}\"]\n\n",
                        i % 7
                    )
                })
                .collect()
        };
        let mut rng = Lcg(7);
        let mut next_id = 2_000;
        let mut previous = Registry::parse(&render(&tables), None).unwrap();
        let mut patched_rounds = 0;
        for round in 0..60 {
            match round % 4 {
                0 => {
                    let at = rng.below(tables.len());
                    tables[at].1 = format!("round{round}");
                }
                1 => {
                    let at = rng.below(tables.len());
                    let n = 1 + rng.below(80);
                    tables.drain(at..(at + n).min(tables.len()));
                }
                2 => {
                    let at = rng.below(tables.len());
                    for _ in 0..1 + rng.below(80) {
                        tables.insert(at, (next_id, "new".to_owned()));
                        next_id += 1;
                    }
                }
                _ => {
                    // Two stretches swap places: pieces move without changing.
                    let (a, b) = (
                        rng.below(tables.len() / 2),
                        tables.len() / 2 + rng.below(tables.len() / 2),
                    );
                    tables[a..b].rotate_left((b - a) / 2);
                }
            }
            let text = render(&tables);
            let fresh = Registry::parse(&text, None).unwrap();
            let patched = Registry::parse(&text, Some(&previous)).unwrap();
            assert_same(&patched, &fresh, &text);
            // Built afresh, a registry has its pieces in slots 0, 1, 2…; patched, the slots of
            // pieces that stay are kept, and new pieces fill those freed.
            if !patched
                .order
                .iter()
                .enumerate()
                .all(|(i, &slot)| slot as usize == i)
            {
                patched_rounds += 1;
            }
            previous = patched;
        }
        assert!(patched_rounds > 30, "{patched_rounds} of 60 rounds patched");
    }

    #[test]
    fn an_id_repeated_by_a_reload_is_refused() {
        let h = format_hash(&hash_secret("s"));
        let table = |i: usize| format!("[clients.c{i:03}]\nsecret_hashes = [\"{h}\"]\n\n");
        let text: String = (0..300).map(table).collect();
        let before = Registry::parse(&text, None).unwrap();
        // A client of an unchanged piece, again in a new one.
        let again = format!("{text}{}", table(5));
        let err = Registry::parse(&again, Some(&before)).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        // A whole piece, again: both copies are pieces `before` has.
        let pieces = clients_file::pieces(&text);
        let again = format!("{text}{}", &text[pieces[1].clone()]);
        let err = Registry::parse(&again, Some(&before)).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn equal_lists_are_shared() {
        let h = format_hash(&hash_secret("s"));
        let text: String = (0..300)
            .map(|i| {
                format!(
                    "[clients.c{i:03}]\nsecret_hashes = [\"{h}\"]\nscopes = [\"a\", \"b\"]\naudiences = [\"https://{}\"]\n\n",
                    i % 3
                )
            })
            .collect();
        let r = Registry::parse(&text, None).unwrap();
        let (first, last) = (r.get("c000").unwrap(), r.get("c297").unwrap());
        assert!(Arc::ptr_eq(&first.scopes, &last.scopes));
        assert!(Arc::ptr_eq(&first.audiences, &last.audiences));
        assert!(!Arc::ptr_eq(
            &first.audiences,
            &r.get("c001").unwrap().audiences
        ));
        assert_eq!(*last.audiences, ["https://0"]);
    }
}
