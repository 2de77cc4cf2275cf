//! Luthien as a fleet: data planes over several control planes, found by DNS, balanced,
//! ejected when they fail, drained and restarted under load, reached over TLS with client
//! certificates.
//!
//! Control planes listen on distinct loopback addresses (127.0.0.2–127.0.0.4, one port), the
//! A records of one name served by a DNS server in the test, as pods behind a Kubernetes
//! headless Service are. A control plane runs on a runtime of its own, so that "kill -9" drops
//! all of it at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use http_body_util::BodyExt;
use luthien_controlplane::tls::TlsArgs;
use luthien_dataplane::FailMode;
use luthien_dataplane::config::ControlPlaneTls;
use luthien_mock_upstream::MockUpstream;
use luthien_tests::stack::{ControlPlane, ControlPlaneNode};
use luthien_tests::{Client, Stack, StackOptions};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

const OPENAI: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
const OPENAI_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const ANTHROPIC_STREAM: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// The name the control planes are found under.
const NAME: &str = "controlplane.luthien.test";

/// A DNS server answering A queries for any name with the addresses of the moment (TTL 0).
struct TestDns {
    address: SocketAddr,
    records: Arc<Mutex<Vec<Ipv4Addr>>>,
    _stop: DropGuard,
}

impl TestDns {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let answers = Arc::clone(&records);
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0; 4096];
            loop {
                let (length, peer) = tokio::select! {
                    () = stopped.cancelled() => return,
                    received = socket.recv_from(&mut buffer) => received.unwrap(),
                };
                let Ok(query) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                let mut response = Message::response(query.metadata.id, query.metadata.op_code);
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.metadata.authoritative = true;
                let addresses = answers.lock().unwrap().clone();
                for question in &query.queries {
                    response.add_query(question.clone());
                    if question.query_type() == RecordType::A {
                        for ip in &addresses {
                            response.add_answer(Record::from_rdata(
                                question.name().clone(),
                                0,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
            }
        });
        Self {
            address,
            records,
            _stop: stop.drop_guard(),
        }
    }

    fn set(&self, addresses: &[IpAddr]) {
        *self.records.lock().unwrap() = addresses
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(ip) => *ip,
                IpAddr::V6(_) => panic!("the test DNS serves A records"),
            })
            .collect();
    }

    /// The `--control-plane` target naming every control plane of the moment.
    fn target(&self, port: u16) -> String {
        format!("dns://{}/{NAME}:{port}", self.address)
    }
}

/// A port free on each of `ips`, so that control planes on them share it, as pods do.
fn shared_port(ips: &[IpAddr]) -> u16 {
    for _ in 0..20 {
        let first = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        drop(first);
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `luthien_control_plane_<family>_total` (or a gauge) of a data plane, by endpoint.
async fn endpoint_metric(proxy: &str, family: &str) -> HashMap<String, u64> {
    let response = Client::new()
        .send("GET", &format!("{proxy}/metrics"), &[], "")
        .await;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    let prefix = format!("{family}{{endpoint=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (endpoint, value) = rest.split_once("\"} ")?;
            Some((
                endpoint.to_owned(),
                value.trim().parse::<f64>().ok()? as u64,
            ))
        })
        .collect()
}

/// Streams opened per control plane, summed over `proxies`.
async fn streams(proxies: &[&str]) -> HashMap<String, u64> {
    let mut total = HashMap::new();
    for proxy in proxies {
        for (endpoint, count) in endpoint_metric(proxy, "luthien_control_plane_streams_total").await
        {
            *total.entry(endpoint).or_default() += count;
        }
    }
    total
}

/// One call of the load, by kind: both APIs, streamed and not.
async fn call(client: &Client, proxy: &str, kind: usize) -> Result<(), String> {
    let (path, body) = match kind % 4 {
        0 => ("/v1/chat/completions", OPENAI),
        1 => ("/v1/chat/completions", OPENAI_STREAM),
        2 => ("/v1/messages", ANTHROPIC),
        _ => ("/v1/messages", ANTHROPIC_STREAM),
    };
    let url = format!("{proxy}{path}");
    let client = client.clone();
    // The client panics on a connection error: that is a failed call too.
    let response = tokio::spawn(async move { client.post(&url, &[], body).await })
        .await
        .map_err(|error| format!("no response: {error}"))?;
    let text = response.text();
    let complete = if kind % 2 == 1 {
        text.contains("[DONE]") || text.contains("message_stop")
    } else {
        text.contains("Hello from the mock upstream")
    };
    if response.status == 200 && complete && !text.contains("\"error\"") {
        Ok(())
    } else {
        Err(format!("{} {}", response.status, text))
    }
}

