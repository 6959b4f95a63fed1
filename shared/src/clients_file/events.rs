//! The clients file read straight from `toml_parser`'s events: no document tree, no serde.
//!
//! This reader knows one shape, the one the daemon writes and people keep to: `[clients.ID]`
//! headers, each followed by the known fields as plain (undotted) keys with values of the
//! right type. Within that shape the meaning of the file is plain, and the lexer, the parser
//! and the decoders of strings, keys and datetimes are the ones the `toml` crate uses, so
//! escapes, literal and multi-line strings, quoted keys, comments and CRLF read the same.
//! Anything outside it — every syntax error, a duplicate, an unknown key, a dotted key, an
//! array of tables, a `[clients]` table, a value of the wrong type — makes [`parse`] answer
//! `None`, and the caller reads the file through the `toml` crate instead. Which files are
//! accepted, and what each refusal says, is therefore always decided by one full TOML
//! implementation; this one only gets the common case there sooner.
//!
//! The file is cut into pieces just before some of the lines that start with `[`, and the
//! pieces are read on all cores. Only a multi-line string can run across such a line, and a
//! piece cut inside one ends without the newline token every accepted piece must end with,
//! so a bad cut sends the file the slow way rather than misreading it. Where to cut depends
//! only on the header line there (see [`CutRule`]), so an edit changes the pieces it touches
//! and leaves the others as they were: the daemon keeps what it read from each piece and
//! reads again only the pieces whose text changed.

