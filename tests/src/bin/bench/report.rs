//! The Markdown report: machine facts, the command, a summary (policies × metrics) with the
//! spec's targets, and the detailed tables behind it.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Policy, Settings};
use luthien_tests::bench::load::{CallSample, Samples, Side, Sides, StreamSample, Throughput};
use luthien_tests::bench::procs::{CpuTime, EventCounts, LogProblems, Memory};
use luthien_tests::bench::stats::{self, Summary, added_ms, ms, signed_ms};

/// Everything measured for one policy.
#[derive(Debug)]
pub struct PolicyRun {
    pub policy: Policy,
    pub latency: Sides<Samples<CallSample>>,
    pub streams: Sides<Samples<StreamSample>>,
    pub throughput: Sides<Throughput>,
    pub cpu: CpuByMeasurement,
    /// The control plane's event-store counters at the end, when it serves them.
    pub events: Option<EventCounts>,
    pub dataplane_idle: Memory,
    pub dataplane_after: Memory,
    pub controlplane_idle: Memory,
    pub controlplane_after: Memory,
    pub dataplane_log: LogProblems,
    pub controlplane_log: LogProblems,
}

/// CPU time the planes used during each measurement (warm-up included). They are idle
/// while the direct side runs, so this is the cost of the proxied side.
#[derive(Debug, Default)]
pub struct CpuByMeasurement {
    pub latency: CpuTime,
    pub streams: CpuTime,
    pub throughput: CpuTime,
}

impl PolicyRun {
    /// Failed requests over every measurement of this policy (warm-ups excluded).
    pub fn errors(&self) -> u64 {
        let sides = [Side::Direct, Side::Nginx, Side::Proxied];
        sides
            .iter()
            .map(|side| {
                self.latency.get(*side).errors as u64
                    + self.streams.get(*side).errors as u64
                    + self.throughput.get(*side).errors
            })
            .sum()
    }

    fn first_error(&self) -> Option<String> {
        let sides = [Side::Direct, Side::Nginx, Side::Proxied];
        sides.iter().find_map(|side| {
            let label = |what: &str, error: &Option<String>| {
                error
                    .as_ref()
                    .map(|error| format!("{what}, {}: {error}", side.name()))
            };
            label("non-streaming", &self.latency.get(*side).first_error)
                .or_else(|| label("streams", &self.streams.get(*side).first_error))
                .or_else(|| label("throughput", &self.throughput.get(*side).first_error))
        })
    }
}

/// Renders one summary cell of a policy.
type Cell<'a> = dyn Fn(&PolicyRun, &Figures) -> String + 'a;
/// A target's measured value, its limit and unit, or `None` where it does not apply.
type Measure<'a> = dyn Fn(&PolicyRun, &Figures) -> Option<(f64, Limit, &'static str)> + 'a;

/// A target's bound.
#[derive(Debug, Clone, Copy)]
enum Limit {
    AtMost(f64),
    AtLeast(f64),
}
use Limit::{AtLeast, AtMost};

/// The numbers derived from one [`PolicyRun`].
struct Figures {
    latency: Sides<Summary>,
    latency_lag: Sides<Summary>,
    overhead_header_p50: Option<f64>,
    first_byte: Sides<Summary>,
    stream_total: Sides<Summary>,
    stream_lag: Sides<Summary>,
    per_chunk_ms: f64,
}

impl Figures {
    fn of(run: &PolicyRun, chunks: usize) -> Self {
        let latency = run
            .latency
            .map(|samples| Summary::of(samples.ok.iter().map(|sample| sample.latency)));
        let stream_total = run
            .streams
            .map(|samples| Summary::of(samples.ok.iter().map(|sample| sample.total)));
        let overheads = run.latency.proxied.ok.iter().filter_map(|s| s.overhead_ms);
        Self {
            latency,
            latency_lag: run
                .latency
                .map(|samples| Summary::of(samples.sender_lag.iter().copied())),
            overhead_header_p50: stats::median(overheads.collect()),
            first_byte: run
                .streams
                .map(|samples| Summary::of(samples.ok.iter().map(|sample| sample.first_byte))),
            stream_lag: run
                .streams
                .map(|samples| Summary::of(samples.sender_lag.iter().copied())),
            per_chunk_ms: added_ms(stream_total.proxied.p50, stream_total.direct.p50)
                / chunks.max(1) as f64,
            stream_total,
        }
    }