/// One finished call of the load.
struct Outcome {
    started: Instant,
    result: Result<(), String>,
}

/// A steady stream of calls over the data planes that are ready (as a load balancer sends
/// them), a few at a time, until stopped.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    const WORKERS: usize = 4;

    fn start(proxies: Vec<String>) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..Self::WORKERS)
            .map(|worker| {
                let outcomes = Arc::clone(&outcomes);
                let stop = Arc::clone(&stop);
                let proxies = proxies.clone();
                tokio::spawn(async move {
                    let client = Client::new();
                    let mut n = worker;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let Some(proxy) = ready_proxy(&client, &proxies, n).await else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let started = Instant::now();
                        let result = call(&client, &proxy, n).await;
                        outcomes.lock().unwrap().push(Outcome { started, result });
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            outcomes,
            stop,
            workers,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Failed calls so far, with when they started.
    fn failures(&self) -> Vec<(Instant, String)> {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|outcome| {
                outcome
                    .result
                    .as_ref()
                    .err()
                    .map(|error| (outcome.started, error.clone()))
            })
            .collect()
    }

    /// Waits until `more` further calls have finished.
    async fn run_for(&self, more: usize) {
        let target = self.count() + more;
        luthien_tests::wait::eventually(
            "the load makes progress",
            Duration::from_secs(60),
            || async { (self.count() >= target).then_some(()) },
        )
        .await;
    }

    async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Arc::try_unwrap(self.outcomes)
            .map_err(|_| ())
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// The `n`-th pick among the data planes whose `/readyz` says yes.
async fn ready_proxy(client: &Client, proxies: &[String], n: usize) -> Option<String> {
    for offset in 0..proxies.len() {
        let proxy = &proxies[(n + offset) % proxies.len()];
        let ready = tokio::time::timeout(
            Duration::from_secs(1),
            client.send("GET", &format!("{proxy}/readyz"), &[], ""),
        )
        .await;
        if let Ok(response) = ready
            && response.status() == 200
        {
            return Some(proxy.clone());
        }
    }
    None
}

fn fleet_options() -> StackOptions {
    StackOptions {
        control_plane: ControlPlane::Yaml("policies: [{type: noop}]".into()),
        resolve_interval: Duration::from_millis(200),
        drain_delay: Duration::from_millis(500),
        ..StackOptions::default()
    }
}

/// Two data planes over three control planes found under one name, under a steady stream of
/// calls of both APIs, streamed and not: the calls spread evenly; a control plane killed
/// (`kill -9`) costs only the calls that were on it, and is ejected, then gets calls again
/// once back; a rolling restart of every control plane with SIGTERM fails no call; and a data
/// plane drained under load fails none.
#[tokio::test]
async fn two_data_planes_over_three_control_planes_lose_no_call() {
    let ips = [loopback(2), loopback(3), loopback(4)];
    let port = shared_port(&ips);
    let options = fleet_options();
    let mut nodes = Vec::new();
    for ip in ips {
        nodes.push(ControlPlaneNode::start(SocketAddr::new(ip, port), &options).await);
    }
    let dns = TestDns::start().await;
    dns.set(&ips);
    let mock = Arc::new(MockUpstream::start().await.unwrap());
    let mut data_planes = Vec::new();
    for _ in 0..2 {
        let stack = Stack::start_with_mock(
            StackOptions {
                control_plane: ControlPlane::External(dns.target(port)),
                ..fleet_options()
            },
            Arc::clone(&mock),
        )
        .await;
        data_planes.push(stack);
    }
    let proxies: Vec<String> = data_planes.iter().map(|s| s.proxy.clone()).collect();
    let proxy_refs: Vec<&str> = proxies.iter().map(String::as_str).collect();
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, port).to_string())
        .collect();

    // Spread: with round robin over three, each gets a third; the bound leaves room for the
    // few calls a health watch coming up late sends elsewhere.
    let load = Load::start(proxies.clone());
    load.run_for(120).await;
    let spread = streams(&proxy_refs).await;
    let total: u64 = spread.values().sum();
    for endpoint in &endpoints {
        let share = spread.get(endpoint).copied().unwrap_or(0);
        assert!(
            share * 4 >= total,
            "each control plane gets at least a quarter of {total} calls: {spread:?}"
        );
    }
    assert!(load.failures().is_empty(), "{:?}", load.failures());

    // kill -9 of one control plane.
    let killed_at = Instant::now();
    nodes[0].kill();
    load.run_for(120).await;
    let failures = load.failures();
    assert!(
        failures.iter().all(|(started, _)| *started < killed_at),
        "calls started after the kill all succeed: {failures:?}"
    );
    assert!(
        failures.len() <= Load::WORKERS,
        "only the calls in flight on the killed control plane may fail: {failures:?}"
    );
    let failed_at_kill = failures.len();
    // Out of rotation on both data planes: its health watch broke (or a call found it dead
    // first and ejected it), and it stays out until a watch says SERVING again.
    for proxy in &proxy_refs {
        let serving = endpoint_metric(proxy, "luthien_control_plane_serving").await;
        assert_eq!(
            serving.get(&endpoints[0]),
            Some(&0),
            "the dead control plane is out of rotation on {proxy}: {serving:?}"
        );
    }
    // Back on its address: it gets calls again.
    let before = streams(&proxy_refs).await;
    nodes[0] = ControlPlaneNode::start(SocketAddr::new(ips[0], port), &options).await;
    let rejoined_at = Instant::now();
    luthien_tests::wait::eventually(
        "the restarted control plane gets calls again",
        Duration::from_secs(40),
        || async {
            let now = streams(&proxy_refs).await;
            (now.get(&endpoints[0]) > before.get(&endpoints[0])).then_some(())
        },
    )
    .await;
    eprintln!(
        "fleet: the restarted control plane got calls again {:?} after it was back",
        rejoined_at.elapsed()
    );

    // Rolling restart with SIGTERM, one after another: no call fails.
    for i in 0..nodes.len() {
        nodes[i].stop().await;
        load.run_for(20).await;
        let before = streams(&proxy_refs).await;
        nodes[i] = ControlPlaneNode::start(SocketAddr::new(ips[i], port), &options).await;
        luthien_tests::wait::eventually(
            "the restarted control plane serves calls",
            Duration::from_secs(40),
            || async {
                let now = streams(&proxy_refs).await;
                (now.get(&endpoints[i]) > before.get(&endpoints[i])).then_some(())
            },
        )
        .await;
    }
    let failures = load.failures();
    assert_eq!(
        failures.len(),
        failed_at_kill,
        "a rolling restart fails no call: {failures:?}"
    );

    // A data plane drained under load: the load moves to the other as /readyz turns false;
    // calls in flight finish; no call fails.
    let drained_at = Instant::now();
    data_planes[0].begin_shutdown();
    load.run_for(60).await;
    let outcomes = load.stop().await;
    let late_failures: Vec<&String> = outcomes
        .iter()
        .filter(|outcome| outcome.started >= drained_at)
        .filter_map(|outcome| outcome.result.as_ref().err())
        .collect();
    assert!(
        late_failures.is_empty(),
        "a draining data plane fails no call: {late_failures:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| o.result.is_err()).count(),
        failed_at_kill
    );
    // Every call reached the upstream exactly once.
    let succeeded = outcomes.iter().filter(|o| o.result.is_ok()).count();
    assert!(mock.requests().len() >= succeeded);
}

/// A name's A records are the control planes: one that joins gets calls within the resolve
/// interval, one that leaves the records gets none after it.
#[tokio::test]
async fn control_planes_are_followed_by_name_as_they_come_and_go() {
    let ips = [loopback(5), loopback(6)];
    let port = shared_port(&ips);
    let options = fleet_options();
    let first = ControlPlaneNode::start(SocketAddr::new(ips[0], port), &options).await;
    let dns = TestDns::start().await;
    dns.set(&ips[..1]);
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(dns.target(port)),
        ..fleet_options()
    })
    .await;
    let client = Client::new();
    for kind in 0..4 {
        call(&client, &stack.proxy, kind).await.unwrap();
    }
    let endpoints = [
        SocketAddr::new(ips[0], port).to_string(),
        SocketAddr::new(ips[1], port).to_string(),
    ];
    assert_eq!(streams(&[&stack.proxy]).await.get(&endpoints[0]), Some(&4));

    let second = ControlPlaneNode::start(SocketAddr::new(ips[1], port), &options).await;
    dns.set(&ips);
    let joined_at = Instant::now();
    let mut kind = 0;
    luthien_tests::wait::eventually(
        "the new control plane gets calls",
        Duration::from_secs(10),
        || {
            kind += 1;
            let client = &client;
            let proxy = stack.proxy.clone();
            let endpoint = endpoints[1].clone();
            async move {
                call(client, &proxy, kind).await.unwrap();
                streams(&[&proxy])
                    .await
                    .contains_key(&endpoint)
                    .then_some(())
            }
        },
    )
    .await;
    let joined = joined_at.elapsed();
    assert!(
        joined < Duration::from_secs(3),
        "joined within a few resolve intervals (200 ms): {joined:?}"
    );

    // The first leaves the records (its pod is going away): no more calls for it.
    dns.set(&ips[1..]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    for kind in 0..8 {
        call(&client, &stack.proxy, kind).await.unwrap();
    }
    let after = streams(&[&stack.proxy]).await;
    assert!(
        !after.contains_key(&endpoints[0]),
        "a control plane that left is forgotten, series included: {after:?}"
    );
    drop(first);
    drop(second);
}

