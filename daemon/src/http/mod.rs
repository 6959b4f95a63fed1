//! The HTTP side: accept loop, routing, graceful drain.

mod discovery;
pub mod form;
mod metrics;
mod response;
mod token;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{Method, Request};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use discovery::{build_metadata, jwks_cache_control};
use response::{OAuthError, Resp};

use crate::State;

/// How long a client may take to send its request headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish once shutdown begins.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until `shutdown` fires, then drains connections for at most
/// [`DRAIN_DEADLINE`].
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    // Stop accepting first, so a restarting supervisor can bind the port again at once.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("all HTTP connections drained"),
        () = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed; closing the remaining connections"),
    }
}

async fn route(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let get_only = |req: &Request<Incoming>| matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/oauth/token" => token::handle(state, req, peer).await,
        "/oauth/introspect" => discovery::introspect(state, req, peer).await,
        "/verify_token" => discovery::verify_token(state, req).await,
        "/.well-known/jwks.json" if get_only(&req) => discovery::jwks(state),
        "/.well-known/oauth-authorization-server" if get_only(&req) => discovery::metadata(state),
        "/healthz" if get_only(&req) => discovery::healthz(),
        "/readyz" if get_only(&req) => discovery::readyz(state),
        "/metrics" if get_only(&req) => metrics::metrics(state),
        "/.well-known/jwks.json"
        | "/.well-known/oauth-authorization-server"
        | "/healthz"
        | "/readyz"
        | "/metrics" => OAuthError::method_not_allowed("GET, HEAD").into_response(),
        _ => OAuthError::not_found().into_response(),
    }
}
