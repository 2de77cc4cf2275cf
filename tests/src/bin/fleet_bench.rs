//! `luthien-fleet-bench`: what spreading calls over three control planes costs, and how fast
//! a data plane heals when one of them dies, measured in one run against a data plane over a
//! single control plane.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/luthien-fleet-bench [--duration 10s] [--rate 500]
//! ```
//!
//! ## Method
//!
//! The release binaries next to this one run as child processes on free 127.0.0.1 ports: the
//! mock provider, three control planes (noop chain, each its own SQLite file, as each pod
//! would have its own connection to a shared database) and two data planes: `single`, over
//! the first control plane alone, and `fleet`, over all three (`--control-plane` a list).
//!
//! 1. **Added latency**: non-streaming calls, open loop at `--rate`, alternating slices
//!    between the two data planes after a warm-up (as `luthien-bench` alternates direct and
//!    proxied); the difference of the percentiles is what the fleet adds over one control plane.
//! 2. **Balance**: the `fleet` data plane's call streams per control plane during (1).
//! 3. **Ejection**: under a light load through `fleet` (50 req/s), one control plane is killed
//!    with SIGKILL; measured is the time until `fleet` has it out of rotation
//!    (`luthien_control_plane_serving` 0), and the client errors of the whole phase.
//! 4. **Rejoin**: the killed control plane starts again on its address; measured is the time
//!    until `fleet` reports it serving again, and until it gets calls.
//!
//! Progress goes to stderr, the Markdown report to stdout; the exit status is non-zero when a
//! call failed outside the kill's moment.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http::Request;
use http_body_util::{BodyExt, Full};

use luthien_tests::bench::load::{
    self, CallSample, HttpClient, Phases, RequestSpec, Samples, Side,
};
use luthien_tests::bench::procs::{self, Binaries, Process};
use luthien_tests::bench::stats::{Summary, added_ms, ms, signed_ms};

#[derive(Debug, Parser)]
#[command(name = "luthien-fleet-bench")]
struct Args {
    /// Measured time per data plane of the latency measurement.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Non-streaming requests per second (open loop).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
}

const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one sentence."}]}"#;