/// A control plane that stops answering (health still SERVING) costs the one call that found
/// out, under the fail mode; it is then ejected, and the next calls go to the other.
#[tokio::test]
async fn a_control_plane_that_stops_answering_is_ejected() {
    use luthien_tests::fake_control_plane::{FakeControlPlane, Script};
    let silent = FakeControlPlane::start(Script::Silent).await;
    let healthy = Stack::start(StackOptions::default()).await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(format!(
            "{}, {}",
            silent.url,
            healthy.control_plane.clone().unwrap()
        )),
        cp_inactivity_timeout: Duration::from_millis(300),
        cp_message_timeout: Duration::from_millis(600),
        ..StackOptions::default()
    })
    .await;
    let silent_endpoint = silent.url.trim_start_matches("http://").to_owned();
    // Both report SERVING before the calls.
    luthien_tests::wait::eventually(
        "both control planes serving",
        Duration::from_secs(10),
        || async {
            let serving = endpoint_metric(&stack.proxy, "luthien_control_plane_serving").await;
            (serving.len() == 2 && serving.values().all(|v| *v == 1)).then_some(())
        },
    )
    .await;
    let client = Client::new();
    let mut failed = 0;
    for kind in 0..12 {
        if call(&client, &stack.proxy, kind).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 1,
        "only the call that found the silent one out fails"
    );
    let ejections = endpoint_metric(&stack.proxy, "luthien_control_plane_ejections_total").await;
    assert_eq!(ejections.get(&silent_endpoint), Some(&1), "{ejections:?}");
    let failures = endpoint_metric(&stack.proxy, "luthien_control_plane_failures_total").await;
    assert_eq!(failures.get(&silent_endpoint), Some(&1), "{failures:?}");
    assert_eq!(
        silent.call_ends().len(),
        1,
        "the silent control plane got one call, and then none"
    );
}

