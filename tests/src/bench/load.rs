//! Load generation: an open-loop sender (constant arrival rate), a closed-loop sender (fixed
//! concurrency), and the A/B alternation that measures the direct and the proxied target
//! under the same conditions.
//!
//! ## Why open loop, and why latency counts from the *scheduled* send time
//!
//! A closed-loop client (send, wait for the answer, send the next) slows down exactly when
//! the server does, so a stall delays the requests that would have observed it and they are
//! never sent: the stall is hidden ("coordinated omission"). The open-loop sender instead
//! fixes the i-th send at `start + i / rate` on the clock, never waits for answers before
//! sending, and measures each latency from that scheduled instant. If the server (or the
//! load generator itself) falls behind, the queueing delay shows up in the percentiles, the
//! way real users would feel it.
//!
//! The pacing runs on a dedicated OS thread that sleeps with `std::thread::sleep` (precise to
//! tens of microseconds on Linux) and spawns each request onto the Tokio runtime; Tokio's own
//! timers have a one-millisecond granularity, which would be as large as what we measure.
//! How late each request actually started (the "sender lag") is recorded as a sanity check.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Handle;
use tokio::task::{JoinHandle, JoinSet};

/// A request without a complete answer after this long counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The data plane's header with the time spent in Luthien, in milliseconds.
const OVERHEAD_HEADER: &str = "x-luthien-overhead-ms";

/// Pooled HTTP/1.1 keep-alive client shared by every sender.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Which target of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The mock provider, called directly (the baseline).
    Direct,
    /// The same call through nginx `proxy_pass`: the floor a plain reverse proxy sets.
    Nginx,
    /// The same call through Luthien's data plane.
    Proxied,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Direct => "direct",
            Side::Nginx => "nginx",
            Side::Proxied => "proxied",
        }
    }
}

/// A value for each side of a comparison. Which sides a measurement runs is the list given to
/// [`alternate`]; a side it did not run keeps its default (no samples).
#[derive(Debug, Default, Clone)]
pub struct Sides<T> {
    pub direct: T,
    pub nginx: T,
    pub proxied: T,
}

impl<T> Sides<T> {
    pub fn get(&self, side: Side) -> &T {
        match side {
            Side::Direct => &self.direct,
            Side::Nginx => &self.nginx,
            Side::Proxied => &self.proxied,
        }
    }

    fn get_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Direct => &mut self.direct,
            Side::Nginx => &mut self.nginx,
            Side::Proxied => &mut self.proxied,
        }
    }

    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Sides<U> {
        Sides {
            direct: f(&self.direct),
            nginx: f(&self.nginx),
            proxied: f(&self.proxied),
        }
    }
}

/// Results of several runs that add up to one measurement.
pub trait Merge {
    fn merge(&mut self, other: Self);
}

/// One request to repeat: where to, the JSON body and the extra headers.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub uri: Uri,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl RequestSpec {
    pub fn post_json(uri: &str, body: impl Into<Bytes>) -> anyhow::Result<Self> {
        let uri: Uri = uri.parse().with_context(|| format!("invalid URL {uri}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk-bench"));
        Ok(Self {
            uri,
            body: body.into(),
            headers,
        })
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> anyhow::Result<Self> {
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("invalid value for header {name}: {value:?}"))?;
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(self)
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

// ---------------------------------------------------------------------------------------
// Single exchanges
// ---------------------------------------------------------------------------------------

/// One non-streamed call.
#[derive(Debug, Clone, Copy)]
pub struct CallSample {
    /// From the scheduled send time to the last body byte.
    pub latency: Duration,
    /// The `x-luthien-overhead-ms` response header, when present.
    pub overhead_ms: Option<f64>,
}

/// Sends one non-streamed request and reads the whole answer, which must be a `200`.
pub async fn call(
    client: &HttpClient,
    spec: &RequestSpec,
    scheduled: Instant,
) -> Result<CallSample, String> {
    let request = spec.build();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| format!("request failed: {}", chain(&error)))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| format!("reading the body failed: {}", chain(&error)))?
            .to_bytes();
        if parts.status != StatusCode::OK {
            return Err(status_error(parts.status, &body));
        }
        Ok(overhead_ms(&parts.headers))
    };
    let overhead_ms = within_timeout(exchange).await?;
    Ok(CallSample {
        latency: scheduled.elapsed(),
        overhead_ms,
    })
}

