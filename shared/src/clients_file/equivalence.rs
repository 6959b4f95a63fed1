//! The event reader against the `toml`/serde path, on generated files that mix the usual
//! shape with everything else TOML allows: quoted and escaped keys, every string form,
//! dotted keys, inline tables, arrays of tables, comments, CRLF, datetimes of every kind,
//! values of the wrong type, duplicates, syntax errors and header-like lines inside
//! multi-line strings. Wherever the event reader gives an answer, it must be the other
//! path's answer exactly, error message and line included; the pieces are cut small so
//! that every file is also read in parallel pieces. Reading pieces one by one, as the
//! daemon's reloads do, must agree with the whole file as well, and a piece must read the
//! same alone as in its file.

use proptest::{
    prelude::*,
    sample::select,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};

use super::{
    ClientSpec,
    events::{self, CUT, CutRule},
    parse_with_serde,
};

const HASH_HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// Cut rules to read each file with: before every header, before every other one (hash
/// permitting) after 32 bytes, and the daemon's (one piece, for files this small).
const RULES: [CutRule; 3] = [
    CutRule {
        min_len: 1,
        one_in: 1,
        max_len: usize::MAX,
    },
    CutRule {
        min_len: 32,
        one_in: 2,
        max_len: usize::MAX,
    },
    CUT,
];

/// Mostly `common`, now and then `rare`: a file is read by the event reader only when all of
/// it is of the usual shape, so the unusual must be rare in each part for whole files of
/// every kind to come out.
fn mostly<T: Clone + std::fmt::Debug + 'static>(
    common: Vec<T>,
    rare: Vec<T>,
    odds: u32,
) -> impl Strategy<Value = T> {
    prop_oneof![odds => select(common), 1 => select(rare)]
}

fn ids() -> impl Strategy<Value = &'static str> {
    // A small pool, so that ids repeat (duplicates) and sort in interesting ways.
    select(vec![
        "a",
        "svc-1",
        "svc-10",
        "svc-2",
        "B_2",
        "x.y",
        "has space",
        "",
        "é",
        "0123456789abcdef-same-prefix-1",
        "0123456789abcdef-same-prefix-2",
        "0123456789abcdef",
    ])
}

/// The id as a header or dotted key: bare where TOML allows it, else quoted some way.
fn id_key(id: &'static str) -> impl Strategy<Value = String> {
    let bare_ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let mut forms = vec![format!("\"{id}\""), format!("'{id}'")];
    if bare_ok {
        forms.push(id.to_owned());
        forms.push(id.to_owned());
    }
    if let Some(first) = id.chars().next() {
        // The first character as a \u escape.
        forms.push(format!(
            "\"\\u{:04X}{}\"",
            u32::from(first),
            &id[first.len_utf8()..]
        ));
    }
    select(forms)
}

fn field_names() -> impl Strategy<Value = &'static str> {
    mostly(
        vec![
            "secret_hashes",
            "\"secret_hashes\"",
            "audiences",
            "'audiences'",
            "scopes",
            "token_ttl",
            "disabled",
        ],
        vec!["scope", "secret_hashes.x"],
        30,
    )
}

fn datetimes() -> impl Strategy<Value = &'static str> {
    mostly(
        vec![
            "2026-11-28T10:00:00Z",
            "2026-11-28 10:00:00Z",
            "2026-11-28t10:00:00z",
            "2026-11-28T10:00:00.123456+01:00",
            "1979-05-27T00:32:00.999999-07:00",
            "2026-11-28T10:00Z",
            "2026-12-31T23:59:60Z",
            // Valid TOML the validation refuses: no offset, no time.
            "2026-11-28T10:00:00",
            "2026-11-28",
            "10:00:00",
        ],
        vec!["2026-13-28T10:00:00Z", "\"2026-11-28T10:00:00Z\""],
        20,
    )
}

fn hash_strings() -> impl Strategy<Value = String> {
    mostly(
        vec![
            format!("\"sha256:{HASH_HEX}\""),
            format!("\"sha256:{HASH_HEX}\""),
            format!("\"sha256:{HASH_HEX}\""),
            format!("'sha256:{HASH_HEX}'"),
            format!("\"sha256:{}\"", HASH_HEX.to_uppercase()),
            format!("\"sha256\\u003a{HASH_HEX}\""),
            format!("\"\"\"sha256:{HASH_HEX}\"\"\""),
            format!("'''\nsha256:{HASH_HEX}'''"),
            "\"sha256:abc\"".to_owned(),
            format!("\"{HASH_HEX}\""),
        ],
        vec!["42".to_owned()],
        30,
    )
}