/// A TCP relay in front of a control plane that, once armed, cuts the connection (a reset) at
/// the next HEADERS frame the data plane sends on it: a stream opened on a connection that dies
/// before the control plane answers, as when the control plane is killed between two calls.
struct ConnectionCutter {
    url: String,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    _stop: DropGuard,
}

impl ConnectionCutter {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (armed_, cuts_, stopped) = (Arc::clone(&armed), Arc::clone(&cuts), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (armed, cuts) = (Arc::clone(&armed_), Arc::clone(&cuts_));
                tokio::spawn(Self::relay(client, target, armed, cuts));
            }
        });
        Self {
            url,
            armed,
            cuts,
            _stop: stop.drop_guard(),
        }
    }

    /// Copies the control plane's side as it comes; reads the data plane's side frame by frame
    /// (RFC 9113 §4.1: 9-byte header, type at offset 3) to see where each stream opens.
    async fn relay(
        client: tokio::net::TcpStream,
        target: SocketAddr,
        armed: Arc<AtomicBool>,
        cuts: Arc<AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const HEADERS: u8 = 0x1;
        let Ok(server) = tokio::net::TcpStream::connect(target).await else {
            return;
        };
        // SO_LINGER 0: closing is a reset, as the socket of a killed process may give.
        if client.set_zero_linger().is_err() {
            return;
        }
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let answers = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            to_client
        });
        let mut preface = [0; 24];
        if from_client.read_exact(&mut preface).await.is_err()
            || to_server.write_all(&preface).await.is_err()
        {
            return;
        }
        loop {
            let mut header = [0; 9];
            if from_client.read_exact(&mut header).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0; length];
            if from_client.read_exact(&mut payload).await.is_err() {
                return;
            }
            if header[3] == HEADERS && armed.swap(false, Ordering::SeqCst) {
                cuts.fetch_add(1, Ordering::SeqCst);
                // Both halves go: the socket closes with a reset (zero linger, set above).
                answers.abort();
                return;
            }
            if to_server.write_all(&header).await.is_err()
                || to_server.write_all(&payload).await.is_err()
            {
                return;
            }
        }
    }
}