/// One streamed call.
#[derive(Debug, Clone, Copy)]
pub struct StreamSample {
    /// From the scheduled send time to the first body byte.
    pub first_byte: Duration,
    /// From the scheduled send time to the end of the stream.
    pub total: Duration,
}

/// Sends one streaming request and reads the stream to its end; the answer must be a `200`
/// whose body holds at least `min_events` SSE events, ends with `data: [DONE]` and carries
/// no in-band error.
pub async fn stream(
    client: &HttpClient,
    spec: &RequestSpec,
    scheduled: Instant,
    min_events: usize,
) -> Result<StreamSample, String> {
    let request = spec.build();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|error| format!("request failed: {}", chain(&error)))?;
        let (parts, mut body) = response.into_parts();
        let mut first_byte = None;
        let mut received = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| format!("stream broke off: {}", chain(&error)))?;
            if let Ok(data) = frame.into_data() {
                if first_byte.is_none() && !data.is_empty() {
                    first_byte = Some(scheduled.elapsed());
                }
                received.extend_from_slice(&data);
            }
        }
        let total = scheduled.elapsed();
        if parts.status != StatusCode::OK {
            return Err(status_error(parts.status, &received));
        }
        check_stream(&received, min_events)?;
        let first_byte = first_byte.ok_or_else(|| "empty stream body".to_owned())?;
        Ok(StreamSample { first_byte, total })
    };
    within_timeout(exchange).await
}

fn check_stream(body: &[u8], min_events: usize) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "stream is not UTF-8".to_owned())?;
    let tail = &text[text.len().saturating_sub(80)..];
    if !text.trim_end().ends_with("data: [DONE]") {
        return Err(format!(
            "stream did not end with data: [DONE] (ends {tail:?})"
        ));
    }
    if text.contains("\"error\"") {
        return Err(format!("stream carries an in-band error (ends {tail:?})"));
    }
    let events = text.matches("data: ").count();
    if events < min_events {
        return Err(format!(
            "stream has {events} events, expected at least {min_events}"
        ));
    }
    Ok(())
}

async fn within_timeout<T>(exchange: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no complete answer within {REQUEST_TIMEOUT:?}"))?
}

