//! `GET /metrics`: the counters in Prometheus text format, read at scrape time.

use std::sync::atomic::Ordering::Relaxed;

use http::{HeaderValue, StatusCode, header};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::response::{self, Resp};
use crate::State;

/// Everything a scrape shows, copied out of the live counters.
#[derive(Debug)]
struct Snapshot {
    issued: Issued,
    failures_by_code: Vec<(&'static str, u64)>,
    latency: (f64, u64, Vec<(f64, u64)>),
    clients: u64,
    reloads: u64,
    reload_failures: u64,
    last_reload_success: i64,
    throttled: [(&'static str, u64); 2],
    key_rotations: u64,
    connections_open: u64,
    connections_accepted: u64,
    connections_expired: [(&'static str, u64); 2],
    connections_at_limit: u64,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.issued {
            Issued::ByClient(by_client) => counters_by(
                &mut encoder,
                "tokendealer_tokens_issued",
                "Access tokens issued, by client.",
                "client",
                by_client,
            )?,
            Issued::Total(total) => {
                ConstCounter::new(*total).encode(encoder.encode_descriptor(
                    "tokendealer_tokens_issued",
                    "Access tokens issued.",
                    None,
                    MetricType::Counter,
                )?)?;
            }
        }
        counters_by(
            &mut encoder,
            "tokendealer_token_failures",
            "Token requests refused, by OAuth error code.",
            "error",
            &self.failures_by_code,
        )?;
        counters_by(
            &mut encoder,
            "tokendealer_throttled",
            "Requests answered 429: by source address (refused before any work) or by guarded client id.",
            "by",
            &self.throttled,
        )?;
        let (sum, count, buckets) = &self.latency;
        encoder
            .encode_descriptor(
                "tokendealer_token_request_duration_seconds",
                "Time to answer a token request.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?;
        let gauge = |encoder: &mut DescriptorEncoder<'_>, name, help, value: i64| {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)
        };
        let counter = |encoder: &mut DescriptorEncoder<'_>, name, help, value: u64| {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)
        };
        gauge(
            &mut encoder,
            "tokendealer_clients",
            "Clients registered.",
            i64::try_from(self.clients).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut encoder,
            "tokendealer_clients_reloads",
            "Reloads of the clients file that changed the registry.",
            self.reloads,
        )?;
        counter(
            &mut encoder,
            "tokendealer_clients_reload_failures",
            "Reloads of the clients file that failed (the previous clients kept serving).",
            self.reload_failures,
        )?;
        gauge(
            &mut encoder,
            "tokendealer_clients_last_reload_success_timestamp_seconds",
            "When the clients file was last loaded successfully.",
            self.last_reload_success,
        )?;
        counter(
            &mut encoder,
            "tokendealer_key_rotations",
            "Signing key rotations made by this daemon.",
            self.key_rotations,
        )?;
        gauge(
            &mut encoder,
            "tokendealer_http_connections",
            "HTTP connections open now.",
            i64::try_from(self.connections_open).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut encoder,
            "tokendealer_http_connections_accepted",
            "HTTP connections accepted.",
            self.connections_accepted,
        )?;
        counter(
            &mut encoder,
            "tokendealer_http_connections_at_limit",
            "Times every max_connections slot was taken when a connection was to be accepted.",
            self.connections_at_limit,
        )?;
        counters_by(
            &mut encoder,
            "tokendealer_http_connections_timed_out",
            "HTTP connections closed by a deadline: headers (or TLS handshake) not read within read_timeout, or idle past idle_timeout.",
            "phase",
            &self.connections_expired,
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1).encode(
            encoder
                .encode_descriptor(
                    "tokendealer_build_info",
                    "Build information.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&labels)?,
        )
    }
}

/// Tokens issued: one counter, or (`metrics_by_client`) one per client that got a token.
#[derive(Debug)]
enum Issued {
    Total(u64),
    ByClient(Vec<(String, u64)>),
}

/// One counter family with a single label: a counter per `(label value, count)`.
fn counters_by<V: AsRef<str>>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(V, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value.as_ref())];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

pub(super) fn metrics(state: &State) -> Resp {
    let issued = if state.config.metrics_by_client {
        let registry = state.clients.load();
        let mut by_client: Vec<(String, u64)> = registry
            .iter()
            .filter_map(|c| {
                let n = c.counters.issued.load(Relaxed);
                (n > 0).then(|| (c.id.clone(), n))
            })
            .collect();
        drop(registry);
        by_client.sort_unstable();
        Issued::ByClient(by_client)
    } else {
        // Counted apart from the clients, so removing one does not make it go backwards.
        Issued::Total(state.stats.issued.load(Relaxed))
    };
    let snapshot = Snapshot {
        issued,
        failures_by_code: state.stats.failures_by_code().to_vec(),
        latency: state.stats.latency.prometheus(),
        clients: state.clients.load().len() as u64,
        reloads: state.clients.reloads.load(Relaxed),
        reload_failures: state.clients.reload_failures.load(Relaxed),
        last_reload_success: state.clients.last_success.load(Relaxed),
        throttled: [
            ("address", state.throttle.refused_address.load(Relaxed)),
            ("client", state.throttle.refused_client.load(Relaxed)),
        ],
        key_rotations: state.keys.rotations.load(Relaxed),
        connections_open: state.conns.open.load(Relaxed),
        connections_accepted: state.conns.accepted.load(Relaxed),
        connections_expired: [
            ("read", state.conns.read_timeouts.load(Relaxed)),
            ("idle", state.conns.idle_timeouts.load(Relaxed)),
        ],
        connections_at_limit: state.conns.at_limit.load(Relaxed),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut body = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).is_err() {
        return response::json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &b"{\"error\":\"server_error\"}"[..],
        );
    }
    let mut resp = response::json(StatusCode::OK, body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
