//! What `tokendealerd` and the `tokendealer` admin tool both speak.
//!
//! * [`admin`]: the admin protocol messages exchanged over the daemon's Unix socket.
//! * [`frame`] and [`codec`]: how those messages travel.
//! * [`clients_file`]: the model of `clients.toml`, its parser and validator.
//! * [`duration`]: the human duration syntax (`"1h"`, `"30d"`) used in config, files and CLI.
//! * [`form`]: the strict parsers for what a client sends the token endpoint (a form body, a
//!   Basic `Authorization` header), kept here, free of the daemon's crypto and I/O, so that
//!   they can be fuzzed on their own.
//!
//! This crate holds no runtime policy: no sockets are opened, no files written.
//!
//! # Framing
//!
//! Every message, in both directions, is one frame:
//!
//! ```text
//!  0               4                                   4 + len
//!  +---------------+-----------------------------------+
//!  |  len: u32 BE  |  body: bincode (serde, standard)  |
//!  +---------------+-----------------------------------+
//! ```
//!
//! `len` is checked against [`frame::MAX_FRAME`] (1 MiB) *before* anything is allocated; a
//! longer frame is a protocol error and the connection is closed. The body must decode to
//! exactly `len` bytes.
//!
//! # Conversation
//!
//! ```text
//! client                                   daemon
//!   | ClientFrame::Hello { protocol_version } |
//!   |---------------------------------------->|
//!   | ServerFrame::Hello { protocol_version } |   (or ServerFrame::Refused, then close)
//!   |<----------------------------------------|
//!   | ClientFrame::Request(..)                |
//!   |---------------------------------------->|
//!   | ServerFrame::Response(..)               |
//!   |<----------------------------------------|
//!   | ...                                     |
//! ```
//!
//! # Versioning
//!
//! `Hello` is variant 0 of both [`admin::ClientFrame`] and [`admin::ServerFrame`] and its
//! layout never changes, so peers of any version can always read each other's greeting.
//! Any change to any other message bumps [`admin::PROTOCOL_VERSION`]; peers whose versions
//! differ stop after the greeting with [`admin::AdminError::ProtocolMismatch`].

pub mod admin;
pub mod clients_file;
pub mod codec;
pub mod duration;
pub mod form;
pub mod frame;

/// Whether `c` is invisible where text is shown (zero-width, bidirectional controls, line and
/// paragraph separators): such a character makes one value read like another, or breaks a
/// log line.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// `text` with control and invisible characters written as `\u{…}`: text read from a file
/// or sent by a peer goes to logs and terminals, where they would move the cursor,
/// recolour the screen, or make one value read like another.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || is_invisible(c)) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() || is_invisible(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// `n` things, in the singular for one: `1 client`, `2 clients`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
