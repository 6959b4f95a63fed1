#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

//! The HTTP ceiling: a bare hyper server on the same runtime and connection builder as the
//! daemon, answering every request with a small JSON body. `bench/run.sh` loads it with the
//! same tool and settings as the token endpoint.
//!
//! `cargo run --release --example bare_hyper -- 127.0.0.1:9090`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

const BODY: &[u8] = br#"{"access_token":"x","token_type":"Bearer","expires_in":3600}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