fn secret_hash() -> impl Strategy<Value = String> {
    prop_oneof![
        60 => hash_strings(),
        30 => (hash_strings(), datetimes())
            .prop_map(|(h, e)| format!("{{ hash = {h}, expires = {e} }}")),
        10 => (hash_strings(), datetimes())
            .prop_map(|(h, e)| format!("{{expires={e},\"hash\"={h}}}")),
        1 => hash_strings().prop_map(|h| format!("{{ hash = {h} }}")),
        1 => (hash_strings(), datetimes())
            .prop_map(|(h, e)| format!("{{ hash = {h}, expires = {e}, note = 1 }}")),
        1 => (hash_strings(), datetimes())
            .prop_map(|(h, e)| format!("{{ hash = {h}, hash = {h}, expires = {e} }}")),
        1 => Just(format!("[\"sha256:{HASH_HEX}\"]")),
    ]
}

fn audiences() -> impl Strategy<Value = &'static str> {
    mostly(
        vec![
            "\"https://a.example\"",
            "\"https://a.example\"",
            "'https://b.example'",
            "\"*\"",
            "\"\\u00e9t\\u00e9\"",
            "\"\"\"https://ml.example\"\"\"",
            "\"\"",
            "\"has space\"",
            "\"tab\\there\"",
        ],
        vec!["1"],
        30,
    )
}

fn scopes() -> impl Strategy<Value = &'static str> {
    mostly(
        vec![
            "\"read\"",
            "\"read\"",
            "'write'",
            "\"runs:read\"",
            "\"a b\"",
            "\"quote\\\"\"",
            "\"\"",
            "'back\\slash'",
        ],
        vec!["true"],
        30,
    )
}

/// An array of `elements`, laid out on one line or several, with comments and a trailing
/// comma now and then.
fn array(elements: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(elements, 0..4),
        select(vec![", ", ",", ",\n  ", " ,\n  # between\n  "]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(items, sep, trailing, multiline)| {
            let mut out = String::from(if multiline { "[\n  " } else { "[" });
            out.push_str(&items.join(sep));
            if trailing && !items.is_empty() {
                out.push(',');
            }
            out.push_str(if multiline { "\n]" } else { "]" });
            out
        })
}

fn value_for(name: &'static str) -> BoxedStrategy<String> {
    let plain = name.trim_matches(|c| c == '"' || c == '\'');
    match plain {
        "secret_hashes" | "secret_hashes.x" | "scope" => prop_oneof![
            30 => array(secret_hash()),
            1 => hash_strings(),
        ]
        .boxed(),
        "audiences" => prop_oneof![
            30 => array(audiences().prop_map(str::to_owned)),
            1 => Just("\"https://a.example\"".to_owned()),
        ]
        .boxed(),
        "scopes" => array(scopes().prop_map(str::to_owned)).boxed(),
        "token_ttl" => mostly(
            vec![
                "\"1h\"",
                "'30m'",
                "\"1h 30m\"",
                "\"\"\"\n1h\n\"\"\"",
                "\"soon\"",
                "\"0s\"",
            ],
            vec!["3600"],
            30,
        )
        .prop_map(str::to_owned)
        .boxed(),
        _ => mostly(vec!["true", "false", "false"], vec!["\"true\"", "1"], 30)
            .prop_map(str::to_owned)
            .boxed(),
    }
}

fn key_values() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    prop::collection::vec(
        field_names().prop_flat_map(|name| (Just(name), value_for(name))),
        0..5,
    )
    .prop_map(|mut fields| {
        // Most tables have their secret; without one the file is refused.
        if !fields.iter().any(|(n, _)| n.contains("secret_hashes")) && fields.len() % 4 != 3 {
            fields.insert(0, ("secret_hashes", format!("[\"sha256:{HASH_HEX}\"]")));
        }
        fields
    })
}

fn trailing_comment() -> impl Strategy<Value = &'static str> {
    select(vec!["", "", "", "  # note", "\t#"])
}

