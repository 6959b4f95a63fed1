//! Strict parsers for the two places client input arrives: an
//! `application/x-www-form-urlencoded` body and an HTTP Basic `Authorization` header.
//!
//! Strict on purpose: a malformed percent escape or invalid UTF-8 is an error the client is
//! told about, never silently repaired into a different value.

use std::{borrow::Cow, ops::Range};

use base64::{
    Engine,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// A body or header that is not well formed; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// Parameters that RFC 8707 lets a client repeat; any other repeated name is an error
/// (RFC 6749 §3.1, §3.2).
const REPEATABLE: &[&str] = &["resource"];

/// The most parameters a form may have. A token or introspection request has a handful;
/// the bound keeps the check for repeated names (quadratic, and cheaper than a set for the
/// usual four) from costing milliseconds on a 16 KiB body of distinct names.
pub const MAX_PARAMS: usize = 64;

/// Parsed form parameters, in order. Empty values are dropped (RFC 6749 §3.1: "parameters
/// sent without a value MUST be treated as if they were omitted"). Names and values borrow
/// from the body unless they had something to decode.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params<'b>(Vec<(Cow<'b, str>, Cow<'b, str>)>);

/// Why form parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("parameter `{0}` is included more than once")]
    Repeated(String),
    #[error("form body has more than {MAX_PARAMS} parameters")]
    TooMany,
}

impl<'b> Params<'b> {
    /// Parses a form body.
    pub fn parse(body: &'b [u8]) -> Result<Self, ParamsError> {
        // The usual body has nothing to decode: then it is checked for UTF-8 once, as a
        // whole, and every name and value is a slice of it.
        let plain = match memchr::memchr2(b'+', b'%', body) {
            None => std::str::from_utf8(body).ok(),
            Some(_) => None,
        };
        let component = |at: Range<usize>| match plain {
            // `at` is bounded by `&`, `=` or the ends: ASCII, so character boundaries.
            Some(text) => Ok(Cow::Borrowed(&text[at])),
            None => decode_component(&body[at]),
        };
        // A token request has three or four parameters.
        let mut params: Vec<(Cow<'b, str>, Cow<'b, str>)> = Vec::with_capacity(4);
        for (name, value) in pairs(body) {
            let name = component(name)?;
            let value = component(value)?;
            if name.is_empty() {
                return Err(Malformed("form body has a parameter without a name").into());
            }
            if value.is_empty() {
                continue;
            }
            if params.len() == MAX_PARAMS {
                return Err(ParamsError::TooMany);
            }
            if !REPEATABLE.contains(&&*name) && params.iter().any(|(n, _)| *n == name) {
                return Err(ParamsError::Repeated(name.into_owned()));
            }
            params.push((name, value));
        }
        Ok(Self(params))
    }

    /// The value of a parameter that may appear once.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| &**v)
    }

    /// Every value of a parameter.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| &**v)
    }
}

/// Where each non-empty `name=value` pair's name and value lie in `body`; a pair without
/// `=` has an empty value.
fn pairs(body: &[u8]) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + '_ {
    let mut start = 0;
    body.split(|&b| b == b'&').filter_map(move |pair| {
        let (at, end) = (start, start + pair.len());
        start = end + 1;
        if pair.is_empty() {
            return None;
        }
        Some(match memchr::memchr(b'=', pair) {
            Some(i) => (at..at + i, at + i + 1..end),
            None => (at..end, end..end),
        })
    })
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte,
/// and the result must be UTF-8.
pub fn decode_component(input: &[u8]) -> Result<Cow<'_, str>, Malformed> {
    let not_utf8 = || Malformed("form encoding does not decode to UTF-8");
    // Most components (client ids, secrets, grant types) have nothing to decode: one UTF-8
    // check, and the input itself is the value.
    if !input.iter().any(|&b| b == b'+' || b == b'%') {
        return std::str::from_utf8(input)
            .map(Cow::Borrowed)
            .map_err(|_| not_utf8());
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => match input.get(i + 1..i + 3) {
                Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    out.push(hex_value(hi) << 4 | hex_value(lo));
                    i += 2;
                }
                _ => {
                    return Err(Malformed(
                        "form encoding has a `%` not followed by two hex digits",
                    ));
                }
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| not_utf8())
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// What an `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization {
    Basic {
        id: String,
        secret: String,
    },
    /// Another scheme (Bearer, Digest …), which this endpoint does not take.
    Other,
}

