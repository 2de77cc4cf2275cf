//! `--soak DURATION`: one policy's stack under a fixed open-loop rate for a long time, with
//! both planes' resident memory and CPU sampled every window (10 s). The report gives every
//! sample and the slope of resident memory against the number of calls: memory that grows
//! with the calls (a leak, an unbounded queue or cache) shows as a slope well above zero.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use luthien_tests::bench::load::{self, HttpClient, RequestSpec};
use luthien_tests::bench::procs::{Binaries, CpuTime, Luthien, Memory};
use luthien_tests::bench::stats::{Summary, ms};

use crate::{CHAT_BODY, Policy, Settings};

/// How often memory and CPU are sampled.
const WINDOW: Duration = Duration::from_secs(10);

/// One window of the soak.
struct Sample {
    /// Since the soak started, at the end of the window.
    at: Duration,
    /// Calls sent so far.
    calls: u64,
    errors: usize,
    latency: Summary,
    dataplane: Memory,
    controlplane: Memory,
    /// CPU the planes used in this window.
    cpu: CpuTime,
}

/// Runs the soak for `policy` and returns its Markdown report.
pub async fn run(
    settings: &Settings,
    binaries: &Binaries,
    dir: &Path,
    mock: SocketAddr,
    client: &HttpClient,
    policy: Policy,
    length: Duration,
) -> anyhow::Result<String> {
    eprintln!(
        "\n== soak: {} ({} mode), {} req/s for {:?}",
        policy.name(),
        policy.mode(),
        settings.rate,
        length
    );
    let mut luthien =
        Luthien::start(binaries, dir, policy.name(), mock, client, &settings.extra).await?;
    let spec = Arc::new(RequestSpec::post_json(
        &format!("{}/v1/chat/completions", luthien.base_url),
        CHAT_BODY,
    )?);
    let idle = (luthien.dataplane.memory()?, luthien.controlplane.memory()?);
    let started = Instant::now();
    let mut calls = 0;
    let mut cpu_before = luthien.cpu_time()?;
    let mut samples = Vec::new();
    while started.elapsed() < length {
        let spec = Arc::clone(&spec);
        let client = client.clone();
        let window = load::open_loop(settings.rate, WINDOW, move |scheduled| {
            let client = client.clone();
            let spec = Arc::clone(&spec);
            async move { load::call(&client, &spec, scheduled).await }
        })
        .await?;
        luthien.dataplane.ensure_running()?;
        luthien.controlplane.ensure_running()?;
        calls += (window.ok.len() + window.errors) as u64;
        let cpu_now = luthien.cpu_time()?;
        let sample = Sample {
            at: started.elapsed(),
            calls,
            errors: window.errors,
            latency: Summary::of(window.ok.iter().map(|sample| sample.latency)),
            dataplane: luthien.dataplane.memory()?,
            controlplane: luthien.controlplane.memory()?,
            cpu: cpu_now.since(cpu_before),
        };
        cpu_before = cpu_now;
        eprintln!(
            "   {:>5.0} s: {} calls, data plane {:.1} MiB, control plane {:.1} MiB, p99 {} ms",
            sample.at.as_secs_f64(),
            sample.calls,
            sample.dataplane.rss_kib as f64 / 1024.0,
            sample.controlplane.rss_kib as f64 / 1024.0,
            ms(sample.latency.p99)
        );
        samples.push(sample);
    }
    let events = luthien.event_counts(client).await;
    Ok(report(settings, policy, idle, &samples, events))
}

fn report(
    settings: &Settings,
    policy: Policy,
    (dataplane_idle, controlplane_idle): (Memory, Memory),
    samples: &[Sample],
    events: Option<luthien_tests::bench::procs::EventCounts>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Soak: {} ({} mode), {} req/s open loop, samples every {} s\n",
        policy.name(),
        policy.mode(),
        settings.rate,
        WINDOW.as_secs()
    );
    // The first window warms up (pools, caches, the store's pages): the slope is taken over
    // the rest.
    let steady = samples.get(1..).unwrap_or_default();
    let slope = |memory: fn(&Sample) -> u64| {
        per_100k_calls(
            steady
                .iter()
                .map(|sample| (sample.calls as f64, memory(sample) as f64)),
        )
    };
    let data_slope = slope(|sample| sample.dataplane.rss_kib);
    let control_slope = slope(|sample| sample.controlplane.rss_kib);
    let describe = |slope: Option<f64>| {
        slope.map_or_else(
            || "n/a (too few samples)".to_owned(),
            |slope| format!("{slope:+.0} KiB per 100k calls"),
        )
    };
    let _ = writeln!(
        out,
        "Resident memory against calls (least squares over the samples after the first): data plane {}, control plane {}. Idle before the soak: data plane {:.1} MiB, control plane {:.1} MiB.",
        describe(data_slope),
        describe(control_slope),
        dataplane_idle.rss_kib as f64 / 1024.0,
        controlplane_idle.rss_kib as f64 / 1024.0,
    );
    if let Some(events) = events {
        let _ = writeln!(
            out,
            "Event records stored / dropped: {} / {}.",
            events.written, events.dropped
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| time (s) | calls | errors | p50 (ms) | p99 (ms) | data plane RSS (MiB) | control plane RSS (MiB) | data plane cores | control plane cores |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut previous = Duration::ZERO;
    for sample in samples {
        let window = (sample.at - previous).as_secs_f64();
        previous = sample.at;
        let cores = |used: Duration| used.as_secs_f64() / window;
        let _ = writeln!(
            out,
            "| {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} |",
            sample.at.as_secs_f64(),
            sample.calls,
            sample.errors,
            ms(sample.latency.p50),
            ms(sample.latency.p99),
            sample.dataplane.rss_kib as f64 / 1024.0,
            sample.controlplane.rss_kib as f64 / 1024.0,
            cores(sample.cpu.dataplane),
            cores(sample.cpu.controlplane),
        );
    }
    out
}

/// The least-squares slope of `(calls, KiB)` points, in KiB per 100,000 calls; `None` for
/// fewer than three points or no spread in calls.
fn per_100k_calls(points: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let points: Vec<(f64, f64)> = points.collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let covariance: f64 = points
        .iter()
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance * 100_000.0)
}

#[cfg(test)]
mod tests {
    use super::per_100k_calls;

    #[test]
    fn the_slope_is_memory_per_100k_calls() {
        // 1 KiB more every 10k calls: 10 KiB per 100k.
        let growing = (1..=6).map(|i| (f64::from(i) * 10_000.0, 5000.0 + f64::from(i)));
        let slope = per_100k_calls(growing).unwrap();
        assert!((slope - 10.0).abs() < 1e-9, "{slope}");
        let flat = (1..=6).map(|i| (f64::from(i) * 10_000.0, 5000.0));
        assert_eq!(per_100k_calls(flat), Some(0.0));
        assert_eq!(per_100k_calls([(1.0, 1.0), (2.0, 2.0)].into_iter()), None);
    }
}