/// One client, written in one of the ways TOML allows.
fn client() -> impl Strategy<Value = String> {
    (
        ids().prop_flat_map(id_key),
        key_values(),
        0..100u8,
        trailing_comment(),
    )
        .prop_map(|(key, fields, style, comment)| {
            let lines = |prefix: &str| -> String {
                fields
                    .iter()
                    .map(|(n, v)| format!("{prefix}{n} = {v}{comment}\n"))
                    .collect()
            };
            match style {
                0..=89 => format!("[clients.{key}]{comment}\n{}", lines("")),
                90..=93 => format!("[ clients . {key} ]\n{}", lines("")),
                94..=95 => format!("[\"clients\".{key}]\n{}", lines("")),
                96 => format!("[clients]\n{}", lines(&format!("{key}."))),
                97..=98 => {
                    let inner: Vec<String> =
                        fields.iter().map(|(n, v)| format!("{n} = {v}")).collect();
                    format!("clients.{key} = {{ {} }}\n", inner.join(", "))
                }
                _ => format!(
                    "[[clients.{key}.secret_hashes]]\nhash = \"sha256:{HASH_HEX}\"\nexpires = 2026-01-01T00:00:00Z\n"
                ),
            }
        })
}

fn noise() -> impl Strategy<Value = &'static str> {
    mostly(
        vec!["", "", "# a comment\n", "\n", "   \t\n", "\t# indented\n"],
        vec![
            "stray = 1\n",
            "[other]\n",
            "[clients]\n",
            "[clients.a\n",
            "= 1\n",
            "x = \"\"\"\n[clients.fake]\nsecret_hashes = []\n\"\"\"\n",
            "# \u{7}bell\n",
            "[[clients]]\n",
        ],
        20,
    )
}

fn files() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((noise(), client()), 0..6),
        noise(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(blocks, tail, crlf, bom)| {
            let mut text = String::from(if bom { "\u{feff}" } else { "" });
            for (noise, client) in blocks {
                text.push_str(noise);
                text.push_str(&client);
            }
            text.push_str(tail);
            if crlf {
                text.replace('\n', "\r\n")
            } else {
                text
            }
        })
}

/// How one file was read: by the event reader (accepted or refused) or by `toml` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    EventsOk,
    EventsErr,
    Serde,
}

/// The pieces [`events::read_in_pieces`] hands over, read `chunk` bytes at a time, as
/// ranges of `text`.
fn streamed(text: &str, rule: CutRule, chunk: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    // A buffer left over from another file, to be used whatever it holds.
    let mut buf = b"[clients.left-over]\n".repeat(chunk % 5);
    let read = events::read_in_pieces(&mut text.as_bytes(), rule, chunk, &mut buf, &mut |piece| {
        assert_eq!(piece, &text.as_bytes()[at..at + piece.len()]);
        ranges.push(at..at + piece.len());
        at += piece.len();
        true
    })
    .expect("reading a slice");
    assert_eq!(read, text.len());
    ranges
}

/// Fails unless every answer the event reader gives equals the serde path's.
fn check(text: &str) -> Result<Way, TestCaseError> {
    let expected = parse_with_serde(text);
    let mut way = Way::Serde;
    for rule in RULES {
        let pieces = events::pieces(text, rule);
        prop_assert_eq!(pieces.first().map(|p| p.start), Some(0));
        prop_assert_eq!(pieces.last().map(|p| p.end), Some(text.len()));
        prop_assert!(pieces.windows(2).all(|w| w[0].end == w[1].start));
        for chunk in [1, 7, 64] {
            prop_assert_eq!(
                streamed(text, rule, chunk),
                pieces.clone(),
                "{:?}:\n{}",
                rule,
                text
            );
        }
        if let Some(lists) = events::read_valid(text, &pieces) {
            for (range, list) in pieces.iter().zip(&lists) {
                let alone = &text[range.clone()];
                let whole = 0..alone.len();
                let read_alone = events::read_valid(alone, std::slice::from_ref(&whole));
                prop_assert_eq!(read_alone.as_deref(), Some(std::slice::from_ref(list)));
            }
            // Some of the pieces put together, as the daemon reads the new pieces of a file.
            let odd: Vec<usize> = (1..pieces.len()).step_by(2).collect();
            let mut batch = String::new();
            let ranges: Vec<_> = odd
                .iter()
                .map(|&i| {
                    let start = batch.len();
                    batch.push_str(&text[pieces[i].clone()]);
                    start..batch.len()
                })
                .collect();
            let ends_file = odd.last() == Some(&(pieces.len() - 1));
            let read =
                events::read_valid_with(&batch, &ranges, ends_file, |i, specs| (odd[i], specs));
            let expected_odd: Vec<_> = odd.iter().map(|&i| (i, lists[i].clone())).collect();
            prop_assert_eq!(read, Some(expected_odd));
            let mut union: Vec<ClientSpec> = lists.into_iter().flatten().collect();
            union.sort_by(|a, b| a.id.cmp(&b.id));
            if union.windows(2).all(|w| w[0].id != w[1].id) {
                prop_assert_eq!(Ok(union), expected.clone(), "{:?}:\n{}", rule, text);
            }
        }
        if let Some(got) = events::parse_cut(text, rule) {
            prop_assert_eq!(&got, &expected, "{:?}:\n{}", rule, text);
            way = if got.is_ok() {
                Way::EventsOk
            } else {
                Way::EventsErr
            };
        }
    }
    Ok(way)
}