    fn added_p50(&self) -> f64 {
        added_ms(self.latency.proxied.p50, self.latency.direct.p50)
    }

    fn added_p99(&self) -> f64 {
        added_ms(self.latency.proxied.p99, self.latency.direct.p99)
    }

    /// What Luthien adds at p50 beyond what nginx adds: proxied − nginx. `None` without nginx.
    fn over_nginx_p50(&self) -> Option<f64> {
        (!self.latency.nginx.is_empty())
            .then(|| added_ms(self.latency.proxied.p50, self.latency.nginx.p50))
    }

    /// Stream time to first chunk at p50, proxied − nginx. `None` without nginx.
    fn first_byte_over_nginx_p50(&self) -> Option<f64> {
        (!self.first_byte.nginx.is_empty())
            .then(|| added_ms(self.first_byte.proxied.p50, self.first_byte.nginx.p50))
    }
}

impl PolicyRun {
    /// Proxied throughput as a share of nginx's, in percent. `None` without nginx.
    fn share_of_nginx(&self) -> Option<f64> {
        let nginx = self.throughput.nginx.per_second();
        (nginx > 0.0).then(|| 100.0 * self.throughput.proxied.per_second() / nginx)
    }

    /// µs of CPU per proxied request at throughput: (data plane, control plane).
    fn cpu_per_call_at_throughput(&self, settings: &Settings) -> Option<(f64, f64)> {
        let per_second = self.throughput.proxied.per_second();
        let busy = (settings.phases.warmup + settings.phases.length).as_secs_f64();
        let micros = |used: Duration| used.as_secs_f64() / busy / per_second * 1e6;
        (per_second > 0.0).then(|| {
            (
                micros(self.cpu.throughput.dataplane),
                micros(self.cpu.throughput.controlplane),
            )
        })
    }
}

/// Facts about the machine that ran everything (load generator, mock and Luthien alike).
#[derive(Debug)]
pub struct Machine {
    cpus: usize,
    cpu_model: String,
    kernel: String,
    memory: String,
    date: String,
    /// `/proc/loadavg` before the run: other work on the machine skews every number.
    load_average: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|line| line.starts_with(key))
                .and_then(|line| line.split_once(':'))
                .map(|(_, value)| value.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: field(&cpuinfo, "model name"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|text| text.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            memory: gib(&field(&meminfo, "MemTotal")),
            date: utc_now(),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|text| {
                    text.split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|_| "unknown".to_owned()),
        }
    }
}

/// The whole report, in Markdown.
pub fn render(settings: &Settings, machine: &Machine, runs: &[PolicyRun]) -> String {
    let figures: Vec<Figures> = runs
        .iter()
        .map(|run| Figures::of(run, settings.chunks))
        .collect();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, settings, machine, runs, &figures);
    out
}

fn write_all(
    out: &mut String,
    settings: &Settings,
    machine: &Machine,
    runs: &[PolicyRun],
    figures: &[Figures],
) -> std::fmt::Result {
    write_errors(out, runs)?;
    write_setup(out, settings, machine)?;
    write_summary(out, settings, runs, figures)?;
    write_targets(out, settings, runs, figures)?;
    write_latency(out, settings, runs, figures)?;
    write_streams(out, settings, runs, figures)?;
    write_throughput(out, settings, runs)?;
    write_cpu(out, settings, runs)?;
    write_memory(out, runs)?;
    write_logs(out, runs)
}

fn write_errors(out: &mut String, runs: &[PolicyRun]) -> std::fmt::Result {
    let total: u64 = runs.iter().map(PolicyRun::errors).sum();
    if total == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "> **WARNING: {total} REQUESTS FAILED during the measurements. The numbers below are not a valid result.**"
    )?;
    for run in runs {
        if let Some(error) = run.first_error() {
            writeln!(
                out,
                "> {}: {} errors; first: {}",
                run.policy.name(),
                run.errors(),
                error.replace('\n', " ")
            )?;
        }
    }
    writeln!(out)
}