use std::{
    borrow::Cow,
    io,
    num::NonZero,
    ops::Range,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

use toml_parser::{
    ErrorSink, ParseError, Raw, Source, Span,
    decoder::{Encoding, ScalarKind},
    lexer::{Token, TokenKind},
    parser::{self, EventReceiver, ValidateWhitespace},
};

use super::{ClientSpec, ClientsFileError, RawClient, RawExpiringHash, RawSecretHash, Refused};

/// Where a piece may end: before a header line, once the piece has `min_len` bytes, if the
/// line's hash is a multiple of `one_in` (a power of two); before any header once it has
/// `max_len`.
#[derive(Debug, Clone, Copy)]
pub(super) struct CutRule {
    pub(super) min_len: usize,
    pub(super) one_in: u64,
    pub(super) max_len: usize,
}

/// Pieces of 4 KiB and more, 10 KiB on average in a file of the usual shape: small enough
/// that a one-line edit rereads little, large enough that the per-piece work (a hash, a map
/// entry, a few vectors) is lost in the reading.
pub(super) const CUT: CutRule = CutRule {
    min_len: 4 * 1024,
    one_in: 32,
    max_len: 256 * 1024,
};

/// Reads `text` if it has the common shape; `None` means "ask the `toml` crate".
///
/// `Some(Err(_))` is a file of the right shape whose values do not validate; the error is
/// the one the `toml`-crate path gives for it (the smallest failing id, at its header line).
pub(super) fn parse(text: &str) -> Option<Result<Vec<ClientSpec>, ClientsFileError>> {
    parse_cut(text, CUT)
}

/// [`parse`], with pieces cut by `rule` (tests cut small files everywhere).
pub(super) fn parse_cut(
    text: &str,
    rule: CutRule,
) -> Option<Result<Vec<ClientSpec>, ClientsFileError>> {
    let read = read_all(text, &pieces(text, rule), true, |_, read| Some(read))?;
    let mut specs = Vec::with_capacity(read.iter().map(|r| r.valid.len()).sum());
    let mut invalid = Vec::new();
    for piece in read {
        specs.extend(piece.valid);
        invalid.extend(piece.invalid);
    }
    sort_by_id(&mut specs, |s| &s.id);
    sort_by_id(&mut invalid, |i| &i.refused.id);
    let duplicate = specs.windows(2).any(|w| w[0].id == w[1].id)
        || invalid
            .windows(2)
            .any(|w| w[0].refused.id == w[1].refused.id)
        || invalid
            .iter()
            .any(|i| specs.binary_search_by(|s| s.id.cmp(&i.refused.id)).is_ok());
    if duplicate {
        // The `toml` crate names both places.
        return None;
    }
    // The other path validates in id order and stops at the first problem.
    Some(match invalid.into_iter().next() {
        Some(Invalid { refused, at }) => Err(refused.into_error(text, at)),
        None => Ok(specs),
    })
}

/// Each client of `text` with where its table is: from its header's `[` to the end of the
/// line of its last value (past its line break, when there is one), made into a `T` by
/// `each` on the thread that read it, in the file's order. `None` unless every piece has
/// the usual shape and all its clients validate; an id may be in two tables.
pub(super) fn read_tables<T: Send>(
    text: &str,
    each: impl Fn(ClientSpec, Range<usize>) -> T + Sync,
) -> Option<Vec<T>> {
    let read = read_all(text, &pieces(text, CUT), true, |_, read| {
        read.invalid.is_empty().then(|| {
            read.valid
                .into_iter()
                .zip(read.tables)
                .map(|(spec, table)| each(spec, table))
                .collect::<Vec<T>>()
        })
    })?;
    let mut all = Vec::with_capacity(read.iter().map(Vec::len).sum());
    for piece in read {
        all.extend(piece);
    }
    Some(all)
}

/// The clients of each of `ranges` (pieces of `text`), in the file's order; `None` unless
/// every piece has the usual shape and all its clients validate.
pub(super) fn read_valid(text: &str, ranges: &[Range<usize>]) -> Option<Vec<Vec<ClientSpec>>> {
    read_valid_with(text, ranges, true, |_, specs| specs)
}

/// [`read_valid`], each piece's clients turned into a `T` by `make` (given the piece's index
/// in `ranges`) on the thread that read them. `ends_file` says whether the end of `text` is
/// the end of the file: only the file's last piece may end other than on a newline.
pub(super) fn read_valid_with<T: Send>(
    text: &str,
    ranges: &[Range<usize>],
    ends_file: bool,
    make: impl Fn(usize, Vec<ClientSpec>) -> T + Sync,
) -> Option<Vec<T>> {
    read_all(text, ranges, ends_file, |index, read| {
        read.invalid.is_empty().then(|| make(index, read.valid))
    })
}

/// Reads `ranges` of `text` on all cores, each piece's [`Read`] turned into a `T` by `each`
/// on the thread that read it; `None` as soon as one is outside the shape or `each` says
/// `None`.
fn read_all<T: Send>(
    text: &str,
    ranges: &[Range<usize>],
    ends_file: bool,
    each: impl Fn(usize, Read) -> Option<T> + Sync,
) -> Option<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZero::get)
        .min(ranges.len());
    let next = AtomicUsize::new(0);
    let outside = AtomicBool::new(false);
    let work = || read_pieces(text, ranges, ends_file, &next, &outside, &each);
    let mut read: Vec<(usize, T)> = std::thread::scope(|scope| {
        // A helper that cannot be started leaves its pieces to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("clients-parse".into())
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut read = work();
        for helper in helpers {
            // A helper panics only when out of memory; its pieces then count as unread.
            match helper.join() {
                Ok(theirs) => read.extend(theirs),
                Err(_) => outside.store(true, Ordering::Relaxed),
            }
        }
        read
    });
    if outside.load(Ordering::Relaxed) || read.len() != ranges.len() {
        return None;
    }
    read.sort_unstable_by_key(|(index, _)| *index);
    Some(read.into_iter().map(|(_, read)| read).collect())
}

/// What one piece held: its clients, and those that did not validate.
#[derive(Default)]
struct Read {
    valid: Vec<ClientSpec>,
    /// Where the table of each of `valid` is in the whole text (see [`read_tables`]).
    tables: Vec<Range<usize>>,
    invalid: Vec<Invalid>,
}

struct Invalid {
    refused: Refused,
    /// Byte offset of the table's header in the whole text.
    at: usize,
}