/// A stream whose connection breaks before the control plane answers it never reached a policy:
/// the call moves to the next control plane instead of failing.
#[tokio::test]
async fn a_call_whose_connection_breaks_before_the_stream_opens_moves_on() {
    let healthy = Stack::start(StackOptions::default()).await;
    let control_plane = healthy.control_plane.clone().unwrap();
    let target: SocketAddr = control_plane.trim_start_matches("http://").parse().unwrap();
    let cutter = ConnectionCutter::start(target).await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(format!("{}, {control_plane}", cutter.url)),
        ..StackOptions::default()
    })
    .await;
    luthien_tests::wait::eventually(
        "both control planes serving",
        Duration::from_secs(10),
        || async {
            let serving = endpoint_metric(&stack.proxy, "luthien_control_plane_serving").await;
            (serving.len() == 2 && serving.values().all(|v| *v == 1)).then_some(())
        },
    )
    .await;
    let client = Client::new();
    // Round robin: within two calls one tries the cut connection first.
    cutter.armed.store(true, Ordering::SeqCst);
    for kind in 0..4 {
        call(&client, &stack.proxy, kind)
            .await
            .unwrap_or_else(|error| panic!("call {kind} failed: {error}"));
    }
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 1, "a call met the cut");
    let cutter_endpoint = cutter.url.trim_start_matches("http://");
    let failures = endpoint_metric(&stack.proxy, "luthien_control_plane_failures_total").await;
    assert_eq!(failures.get(cutter_endpoint), Some(&1), "{failures:?}");
}

/// A control plane frozen mid-flight (as SIGSTOP freezes a process: connections open, nothing
/// answered) costs the calls that find it out one inactivity timeout; after the trip the calls
/// stop paying it, and once it thaws and its health check answers it gets calls again.
#[tokio::test]
async fn a_frozen_control_plane_stops_costing_the_timeout_once_ejected() {
    let ips = [loopback(7), loopback(8)];
    let port = shared_port(&ips);
    let options = fleet_options();
    let frozen = ControlPlaneNode::start(SocketAddr::new(ips[0], port), &options).await;
    let _healthy = ControlPlaneNode::start(SocketAddr::new(ips[1], port), &options).await;
    let timeout = Duration::from_millis(800);
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(format!(
            "http://{}, http://{}",
            SocketAddr::new(ips[0], port),
            SocketAddr::new(ips[1], port)
        )),
        cp_inactivity_timeout: timeout,
        cp_message_timeout: Duration::from_secs(5),
        ..fleet_options()
    })
    .await;
    let frozen_endpoint = SocketAddr::new(ips[0], port).to_string();
    luthien_tests::wait::eventually("both serving", Duration::from_secs(10), || async {
        let serving = endpoint_metric(&stack.proxy, "luthien_control_plane_serving").await;
        (serving.len() == 2 && serving.values().all(|v| *v == 1)).then_some(())
    })
    .await;

    frozen.freeze(Duration::from_secs(4));
    let client = Client::new();
    let mut slow = 0;
    let mut failed = 0;
    for kind in 0..20 {
        let started = Instant::now();
        if call(&client, &stack.proxy, kind).await.is_err() {
            failed += 1;
        }
        if started.elapsed() >= timeout {
            slow += 1;
        }
    }
    assert!(
        slow <= 1 && failed <= 1,
        "only the call that trips the ejection pays the timeout: {slow} slow, {failed} failed"
    );
    let ejections = endpoint_metric(&stack.proxy, "luthien_control_plane_ejections_total").await;
    assert!(
        ejections.get(&frozen_endpoint).copied().unwrap_or(0) >= 1 || slow == 0,
        "{ejections:?}"
    );

    // Thawed, it answers its health check again and gets calls again.
    let before = streams(&[&stack.proxy]).await;
    luthien_tests::wait::eventually(
        "the thawed control plane gets calls again",
        Duration::from_secs(60),
        || async {
            call(&client, &stack.proxy, 0).await.unwrap();
            let now = streams(&[&stack.proxy]).await;
            (now.get(&frozen_endpoint) > before.get(&frozen_endpoint)).then_some(())
        },
    )
    .await;
}

