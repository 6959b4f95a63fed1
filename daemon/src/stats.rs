//! Counters of the token endpoint, kept without locks: the hot path only does relaxed atomic
//! adds. Once a second a tick task diffs them into a [`StatsTick`] for subscribers, and
//! `/metrics` reads them at scrape time.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokendealer_shared::admin::{ClientTick, MAX_TICK_CLIENTS, StatsTick};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clients::{ClientsStore, Registry};

/// Every error code the token endpoint answers with, in a fixed order (an index per code).
pub const ERROR_CODES: [&str; 6] = [
    "invalid_request",
    "invalid_client",
    "unsupported_grant_type",
    "invalid_target",
    "invalid_scope",
    "too_many_requests",
];

/// How often subscribers get a tick.
pub const TICK: Duration = Duration::from_secs(1);

/// Ticks kept for a subscriber that reads slowly; older ones are dropped for it.
const TICK_BUFFER: usize = 4;

/// One client's counters. They live as long as the client id does, across reloads.
#[derive(Debug, Default)]
pub struct ClientCounters {
    pub issued: AtomicU64,
    pub failures: AtomicU64,
    /// Unix seconds; 0 = never.
    pub last_issued: AtomicI64,
}

/// Request latency in quarter-octave buckets of microseconds: fine enough for p50/p99 within
/// about 19%, and every power of two is a bucket edge, which the Prometheus buckets use.
#[derive(Debug)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_us: AtomicU64,
}

const LATENCY_BUCKETS: usize = 112;

fn bucket_of(us: u64) -> usize {
    // Below 8 µs one bucket per microsecond; above, four per power of two, chosen by the two
    // bits after the leading one.
    if us < 8 {
        return usize::try_from(us).expect("below 8");
    }
    let log2 = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (log2 - 2)) & 3) as usize;
    (log2 * 4 + sub - 4).min(LATENCY_BUCKETS - 1)
}

/// The exclusive upper edge of a bucket, in microseconds.
fn bucket_upper(index: usize) -> u64 {
    if index < 8 {
        return index as u64 + 1;
    }
    let (log2, sub) = ((index + 4) / 4, ((index + 4) % 4) as u64);
    (4 + sub + 1) << (log2 - 2)
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Latency {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn snapshot(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Relaxed))
    }

    /// Counts per bucket (not cumulative: the encoder accumulates them) at each
    /// power-of-two edge from 64 µs to 16 s, with the sum, for a Prometheus histogram in
    /// seconds.
    pub fn prometheus(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts = self.snapshot();
        let total: u64 = counts.iter().sum();
        let mut buckets = Vec::new();
        let mut below_previous = 0;
        for power in 6..=24 {
            let edge = 1u64 << power;
            let below: u64 = counts
                .iter()
                .enumerate()
                .take_while(|(i, _)| bucket_upper(*i) <= edge)
                .map(|(_, c)| c)
                .sum();
            buckets.push((edge as f64 / 1e6, below - below_previous));
            below_previous = below;
        }
        buckets.push((f64::INFINITY, total - below_previous));
        (self.sum_us.load(Relaxed) as f64 / 1e6, total, buckets)
    }
}

/// The quantile `permille`/1000 of the difference between two bucket snapshots, as a
/// bucket's upper edge.
fn quantile(now: &[u64; LATENCY_BUCKETS], before: &[u64; LATENCY_BUCKETS], permille: u64) -> u64 {
    let diff: Vec<u64> = now
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = diff.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = (total * permille).div_ceil(1000).max(1);
    let mut seen = 0;
    for (i, count) in diff.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper(i);
        }
    }
    bucket_upper(LATENCY_BUCKETS - 1)
}

/// The daemon's counters.
#[derive(Debug)]
pub struct Stats {
    pub issued: AtomicU64,
    failures: [AtomicU64; ERROR_CODES.len()],
    pub latency: Latency,
    ticks: broadcast::Sender<Arc<StatsTick>>,
    /// Tokens per second over the last tick, for status lines.
    pub rate: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            issued: AtomicU64::new(0),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Latency::default(),
            ticks: broadcast::channel(TICK_BUFFER).0,
            rate: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts a refused token request by its error code.
    pub fn failure(&self, code: &str) {
        if let Some(i) = ERROR_CODES.iter().position(|c| *c == code) {
            self.failures[i].fetch_add(1, Relaxed);
        }
    }

    pub fn failures_by_code(&self) -> [(&'static str, u64); ERROR_CODES.len()] {
        std::array::from_fn(|i| (ERROR_CODES[i], self.failures[i].load(Relaxed)))
    }

    /// A receiver of the ticks to come.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StatsTick>> {
        self.ticks.subscribe()
    }
}

/// What each client did since the counts in `before` (by id: issued, failed; clients with
/// none absent): the busiest [`MAX_TICK_CLIENTS`], and the counts to compare with next.
fn client_activity(
    registry: &Registry,
    before: &HashMap<String, (u64, u64)>,
) -> (Vec<ClientTick>, HashMap<String, (u64, u64)>) {
    let mut active: Vec<ClientTick> = Vec::new();
    let mut seen = HashMap::with_capacity(before.len());
    for client in registry.iter() {
        let counts = (
            client.counters.issued.load(Relaxed),
            client.counters.failures.load(Relaxed),
        );
        // A client not seen active before had nothing counted.
        let was = before.get(&client.id).copied().unwrap_or((0, 0));
        if counts != was {
            active.push(ClientTick {
                id: client.id.clone(),
                issued: counts.0.saturating_sub(was.0),
                failures: counts.1.saturating_sub(was.1),
            });
        }
        if counts != (0, 0) {
            seen.insert(client.id.clone(), counts);
        }
    }
    active.sort_unstable_by(|a, b| {
        (b.issued + b.failures)
            .cmp(&(a.issued + a.failures))
            .then_with(|| a.id.cmp(&b.id))
    });
    active.truncate(MAX_TICK_CLIENTS);
    (active, seen)
}

