//! A token request body: `Params::parse` must never panic, and what it accepts must mean
//! what the `form_urlencoded` crate (a lenient decoder) reads from the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokendealer_shared::form::Params;

fuzz_target!(|body: &[u8]| {
    let Ok(params) = Params::parse(body) else {
        return;
    };
    // Accepted means every escape was valid and decoded to UTF-8, where the lenient decoder
    // has nothing to repair; so both must see the same values under every name, with empty
    // values dropped (RFC 6749 §3.1) and only `resource` repeated (RFC 8707).
    let mut names: Vec<String> = Vec::new();
    for (name, _) in form_urlencoded::parse(body) {
        assert!(!name.is_empty(), "accepted a parameter without a name");
        if !names.iter().any(|n| *n == name) {
            names.push(name.into_owned());
        }
    }
    for name in &names {
        let expected: Vec<String> = form_urlencoded::parse(body)
            .filter(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.into_owned())
            .collect();
        let got: Vec<&str> = params.all(name).collect();
        assert_eq!(got, expected, "values of `{name}`");
        assert!(
            got.len() <= 1 || name == "resource",
            "`{name}` accepted more than once"
        );
        assert_eq!(params.get(name), got.first().copied());
    }
});
