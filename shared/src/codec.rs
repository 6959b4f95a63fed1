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

// bincode's default has no size limit: a forged length inside the body (a Vec's count, a
// String's length) would otherwise make the decoder try to allocate it.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
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