/// Sorts as comparing the ids as `str`s would, but first by their leading 16 bytes read as
/// one integer: ids mostly differ there, and those keys sit in one array rather than behind
/// a pointer each.
fn sort_by_id<T>(items: &mut [T], id: impl Fn(&T) -> &str) {
    fn leading(id: &str) -> u128 {
        let mut bytes = [0; 16];
        let n = id.len().min(bytes.len());
        bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        // Zero padding orders a shorter id first, as `str` does; a tie goes to the full
        // comparison below.
        u128::from_be_bytes(bytes)
    }
    items.sort_by_cached_key(|item| leading(id(item)));
    for tied in items.chunk_by_mut(|a, b| leading(id(a)) == leading(id(b))) {
        if tied.len() > 1 {
            tied.sort_unstable_by(|a, b| id(a).cmp(id(b)));
        }
    }
}

/// Byte ranges that cover `text`, each after the first starting a line with `[`.
pub(super) fn pieces(text: &str, rule: CutRule) -> Vec<Range<usize>> {
    let mut cutter = Cutter::new(rule);
    let mut starts = vec![0];
    while let Some(cut) = cutter.next(text.as_bytes(), 0, true) {
        starts.push(cut);
    }
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    starts.iter().zip(ends).map(|(&s, e)| s..e).collect()
}

/// Finds, in text that may arrive a part at a time, where [`CutRule`] cuts it.
pub(super) struct Cutter {
    rule: CutRule,
    /// `one_in - 1`: a hash is a multiple of `one_in` when it has none of these bits.
    one_in_mask: u64,
    newline_bracket: memchr::memmem::Finder<'static>,
    /// Where the piece being cut starts.
    last: usize,
    /// The next header considered starts at `from` or later (the `\n` before it at
    /// `from - 1` or later).
    from: usize,
}

impl Cutter {
    pub(super) fn new(rule: CutRule) -> Self {
        Self {
            rule,
            one_in_mask: rule.one_in.max(1).next_power_of_two() - 1,
            newline_bracket: memchr::memmem::Finder::new(b"\n["),
            last: 0,
            from: rule.min_len.max(1),
        }
    }

    /// The start of the piece after the one being cut, given the text from offset `base`
    /// on as far as it is known (`base` no later than that piece's start; `eof` when the
    /// text ends there). `None` when no cut can be decided before more text is known, or,
    /// at the end of the text, when there are no more cuts.
    pub(super) fn next(&mut self, known: &[u8], base: usize, eof: bool) -> Option<usize> {
        loop {
            let rest = known.get(self.from - 1 - base..)?;
            let Some(found) = self.newline_bracket.find(rest) else {
                // None in what is known: the search goes on from its last byte.
                self.from = self.from.max(base + known.len());
                return None;
            };
            let header = self.from + found;
            let line = &known[header - base..];
            let line = match memchr::memchr(b'\n', line) {
                Some(end) => &line[..end],
                None if eof => line,
                // The line's hash decides; it has to be known whole.
                None => return None,
            };
            if header - self.last >= self.rule.max_len || line_hash(line) & self.one_in_mask == 0 {
                self.last = header;
                self.from = header + self.rule.min_len.max(1);
                return Some(header);
            }
            self.from = header + 1;
        }
    }
}

/// How much is read from the file at a time.
pub(super) const CHUNK: usize = 256 * 1024;

/// Reads `reader` to its end and hands `each` the pieces [`pieces`] would cut its text
/// into, one by one and in order, holding no more of the text than a piece and a chunk,
/// in `buf` (whatever it holds). Stops early, without an error, when `each` returns
/// `false`. Returns how many bytes were read.
///
/// The pieces are bytes: a piece of a file that is not UTF-8 may not be either.
pub(super) fn read_in_pieces(
    reader: &mut dyn io::Read,
    rule: CutRule,
    chunk: usize,
    buf: &mut Vec<u8>,
    each: &mut dyn FnMut(&[u8]) -> bool,
) -> io::Result<usize> {
    let chunk = chunk.max(1);
    let mut cutter = Cutter::new(rule);
    // `buf[..filled]` is the text from offset `base` on: the piece being cut and whatever
    // follows it.
    if buf.len() < chunk {
        buf.resize(chunk, 0);
    }
    let (mut base, mut filled) = (0, 0);
    loop {
        if buf.len() - filled < chunk {
            // The piece being cut fills the buffer: make room for another chunk of it.
            buf.resize(filled + chunk, 0);
        }
        let n = match reader.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        let eof = n == 0;
        let mut start = cutter.last;
        while let Some(cut) = cutter.next(&buf[..filled], base, eof) {
            if !each(&buf[start - base..cut - base]) {
                return Ok(base + filled);
            }
            start = cut;
        }
        if eof {
            each(&buf[start - base..filled]);
            return Ok(base + filled);
        }
        // What is left is the start of the next piece: it moves to the front.
        buf.copy_within(start - base..filled, 0);
        filled -= start - base;
        base = start;
    }
}