// Padding is optional in practice: some clients strip it.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses an `Authorization` header value. For Basic, RFC 6749 §2.3.1: the id and secret
/// are each form-urlencoded before being joined by `:` and base64-encoded.
pub fn parse_authorization(value: &[u8]) -> Result<Authorization, Malformed> {
    let value =
        std::str::from_utf8(value).map_err(|_| Malformed("Authorization header is not ASCII"))?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(Authorization::Other);
    }
    let bad = Malformed("Basic credentials are not base64 of `client_id:client_secret`");
    let decoded = BASIC_B64.decode(rest.trim()).map_err(|_| bad.clone())?;
    let pos = decoded.iter().position(|&b| b == b':').ok_or(bad)?;
    let id = decode_component(&decoded[..pos])?.into_owned();
    let secret = decode_component(&decoded[pos + 1..])?.into_owned();
    if id.is_empty() {
        return Err(Malformed("Basic credentials have an empty client_id"));
    }
    Ok(Authorization::Basic { id, secret })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn parses_and_drops_empty_values() {
        let p = Params::parse(b"grant_type=client_credentials&scope=a+b%3Ac&audience=&x").unwrap();
        assert_eq!(p.get("grant_type"), Some("client_credentials"));
        assert_eq!(p.get("scope"), Some("a b:c"));
        assert_eq!(p.get("audience"), None);
        assert_eq!(p.get("x"), None);
    }

    #[test]
    fn a_body_with_nothing_to_decode_reads_as_an_encoded_one() {
        let plain =
            Params::parse(b"grant_type=client_credentials&client_id=a.b&x&&scope=").unwrap();
        let encoded =
            Params::parse(b"grant_type=client%5Fcredentials&client_id=a%2Eb&x&&scope=").unwrap();
        assert_eq!(plain, encoded);
        assert_eq!(plain.get("client_id"), Some("a.b"));
        assert!(
            matches!(plain.0[0].1, Cow::Borrowed(_)),
            "borrowed from the body"
        );
        assert!(matches!(encoded.0[0].1, Cow::Owned(_)), "decoded");
        // Not UTF-8, with nothing to decode: still refused, not sliced.
        assert!(Params::parse(b"a=\xff\xfe").is_err());
        assert!(Params::parse(b"a=\xc3").is_err());
    }

    #[test]
    fn repeated_names_are_refused_except_resource() {
        assert_eq!(
            Params::parse(b"scope=a&scope=b"),
            Err(ParamsError::Repeated("scope".into()))
        );
        let p = Params::parse(b"resource=https://a&resource=https://b").unwrap();
        assert_eq!(
            p.all("resource").collect::<Vec<_>>(),
            ["https://a", "https://b"]
        );
    }

    #[test]
    fn more_than_max_params_are_refused() {
        let body = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(
            Params::parse(body(MAX_PARAMS).as_bytes()).unwrap().0.len(),
            MAX_PARAMS
        );
        assert_eq!(
            Params::parse(body(MAX_PARAMS + 1).as_bytes()),
            Err(ParamsError::TooMany)
        );
        // Empty ones are dropped before they are counted.
        let padded = format!("{}&{}", body(MAX_PARAMS), "e=&".repeat(100));
        assert!(Params::parse(padded.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_encoding_is_refused() {
        for body in [&b"a=%"[..], b"a=%zz", b"a=%4", b"a=%ff", b"=x", b"a=%+1"] {
            assert!(
                Params::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let header = format!("Basic {}", STANDARD.encode("my.client:p%3Ass+w%25rd"));
        assert_eq!(
            parse_authorization(header.as_bytes()),
            Ok(Authorization::Basic {
                id: "my.client".into(),
                secret: "p:ss w%rd".into()
            })
        );
        let lower = format!("basic {}", STANDARD.encode("a:b").trim_end_matches('='));
        assert!(matches!(
            parse_authorization(lower.as_bytes()),
            Ok(Authorization::Basic { .. })
        ));
    }

    #[test]
    fn basic_garbage_is_malformed_and_other_schemes_are_other() {
        assert!(parse_authorization(b"Basic !!!").is_err());
        let no_colon = format!("Basic {}", STANDARD.encode("nocolon"));
        assert!(parse_authorization(no_colon.as_bytes()).is_err());
        let empty_id = format!("Basic {}", STANDARD.encode(":secret"));
        assert!(parse_authorization(empty_id.as_bytes()).is_err());
        assert_eq!(parse_authorization(b"Bearer abc"), Ok(Authorization::Other));
    }
}