/// Produces a tick every [`TICK`] until `stop` fires. Sending never waits on a subscriber.
pub async fn tick(stats: Arc<Stats>, clients: Arc<ClientsStore>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut last_issued = 0;
    let mut last_failures = [0u64; ERROR_CODES.len()];
    let mut last_latency = stats.latency.snapshot();
    let mut last_clients: HashMap<String, (u64, u64)> = HashMap::new();
    let mut baseline_lost = false;
    interval.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let interval_ms = u64::try_from(now.duration_since(last).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        last = now;
        // The end of the interval, before the walk below (whose length varies).
        let at_ms = jiff::Timestamp::now().as_millisecond();

        // On the blocking pool: with 100 000 clients busy, the walk takes milliseconds that
        // a worker serving tokens would otherwise stall for.
        let registry = Arc::clone(&clients.load());
        let before = std::mem::take(&mut last_clients);
        let walk = tokio::task::spawn_blocking(move || client_activity(&registry, &before));
        let active = tokio::select! {
            () = stop.cancelled() => return,
            walked = walk => match walked {
                Ok((active, seen)) => {
                    last_clients = seen;
                    // Counted from nothing, as after a failed walk, the counts are totals
                    // since start, not this tick's: they only set the baseline.
                    if std::mem::take(&mut baseline_lost) { Vec::new() } else { active }
                }
                Err(e) => {
                    tracing::error!(error = %e, "counting the clients' activity failed");
                    baseline_lost = true;
                    Vec::new()
                }
            },
        };

        // Read after the clients' counters: the token endpoint counts a token in the total
        // before the client's, so no client's share of the tick's tokens exceeds the tick's.
        let issued_total = stats.issued.load(Relaxed);
        let failures_now = stats.failures_by_code();
        let failures_total: u64 = failures_now.iter().map(|(_, n)| n).sum();
        let failures_by_code: Vec<(String, u64)> = failures_now
            .iter()
            .zip(&last_failures)
            .filter(|((_, now), before)| now > before)
            .map(|((code, now), before)| ((*code).to_owned(), now - before))
            .collect();
        let latency_now = stats.latency.snapshot();

        let issued = issued_total - last_issued;
        let tick = StatsTick {
            at_ms,
            interval_ms,
            issued,
            failures: failures_now
                .iter()
                .zip(&last_failures)
                .map(|((_, n), b)| n - b)
                .sum(),
            failures_by_code,
            clients: active,
            p50_us: quantile(&latency_now, &last_latency, 500),
            p99_us: quantile(&latency_now, &last_latency, 990),
            issued_total,
            failures_total,
        };
        stats.rate.store(issued * 1000 / interval_ms, Relaxed);
        last_issued = issued_total;
        last_failures = failures_now.map(|(_, n)| n);
        last_latency = latency_now;
        // An error only means nobody is subscribed.
        let _ = stats.ticks.send(Arc::new(tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_contain_their_values() {
        for us in [
            0u64,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            9,
            10,
            15,
            16,
            100,
            1000,
            1023,
            1024,
            1025,
            999_999,
            1 << 26,
        ] {
            let b = bucket_of(us);
            assert!(
                us < bucket_upper(b),
                "{us} < upper of bucket {b} ({})",
                bucket_upper(b)
            );
            if b > 0 {
                assert!(
                    us >= bucket_upper(b - 1),
                    "{us} >= upper of bucket {}",
                    b - 1
                );
            }
        }
        for i in 1..LATENCY_BUCKETS {
            assert!(bucket_upper(i) > bucket_upper(i - 1));
        }
    }

    #[test]
    fn quantiles_of_an_interval() {
        let latency = Latency::default();
        let before = latency.snapshot();
        for _ in 0..98 {
            latency.record(Duration::from_micros(300));
        }
        latency.record(Duration::from_millis(20));
        latency.record(Duration::from_millis(20));
        let now = latency.snapshot();
        let p50 = quantile(&now, &before, 500);
        assert!((300..400).contains(&p50), "{p50}");
        let p99 = quantile(&now, &before, 990);
        assert!((20_000..25_000).contains(&p99), "{p99}");
        assert_eq!(quantile(&now, &now, 500), 0, "an idle interval");
    }

    #[test]
    fn prometheus_buckets_add_up_to_the_count() {
        let latency = Latency::default();
        latency.record(Duration::from_micros(100));
        latency.record(Duration::from_millis(3));
        latency.record(Duration::from_secs(60));
        let (sum, count, buckets) = latency.prometheus();
        assert_eq!(count, 3);
        assert!((sum - 60.0031).abs() < 1e-9);
        let at = |edge: f64| {
            buckets
                .iter()
                .find(|(e, _)| *e == edge || (*e - edge).abs() < 1e-9)
                .unwrap()
                .1
        };
        assert_eq!(at(0.000_128), 1);
        assert_eq!(at(0.004_096), 1);
        assert_eq!(at(f64::INFINITY), 1);
        // The encoder accumulates, so the buckets themselves must add up to the count.
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), count);
    }
}