/// A cheap, fixed hash of a header line, so that the same line is a cut in every file it is
/// in. Eight bytes at a time (a reload cuts the whole file, and looks at most of its header
/// lines), then mixed so that every bit of the line counts in the low bits tested.
fn line_hash(line: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut words = line.chunks_exact(8);
    let mut hash = line.len() as u64;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        hash = (hash.rotate_left(23) ^ word).wrapping_mul(K);
    }
    let mut tail = [0; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    hash = (hash.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // The finalizer of MurmurHash3.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Takes pieces off the shared counter until none are left, returning what `each` made of
/// each with its index. Stops early, and sets `outside`, when a piece (read here or by
/// another thread) is outside the shape or `each` made nothing of it.
fn read_pieces<T>(
    text: &str,
    ranges: &[Range<usize>],
    ends_file: bool,
    next: &AtomicUsize,
    outside: &AtomicBool,
    each: &impl Fn(usize, Read) -> Option<T>,
) -> Vec<(usize, T)> {
    let mut read = Vec::new();
    let mut tokens = Vec::new();
    while !outside.load(Ordering::Relaxed) {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(range) = ranges.get(index) else {
            break;
        };
        let last = ends_file && range.end == text.len();
        match read_piece(text, range.clone(), last, &mut tokens).and_then(|r| each(index, r)) {
            Some(made) => read.push((index, made)),
            None => outside.store(true, Ordering::Relaxed),
        }
    }
    read
}

fn read_piece(
    text: &str,
    range: Range<usize>,
    last: bool,
    tokens: &mut Vec<Token>,
) -> Option<Read> {
    let piece = text.get(range.clone())?;
    let source = Source::new(piece);
    tokens.clear();
    tokens.extend(source.lex());
    // Every piece but the last must end on a newline of its own (see the module docs).
    if !last {
        let before_eof = tokens.len().checked_sub(2).and_then(|i| tokens.get(i))?;
        if before_eof.kind() != TokenKind::Newline || before_eof.span().end() != piece.len() {
            return None;
        }
    }
    let mut reader = Reader {
        source,
        base: range.start,
        outside: false,
        state: State::Between,
        header: Vec::new(),
        header_at: 0,
        client: None,
        value_end: 0,
        list: Vec::new(),
        read: Read::default(),
    };
    let mut errors: Option<ParseError> = None;
    let mut validated = ValidateWhitespace::new(&mut reader, source);
    parser::parse_document(tokens, &mut validated, &mut errors);
    reader.finish_client();
    (errors.is_none() && !reader.outside && matches!(reader.state, State::Between))
        .then_some(reader.read)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SecretHashes,
    Audiences,
    Scopes,
    TokenTtl,
    Disabled,
}

impl Field {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "secret_hashes" => Self::SecretHashes,
            "audiences" => Self::Audiences,
            "scopes" => Self::Scopes,
            "token_ttl" => Self::TokenTtl,
            "disabled" => Self::Disabled,
            _ => return None,
        })
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InlineField {
    Hash,
    Expires,
}

/// Where in the shape the last event left the reader.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Between lines: a header or a key may come.
    Between,
    /// Inside `[ … ]`.
    Header,
    /// After a field's key, before `=`.
    Key(Field),
    /// After `=`.
    Value(Field),
    /// Inside a field's array.
    Array(Field),
    /// Inside `{ … }` in `secret_hashes`.
    Inline,
    InlineKey(InlineField),
    InlineValue(InlineField),
}