fn overhead_ms(headers: &HeaderMap) -> Option<f64> {
    headers
        .get(OVERHEAD_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn status_error(status: StatusCode, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(&body[..body.len().min(300)]);
    format!("status {status}: {body}")
}

/// An error with its sources, `a: b: c` (hyper's own messages are terse).
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------
// Open loop
// ---------------------------------------------------------------------------------------

/// The successful samples of an open-loop run, its errors, and how late the sends started.
#[derive(Debug)]
pub struct Samples<T> {
    pub ok: Vec<T>,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Per request: how long after its scheduled time the request task started.
    pub sender_lag: Vec<Duration>,
}

impl<T> Default for Samples<T> {
    fn default() -> Self {
        Self {
            ok: Vec::new(),
            errors: 0,
            first_error: None,
            sender_lag: Vec::new(),
        }
    }
}

impl<T> Merge for Samples<T> {
    fn merge(&mut self, other: Self) {
        self.ok.extend(other.ok);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.sender_lag.extend(other.sender_lag);
    }
}

impl<T> Samples<T> {
    fn record(&mut self, lag: Duration, outcome: Result<T, String>) {
        self.sender_lag.push(lag);
        match outcome {
            Ok(sample) => self.ok.push(sample),
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

type Scheduled<T> = JoinHandle<(Duration, Result<T, String>)>;

/// Sends `rate` requests per second for `length`, each at its scheduled instant whatever
/// happened to the previous ones, then waits for every answer. `send` receives the
/// scheduled instant, from which it measures latency.
pub async fn open_loop<T, F, Fut>(
    rate: f64,
    length: Duration,
    send: F,
) -> anyhow::Result<Samples<T>>
where
    T: Send + 'static,
    F: Fn(Instant) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let runtime = Handle::current();
    let count = (length.as_secs_f64() * rate).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let tasks = tokio::task::spawn_blocking(move || pace(&runtime, count, period, send))
        .await
        .context("the pacing thread failed")?;
    let mut samples = Samples::default();
    for task in tasks {
        let (lag, outcome) = task.await.context("a request task failed")?;
        samples.record(lag, outcome);
    }
    Ok(samples)
}

/// The pacing loop, on its own OS thread: sleep until each scheduled instant, then spawn
/// the request. When behind schedule it sends at once (the lag then counts as latency).
fn pace<T, F, Fut>(runtime: &Handle, count: u64, period: Duration, send: F) -> Vec<Scheduled<T>>
where
    T: Send + 'static,
    F: Fn(Instant) -> Fut,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
{
    let start = Instant::now();
    (0..count)
        .map(|index| {
            let scheduled = start + period.mul_f64(index as f64);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let request = send(scheduled);
            runtime.spawn(async move {
                let lag = scheduled.elapsed();
                (lag, request.await)
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Closed loop
// ---------------------------------------------------------------------------------------

/// Completed requests of a closed-loop run.
#[derive(Debug, Default, Clone)]
pub struct Throughput {
    /// Successful answers that completed inside the measured window.
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Total length of the measured windows.
    pub measured: Duration,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        let seconds = self.measured.as_secs_f64();
        if seconds > 0.0 {
            self.completed as f64 / seconds
        } else {
            0.0
        }
    }
}

impl Merge for Throughput {
    fn merge(&mut self, other: Self) {
        self.completed += other.completed;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.measured += other.measured;
    }
}

/// `concurrency` workers each send a request, wait for the answer and send the next, for
/// `length`; every worker keeps its own keep-alive connection busy.
pub async fn closed_loop(
    client: &HttpClient,
    spec: &Arc<RequestSpec>,
    concurrency: usize,
    length: Duration,
) -> anyhow::Result<Throughput> {
    let deadline = Instant::now() + length;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let spec = Arc::clone(spec);
        workers.spawn(async move { worker(&client, &spec, deadline).await });
    }
    let mut total = Throughput {
        measured: length,
        ..Throughput::default()
    };
    while let Some(tally) = workers.join_next().await {
        let tally = tally.context("a load worker failed")?;
        total.merge(Throughput {
            measured: Duration::ZERO,
            ..tally
        });
    }
    Ok(total)
}

async fn worker(client: &HttpClient, spec: &RequestSpec, deadline: Instant) -> Throughput {
    let mut tally = Throughput::default();
    while Instant::now() < deadline {
        match call(client, spec, Instant::now()).await {
            Ok(_) if Instant::now() <= deadline => tally.completed += 1,
            Ok(_) => {}
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(error);
            }
        }
    }
    tally
}

// ---------------------------------------------------------------------------------------
// A/B alternation
// ---------------------------------------------------------------------------------------

/// How long one measurement runs, and how it is cut into alternating slices.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Run on each side before measuring; its results are discarded.
    pub warmup: Duration,
    /// Measured time per side.
    pub length: Duration,
    /// Longest single slice; sides alternate slice by slice.
    pub slice: Duration,
}

impl Phases {
    fn slices(&self) -> (u32, Duration) {
        let count = (self.length.as_secs_f64() / self.slice.as_secs_f64())
            .ceil()
            .max(1.0) as u32;
        (count, self.length / count)
    }
}

/// Runs `run(side, length)` on each of `sides`: a discarded warm-up each, then alternating
/// slices in the order A B C, C B A, A B C, … so that drift (CPU frequency, caches, other
/// processes, a growing heap) affects every side alike and none always goes first.
pub async fn alternate<T, F, Fut>(
    phases: &Phases,
    sides: &[Side],
    mut run: F,
) -> anyhow::Result<Sides<T>>
where
    T: Default + Merge,
    F: FnMut(Side, Duration) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    if !phases.warmup.is_zero() {
        for &side in sides {
            run(side, phases.warmup)
                .await
                .with_context(|| format!("warm-up ({})", side.name()))?;
        }
    }
    let (count, slice) = phases.slices();
    let mut result = Sides::<T>::default();
    for round in 0..count {
        let mut order = sides.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for side in order {
            let part = run(side, slice).await?;
            result.get_mut(side).merge(part);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_length() {
        let phases = Phases {
            warmup: Duration::ZERO,
            length: Duration::from_secs(10),
            slice: Duration::from_secs(3),
        };
        assert_eq!(phases.slices(), (4, Duration::from_millis(2500)));
    }

    #[test]
    fn stream_checks() {
        let good = "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n";
        assert!(check_stream(good.as_bytes(), 3).is_ok());
        assert!(check_stream(good.as_bytes(), 4).is_err());
        assert!(check_stream(b"data: {}\n\n", 1).is_err());
        let error = "data: {\"error\":{}}\n\ndata: [DONE]\n\n";
        assert!(check_stream(error.as_bytes(), 1).is_err());
    }
}