/// Certificates for the control-plane channel, written to a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

struct Authority {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A certificate for `names`, signed by this authority: (certificate, key) PEM.
    fn issue(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Writes `pem` over `path` the way a Secret update does: a new file renamed over the old.
    fn replace(path: &Path, pem: &str) {
        let staged = path.with_extension("new");
        std::fs::write(&staged, pem).unwrap();
        std::fs::rename(staged, path).unwrap();
    }
}

/// The channel over TLS with client certificates and a token: the right CA, certificate and
/// token get calls through; a data plane that trusts another CA, presents no certificate, one
/// from another CA, an expired one, or a wrong token gets the fail mode, and the control plane
/// says why in its log. Changed files are picked up without a restart, on both sides.
#[tokio::test]
async fn the_channel_admits_only_data_planes_with_the_right_certificate_and_token() {
    let pki = Pki::new();
    let ca = Authority::new("luthien test CA");
    let other_ca = Authority::new("somebody else's CA");
    let ca_file = pki.write("ca.pem", &ca.pem);
    let other_ca_file = pki.write("other-ca.pem", &other_ca.pem);
    let (server_cert, server_key) = ca.issue(&["127.0.0.1"], false);
    let server_cert_file = pki.write("server.pem", &server_cert);
    let server_key_file = pki.write("server-key.pem", &server_key);
    let client = |name: &str, authority: &Authority, expired: bool| {
        let (cert, key) = authority.issue(&["data-plane"], expired);
        (
            pki.write(&format!("{name}.pem"), &cert),
            pki.write(&format!("{name}-key.pem"), &key),
        )
    };
    let good = client("good", &ca, false);
    let foreign = client("foreign", &other_ca, false);
    let expired = client("expired", &ca, true);
    let tls = |ca: &PathBuf, identity: Option<&(PathBuf, PathBuf)>| ControlPlaneTls {
        ca: Some(ca.clone()),
        cert: identity.map(|(cert, _)| cert.clone()),
        key: identity.map(|(_, key)| key.clone()),
    };

    let options = StackOptions {
        control_plane_tls: TlsArgs {
            tls_cert: Some(server_cert_file.clone()),
            tls_key: Some(server_key_file.clone()),
            tls_client_ca: Some(ca_file.clone()),
        },
        data_plane_tls: tls(&ca_file, Some(&good)),
        control_plane_token: Some("s3cret".into()),
        ..fleet_options()
    };
    let node = ControlPlaneNode::start("127.0.0.1:0".parse().unwrap(), &options).await;
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let mock = Arc::new(MockUpstream::start().await.unwrap());
    let data_plane = |tls: ControlPlaneTls, token: &str| {
        Stack::start_with_mock(
            StackOptions {
                control_plane: ControlPlane::External(node.url.clone()),
                data_plane_tls: tls,
                data_plane_token: Some(token.to_owned()),
                fail_mode: FailMode::Closed,
                ..fleet_options()
            },
            Arc::clone(&mock),
        )
    };
    let client_ = Client::new();

    let admitted = data_plane(tls(&ca_file, Some(&good)), "s3cret").await;
    call(&client_, &admitted.proxy, 0).await.unwrap();
    call(&client_, &admitted.proxy, 1).await.unwrap();

    let refused = [
        (
            "trusts another CA",
            tls(&other_ca_file, Some(&good)),
            "s3cret",
            None,
        ),
        (
            "no client certificate",
            tls(&ca_file, None),
            "s3cret",
            Some("TLS handshake refused"),
        ),
        (
            "a certificate from another CA",
            tls(&ca_file, Some(&foreign)),
            "s3cret",
            Some("TLS handshake refused"),
        ),
        (
            "an expired certificate",
            tls(&ca_file, Some(&expired)),
            "s3cret",
            Some("TLS handshake refused"),
        ),
        (
            "a wrong token",
            tls(&ca_file, Some(&good)),
            "wrong",
            Some("wrong control-plane token"),
        ),
    ];
    for (case, tls, token, logged) in refused {
        let stack = data_plane(tls, token).await;
        let response = client_.post(&stack.openai_url(), &[], OPENAI).await;
        assert_eq!(response.status, 503, "{case}: {}", response.text());
        response.assert_openai_error(503, "control plane");
        if let Some(logged) = logged {
            luthien_tests::wait::eventually(
                "the control plane logs the refusal",
                Duration::from_secs(5),
                || async { node.logs().contains(logged).then_some(()) },
            )
            .await;
        }
    }
    let logs = node.logs();
    for reason in ["no certificates", "UnknownIssuer", "xpired"] {
        assert!(
            logs.to_lowercase().contains(&reason.to_lowercase()),
            "the control plane's log says why ({reason}):\n{logs}"
        );
    }

    // The data plane reads its files again: one that trusted the wrong CA gets through once
    // the right CA is in its file.
    let rotating_ca = pki.write("rotating-ca.pem", &other_ca.pem);
    let rotating = data_plane(tls(&rotating_ca, Some(&good)), "s3cret").await;
    let response = client_.post(&rotating.openai_url(), &[], OPENAI).await;
    assert_eq!(response.status, 503);
    Pki::replace(&rotating_ca, &ca.pem);
    luthien_tests::wait::eventually(
        "the data plane uses its new CA file",
        Duration::from_secs(10),
        || async { call(&client_, &rotating.proxy, 0).await.ok() },
    )
    .await;

    // The control plane reads its files again: a certificate from a new CA is presented to
    // new connections.
    let new_ca = Authority::new("rotated CA");
    let new_ca_file = pki.write("new-ca.pem", &new_ca.pem);
    let (cert, key) = new_ca.issue(&["127.0.0.1"], false);
    Pki::replace(&server_key_file, &key);
    Pki::replace(&server_cert_file, &cert);
    luthien_tests::wait::eventually(
        "the control plane presents its new certificate",
        Duration::from_secs(15),
        || async { node.logs().contains("TLS files changed").then_some(()) },
    )
    .await;
    let trusting_new = data_plane(tls(&new_ca_file, Some(&good)), "s3cret").await;
    call(&client_, &trusting_new.proxy, 2).await.unwrap();
}

/// A control plane killed (`kill -9`) while a call streams leaves the call in progress; another
/// control plane on the same database marks it `abandoned` once the dead one has been silent
/// for `--abandon-after`, and the call's record says why.
#[tokio::test]
async fn a_call_left_in_progress_by_a_dead_control_plane_is_marked_abandoned() {
    use luthien_store::events::{CallStatus, EventPayload};
    use luthien_store::{Store, StoreOptions};
    let database = luthien_tests::databases::TestDatabase::sqlite().await;
    let options = StackOptions {
        database_url: Some(database.url.clone()),
        abandon_after: Duration::from_secs(1),
        ..fleet_options()
    };
    let mut first = ControlPlaneNode::start("127.0.0.1:0".parse().unwrap(), &options).await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(first.url.clone()),
        fail_mode: FailMode::Open,
        ..fleet_options()
    })
    .await;
    let url = stack.openai_url();
    let streaming = tokio::spawn(async move {
        Client::new()
            .post(
                &url,
                &[("x-mock-chunks", "40"), ("x-mock-delay-ms", "100")],
                OPENAI_STREAM,
            )
            .await
    });
    let store = Store::open(&database.url, StoreOptions::default())
        .await
        .unwrap();
    let call_id = luthien_tests::wait::eventually(
        "the streaming call is recorded in progress",
        Duration::from_secs(10),
        || async {
            let page = store.list_calls(&Default::default()).await.unwrap();
            page.calls
                .iter()
                .find(|call| call.status == CallStatus::InProgress)
                .map(|call| call.call_id.clone())
        },
    )
    .await;
    first.kill();
    // The client's stream goes on, unpoliced (fail open), and ends.
    let response = streaming.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        store.get_call(&call_id).await.unwrap().unwrap().0.status,
        CallStatus::InProgress,
        "nobody is left to end it"
    );

    let _second = ControlPlaneNode::start("127.0.0.1:0".parse().unwrap(), &options).await;
    let (summary, events) =
        luthien_tests::wait::eventually("the call is swept", Duration::from_secs(15), || async {
            let (summary, events) = store.get_call(&call_id).await.unwrap().unwrap();
            (summary.status == CallStatus::Abandoned).then_some((summary, events))
        })
        .await;
    assert!(summary.completed_at_micros.is_some());
    let detail = events
        .iter()
        .find_map(|event| match &event.payload {
            EventPayload::Response {
                status: CallStatus::Abandoned,
                detail,
                ..
            } => detail.clone(),
            _ => None,
        })
        .expect("a response event with the reason");
    assert!(detail.contains("stopped before the call ended"), "{detail}");
    store.close().await;
}

