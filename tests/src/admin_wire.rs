//! The admin protocol spoken directly over a blocking [`UnixStream`], for tests that need to
//! do what the `tokendealer` tool never would: send garbage, lie about lengths, stop reading.
//!
//! Frames are built with `tokendealer-shared`'s codec, which defines the protocol, and the
//! length prefix is written here by hand (see the shared crate's docs for the layout), so a
//! test can also send frames the shared crate would refuse to write.

use std::{
    io::{self, ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use tokendealer_shared::{
    admin::{ClientFrame, Hello, Request, Response, ServerFrame},
    codec,
    frame::MAX_FRAME,
};

/// How long a read or write on a test's admin connection may block before the test fails.
/// A daemon that closes a broken connection does so at once; this only bounds a hang.
pub const WIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the admin socket with read and write timeouts of [`WIRE_TIMEOUT`].
#[track_caller]
pub fn connect(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap_or_else(|e| {
        panic!(
            "connecting to the admin socket {} failed: {e}",
            path.display()
        )
    });
    stream
        .set_read_timeout(Some(WIRE_TIMEOUT))
        .expect("setting a read timeout");
    stream
        .set_write_timeout(Some(WIRE_TIMEOUT))
        .expect("setting a write timeout");
    stream
}

/// The bytes of one frame: the big-endian length, then the encoded body.
pub fn encode(frame: &ClientFrame) -> Vec<u8> {
    let body = codec::encode(frame).expect("a client frame encodes");
    let len = u32::try_from(body.len()).expect("a test frame is small");
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes one client frame.
#[track_caller]
pub fn send(stream: &mut UnixStream, frame: &ClientFrame) {
    stream
        .write_all(&encode(frame))
        .unwrap_or_else(|e| panic!("writing {frame:?} to the admin socket failed: {e}"));
}

/// What reading one frame from the daemon gave.
#[derive(Debug)]
pub enum Received {
    Frame(ServerFrame),
    /// The daemon closed the connection between frames (or reset it).
    Closed,
}

/// Reads one server frame. Fails the test on a timeout, a frame that does not decode, or a
/// close in the middle of a frame.
#[track_caller]
pub fn receive(stream: &mut UnixStream) -> Received {
    let mut len = [0u8; 4];
    match read_full(stream, &mut len) {
        Ok(0) => return Received::Closed,
        Ok(4) => {}
        Ok(n) => panic!("the daemon closed the connection after {n} bytes of a length prefix"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Received::Closed,
        Err(e) => panic!("reading a frame from the daemon failed: {e}"),
    }
    let len = u32::from_be_bytes(len) as usize;
    assert!(
        len <= MAX_FRAME,
        "the daemon sent a frame of {len} bytes, over MAX_FRAME"
    );
    let mut body = vec![0u8; len];
    match read_full(stream, &mut body) {
        Ok(n) if n == len => {}
        Ok(n) => panic!("the daemon closed the connection after {n} of {len} bytes of a frame"),
        Err(e) => panic!("reading a frame body from the daemon failed: {e}"),
    }
    Received::Frame(
        codec::decode(&body)
            .unwrap_or_else(|e| panic!("the daemon sent a frame that does not decode: {e}")),
    )
}

/// Reads one server frame; fails the test if the daemon closed instead.
#[track_caller]
pub fn receive_frame(stream: &mut UnixStream) -> ServerFrame {
    match receive(stream) {
        Received::Frame(frame) => frame,
        Received::Closed => panic!("the daemon closed the connection instead of answering"),
    }
}

/// Reads until `buf` is full or the peer closes; returns how much was read.
fn read_full(stream: &mut UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Greets the daemon with this build's [`Hello`] and returns the daemon's.
#[track_caller]
pub fn greet(stream: &mut UnixStream) -> Hello {
    send(stream, &ClientFrame::Hello(Hello::current()));
    match receive_frame(stream) {
        ServerFrame::Hello(hello) => hello,
        other => panic!("the daemon answered our Hello with {other:?}"),
    }
}

/// A connected and greeted admin connection.
#[track_caller]
pub fn open(path: &Path) -> UnixStream {
    let mut stream = connect(path);
    greet(&mut stream);
    stream
}

/// Sends one request and returns its response, skipping pushed events.
#[track_caller]
pub fn request(stream: &mut UnixStream, request: Request) -> Response {
    send(stream, &ClientFrame::Request(request));
    loop {
        match receive_frame(stream) {
            ServerFrame::Response(response) => return response,
            ServerFrame::Event(_) => {}
            other => panic!("the daemon answered a request with {other:?}"),
        }
    }
}

/// Reads whatever the daemon still sends until it closes the connection, and returns it.
/// Fails the test if the connection is still open after [`WIRE_TIMEOUT`].
#[track_caller]
pub fn read_until_closed(stream: &mut UnixStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            // Closed with our bytes unread: the daemon gave up on the connection.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return bytes,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "the daemon kept the connection open for {WIRE_TIMEOUT:?}; it should have closed it \
                 (received so far: {bytes:?})"
            ),
            Err(e) => panic!("reading from the admin socket failed: {e}"),
        }
    }
}

/// Splits bytes received from the daemon into the frames they hold (a trailing partial frame
/// is ignored), for checking what a daemon said before it closed.
#[track_caller]
pub fn decode_all(mut bytes: &[u8]) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes(bytes[..4].try_into().expect("four bytes")) as usize;
        let Some(body) = bytes.get(4..4 + len) else {
            break;
        };
        frames.push(
            codec::decode(body)
                .unwrap_or_else(|e| panic!("the daemon sent a frame that does not decode: {e}")),
        );
        bytes = &bytes[4 + len..];
    }
    frames
}
