//! `luthien-bench`: what Luthien adds to a call, measured A/B against calling the provider
//! directly.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p luthien-tests --bin luthien-bench -- [--duration 10s] [--rate 500] \
//!     [--stream-rate 100] [--concurrency 32] [--chunks 50] [--quick]
//! ```
//!
//! ## Method
//!
//! The benchmark starts the release binaries next to itself as child processes on free
//! 127.0.0.1 ports: the mock provider (`mock-upstream`, instant answers), then for each
//! policy a control plane with that policy and a data plane in front of the mock. `noop`
//! makes the data plane run calls in observe mode (chunks forwarded at once, a copy teed to
//! the control plane); `all_caps` in transform mode (each chunk round-trips through the
//! control plane).
//!
//! Every measurement sends the same request to the mock directly ("direct"), through nginx
//! `proxy_pass` ("nginx", the floor a plain reverse proxy sets; skipped, and said so, when
//! nginx is not installed) and through the data plane ("proxied"); proxied minus direct is
//! what Luthien adds, proxied minus nginx what it adds over a plain proxy. The sides
//! alternate in short slices (see [`load::alternate`]) after a discarded warm-up, so drift
//! affects all alike. The planes run with their default settings (recording on, default log
//! level) unless `--rust-log` or extra arguments say otherwise. All requests use pooled HTTP/1.1 keep-alive
//! connections and must answer `200` (streams must also end properly); failures are counted
//! and reported loudly.
//!
//! 1. **Non-streaming latency**: open loop at a constant arrival rate (default 500 req/s),
//!    latency measured from each request's *scheduled* send time to its last body byte, so
//!    that stalls cannot hide (see [`load`] for why). Also the median of the data plane's
//!    own `x-luthien-overhead-ms` header.
//! 2. **Streams**: open loop at a modest rate (default 100 streams/s) of streams of N
//!    content chunks (default 50) with zero upstream delay: time to first body byte (TTFC)
//!    and total stream time; added per chunk = (proxied total p50 − direct total p50) / N.
//! 3. **Throughput**: closed loop with a fixed number of keep-alive connections (default
//!    32), completed non-streaming requests per second.
//! 4. **Memory**: the data plane's (and control plane's) `VmRSS` after start-up before any
//!    call, and one second after the last load, plus the peak (`VmHWM`).
//!
//! Load generator, mock and Luthien share one machine, so on a small machine they compete
//! for the same cores; the report states the machine. Progress goes to stderr, the Markdown
//! report to stdout. The exit status is non-zero when any request failed.

#[path = "bench/report.rs"]
mod report;
#[path = "bench/soak.rs"]
mod soak;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::report::{CpuByMeasurement, Machine, PolicyRun};
use luthien_tests::bench::load::{
    self, CallSample, HttpClient, Phases, RequestSpec, Samples, Side, Sides, StreamSample,
    Throughput,
};
use luthien_tests::bench::procs::{self, Binaries, ExtraArgs, Luthien, Nginx};
use luthien_tests::bench::stats::{Summary, added_ms, signed_ms};

/// Measures the latency, streaming, throughput and memory cost of Luthien's data plane,
/// A/B against calling the mock provider directly.
#[derive(Debug, Parser)]
#[command(name = "luthien-bench")]
struct Args {
    /// Measured time per side (direct, proxied) of each measurement.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Discarded warm-up per side before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Longest slice before switching sides.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    slice: Duration,

    /// Non-streaming requests per second (open loop).
    #[arg(long, default_value_t = 500.0, value_parser = positive)]
    rate: f64,

    /// Streams started per second (open loop).
    #[arg(long, default_value_t = 100.0, value_parser = positive)]
    stream_rate: f64,

    /// Keep-alive connections for the throughput measurement (closed loop).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,

    /// Content chunks per stream.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..))]
    chunks: u16,

    /// Policies to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "noop,all_caps")]
    policies: Vec<Policy>,

    /// Extra argument for every control plane (repeat for several), e.g.
    /// `--controlplane-arg=--no-store`.
    #[arg(long = "controlplane-arg", allow_hyphen_values = true)]
    controlplane_args: Vec<String>,

    /// Extra argument for every data plane (repeat for several).
    #[arg(long = "dataplane-arg", allow_hyphen_values = true)]
    dataplane_args: Vec<String>,

    /// `RUST_LOG` for both planes (e.g. `warn`); unset, they log at their default level.
    #[arg(long = "rust-log")]
    rust_log: Option<String>,

    /// The nginx binary for the baseline (default: `nginx` on the PATH, else /usr/sbin/nginx).
    #[arg(long)]
    nginx: Option<std::path::PathBuf>,