/// The table being read.
struct Pending {
    id: String,
    at: usize,
    seen: u8,
    raw: RawClient,
    hash: Option<String>,
    expires: Option<toml::value::Datetime>,
}

struct Reader<'i> {
    source: Source<'i>,
    /// Where the piece starts in the whole text.
    base: usize,
    outside: bool,
    state: State,
    header: Vec<Cow<'i, str>>,
    /// Where the `[` of the last header is, in the piece.
    header_at: usize,
    client: Option<Pending>,
    /// Where the last value read ends, in the piece.
    value_end: usize,
    /// The strings of the audience or scope list being read.
    list: Vec<String>,
    read: Read,
}

impl<'i> Reader<'i> {
    fn raw(&self, span: Span, encoding: Option<Encoding>) -> Option<Raw<'i>> {
        let text = self.source.input().get(span.start()..span.end())?;
        Some(Raw::new_unchecked(text, encoding, span))
    }

    fn decode_key(
        &self,
        span: Span,
        encoding: Option<Encoding>,
        error: &mut dyn ErrorSink,
    ) -> Option<Cow<'i, str>> {
        let mut key = Cow::Borrowed("");
        self.raw(span, encoding)?.decode_key(&mut key, error);
        Some(key)
    }

    fn decode_scalar(
        &self,
        span: Span,
        encoding: Option<Encoding>,
        error: &mut dyn ErrorSink,
    ) -> Option<(ScalarKind, Cow<'i, str>)> {
        let mut value = Cow::Borrowed("");
        let kind = self.raw(span, encoding)?.decode_scalar(&mut value, error);
        Some((kind, value))
    }

    fn leave(&mut self) {
        self.outside = true;
    }

    fn finish_client(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client.seen & Field::SecretHashes.bit() == 0 {
            self.leave();
            return;
        }
        // The rest of the last value's line is blanks and a comment at most.
        let input = self.source.input();
        let end = memchr::memchr(b'\n', &input.as_bytes()[self.value_end..])
            .map_or(input.len(), |newline| self.value_end + newline + 1);
        match super::validate(client.id, client.raw) {
            Ok(spec) => {
                self.read.valid.push(spec);
                self.read.tables.push(client.at..self.base + end);
            }
            Err(refused) => self.read.invalid.push(Invalid {
                refused,
                at: client.at,
            }),
        }
    }

    fn on_simple_key(&mut self, span: Span, encoding: Option<Encoding>, error: &mut dyn ErrorSink) {
        let Some(key) = self.decode_key(span, encoding, error) else {
            return self.leave();
        };
        match self.state {
            State::Header if self.header.len() < 2 => self.header.push(key),
            State::Between if self.client.is_some() => match Field::named(&key) {
                Some(field) => self.state = State::Key(field),
                None => self.leave(),
            },
            State::Inline => match &*key {
                "hash" => self.state = State::InlineKey(InlineField::Hash),
                "expires" => self.state = State::InlineKey(InlineField::Expires),
                _ => self.leave(),
            },
            _ => self.leave(),
        }
    }

    fn on_key_val_sep(&mut self) {
        let (Some(client), state) = (&mut self.client, self.state) else {
            return self.leave();
        };
        match state {
            State::Key(field) if client.seen & field.bit() == 0 => {
                client.seen |= field.bit();
                self.state = State::Value(field);
            }
            State::InlineKey(InlineField::Hash) if client.hash.is_none() => {
                self.state = State::InlineValue(InlineField::Hash);
            }
            State::InlineKey(InlineField::Expires) if client.expires.is_none() => {
                self.state = State::InlineValue(InlineField::Expires);
            }
            _ => self.leave(),
        }
    }

    fn on_scalar(&mut self, span: Span, encoding: Option<Encoding>, error: &mut dyn ErrorSink) {
        self.value_end = span.end();
        let Some((kind, value)) = self.decode_scalar(span, encoding, error) else {
            return self.leave();
        };
        let (Some(client), state) = (&mut self.client, self.state) else {
            return self.leave();
        };
        let raw = &mut client.raw;
        match (state, kind) {
            (State::Value(Field::TokenTtl), ScalarKind::String) => {
                raw.token_ttl = Some(value.into_owned());
                self.state = State::Between;
            }
            (State::Value(Field::Disabled), ScalarKind::Boolean(b)) => {
                raw.disabled = b;
                self.state = State::Between;
            }
            (State::Array(Field::SecretHashes), ScalarKind::String) => raw
                .secret_hashes
                .push(RawSecretHash::Current(value.into_owned())),
            (State::Array(Field::Audiences | Field::Scopes), ScalarKind::String) => {
                self.list.push(value.into_owned());
            }
            (State::InlineValue(InlineField::Hash), ScalarKind::String) => {
                client.hash = Some(value.into_owned());
                self.state = State::Inline;
            }
            (State::InlineValue(InlineField::Expires), ScalarKind::DateTime) => {
                match value.parse() {
                    Ok(expires) => {
                        client.expires = Some(expires);
                        self.state = State::Inline;
                    }
                    Err(_) => self.leave(),
                }
            }
            _ => self.leave(),
        }
    }
}

