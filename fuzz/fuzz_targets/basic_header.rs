//! An `Authorization` header: `parse_authorization` must never panic, and Basic credentials
//! it accepts must survive being encoded again as RFC 6749 §2.3.1 says a client does.

#![no_main]

use base64::{Engine as _, engine::general_purpose::STANDARD};
use libfuzzer_sys::fuzz_target;
use tokendealer_shared::form::{Authorization, parse_authorization};

fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fuzz_target!(|header: &[u8]| {
    let Ok(Authorization::Basic { id, secret }) = parse_authorization(header) else {
        return;
    };
    assert!(!id.is_empty(), "accepted an empty client_id");
    let again = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form_encode(&id), form_encode(&secret)))
    );
    assert_eq!(
        parse_authorization(again.as_bytes()),
        Ok(Authorization::Basic { id, secret }),
        "re-encoded credentials read differently"
    );
});