/// Requests per second through `fleet` while a control plane dies and comes back.
const LIGHT_RATE: f64 = 50.0;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!(
            "WARNING: luthien-fleet-bench is a debug build; numbers mean little. Use --release."
        );
    }
    match run(&args).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("luthien-fleet-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One control plane process and how to start it again on the same address.
struct ControlPlane {
    name: String,
    grpc: SocketAddr,
    args: Vec<String>,
    process: Option<Process>,
}

impl ControlPlane {
    async fn start(binaries: &Binaries, dir: &Path, index: usize) -> anyhow::Result<Self> {
        let policy = dir.join("policy-noop.yaml");
        fs::write(&policy, "policies:\n  - type: noop\n")
            .with_context(|| format!("cannot write {}", policy.display()))?;
        let database: PathBuf = dir.join(format!("events-fleet-{index}.db"));
        let _ = fs::remove_file(&database);
        let grpc = procs::free_addr()?;
        let args = vec![
            "--grpc-listen".into(),
            grpc.to_string(),
            "--http-listen".into(),
            procs::free_addr()?.to_string(),
            "--policy-config".into(),
            policy.display().to_string(),
            "--database-url".into(),
            format!("sqlite://{}", database.display()),
        ];
        let mut control_plane = Self {
            name: format!("controlplane-fleet-{index}"),
            grpc,
            args,
            process: None,
        };
        control_plane.restart(binaries, dir).await?;
        Ok(control_plane)
    }

    async fn restart(&mut self, binaries: &Binaries, dir: &Path) -> anyhow::Result<()> {
        let mut process = Process::spawn(&self.name, &binaries.controlplane, &self.args, dir)?;
        process.wait_for_port(self.grpc).await?;
        self.process = Some(process);
        Ok(())
    }

    fn kill(&mut self) {
        // Dropping a `Process` kills it with SIGKILL and reaps it.
        self.process = None;
    }
}

async fn data_plane(
    binaries: &Binaries,
    dir: &Path,
    name: &str,
    control_planes: &[&ControlPlane],
    mock: SocketAddr,
    client: &HttpClient,
) -> anyhow::Result<(Process, String)> {
    let listen = procs::free_addr()?;
    let targets: Vec<String> = control_planes
        .iter()
        .map(|control_plane| format!("http://{}", control_plane.grpc))
        .collect();
    let args = vec![
        "--listen".into(),
        listen.to_string(),
        "--control-plane".into(),
        targets.join(","),
        "--openai-base-url".into(),
        format!("http://{mock}/v1"),
        "--anthropic-base-url".into(),
        format!("http://{mock}"),
    ];
    let mut process = Process::spawn(name, &binaries.dataplane, &args, dir)?;
    let base = format!("http://{listen}");
    process
        .wait_for_health(client, &format!("{base}/readyz"))
        .await?;
    Ok((process, base))
}

/// `luthien_control_plane_<name>` of a data plane, by control plane address.
async fn by_endpoint(
    client: &HttpClient,
    base: &str,
    name: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = Request::get(format!("{base}/metrics")).body(Full::new(Bytes::new()))?;
    let response = client.request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let prefix = format!("{name}{{endpoint=\"");
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (endpoint, value) = rest.split_once("\"} ")?;
            Some((endpoint.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

/// Polls until `check` holds, every 10 ms; returns how long it took.
async fn time_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await? {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{what}: not within {limit:?}")
}

async fn light_load(
    client: &HttpClient,
    spec: &Arc<RequestSpec>,
    length: Duration,
) -> Samples<CallSample> {
    let client = client.clone();
    let spec = Arc::clone(spec);
    load::open_loop(LIGHT_RATE, length, move |scheduled| {
        let client = client.clone();
        let spec = Arc::clone(&spec);
        async move { load::call(&client, &spec, scheduled).await }
    })
    .await
    .unwrap_or_default()
}

async fn run(args: &Args) -> anyhow::Result<String> {
    let binaries = Binaries::beside_current_exe()?;
    let dir = procs::work_dir()?;
    eprintln!("logs: {}", dir.display());
    let client = load::http_client();
    let (mut mock, mock_addr) = procs::start_mock(&binaries, &dir).await?;

    let mut control_planes = Vec::new();
    for index in 0..3 {
        control_planes.push(ControlPlane::start(&binaries, &dir, index).await?);
    }
    let (_single, single) = data_plane(
        &binaries,
        &dir,
        "dataplane-single",
        &[&control_planes[0]],
        mock_addr,
        &client,
    )
    .await?;
    let all: Vec<&ControlPlane> = control_planes.iter().collect();
    let (_fleet, fleet) =
        data_plane(&binaries, &dir, "dataplane-fleet", &all, mock_addr, &client).await?;
    // Every control plane serving on `fleet` before anything is measured.
    time_until(
        "fleet sees three control planes",
        Duration::from_secs(10),
        || async {
            let serving = by_endpoint(&client, &fleet, "luthien_control_plane_serving").await?;
            Ok(serving.len() == 3 && serving.values().all(|v| *v == 1.0))
        },
    )
    .await?;

    // "direct" is the single control plane here, "proxied" the fleet.
    let single_spec = Arc::new(RequestSpec::post_json(
        &format!("{single}/v1/chat/completions"),
        CHAT_BODY,
    )?);
    let fleet_spec = Arc::new(RequestSpec::post_json(
        &format!("{fleet}/v1/chat/completions"),
        CHAT_BODY,
    )?);
    eprintln!("latency: {} req/s, single vs fleet …", args.rate);
    let phases = Phases {
        warmup: Duration::from_secs(1),
        length: args.duration,
        slice: Duration::from_secs(2),
    };
    let before = by_endpoint(&client, &fleet, "luthien_control_plane_streams_total").await?;
    let latency = load::alternate(&phases, &[Side::Direct, Side::Proxied], |side, length| {
        let client = client.clone();
        let spec = Arc::clone(if side == Side::Direct {
            &single_spec
        } else {
            &fleet_spec
        });
        load::open_loop(args.rate, length, move |scheduled| {
            let client = client.clone();
            let spec = Arc::clone(&spec);
            async move { load::call(&client, &spec, scheduled).await }
        })
    })
    .await?;
    let after = by_endpoint(&client, &fleet, "luthien_control_plane_streams_total").await?;
    let shares: Vec<f64> = after
        .iter()
        .map(|(endpoint, count)| count - before.get(endpoint).copied().unwrap_or(0.0))
        .collect();
    let total: f64 = shares.iter().sum();
    let summary = |samples: &Samples<CallSample>| Summary::of(samples.ok.iter().map(|s| s.latency));
    let (one, three) = (summary(&latency.direct), summary(&latency.proxied));
    let errors = latency.direct.errors + latency.proxied.errors;
    if errors > 0 {
        bail!(
            "{errors} calls failed while measuring latency: {:?}",
            latency.proxied.first_error.or(latency.direct.first_error)
        );
    }

    eprintln!("ejection: SIGKILL of one control plane under {LIGHT_RATE} req/s …");
    let victim = control_planes[1].grpc.to_string();
    let spec = Arc::clone(&fleet_spec);
    let load_client = client.clone();
    let under_load =
        tokio::spawn(async move { light_load(&load_client, &spec, Duration::from_secs(6)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    control_planes[1].kill();
    let ejected = time_until(
        "the killed control plane out of rotation",
        Duration::from_secs(30),
        || async {
            let serving = by_endpoint(&client, &fleet, "luthien_control_plane_serving").await?;
            Ok(serving.get(&victim) == Some(&0.0))
        },
    )
    .await?;
    let ejection_load = under_load.await?;

    eprintln!("rejoin: the control plane back on its address …");
    let spec = Arc::clone(&fleet_spec);
    let load_client = client.clone();
    let under_load =
        tokio::spawn(async move { light_load(&load_client, &spec, Duration::from_secs(6)).await });
    let streams_before =
        by_endpoint(&client, &fleet, "luthien_control_plane_streams_total").await?;
    let restarted = Instant::now();
    control_planes[1].restart(&binaries, &dir).await?;
    let started_in = restarted.elapsed();
    let serving_again = time_until("serving again", Duration::from_secs(30), || async {
        let serving = by_endpoint(&client, &fleet, "luthien_control_plane_serving").await?;
        Ok(serving.get(&victim) == Some(&1.0))
    })
    .await?;
    let calls_again = time_until("calls again", Duration::from_secs(30), || async {
        let streams = by_endpoint(&client, &fleet, "luthien_control_plane_streams_total").await?;
        Ok(streams.get(&victim) > streams_before.get(&victim))
    })
    .await?;
    let rejoin_load = under_load.await?;
    mock.ensure_running()?;

    let mut report = String::new();
    report.push_str("| measurement | single control plane | fleet of three | fleet − single |\n|---|---|---|---|\n");
    report.push_str(&format!(
        "| non-streaming latency p50 at {} req/s | {} ms | {} ms | {} ms |\n",
        args.rate,
        ms(one.p50),
        ms(three.p50),
        signed_ms(added_ms(three.p50, one.p50))
    ));
    report.push_str(&format!(
        "| non-streaming latency p99 | {} ms | {} ms | {} ms |\n\n",
        ms(one.p99),
        ms(three.p99),
        signed_ms(added_ms(three.p99, one.p99))
    ));
    let share = |count: f64| 100.0 * count / total.max(1.0);
    report.push_str(&format!(
        "Balance over the three ({} calls): {}.\n\n",
        total,
        shares
            .iter()
            .map(|count| format!("{:.1} %", share(*count)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.push_str(&format!(
        "SIGKILL of one control plane under {LIGHT_RATE} req/s: out of rotation after {:.1} ms; {} of {} calls failed in those 6 s ({}).\n\n",
        ejected.as_secs_f64() * 1000.0,
        ejection_load.errors,
        ejection_load.errors + ejection_load.ok.len(),
        ejection_load.first_error.as_deref().unwrap_or("none")
    ));
    report.push_str(&format!(
        "Rejoin: the process accepted connections {:.0} ms after it was started; the data plane saw it serving {:.0} ms and sent it calls {:.0} ms after the start; {} of {} calls failed meanwhile.\n",
        started_in.as_secs_f64() * 1000.0,
        (serving_again + started_in).as_secs_f64() * 1000.0,
        (calls_again + started_in).as_secs_f64() * 1000.0,
        rejoin_load.errors,
        rejoin_load.errors + rejoin_load.ok.len(),
    ));
    Ok(report)
}