proptest! {
    #![proptest_config(Config::with_cases(2_000))]

    #[test]
    fn events_and_serde_agree(text in files()) {
        check(&text)?;
    }
}

/// The comparison above only means something if the event reader answers often, both
/// ways: this counts how the same kind of files were read.
#[test]
fn generated_files_reach_every_way() {
    let mut runner = TestRunner::deterministic();
    let strategy = files();
    let mut counts = [0usize; 3];
    for _ in 0..2_000 {
        let text = strategy
            .new_tree(&mut runner)
            .expect("a generated file")
            .current();
        let way = check(&text).unwrap_or_else(|e| panic!("{e}"));
        counts[way as usize] += 1;
    }
    let [ok, err, serde] = counts;
    assert!(
        ok >= 100 && err >= 100 && serde >= 100,
        "events accepted {ok}, events refused {err}, serde only {serde}"
    );
}

#[test]
fn a_header_inside_a_multi_line_string_is_not_a_place_to_cut() {
    let text = format!(
        "[clients.a]\nsecret_hashes = [\"sha256:{HASH_HEX}\"]\ntoken_ttl = \"\"\"\n[clients.b]\nsecret_hashes = []\n\"\"\"\n"
    );
    assert_eq!(
        events::parse_cut(&text, RULES[0]),
        None,
        "cut in the string"
    );
    for rule in RULES {
        if let Some(read) = events::parse_cut(&text, rule) {
            assert_eq!(read, parse_with_serde(&text), "{rule:?}");
        }
    }
    assert!(super::parse(&text).is_err(), "the ttl is not a duration");
}

#[test]
fn a_duplicate_across_pieces_is_refused_with_both_lines() {
    let table = format!("[clients.a]\nsecret_hashes = [\"sha256:{HASH_HEX}\"]\n");
    let text = format!("{table}{table}");
    assert_eq!(events::parse_cut(&text, RULES[0]), None);
    let err = super::parse(&text).unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
    assert!(err.to_string().contains("duplicate"), "{err}");
}

#[test]
fn a_file_read_a_chunk_at_a_time_is_cut_where_its_whole_text_is() {
    // Ids of varied length, and one table longer than a chunk, so that cuts fall on every
    // side of a chunk's end.
    let mut text = String::new();
    for i in 0..6_000 {
        text.push_str(&format!(
            "[clients.svc-{}]\nsecret_hashes = [\"sha256:{HASH_HEX}\"]\n\n",
            "x".repeat(i % 13) + &i.to_string()
        ));
        if i == 3_000 {
            text.push_str(&format!("# {}\n", "long comment ".repeat(30_000)));
        }
    }
    let whole = events::pieces(&text, CUT);
    assert!(whole.len() > 50, "{} pieces", whole.len());
    for chunk in [1_000, 4_097, 65_536, events::CHUNK, 10 << 20] {
        assert_eq!(streamed(&text, CUT, chunk), whole, "chunks of {chunk}");
    }
    // An empty file is one empty piece.
    assert_eq!(streamed("", CUT, 10), events::pieces("", CUT));
    assert_eq!(events::pieces("", CUT).len(), 1);
}
