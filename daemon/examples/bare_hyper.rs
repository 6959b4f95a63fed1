#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark reports on stdout, and a wrong argument on stderr"
)]

//! The HTTP ceiling: a bare hyper server on the same runtime and connection builder as the
//! daemon, answering every request with a small JSON body. `bench/run.sh` loads it with the
//! same tool and settings as the token endpoint.
//!
//! Given an algorithm, it also signs a token-sized message with the crypto backend (a key
//! pair parsed once) before each answer, on the worker thread as the daemon does: the most a
//! token server on this stack could issue with no work of its own besides the signature.
//!
//! `cargo run --release --example bare_hyper -- [ADDR [ALG]]` (default 127.0.0.1:9090)

#[path = "limits/signer.rs"]
mod limits;

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
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9090".into());
    let sign: Option<limits::Sign> = args.next().map(|alg| {
        limits::signer(&alg).unwrap_or_else(|| {
            eprintln!("bare_hyper: unknown algorithm {alg} (RS512, RS256, ES256 or EdDSA)");
            std::process::exit(2);
        })
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let sign = sign.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                if let Some(sign) = &sign {
                    sign();
                }
                async {
                    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
