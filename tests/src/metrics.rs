//! Reading `/metrics` over a connection of its own that the server closes after answering, so
//! a scrape never holds one of the daemon's connection slots afterwards (a pooled client
//! would, and that matters where `max_connections` is small).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::conn::{self, RawConn};

/// The Prometheus text exposition served now.
#[track_caller]
pub fn scrape(addr: SocketAddr) -> String {
    let request = conn::get("/metrics", false);
    let reply = RawConn::open(addr).request(&request);
    reply.assert_status(200);
    reply.text()
}

/// The value of one series (`name` or `name{label="value"}`) in an exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The value of `series` now; fails the test if the daemon does not expose it.
#[track_caller]
pub fn value(addr: SocketAddr, series: &str) -> f64 {
    let exposition = scrape(addr);
    sample(&exposition, series)
        .unwrap_or_else(|| panic!("no sample `{series}` in /metrics:\n{exposition}"))
}

/// Scrapes until `series` is at least `floor` and returns it. Counters move just after the
/// event a client sees (a connection is closed, then counted), so a test that has seen the
/// event may still have to wait a moment for the count.
#[track_caller]
pub fn await_at_least(addr: SocketAddr, series: &str, floor: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = value(addr, series);
        if value >= floor {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "`{series}` stayed at {value}, below {floor}, for {within:?}"
        );
    }
}