fn write_setup(out: &mut String, settings: &Settings, machine: &Machine) -> std::fmt::Result {
    writeln!(out, "Command: `{}`", settings.command)?;
    writeln!(out)?;
    writeln!(
        out,
        "Machine: {} CPUs (`nproc`), {}, {} RAM, Linux {}; {}; load average before the run \
         {}. Load generator, mock provider, control plane and data plane all share this machine.",
        machine.cpus,
        machine.cpu_model,
        machine.memory,
        machine.kernel,
        machine.date,
        machine.load_average
    )?;
    if cfg!(debug_assertions) {
        writeln!(
            out,
            "\n> **This benchmark binary is a debug build; run it with `--release`.**"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Settings: {} measured per side and measurement, in alternating slices of ≤ {} \
         ({}, then the reverse, …) after {} of discarded warm-up per side; \
         non-streaming at {} req/s open loop; streams of {} chunks at {} streams/s open loop; \
         throughput with {} keep-alive connections, closed loop. The planes log {}; {}.",
        human(settings.phases.length),
        human(settings.phases.slice),
        settings
            .sides()
            .iter()
            .map(|side| side.name())
            .collect::<Vec<_>>()
            .join("/"),
        human(settings.phases.warmup),
        settings.rate,
        settings.chunks,
        settings.stream_rate,
        settings.concurrency,
        settings.extra.rust_log.as_deref().map_or_else(
            || "at their default level (`RUST_LOG` unset)".to_owned(),
            |level| format!("with `RUST_LOG={level}`")
        ),
        if settings.nginx.is_some() {
            "nginx (`proxy_pass`, upstream keep-alive, `proxy_buffering off`, access log on, \
             `worker_processes auto`) is the baseline of a plain reverse proxy"
        } else {
            "**nginx was not found or was left out: no nginx baseline in this report**"
        },
    )?;
    writeln!(out)
}

fn write_summary(
    out: &mut String,
    settings: &Settings,
    runs: &[PolicyRun],
    figures: &[Figures],
) -> std::fmt::Result {
    writeln!(
        out,
        "### Summary (added = proxied − direct; over nginx = proxied − nginx)"
    )?;
    writeln!(out)?;
    header(out, "metric", runs)?;
    let or_na = |value: Option<String>| value.unwrap_or_else(|| "n/a".to_owned());
    let rows: Vec<(String, Box<Cell<'_>>)> = vec![
        (
            format!("non-streaming added p50 @ {} req/s (ms)", settings.rate),
            Box::new(|_, f| signed_ms(f.added_p50())),
        ),
        (
            format!("non-streaming added p99 @ {} req/s (ms)", settings.rate),
            Box::new(|_, f| signed_ms(f.added_p99())),
        ),
        (
            "nginx's added p50 / p99 (ms)".to_owned(),
            Box::new(move |_, f| {
                or_na((!f.latency.nginx.is_empty()).then(|| {
                    format!(
                        "{} / {}",
                        signed_ms(added_ms(f.latency.nginx.p50, f.latency.direct.p50)),
                        signed_ms(added_ms(f.latency.nginx.p99, f.latency.direct.p99))
                    )
                }))
            }),
        ),
        (
            "non-streaming p50 over nginx (ms)".to_owned(),
            Box::new(move |_, f| or_na(f.over_nginx_p50().map(signed_ms))),
        ),
        (
            "`x-luthien-overhead-ms` median (ms)".to_owned(),
            Box::new(|_, f| {
                f.overhead_header_p50
                    .map_or_else(|| "absent".to_owned(), |value| format!("{value:.3}"))
            }),
        ),
        (
            format!("stream added TTFC p50, {} chunks (ms)", settings.chunks),
            Box::new(|_, f| signed_ms(added_ms(f.first_byte.proxied.p50, f.first_byte.direct.p50))),
        ),
        (
            "stream added TTFC p99 (ms)".to_owned(),
            Box::new(|_, f| signed_ms(added_ms(f.first_byte.proxied.p99, f.first_byte.direct.p99))),
        ),
        (
            "stream TTFC p50 over nginx (ms)".to_owned(),
            Box::new(move |_, f| or_na(f.first_byte_over_nginx_p50().map(signed_ms))),
        ),
        (
            "stream added per chunk, p50 (ms)".to_owned(),
            Box::new(|_, f| format!("{:+.4}", f.per_chunk_ms)),
        ),
        (
            format!("throughput direct, {} conns (req/s)", settings.concurrency),
            Box::new(|run, _| format!("{:.0}", run.throughput.direct.per_second())),
        ),
        (
            format!("throughput proxied, {} conns (req/s)", settings.concurrency),
            Box::new(|run, _| {
                let direct = run.throughput.direct.per_second();
                let proxied = run.throughput.proxied.per_second();
                let share = if direct > 0.0 {
                    100.0 * proxied / direct
                } else {
                    0.0
                };
                format!("{proxied:.0} ({share:.0} % of direct)")
            }),
        ),
        (
            format!("throughput nginx, {} conns (req/s)", settings.concurrency),
            Box::new(move |run, _| {
                or_na(
                    run.share_of_nginx()
                        .map(|_| format!("{:.0}", run.throughput.nginx.per_second())),
                )
            }),
        ),
        (
            "throughput proxied / nginx".to_owned(),
            Box::new(move |run, _| {
                or_na(run.share_of_nginx().map(|share| format!("{share:.0} %")))
            }),
        ),
        (
            "CPU per call at throughput, data / control plane (µs)".to_owned(),
            Box::new(move |run, _| {
                or_na(
                    run.cpu_per_call_at_throughput(settings)
                        .map(|(data, control)| format!("{data:.0} / {control:.0}")),
                )
            }),
        ),
        (
            "data plane RSS idle / after load (MiB)".to_owned(),
            Box::new(|run, _| {
                format!(
                    "{} / {}",
                    mib(run.dataplane_idle.rss_kib),
                    mib(run.dataplane_after.rss_kib)
                )
            }),
        ),
        (
            "data plane peak RSS (MiB)".to_owned(),
            Box::new(|run, _| mib(run.dataplane_after.peak_kib)),
        ),
        (
            "control plane event records stored / dropped".to_owned(),
            Box::new(|run, _| match run.events {
                Some(events) if events.dropped > 0 => {
                    format!("{} / **{}**", events.written, events.dropped)
                }
                Some(events) => format!("{} / 0", events.written),
                None => "n/a".to_owned(),
            }),
        ),
        (
            "failed requests".to_owned(),
            Box::new(|run, _| {
                let errors = run.errors();
                if errors == 0 {
                    "0".to_owned()
                } else {
                    format!("**{errors}**")
                }
            }),
        ),
    ];
    for (label, cell) in &rows {
        write!(out, "| {label} |")?;
        for (run, figure) in runs.iter().zip(figures) {
            write!(out, " {} |", cell(run, figure))?;
        }
        writeln!(out)?;
    }
    writeln!(out)
}

fn write_targets(
    out: &mut String,
    settings: &Settings,
    runs: &[PolicyRun],
    figures: &[Figures],
) -> std::fmt::Result {
    writeln!(out, "### Targets")?;
    writeln!(out)?;
    header(out, "target", runs)?;
    let at_rate = if (settings.rate - 500.0).abs() < f64::EPSILON {
        String::new()
    } else {
        format!(" (measured at {} req/s, not 500)", settings.rate)
    };
    let row = |out: &mut String, label: &str, value: &Measure<'_>| -> std::fmt::Result {
        write!(out, "| {label} |")?;
        for (run, figure) in runs.iter().zip(figures) {
            match value(run, figure) {
                Some((value, limit, unit)) => write!(out, " {} |", verdict(value, limit, unit))?,
                None => write!(out, " n/a |")?,
            }
        }
        writeln!(out)
    };
    fn noop(run: &PolicyRun) -> bool {
        run.policy.mode() == "observe"
    }
    fn transform(run: &PolicyRun) -> bool {
        run.policy.mode() == "transform"
    }
    row(
        out,
        &format!("noop: non-streaming p50 over nginx ≤ +0.1 ms at 500 req/s{at_rate}"),
        &|run, f| {
            f.over_nginx_p50()
                .filter(|_| noop(run))
                .map(|value| (value, AtMost(0.1), "ms"))
        },
    )?;
    row(
        out,
        &format!("noop: non-streaming added p99 ≤ 0.5 ms at 500 req/s{at_rate}"),
        &|run, f| noop(run).then(|| (f.added_p99(), AtMost(0.5), "ms")),
    )?;
    row(out, "throughput proxied / nginx ≥ 60 %", &|run, _| {
        run.share_of_nginx()
            .map(|share| (share, AtLeast(60.0), "%"))
    })?;
    row(out, "0 event records dropped", &|run, _| {
        run.events
            .map(|events| (events.dropped as f64, AtMost(0.0), "dropped"))
    })?;
    row(
        out,
        "noop: control plane CPU per call at throughput ≤ 40 µs",
        &|run, _| {
            run.cpu_per_call_at_throughput(settings)
                .filter(|_| noop(run))
                .map(|(_, control)| (control, AtMost(40.0), "µs"))
        },
    )?;
    row(
        out,
        "data plane CPU per call at throughput ≤ 40 µs",
        &|run, _| {
            run.cpu_per_call_at_throughput(settings)
                .map(|(data, _)| (data, AtMost(40.0), "µs"))
        },
    )?;
    row(out, "stream TTFC p50 over nginx ≤ +0.2 ms", &|_, f| {
        f.first_byte_over_nginx_p50()
            .map(|value| (value, AtMost(0.2), "ms"))
    })?;
    row(out, "transform: added per chunk ≤ 0.04 ms", &|run, f| {
        transform(run).then_some((f.per_chunk_ms, AtMost(0.04), "ms"))
    })?;
    row(
        out,
        &format!("transform: non-streaming added p50 ≤ 0.3 ms{at_rate}"),
        &|run, f| transform(run).then(|| (f.added_p50(), AtMost(0.3), "ms")),
    )?;
    row(out, "data plane RSS idle ≤ 10 MiB", &|run, _| {
        Some((
            run.dataplane_idle.rss_kib as f64 / 1024.0,
            AtMost(10.0),
            "MiB",
        ))
    })?;
    row(out, "data plane RSS after load ≤ 20 MiB", &|run, _| {
        Some((
            run.dataplane_after.rss_kib as f64 / 1024.0,
            AtMost(20.0),
            "MiB",
        ))
    })?;
    writeln!(out)
}

