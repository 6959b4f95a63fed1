//! Length-prefixed frames over any async byte stream (see the crate docs for the layout).

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, CodecError};

/// The largest frame body either side accepts: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Reads one frame and decodes its body.
///
/// Returns `Ok(None)` when the peer closed the connection cleanly between frames.
pub async fn read<T, R>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    // A clean close is only a close *before* the first byte of a frame.
    match reader.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => read_exact(reader, &mut len[1..]).await?,
    }
    let len = u32::from_be_bytes(len) as usize;
    // Checked before allocating: the length comes from the peer and is not trusted.
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    read_exact(reader, &mut body).await?;
    Ok(Some(codec::decode(&body)?))
}

async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Encodes `message` and writes it as one frame, then flushes.
pub async fn write<T, W>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let body = codec::encode(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(
        &u32::try_from(body.len())
            .expect("bounded by MAX_FRAME")
            .to_be_bytes(),
    );
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{ClientFrame, Hello, PROTOCOL_VERSION, Request};

    #[tokio::test]
    async fn round_trip() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hello = ClientFrame::Hello(Hello::current());
        write(&mut a, &hello).await.unwrap();
        write(&mut a, &ClientFrame::Request(Request::Status))
            .await
            .unwrap();
        drop(a);
        let got: ClientFrame = read(&mut b).await.unwrap().unwrap();
        assert!(matches!(got, ClientFrame::Hello(h) if h.protocol_version == PROTOCOL_VERSION));
        let got: ClientFrame = read(&mut b).await.unwrap().unwrap();
        assert!(matches!(got, ClientFrame::Request(Request::Status)));
        assert!(read::<ClientFrame, _>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read::<ClientFrame, _>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u32::MAX as usize));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        let err = read::<ClientFrame, _>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }

    #[tokio::test]
    async fn garbage_body_is_a_codec_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        let err = read::<ClientFrame, _>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Codec(_)));
    }
}
