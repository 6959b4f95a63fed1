//! The body encoding of admin frames. bincode lives here and nowhere else, so that it can
//! be swapped for another serde format by changing this one module.

use serde::{Serialize, de::DeserializeOwned};

use crate::frame::MAX_FRAME;

/// Why a frame body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message could not be encoded: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("message could not be decoded: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("message has {0} trailing bytes after its end")]
    Trailing(usize),
}

/// What decoding one body may count, at most. bincode's default has no limit: a forged
/// length inside a body (a string's) would make the decoder allocate it before finding the
/// body too short. bincode counts what it decodes by its size in memory, not on the wire:
/// a one-byte integer counts 8 (a length, a `u64`). A body within the frame limit counts
/// at most 8 a byte, and the limit is that: a limit of one frame refused bodies the frame
/// limit allows (an import of 19 000 clients, 1 MB on the wire, counts 1.2 MB).
pub const DECODE_LIMIT: usize = 8 * MAX_FRAME;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes `message` as a frame body.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(message, config()).map_err(CodecError::Encode)
}

/// Decodes a frame body, which must hold exactly one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (message, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{ClientFrame, Request};

    /// A message whose body is `len` bytes: a string padded to fit.
    fn body_of(len: usize) -> Vec<u8> {
        let mut text_len = len;
        loop {
            let body = encode(&"k".repeat(text_len)).unwrap();
            match body.len().cmp(&len) {
                std::cmp::Ordering::Equal => return body,
                std::cmp::Ordering::Greater => text_len -= body.len() - len,
                std::cmp::Ordering::Less => text_len += len - body.len(),
            }
        }
    }

    #[test]
    fn a_body_as_long_as_the_frame_limit_decodes() {
        for len in [MAX_FRAME / 2, MAX_FRAME - 1, MAX_FRAME] {
            let body = body_of(len);
            let text: String = decode(&body).unwrap_or_else(|e| panic!("{len} bytes: {e}"));
            assert_eq!(text.len(), len - 5);
        }
    }

    /// The densest import the frame limit allows: one-character ids, 34 bytes a client on
    /// the wire, 56 in memory.
    #[test]
    fn an_import_filling_the_frame_decodes() {
        let n = (MAX_FRAME - 16) / 34;
        let clients: Vec<(String, [u8; 32])> = (0..n)
            .map(|i| ("x".into(), [i.to_le_bytes()[0]; 32]))
            .collect();
        let request = Request::ImportClients { clients };
        let body = encode(&ClientFrame::Request(request.clone())).unwrap();
        assert!(body.len() <= MAX_FRAME, "{} bytes", body.len());
        assert!(body.len() > MAX_FRAME - 64, "{} bytes", body.len());
        assert_eq!(
            decode::<ClientFrame>(&body).unwrap(),
            ClientFrame::Request(request)
        );
    }

    /// The most a body can count against the limit: nothing but one-byte integers.
    #[test]
    fn a_frame_of_one_byte_integers_decodes() {
        let numbers = vec![7u64; MAX_FRAME - 5];
        let body = encode(&numbers).unwrap();
        assert_eq!(body.len(), MAX_FRAME);
        assert_eq!(decode::<Vec<u64>>(&body).unwrap(), numbers);
    }

    /// A length no body could back is refused before anything is allocated for it.
    #[test]
    fn a_forged_length_is_refused() {
        let mut body = encode(&ClientFrame::Request(Request::RevokeKey {
            kid: String::new(),
        }))
        .unwrap();
        // The length, 0 on the wire as one byte, becomes 2^40 (a u64 after the marker 253).
        assert_eq!(body.pop(), Some(0));
        body.push(253);
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let decoded = decode::<ClientFrame>(&body);
        assert!(
            matches!(
                decoded,
                Err(CodecError::Decode(
                    bincode::error::DecodeError::LimitExceeded
                ))
            ),
            "{decoded:?}"
        );
    }
}