    /// Leave nginx out.
    #[arg(long = "no-nginx", conflicts_with = "nginx")]
    no_nginx: bool,

    /// Smoke run: 2 s per side, 0.5 s warm-up, 1 s slices.
    #[arg(long)]
    quick: bool,

    /// Instead of the measurements: proxied calls at --rate for this long per policy, with
    /// memory and CPU sampled every 10 s and the slope of memory against calls reported.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "quick")]
    soak: Option<Duration>,
}

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// A policy chain of one policy, which decides the data plane's streaming mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    #[value(name = "noop")]
    Noop,
    #[value(name = "all_caps")]
    AllCaps,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Noop => "noop",
            Policy::AllCaps => "all_caps",
        }
    }

    /// How the data plane runs calls under this policy.
    pub fn mode(self) -> &'static str {
        match self {
            Policy::Noop => "observe",
            Policy::AllCaps => "transform",
        }
    }
}

/// The resolved settings of one run.
#[derive(Debug)]
pub struct Settings {
    pub phases: Phases,
    pub rate: f64,
    pub stream_rate: f64,
    pub concurrency: usize,
    pub chunks: usize,
    pub policies: Vec<Policy>,
    pub extra: ExtraArgs,
    /// The nginx binary of the baseline; `None` when it is left out or not installed.
    pub nginx: Option<std::path::PathBuf>,
    /// `--soak`: how long each policy is soaked instead of measured.
    pub soak: Option<Duration>,
    /// The command line, for the report.
    pub command: String,
}

impl Settings {
    /// The sides every measurement runs, in the order of its first slice.
    pub fn sides(&self) -> &'static [Side] {
        if self.nginx.is_some() {
            &[Side::Direct, Side::Nginx, Side::Proxied]
        } else {
            &[Side::Direct, Side::Proxied]
        }
    }
}