fn verdict(value: f64, limit: Limit, unit: &str) -> String {
    match limit {
        AtMost(limit) if value <= limit => format!("met ({value:.3} {unit})"),
        AtLeast(limit) if value >= limit => format!("met ({value:.1} {unit})"),
        AtMost(limit) => format!(
            "**not met** ({value:.3} {unit}, {:.3} {unit} over)",
            value - limit
        ),
        AtLeast(limit) => format!(
            "**not met** ({value:.1} {unit}, {:.1} {unit} short)",
            limit - value
        ),
    }
}

fn write_latency(
    out: &mut String,
    settings: &Settings,
    runs: &[PolicyRun],
    figures: &[Figures],
) -> std::fmt::Result {
    writeln!(
        out,
        "### Non-streaming latency @ {} req/s, open loop (ms, from the scheduled send time)",
        settings.rate
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| policy | target | requests | errors | p50 | p90 | p99 | max | sender lag p99 |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (run, figure) in runs.iter().zip(figures) {
        for &side in settings.sides() {
            let summary = figure.latency.get(side);
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.policy.name(),
                side.name(),
                summary.count,
                run.latency.get(side).errors,
                cell(summary, summary.p50),
                cell(summary, summary.p90),
                cell(summary, summary.p99),
                cell(summary, summary.max),
                ms(figure.latency_lag.get(side).p99),
            )?;
        }
    }
    writeln!(out)
}

