//! Admin frames from a peer, read through `frame::read` exactly as the daemon (client frames)
//! and the admin tool (server frames) read them: no input may panic or allocate past
//! `MAX_FRAME`, and whatever decodes must encode and decode back to the same message.

#![no_main]

use std::{
    fmt::Debug,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use libfuzzer_sys::fuzz_target;
use tokendealer_shared::{
    admin::{ClientFrame, ServerFrame},
    codec,
    frame::{self, FrameError},
};

/// Runs a future over an in-memory reader. `&[u8]` never waits, so one poll finishes it and
/// no runtime is needed; a future that pends here would be a bug in the reader.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("reading from memory pended"),
    }
}

/// Reads frames until the stream ends or a frame is refused.
fn read_all<T>(mut stream: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + Debug,
{
    loop {
        let before = stream.len();
        match now(frame::read::<T, _>(&mut stream)) {
            Ok(Some(message)) => {
                assert!(stream.len() < before, "a frame consumed nothing");
                let body = codec::encode(&message).expect("a decoded message encodes");
                let again: T = codec::decode(&body).expect("an encoded message decodes");
                assert_eq!(again, message);
            }
            Ok(None) => return,
            Err(FrameError::Io(e)) => panic!("reading from memory failed: {e}"),
            Err(FrameError::TooLarge(_) | FrameError::Truncated | FrameError::Codec(_)) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // As a stream, the fuzzer must forge lengths too; as one frame whose length is right, it
    // reaches the body decoder on every input.
    read_all::<ClientFrame>(data);
    read_all::<ServerFrame>(data);
    if let Ok(len) = u32::try_from(data.len()) {
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(data);
        read_all::<ClientFrame>(&framed);
        read_all::<ServerFrame>(&framed);
    }
});