impl Settings {
    fn from_args(args: Args) -> Self {
        let phases = if args.quick {
            Phases {
                warmup: Duration::from_millis(500),
                length: Duration::from_secs(2),
                slice: Duration::from_secs(1),
            }
        } else {
            Phases {
                warmup: args.warmup,
                length: args.duration,
                slice: args.slice,
            }
        };
        Self {
            phases,
            rate: args.rate,
            stream_rate: args.stream_rate,
            concurrency: usize::from(args.concurrency),
            chunks: usize::from(args.chunks),
            policies: args.policies,
            extra: ExtraArgs {
                controlplane: args.controlplane_args,
                dataplane: args.dataplane_args,
                rust_log: args.rust_log,
            },
            soak: args.soak,
            nginx: if args.no_nginx {
                None
            } else {
                args.nginx.or_else(Nginx::find)
            },
            command: command_line(),
        }
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release -p luthien-tests --bin luthien-bench".to_owned();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

pub const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one sentence."}]}"#;
const STREAM_BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello in one sentence."}]}"#;

/// The two requests of the benchmark, for each side.
struct Requests {
    chat: Sides<Arc<RequestSpec>>,
    stream: Sides<Arc<RequestSpec>>,
}

impl Requests {
    /// Without nginx its side is never run; it gets the direct requests.
    fn new(
        mock: SocketAddr,
        nginx: Option<&str>,
        luthien: &str,
        chunks: usize,
    ) -> anyhow::Result<Self> {
        let chat = |base: &str| -> anyhow::Result<Arc<RequestSpec>> {
            let url = format!("{base}/v1/chat/completions");
            Ok(Arc::new(RequestSpec::post_json(&url, CHAT_BODY)?))
        };
        let stream = |base: &str| -> anyhow::Result<Arc<RequestSpec>> {
            let url = format!("{base}/v1/chat/completions");
            let spec = RequestSpec::post_json(&url, STREAM_BODY)?
                .with_header("x-mock-chunks", &chunks.to_string())?
                .with_header("x-mock-delay-ms", "0")?;
            Ok(Arc::new(spec))
        };
        let direct = format!("http://{mock}");
        let nginx = nginx.unwrap_or(&direct);
        Ok(Self {
            chat: Sides {
                direct: chat(&direct)?,
                nginx: chat(nginx)?,
                proxied: chat(luthien)?,
            },
            stream: Sides {
                direct: stream(&direct)?,
                nginx: stream(nginx)?,
                proxied: stream(luthien)?,
            },
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::from_args(Args::parse());
    let machine = Machine::probe();
    if let Some(length) = settings.soak {
        let outcome = tokio::select! {
            outcome = run_soak(&settings, length) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        return match outcome {
            Ok(report) => {
                println!("Command: `{}`\n\n{report}", settings.command);
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("luthien-bench: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = tokio::select! {
        outcome = run(&settings) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(runs) => {
            println!("{}", report::render(&settings, &machine, &runs));
            let errors: u64 = runs.iter().map(PolicyRun::errors).sum();
            if errors > 0 {
                eprintln!("\nWARNING: {errors} requests failed; the results are not valid.");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("luthien-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--soak`: each policy in turn under a fixed rate for `length`; the reports, concatenated.
async fn run_soak(settings: &Settings, length: Duration) -> anyhow::Result<String> {
    let binaries = Binaries::beside_current_exe()?;
    let dir = procs::work_dir()?;
    let client = load::http_client();
    let (_mock, mock_addr) = procs::start_mock(&binaries, &dir).await?;
    let mut report = String::new();
    for policy in &settings.policies {
        let part = soak::run(
            settings, &binaries, &dir, mock_addr, &client, *policy, length,
        )
        .await
        .with_context(|| format!("soaking policy {}", policy.name()))?;
        report.push_str(&part);
        report.push('\n');
    }
    Ok(report)
}

/// Starts the mock, then benchmarks each policy in turn; every process is stopped on return.
async fn run(settings: &Settings) -> anyhow::Result<Vec<PolicyRun>> {
    if cfg!(debug_assertions) {
        eprintln!("WARNING: luthien-bench is a debug build; numbers mean little. Use --release.");
    }
    let binaries = Binaries::beside_current_exe()?;
    let dir = procs::work_dir()?;
    eprintln!(
        "binaries: {}",
        binaries
            .dataplane
            .parent()
            .map_or_else(String::new, |dir| dir.display().to_string())
    );
    eprintln!("logs and policy files: {}", dir.display());

    let client = load::http_client();
    let (mut mock, mock_addr) = procs::start_mock(&binaries, &dir).await?;
    let mut nginx = match &settings.nginx {
        Some(program) => Some(
            Nginx::start(program, &dir, mock_addr)
                .await
                .with_context(|| format!("starting nginx ({})", program.display()))?,
        ),
        None => {
            eprintln!("nginx: not found (or --no-nginx); the report has no nginx baseline");
            None
        }
    };
    let nginx_url = nginx.as_ref().map(|nginx| nginx.base_url.clone());

    let mut runs = Vec::new();
    for policy in &settings.policies {
        let run = bench_policy(
            settings,
            &binaries,
            &dir,
            (mock_addr, nginx_url.as_deref()),
            &client,
            *policy,
        )
        .await
        .with_context(|| format!("benchmarking policy {}", policy.name()))?;
        mock.ensure_running()?;
        if let Some(nginx) = nginx.as_mut() {
            nginx.ensure_running()?;
        }
        runs.push(run);
    }
    Ok(runs)
}

async fn bench_policy(
    settings: &Settings,
    binaries: &Binaries,
    dir: &Path,
    (mock, nginx): (SocketAddr, Option<&str>),
    client: &HttpClient,
    policy: Policy,
) -> anyhow::Result<PolicyRun> {
    eprintln!("\n== {} ({} mode)", policy.name(), policy.mode());
    let mut luthien =
        Luthien::start(binaries, dir, policy.name(), mock, client, &settings.extra).await?;
    let dataplane_idle = luthien.dataplane.memory()?;
    let controlplane_idle = luthien.controlplane.memory()?;
    let requests = Requests::new(mock, nginx, &luthien.base_url, settings.chunks)?;
    smoke_check(client, &requests, settings.sides(), settings.chunks).await?;

    let mut cpu = CpuByMeasurement::default();
    let started = luthien.cpu_time()?;
    let latency = measure_latency(settings, client, &requests).await?;
    let after_latency = luthien.cpu_time()?;
    cpu.latency = after_latency.since(started);
    let streams = measure_streams(settings, client, &requests).await?;
    let after_streams = luthien.cpu_time()?;
    cpu.streams = after_streams.since(after_latency);
    let throughput = measure_throughput(settings, client, &requests).await?;
    cpu.throughput = luthien.cpu_time()?.since(after_streams);

    tokio::time::sleep(Duration::from_secs(1)).await;
    luthien.dataplane.ensure_running()?;
    luthien.controlplane.ensure_running()?;
    let events = luthien.event_counts(client).await;
    let run = PolicyRun {
        policy,
        latency,
        streams,
        throughput,
        cpu,
        events,
        dataplane_idle,
        dataplane_after: luthien.dataplane.memory()?,
        controlplane_idle,
        controlplane_after: luthien.controlplane.memory()?,
        dataplane_log: luthien.dataplane.log_problems(),
        controlplane_log: luthien.controlplane.log_problems(),
    };
    eprintln!(
        "   data plane RSS {:.1} MiB idle, {:.1} MiB after load; logs: {}",
        run.dataplane_idle.rss_kib as f64 / 1024.0,
        run.dataplane_after.rss_kib as f64 / 1024.0,
        luthien.dataplane.log_path().display()
    );
    Ok(run)
}

/// One request of each kind on each side, so a broken stack fails fast and clearly.
async fn smoke_check(
    client: &HttpClient,
    requests: &Requests,
    sides: &[Side],
    chunks: usize,
) -> anyhow::Result<()> {
    for &side in sides {
        let (name, spec) = (side.name(), requests.chat.get(side));
        let sample = load::call(client, spec, Instant::now())
            .await
            .map_err(|error| anyhow::anyhow!("{name} call to {} failed: {error}", spec.uri))?;
        if side == Side::Proxied && sample.overhead_ms.is_none() {
            bail!("the proxied answer has no x-luthien-overhead-ms header");
        }
        let spec = requests.stream.get(side);
        load::stream(client, spec, Instant::now(), chunks)
            .await
            .map_err(|error| anyhow::anyhow!("{name} stream from {} failed: {error}", spec.uri))?;
    }
    Ok(())
}

async fn measure_latency(
    settings: &Settings,
    client: &HttpClient,
    requests: &Requests,
) -> anyhow::Result<Sides<Samples<CallSample>>> {
    eprintln!(
        "   non-streaming latency, {} req/s open loop …",
        settings.rate
    );
    let result = load::alternate(&settings.phases, settings.sides(), |side, length| {
        let client = client.clone();
        let spec = Arc::clone(requests.chat.get(side));
        load::open_loop(settings.rate, length, move |scheduled| {
            let client = client.clone();
            let spec = Arc::clone(&spec);
            async move { load::call(&client, &spec, scheduled).await }
        })
    })
    .await
    .context("non-streaming latency")?;
    let summary = |samples: &Samples<CallSample>| Summary::of(samples.ok.iter().map(|s| s.latency));
    let (direct, proxied) = (summary(&result.direct), summary(&result.proxied));
    eprintln!(
        "   added p50 {} ms, p99 {} ms; errors {}",
        signed_ms(added_ms(proxied.p50, direct.p50)),
        signed_ms(added_ms(proxied.p99, direct.p99)),
        result.direct.errors + result.proxied.errors
    );
    Ok(result)
}

async fn measure_streams(
    settings: &Settings,
    client: &HttpClient,
    requests: &Requests,
) -> anyhow::Result<Sides<Samples<StreamSample>>> {
    eprintln!(
        "   streams of {} chunks, {} streams/s open loop …",
        settings.chunks, settings.stream_rate
    );
    let chunks = settings.chunks;
    let result = load::alternate(&settings.phases, settings.sides(), |side, length| {
        let client = client.clone();
        let spec = Arc::clone(requests.stream.get(side));
        load::open_loop(settings.stream_rate, length, move |scheduled| {
            let client = client.clone();
            let spec = Arc::clone(&spec);
            async move { load::stream(&client, &spec, scheduled, chunks).await }
        })
    })
    .await
    .context("streams")?;
    let summary = |samples: &Samples<StreamSample>| Summary::of(samples.ok.iter().map(|s| s.total));
    let (direct, proxied) = (summary(&result.direct), summary(&result.proxied));
    eprintln!(
        "   added total p50 {} ms ({:+.4} ms per chunk); errors {}",
        signed_ms(added_ms(proxied.p50, direct.p50)),
        added_ms(proxied.p50, direct.p50) / chunks as f64,
        result.direct.errors + result.proxied.errors
    );
    Ok(result)
}

async fn measure_throughput(
    settings: &Settings,
    client: &HttpClient,
    requests: &Requests,
) -> anyhow::Result<Sides<Throughput>> {
    eprintln!(
        "   throughput, {} connections closed loop …",
        settings.concurrency
    );
    let result = load::alternate(&settings.phases, settings.sides(), |side, length| {
        let spec = Arc::clone(requests.chat.get(side));
        async move { load::closed_loop(client, &spec, settings.concurrency, length).await }
    })
    .await
    .context("throughput")?;
    eprintln!(
        "   direct {:.0} req/s, proxied {:.0} req/s; errors {}",
        result.direct.per_second(),
        result.proxied.per_second(),
        result.direct.errors + result.proxied.errors
    );
    Ok(result)
}