fn write_streams(
    out: &mut String,
    settings: &Settings,
    runs: &[PolicyRun],
    figures: &[Figures],
) -> std::fmt::Result {
    writeln!(
        out,
        "### Streams of {} chunks, zero upstream delay, {} streams/s open loop (ms, from the scheduled send time)",
        settings.chunks, settings.stream_rate
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| policy | target | streams | errors | TTFC p50 | TTFC p99 | total p50 | total p99 | total max | sender lag p99 |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for (run, figure) in runs.iter().zip(figures) {
        for &side in settings.sides() {
            let first = figure.first_byte.get(side);
            let total = figure.stream_total.get(side);
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.policy.name(),
                side.name(),
                total.count,
                run.streams.get(side).errors,
                cell(first, first.p50),
                cell(first, first.p99),
                cell(total, total.p50),
                cell(total, total.p99),
                cell(total, total.max),
                ms(figure.stream_lag.get(side).p99),
            )?;
        }
    }
    writeln!(out)
}

fn write_throughput(out: &mut String, settings: &Settings, runs: &[PolicyRun]) -> std::fmt::Result {
    writeln!(
        out,
        "### Throughput, {} keep-alive connections, closed loop",
        settings.concurrency
    )?;
    writeln!(out)?;
    writeln!(out, "| policy | target | req/s | completed | errors |")?;
    writeln!(out, "|---|---|---:|---:|---:|")?;
    for run in runs {
        for &side in settings.sides() {
            let throughput = run.throughput.get(side);
            writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} |",
                run.policy.name(),
                side.name(),
                throughput.per_second(),
                throughput.completed,
                throughput.errors
            )?;
        }
    }
    writeln!(out)
}