/// Calls let through without policies while no control plane was reachable (fail-open) are
/// recorded once one is back, as `unpoliced`, with their request, their response (a stream
/// reconstructed) and why the policies did not run; the debug API filters on that status. A
/// full spool drops calls and counts them.
#[tokio::test]
async fn calls_let_through_unpoliced_are_recorded_once_a_control_plane_is_back() {
    let database = luthien_tests::databases::TestDatabase::sqlite().await;
    let address = luthien_tests::stack::unused_address().await;
    let stack = Stack::start(StackOptions {
        control_plane: ControlPlane::External(format!("http://{address}")),
        fail_mode: FailMode::Open,
        ..fleet_options()
    })
    .await;
    let client = Client::new();
    for kind in 0..4 {
        call(&client, &stack.proxy, kind).await.unwrap();
    }
    let spooled = |proxy: String, name: &'static str| async move {
        let response = Client::new()
            .send("GET", &format!("{proxy}/metrics"), &[], "")
            .await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")).map(str::to_owned))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        spooled(stack.proxy.clone(), "luthien_unpoliced_calls_spooled_total").await,
        4
    );

    let node = ControlPlaneNode::start(
        address,
        &StackOptions {
            database_url: Some(database.url.clone()),
            ..fleet_options()
        },
    )
    .await;
    let listed = luthien_tests::wait::eventually(
        "the unpoliced calls are recorded",
        Duration::from_secs(15),
        || async {
            let response = Client::new()
                .send(
                    "GET",
                    &format!("{}/debug/calls?status=unpoliced", node.debug_http),
                    &[],
                    "",
                )
                .await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (page["calls"].as_array().map_or(0, Vec::len) == 4).then_some(page)
        },
    )
    .await;
    assert_eq!(
        spooled(
            stack.proxy.clone(),
            "luthien_unpoliced_calls_recorded_total"
        )
        .await,
        4
    );
    for summary in listed["calls"].as_array().unwrap() {
        assert_eq!(summary["status"], "unpoliced");
        let id = summary["call_id"].as_str().unwrap();
        let response = Client::new()
            .send(
                "GET",
                &format!("{}/debug/calls/{id}", node.debug_http),
                &[],
                "",
            )
            .await;
        let text =
            String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
                .into_owned();
        assert!(
            text.contains("the policies did not run")
                && text.contains("Hello from the mock upstream"),
            "the record has the reason and the response (streams reconstructed): {text}"
        );
    }

    // A spool with room for one call keeps one and counts the others as dropped.
    let tight = Stack::start(StackOptions {
        control_plane: ControlPlane::External(format!(
            "http://{}",
            luthien_tests::stack::unused_address().await
        )),
        fail_mode: FailMode::Open,
        unpoliced_spool_bytes: 2 * 1024,
        ..fleet_options()
    })
    .await;
    for kind in [0, 2, 0] {
        call(&client, &tight.proxy, kind).await.unwrap();
    }
    assert_eq!(
        spooled(tight.proxy.clone(), "luthien_unpoliced_calls_spooled_total").await,
        1
    );
    assert_eq!(
        spooled(tight.proxy.clone(), "luthien_unpoliced_calls_dropped_total").await,
        2
    );
}
