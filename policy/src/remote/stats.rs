//! Counters of one remote policy entry: calls per phase, errors, timeouts, fail-open and
//! latency histograms. Updated with relaxed atomics on the call path; read as a
//! [`RemoteStatsSnapshot`] (see [`super::Remote::stats`], `PolicyMetrics::render_remote`) and rendered for
//! Prometheus by [`render_prometheus`].

use std::fmt::Write;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (in microseconds) of the latency histogram buckets; a last `+Inf` bucket
/// follows.
pub const LATENCY_BUCKETS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// The phases a remote policy is measured in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatPhase {
    /// `Describe` calls.
    Describe,
    Request,
    Response,
    /// One stream event (or the stream's end) round trip.
    Stream,
}

impl StatPhase {
    pub const ALL: [StatPhase; 4] = [
        StatPhase::Describe,
        StatPhase::Request,
        StatPhase::Response,
        StatPhase::Stream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatPhase::Describe => "describe",
            StatPhase::Request => "request",
            StatPhase::Response => "response",
            StatPhase::Stream => "stream",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct PhaseCounters {
    /// Messages sent that expected an answer (or, read-only, were sent at all).
    requests: AtomicU64,
    /// Failures of any kind (includes timeouts).
    errors: AtomicU64,
    timeouts: AtomicU64,
    /// Failures let through unchanged because of `on_error: allow`.
    fail_open: AtomicU64,
    /// Failures that blocked the call or withheld the response (`on_error: block`).
    fail_closed: AtomicU64,
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
    /// Non-cumulative bucket counts; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
}

/// The live counters of one remote policy entry.
#[derive(Default)]
pub struct RemoteStats {
    phases: [PhaseCounters; 4],
    /// Streams opened to the server.
    streams_opened: AtomicU64,
    /// Messages for a read-only server dropped because its queue was full.
    audit_dropped: AtomicU64,
}

impl RemoteStats {
    pub fn request(&self, phase: StatPhase) {
        self.phases[phase.index()]
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self, phase: StatPhase, elapsed: Duration) {
        let counters = &self.phases[phase.index()];
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        counters
            .latency_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
        counters.latency_count.fetch_add(1, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        counters.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, phase: StatPhase, timeout: bool) {
        let counters = &self.phases[phase.index()];
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if timeout {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn fail_open(&self, phase: StatPhase) {
        self.phases[phase.index()]
            .fail_open
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn fail_closed(&self, phase: StatPhase) {
        self.phases[phase.index()]
            .fail_closed
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_opened(&self) {
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of the counters (each counter is read once).
    pub fn snapshot(&self, policy: &str, endpoints: &[String]) -> RemoteStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RemoteStatsSnapshot {
            policy: policy.to_owned(),
            endpoints: endpoints.to_vec(),
            streams_opened: load(&self.streams_opened),
            audit_dropped: load(&self.audit_dropped),
            phases: StatPhase::ALL
                .iter()
                .map(|&phase| {
                    let counters = &self.phases[phase.index()];
                    PhaseSnapshot {
                        phase,
                        requests: load(&counters.requests),
                        errors: load(&counters.errors),
                        timeouts: load(&counters.timeouts),
                        fail_open: load(&counters.fail_open),
                        fail_closed: load(&counters.fail_closed),
                        latency_sum_micros: load(&counters.latency_sum_micros),
                        latency_count: load(&counters.latency_count),
                        buckets: counters.buckets.iter().map(load).collect(),
                    }
                })
                .collect(),
        }
    }
}

/// The counters of one remote policy entry at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteStatsSnapshot {
    /// The entry's `name`.
    pub policy: String,
    pub endpoints: Vec<String>,
    pub streams_opened: u64,
    pub audit_dropped: u64,
    /// One per [`StatPhase::ALL`], in that order.
    pub phases: Vec<PhaseSnapshot>,
}

impl RemoteStatsSnapshot {
    pub fn phase(&self, phase: StatPhase) -> &PhaseSnapshot {
        &self.phases[phase.index()]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSnapshot {
    pub phase: StatPhase,
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub fail_open: u64,
    pub fail_closed: u64,
    pub latency_sum_micros: u64,
    pub latency_count: u64,
    /// Non-cumulative counts per [`LATENCY_BUCKETS_MICROS`] bucket, then `+Inf`.
    pub buckets: Vec<u64>,
}

/// A remote policy entry whose counters a [`PolicyMetrics`](crate::PolicyMetrics) reports;
/// it goes away with its policy.
pub(crate) struct Registered {
    pub policy: String,
    pub endpoints: Vec<String>,
    pub stats: Weak<RemoteStats>,
}

/// Snapshots of the live entries of `registry`, one per policy name. While a reloaded chain
/// and calls still running on the old one both hold an entry of the same name, the newest
/// (the reloaded one) is reported; counters start again from zero on reload, which
/// Prometheus treats as a counter reset.
pub(crate) fn live_stats(registry: &mut Vec<Registered>) -> Vec<RemoteStatsSnapshot> {
    registry.retain(|entry| entry.stats.strong_count() > 0);
    let mut snapshots: Vec<RemoteStatsSnapshot> = Vec::new();
    for entry in registry.iter().rev() {
        if snapshots.iter().any(|seen| seen.policy == entry.policy) {
            continue;
        }
        if let Some(stats) = entry.stats.upgrade() {
            snapshots.push(stats.snapshot(&entry.policy, &entry.endpoints));
        }
    }
    snapshots.reverse();
    snapshots
}

/// Appends the Prometheus text exposition of `snapshots` to `out`:
///
/// - `luthien_remote_policy_requests_total{policy,phase}` (counter)
/// - `luthien_remote_policy_errors_total{policy,phase}` (counter; timeouts included)
/// - `luthien_remote_policy_timeouts_total{policy,phase}` (counter)
/// - `luthien_remote_policy_fail_open_total{policy,phase}` (counter)
/// - `luthien_remote_policy_fail_closed_total{policy,phase}` (counter)
/// - `luthien_remote_policy_latency_seconds{policy,phase}` (histogram)
/// - `luthien_remote_policy_streams_opened_total{policy}` (counter)
/// - `luthien_remote_policy_audit_dropped_total{policy}` (counter)
pub fn render_prometheus(snapshots: &[RemoteStatsSnapshot], out: &mut String) {
    if snapshots.is_empty() {
        return;
    }
    type PhaseValue = fn(&PhaseSnapshot) -> u64;
    let counters: [(&str, &str, PhaseValue); 5] = [
        (
            "requests",
            "Messages sent to the remote policy server that expected an answer.",
            |p| p.requests,
        ),
        (
            "errors",
            "Remote policy failures (connect, protocol, crash, timeout).",
            |p| p.errors,
        ),
        (
            "timeouts",
            "Remote policy answers that did not come in time.",
            |p| p.timeouts,
        ),
        (
            "fail_open",
            "Remote policy failures passed through unchanged (on_error: allow).",
            |p| p.fail_open,
        ),
        (
            "fail_closed",
            "Remote policy failures that blocked the call or withheld the response (on_error: block).",
            |p| p.fail_closed,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP luthien_remote_policy_{name}_total {help}");
        let _ = writeln!(out, "# TYPE luthien_remote_policy_{name}_total counter");
        for snapshot in snapshots {
            for phase in &snapshot.phases {
                let _ = writeln!(
                    out,
                    "luthien_remote_policy_{name}_total{{policy=\"{}\",phase=\"{}\"}} {}",
                    escape(&snapshot.policy),
                    phase.phase.as_str(),
                    value(phase)
                );
            }
        }
    }
    let name = "luthien_remote_policy_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Round trip of one message to the remote policy server and its answer."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for snapshot in snapshots {
        for phase in &snapshot.phases {
            let labels = format!(
                "policy=\"{}\",phase=\"{}\"",
                escape(&snapshot.policy),
                phase.phase.as_str()
            );
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS_MICROS.iter().zip(&phase.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                    *bound as f64 / 1e6
                );
            }
            cumulative += phase.buckets.last().copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                phase.latency_sum_micros as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", phase.latency_count);
        }
    }
    for (name, help, value) in [
        (
            "streams_opened",
            "Per-call streams opened to the remote policy server.",
            (|s| s.streams_opened) as fn(&RemoteStatsSnapshot) -> u64,
        ),
        (
            "audit_dropped",
            "Messages for a read-only remote server dropped because its queue was full.",
            |s| s.audit_dropped,
        ),
    ] {
        let _ = writeln!(out, "# HELP luthien_remote_policy_{name}_total {help}");
        let _ = writeln!(out, "# TYPE luthien_remote_policy_{name}_total counter");
        for snapshot in snapshots {
            let _ = writeln!(
                out,
                "luthien_remote_policy_{name}_total{{policy=\"{}\"}} {}",
                escape(&snapshot.policy),
                value(snapshot)
            );
        }
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyMetrics;
    use std::sync::Arc;

    #[test]
    fn counts_and_renders() {
        let stats = Arc::new(RemoteStats::default());
        stats.request(StatPhase::Request);
        stats.latency(StatPhase::Request, Duration::from_micros(180));
        stats.error(StatPhase::Stream, true);
        stats.fail_open(StatPhase::Stream);
        let snapshot = stats.snapshot("audit \"x\"", &["http://a".to_owned()]);
        let request = snapshot.phase(StatPhase::Request);
        assert_eq!((request.requests, request.latency_count), (1, 1));
        assert_eq!(request.buckets[1], 1);
        let stream = snapshot.phase(StatPhase::Stream);
        assert_eq!(
            (stream.errors, stream.timeouts, stream.fail_open),
            (1, 1, 1)
        );
        let mut text = String::new();
        render_prometheus(&[snapshot], &mut text);
        assert!(text.contains(
            "luthien_remote_policy_requests_total{policy=\"audit \\\"x\\\"\",phase=\"request\"} 1"
        ));
        assert!(text.contains(
            "luthien_remote_policy_latency_seconds_bucket{policy=\"audit \\\"x\\\"\",phase=\"request\",le=\"0.00025\"} 1"
        ));
        assert!(text.contains(
            "luthien_remote_policy_latency_seconds_count{policy=\"audit \\\"x\\\"\",phase=\"request\"} 1"
        ));
    }

    /// A reloaded chain and calls still on the old one both hold an entry of the same name:
    /// the newest is reported, once, and an entry goes with its policy.
    #[test]
    fn metrics_report_live_policies_once_per_name() {
        let metrics = PolicyMetrics::default();
        let old = Arc::new(RemoteStats::default());
        let new = Arc::new(RemoteStats::default());
        metrics.register_remote("registry-test", &[], &old);
        metrics.register_remote("registry-test", &[], &new);
        new.request(StatPhase::Request);
        let mut text = String::new();
        metrics.render_remote(&mut text);
        let line =
            "luthien_remote_policy_requests_total{policy=\"registry-test\",phase=\"request\"}";
        assert_eq!(text.matches(line).count(), 1, "{text}");
        assert!(text.contains(&format!("{line} 1")), "{text}");
        drop((old, new));
        let mut text = String::new();
        metrics.render_remote(&mut text);
        assert!(!text.contains("registry-test"), "{text}");
    }
}