fn write_cpu(out: &mut String, settings: &Settings, runs: &[PolicyRun]) -> std::fmt::Result {
    writeln!(
        out,
        "### CPU used by Luthien while proxying (cores busy on average; µs of CPU per proxied request, stream or chunk)"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| policy | measurement | data plane cores | control plane cores | data plane CPU | control plane CPU |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|")?;
    // The proxied side runs for its warm-up plus its measured time.
    let busy = (settings.phases.warmup + settings.phases.length).as_secs_f64();
    for run in runs {
        let chunks = settings.chunks as f64;
        let measurements = [
            ("non-streaming", run.cpu.latency, settings.rate, "req"),
            (
                "streams",
                run.cpu.streams,
                settings.stream_rate * chunks,
                "chunk",
            ),
            (
                "throughput",
                run.cpu.throughput,
                run.throughput.proxied.per_second(),
                "req",
            ),
        ];
        for (name, cpu, per_second, unit) in measurements {
            let cores = |used: Duration| used.as_secs_f64() / busy;
            let per_unit = |used: Duration| {
                if per_second > 0.0 {
                    format!("{:.0} µs/{unit}", cores(used) / per_second * 1e6)
                } else {
                    "n/a".to_owned()
                }
            };
            writeln!(
                out,
                "| {} | {name} | {:.2} | {:.2} | {} | {} |",
                run.policy.name(),
                cores(cpu.dataplane),
                cores(cpu.controlplane),
                per_unit(cpu.dataplane),
                per_unit(cpu.controlplane),
            )?;
        }
    }
    writeln!(out)
}

fn write_memory(out: &mut String, runs: &[PolicyRun]) -> std::fmt::Result {
    writeln!(
        out,
        "### Memory (MiB; idle = after start-up before any call, after = 1 s after the last load)"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| policy | data plane RSS idle | after | peak | control plane RSS idle | after | peak |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
    for run in runs {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            run.policy.name(),
            mib(run.dataplane_idle.rss_kib),
            mib(run.dataplane_after.rss_kib),
            mib(run.dataplane_after.peak_kib),
            mib(run.controlplane_idle.rss_kib),
            mib(run.controlplane_after.rss_kib),
            mib(run.controlplane_after.peak_kib),
        )?;
    }
    writeln!(out)
}

fn write_logs(out: &mut String, runs: &[PolicyRun]) -> std::fmt::Result {
    let logged: usize = runs
        .iter()
        .map(|run| run.dataplane_log.count + run.controlplane_log.count)
        .sum();
    if logged == 0 {
        return writeln!(
            out,
            "No warnings or errors in the data plane and control plane logs."
        );
    }
    writeln!(out, "Warnings and errors logged:")?;
    writeln!(out)?;
    for run in runs {
        for (process, problems) in [
            ("data plane", &run.dataplane_log),
            ("control plane", &run.controlplane_log),
        ] {
            if problems.count > 0 {
                writeln!(
                    out,
                    "- {} {}: {} lines, first: `{}`",
                    run.policy.name(),
                    process,
                    problems.count,
                    problems.first.first().map_or("", String::as_str)
                )?;
            }
        }
    }
    Ok(())
}

fn header(out: &mut String, first: &str, runs: &[PolicyRun]) -> std::fmt::Result {
    write!(out, "| {first} |")?;
    for run in runs {
        write!(out, " {} ({}) |", run.policy.name(), run.policy.mode())?;
    }
    writeln!(out)?;
    write!(out, "|---|")?;
    for _ in runs {
        write!(out, "---:|")?;
    }
    writeln!(out)
}

fn cell(summary: &Summary, micros: u64) -> String {
    if summary.is_empty() {
        "n/a".to_owned()
    } else {
        ms(micros)
    }
}

/// `/proc/meminfo`'s `24684092 kB` as `23.5 GiB`.
fn gib(meminfo_value: &str) -> String {
    meminfo_value
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .map_or_else(
            |_| meminfo_value.to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        )
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// The current time as `YYYY-MM-DD HH:MM UTC`, without a date library.
fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(0.2, AtMost(0.5), "ms"), "met (0.200 ms)");
        assert!(verdict(0.7, AtMost(0.5), "ms").starts_with("**not met**"));
        assert_eq!(verdict(61.0, AtLeast(60.0), "%"), "met (61.0 %)");
        assert_eq!(
            verdict(18.0, AtLeast(60.0), "%"),
            "**not met** (18.0 %, 42.0 % short)"
        );
    }
}
