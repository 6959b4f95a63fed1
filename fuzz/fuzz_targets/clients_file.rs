//! `clients.toml`: `parse` must never panic on any text, and what it accepts must hold the
//! promises the registry relies on. Only the public API is used, so the parser's internals
//! may change freely underneath this target.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokendealer_shared::clients_file::{
    self, MAX_SECRETS, check_audience, check_client_id, check_scope_token,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match clients_file::parse(text) {
        Ok(clients) => {
            let mut ids: Vec<&str> = clients.iter().map(|c| c.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), clients.len(), "a client id appears twice");
            for client in &clients {
                assert!(check_client_id(&client.id).is_ok(), "{:?}", client.id);
                assert!((1..=MAX_SECRETS).contains(&client.secrets.len()));
                assert!(client.audiences.iter().all(|a| check_audience(a).is_ok()));
                assert!(client.scopes.iter().all(|s| check_scope_token(s).is_ok()));
            }
        }
        Err(e) => {
            // The line goes to the log and the dashboard; it must point into the file.
            if let Some(line) = e.line() {
                let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
                assert!(
                    (1..=lines).contains(&(line as usize)),
                    "line {line} of a {lines}-line file"
                );
            }
            let _ = e.to_string();
        }
    }
});