/// Every callback either follows the shape or marks the piece as outside it; a refused
/// array or inline table is skipped by the parser without descending into it.
impl EventReceiver for Reader<'_> {
    fn std_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if !matches!(self.state, State::Between) {
            return self.leave();
        }
        self.finish_client();
        self.header.clear();
        self.header_at = span.start();
        self.state = State::Header;
    }

    fn std_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        let (State::Header, [clients, id]) = (self.state, self.header.as_slice()) else {
            return self.leave();
        };
        if clients != "clients" {
            return self.leave();
        }
        self.client = Some(Pending {
            id: id.clone().into_owned(),
            at: self.base + self.header_at,
            seen: 0,
            raw: RawClient {
                secret_hashes: Vec::new(),
                audiences: Vec::new(),
                scopes: Vec::new(),
                token_ttl: None,
                disabled: false,
            },
            hash: None,
            expires: None,
        });
        self.state = State::Between;
    }

    fn array_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.leave();
    }

    fn inline_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        let (State::Array(Field::SecretHashes), Some(client)) = (self.state, &mut self.client)
        else {
            self.leave();
            return false;
        };
        client.hash = None;
        client.expires = None;
        self.state = State::Inline;
        true
    }

    fn inline_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        let (State::Inline, Some(client)) = (self.state, &mut self.client) else {
            return self.leave();
        };
        let (Some(hash), Some(expires)) = (client.hash.take(), client.expires.take()) else {
            return self.leave();
        };
        client
            .raw
            .secret_hashes
            .push(RawSecretHash::Expiring(RawExpiringHash { hash, expires }));
        self.state = State::Array(Field::SecretHashes);
    }

    fn array_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        match self.state {
            State::Value(field @ (Field::SecretHashes | Field::Audiences | Field::Scopes)) => {
                self.state = State::Array(field);
                true
            }
            _ => {
                self.leave();
                false
            }
        }
    }

    fn array_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.value_end = span.end();
        let (State::Array(field), Some(client)) = (self.state, &mut self.client) else {
            return self.leave();
        };
        // Collected from a drain, the list gets exactly the room it needs: the registry
        // keeps these for as long as it lives.
        match field {
            Field::Audiences => client.raw.audiences = self.list.drain(..).collect(),
            Field::Scopes => client.raw.scopes = self.list.drain(..).collect(),
            _ => {}
        }
        self.state = State::Between;
    }

    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, error: &mut dyn ErrorSink) {
        self.on_simple_key(span, encoding, error);
    }

    fn key_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        // Only a header has more than one key; a dotted key elsewhere is outside the shape.
        if !matches!(self.state, State::Header) {
            self.leave();
        }
    }

    fn key_val_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.on_key_val_sep();
    }

    fn scalar(&mut self, span: Span, encoding: Option<Encoding>, error: &mut dyn ErrorSink) {
        self.on_scalar(span, encoding, error);
    }

    fn value_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        if !matches!(self.state, State::Array(_) | State::Inline) {
            self.leave();
        }
    }

    fn error(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.leave();
    }
}
