//! A real Luthien stack on port 0: the mock provider, a control plane and a
//! data plane, each serving on its own socket inside the test process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use luthien_controlplane::ControlPlaneConfig;
use luthien_controlplane::tls::TlsArgs;
use luthien_dataplane::config::{ControlPlaneTls, EdgeLimits};
use luthien_dataplane::{DataPlaneConfig, FailMode};
use luthien_mock_upstream::MockUpstream;
use luthien_policy::Chain;
use luthien_store::redact::StoredPayloads;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the data plane finds its control plane.
pub enum ControlPlane {
    /// A real control plane running this chain.
    Chain(Chain),
    /// A real control plane configured by this YAML policy file content.
    Yaml(String),
    /// A real control plane reading (and hot-reloading) this policy file.
    File(std::path::PathBuf),
    /// An address where nothing listens.
    Down,
    /// Some other server (e.g. a scripted fake) at this URL.
    External(String),
}

pub struct StackOptions {
    pub control_plane: ControlPlane,
    pub fail_mode: FailMode,
    pub client_api_key: Option<String>,
    pub openai_api_key: Option<String>,
    pub anthropic_api_key: Option<String>,
    pub max_body_bytes: usize,
    pub upstream_timeout: Duration,
    pub cp_message_timeout: Duration,
    pub cp_inactivity_timeout: Duration,
    /// Point the data plane at this upstream instead of the mock.
    pub upstream_override: Option<String>,
    /// Event store of the control plane; `None` records nothing.
    pub database_url: Option<String>,
    /// Redis for live activity; `None` keeps it in-process.
    pub redis_url: Option<String>,
    /// Cap on stored payloads.
    pub max_payload_bytes: Option<usize>,
    /// Admin key guarding the debug API.
    pub admin_key: Option<String>,
    /// The control plane's cap on one unfinished SSE event.
    pub max_sse_event_bytes: usize,
    /// The data plane's limits on clients.
    pub edge: EdgeLimits,
    /// How long the data plane keeps accepting calls once shutdown starts.
    pub drain_delay: Duration,
    /// The token the control plane requires on call streams.
    pub control_plane_token: Option<String>,
    /// The token the data plane presents.
    pub data_plane_token: Option<String>,
    /// `/metrics` and gRPC reflection behind the admin key too.
    pub guard_metrics_and_reflection: bool,
    /// Which bodies the control plane stores.
    pub store_payloads: StoredPayloads,
    /// `--control-plane-resolve-interval` of the data plane.
    pub resolve_interval: Duration,
    /// `--control-plane-ca`, `-cert`, `-key` of the data plane.
    pub data_plane_tls: ControlPlaneTls,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca` of the control plane; the data plane
    /// reaches it at `https://` when set.
    pub control_plane_tls: TlsArgs,
    /// `--abandon-after` of the control plane.
    pub abandon_after: Duration,
    /// `--unpoliced-spool-bytes` of the data plane.
    pub unpoliced_spool_bytes: usize,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            control_plane: ControlPlane::Yaml("policies: [{type: noop}]".into()),
            fail_mode: FailMode::Closed,
            client_api_key: None,
            openai_api_key: None,
            anthropic_api_key: None,
            max_body_bytes: 10 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(30),
            cp_message_timeout: Duration::from_secs(10),
            cp_inactivity_timeout: Duration::from_secs(5),
            upstream_override: None,
            database_url: None,
            redis_url: None,
            max_payload_bytes: None,
            admin_key: None,
            max_sse_event_bytes: luthien_policy::sse::DEFAULT_MAX_EVENT_BYTES,
            edge: EdgeLimits::default(),
            drain_delay: Duration::ZERO,
            control_plane_token: None,
            data_plane_token: None,
            guard_metrics_and_reflection: false,
            store_payloads: StoredPayloads::All,
            resolve_interval: Duration::from_secs(5),
            data_plane_tls: ControlPlaneTls::default(),
            control_plane_tls: TlsArgs::default(),
            abandon_after: Duration::from_secs(60),
            unpoliced_spool_bytes: 64 * 1024 * 1024,
        }
    }
}

impl StackOptions {
    pub fn yaml(yaml: &str) -> Self {
        Self {
            control_plane: ControlPlane::Yaml(yaml.to_owned()),
            ..Self::default()
        }
    }
}

/// A running stack; everything stops when it is dropped.
pub struct Stack {
    pub mock: Arc<MockUpstream>,
    /// `http://127.0.0.1:PORT` of the data plane.
    pub proxy: String,
    /// `http://127.0.0.1:PORT` of the control plane's gRPC, when one runs.
    pub control_plane: Option<String>,
    /// `http://127.0.0.1:PORT` of the control plane's debug HTTP API and UI.
    pub debug_http: Option<String>,
    /// Stops the data plane.
    shutdown: CancellationToken,
    /// Stops the control plane.
    control_shutdown: CancellationToken,
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        let mock = Arc::new(MockUpstream::start().await.expect("mock upstream starts"));
        Self::start_with_mock(options, mock).await
    }

    /// Starts a stack in front of an existing mock (several stacks can share one).
    pub async fn start_with_mock(options: StackOptions, mock: Arc<MockUpstream>) -> Stack {
        let shutdown = CancellationToken::new();
        let control_shutdown = CancellationToken::new();
        let recording = Recording::of(&options);
        let (control_plane_url, debug_http) = match options.control_plane {
            ControlPlane::Chain(chain) => {
                let (grpc, http) = start_control_plane(chain, &recording, &control_shutdown).await;
                (Some(grpc), Some(http))
            }
            ControlPlane::Yaml(yaml) => {
                let chain = luthien_policy::config::parse_chain(&yaml, "test policy")
                    .expect("test policy YAML is valid");
                let (grpc, http) = start_control_plane(chain, &recording, &control_shutdown).await;
                (Some(grpc), Some(http))
            }
            ControlPlane::File(path) => {
                let policies = luthien_controlplane::policy_source::PolicySource::from_file(&path)
                    .expect("test policy file is valid");
                let (grpc, http) =
                    start_control_plane(policies, &recording, &control_shutdown).await;
                (Some(grpc), Some(http))
            }
            ControlPlane::External(url) => (Some(url), None),
            ControlPlane::Down => (None, None),
        };
        let data_plane_target = match &control_plane_url {
            Some(url) => url.clone(),
            None => format!("http://{}", unused_address().await),
        };
        let (openai_base_url, anthropic_base_url) = match &options.upstream_override {
            Some(url) => (format!("{url}/v1"), url.clone()),
            None => (mock.openai_base_url(), mock.anthropic_base_url()),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind data plane");
        let proxy = format!(
            "http://{}",
            listener.local_addr().expect("data plane address")
        );
        let config = DataPlaneConfig {
            listen: listener.local_addr().expect("data plane address"),
            control_plane: data_plane_target,
            control_plane_resolve_interval: options.resolve_interval,
            control_plane_retries: 2,
            control_plane_tls: options.data_plane_tls.clone(),
            unpoliced_spool_bytes: options.unpoliced_spool_bytes,
            openai_base_url,
            anthropic_base_url,
            openai_api_key: options.openai_api_key,
            anthropic_api_key: options.anthropic_api_key,
            client_api_key: options.client_api_key,
            fail_mode: options.fail_mode,
            max_body_bytes: options.max_body_bytes,
            max_response_bytes: 32 * 1024 * 1024,
            upstream_timeout: options.upstream_timeout,
            cp_message_timeout: options.cp_message_timeout,
            cp_inactivity_timeout: options.cp_inactivity_timeout,
            cp_connect_timeout: Duration::from_millis(500),
            propagate_trace_upstream: true,
            auxiliary_endpoints: true,
            send_before_decision: true,
            drain_delay: options.drain_delay,
            drain_timeout: Duration::from_secs(10),
            edge: options.edge,
            control_plane_token: options.data_plane_token,
        };
        tokio::spawn(luthien_dataplane::serve(config, listener, shutdown.clone()));
        Stack {
            mock,
            proxy,
            control_plane: control_plane_url,
            debug_http,
            shutdown,
            control_shutdown,
        }
    }

    pub fn openai_url(&self) -> String {
        format!("{}/v1/chat/completions", self.proxy)
    }

    pub fn anthropic_url(&self) -> String {
        format!("{}/v1/messages", self.proxy)
    }

    /// The same endpoints on the mock itself, for A/B comparisons.
    pub fn direct_openai_url(&self) -> String {
        format!("{}/chat/completions", self.mock.openai_base_url())
    }

    pub fn direct_anthropic_url(&self) -> String {
        format!("{}/v1/messages", self.mock.anthropic_base_url())
    }

    /// Starts draining the data plane, as SIGTERM does, without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Starts stopping the control plane, as SIGTERM does, without waiting.
    pub fn stop_control_plane(&self) {
        self.control_shutdown.cancel();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.control_shutdown.cancel();
    }
}

/// A control plane of a fleet test, on a runtime of its own so that it can be killed the way
/// `kill -9` kills a process: every task and socket dropped at once, nothing graceful run.
/// What it logs (at `info`) from its runtime's threads is kept, for tests to read.
pub struct ControlPlaneNode {
    /// `http(s)://ADDRESS:PORT` of its gRPC port.
    pub url: String,
    pub address: SocketAddr,
    /// `http://ADDRESS:PORT` of its debug HTTP API.
    pub debug_http: String,
    logs: LogBuffer,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<Result<(), luthien_controlplane::server::ServeError>>>,
}

impl ControlPlaneNode {
    /// Starts a control plane with the chain and recording of `options` on `address` (port 0
    /// picks one), and waits until it serves.
    pub async fn start(address: SocketAddr, options: &StackOptions) -> Self {
        let logs = LogBuffer::default();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(logs.clone())
                .finish(),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(move || {
                // For the thread's whole life: the guard is never dropped.
                std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            })
            .enable_all()
            .build()
            .expect("control plane runtime");
        let listener = {
            let _entered = runtime.enter();
            let listener = std::net::TcpListener::bind(address).expect("bind control plane");
            listener.set_nonblocking(true).expect("non-blocking");
            TcpListener::from_std(listener).expect("tokio listener")
        };
        let address = listener.local_addr().expect("control plane address");
        let chain = match &options.control_plane {
            ControlPlane::Yaml(yaml) => luthien_policy::config::parse_chain(yaml, "test policy")
                .expect("test policy YAML is valid"),
            _ => panic!("a control plane node takes its chain as YAML"),
        };
        let shutdown = CancellationToken::new();
        let (url, http_address, served) = start_control_plane_on(
            listener,
            chain,
            &Recording::of(options),
            &shutdown,
            runtime.handle(),
        )
        .await;
        Self {
            url,
            address,
            debug_http: format!("http://{http_address}"),
            logs,
            runtime: Some(runtime),
            shutdown,
            served: Some(served),
        }
    }

    /// What it logged so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Freezes it for `length`, as SIGSTOP does: its one worker thread blocks, so its sockets
    /// stay open and nothing on them is answered.
    pub fn freeze(&self, length: Duration) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(async move { std::thread::sleep(length) });
        }
    }

    /// Kills it at once, as `kill -9` would.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Stops it the way SIGTERM does, and waits until it has.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served
                .await
                .expect("control plane task")
                .expect("control plane stops cleanly");
        }
        self.kill();
    }
}

impl Drop for ControlPlaneNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.kill();
    }
}

/// Log lines, shared by the threads that write them.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// What a test control plane records, and where.
struct Recording {
    database_url: Option<String>,
    redis_url: Option<String>,
    max_payload_bytes: Option<usize>,
    admin_key: Option<String>,
    max_sse_event_bytes: usize,
    control_plane_token: Option<String>,
    guard_metrics_and_reflection: bool,
    store_payloads: StoredPayloads,
    tls: TlsArgs,
    /// How the harness itself reaches a TLS control plane to see it serving.
    client_tls: ControlPlaneTls,
    abandon_after: Duration,
}

impl Recording {
    fn of(options: &StackOptions) -> Self {
        Self {
            database_url: options.database_url.clone(),
            redis_url: options.redis_url.clone(),
            max_payload_bytes: options.max_payload_bytes,
            admin_key: options.admin_key.clone(),
            max_sse_event_bytes: options.max_sse_event_bytes,
            control_plane_token: options.control_plane_token.clone(),
            guard_metrics_and_reflection: options.guard_metrics_and_reflection,
            store_payloads: options.store_payloads,
            tls: options.control_plane_tls.clone(),
            client_tls: options.data_plane_tls.clone(),
            abandon_after: options.abandon_after,
        }
    }
}

/// Starts a control plane; returns its gRPC and debug HTTP base URLs.
async fn start_control_plane(
    chain: impl Into<luthien_controlplane::policy_source::PolicySource> + Send + 'static,
    recording: &Recording,
    shutdown: &CancellationToken,
) -> (String, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind control plane");
    let (url, http_address, _served) = start_control_plane_on(
        listener,
        chain,
        recording,
        shutdown,
        &tokio::runtime::Handle::current(),
    )
    .await;
    (url, format!("http://{http_address}"))
}

/// Starts a control plane on `listener`, its tasks on `runtime`; returns its gRPC URL, its
/// debug HTTP address and the task serving it, once it reports SERVING.
async fn start_control_plane_on(
    listener: TcpListener,
    chain: impl Into<luthien_controlplane::policy_source::PolicySource> + Send + 'static,
    recording: &Recording,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) -> (
    String,
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), luthien_controlplane::server::ServeError>>,
) {
    let address = listener.local_addr().expect("control plane address");
    let http = TcpListener::bind(SocketAddr::new(address.ip(), 0))
        .await
        .expect("bind debug HTTP");
    let http_address = http.local_addr().expect("debug HTTP address");
    let config = ControlPlaneConfig {
        grpc_listen: address,
        policy_config: None,
        keepalive_interval: Duration::from_millis(200),
        max_sse_event_bytes: recording.max_sse_event_bytes,
        database_url: recording.database_url.clone().unwrap_or_default(),
        no_store: recording.database_url.is_none(),
        skip_migrations: false,
        event_queue_capacity: 10_000,
        max_payload_bytes: recording.max_payload_bytes,
        retention: None,
        retention_interval: Duration::from_secs(600),
        abandon_after: recording.abandon_after,
        shutdown_grace: Duration::from_secs(10),
        redis_url: recording.redis_url.clone(),
        http_listen: http_address,
        admin_key: recording.admin_key.clone(),
        trace_url_template: Some("http://traces.example/{trace_id}?call={call_id}".to_owned()),
        insecure: false,
        store_payloads: recording.store_payloads,
        metrics_require_admin_key: recording.guard_metrics_and_reflection,
        reflection_require_admin_key: recording.guard_metrics_and_reflection,
        control_plane_token: recording.control_plane_token.clone(),
        tls: recording.tls.clone(),
    };
    let tls = recording.tls.tls_cert.is_some();
    let server = runtime.spawn(luthien_controlplane::serve(
        config,
        chain,
        listener,
        Some(http),
        shutdown.clone(),
    ));
    let url = format!("{}://{address}", if tls { "https" } else { "http" });
    let server = wait_until_serving(&url, &recording.client_tls, server).await;
    (url, http_address, server)
}

/// Polls `grpc.health.v1` until the control plane answers SERVING (it opens
/// and migrates its store before it serves).
async fn wait_until_serving(
    url: &str,
    client_tls: &ControlPlaneTls,
    server: tokio::task::JoinHandle<Result<(), luthien_controlplane::server::ServeError>>,
) -> tokio::task::JoinHandle<Result<(), luthien_controlplane::server::ServeError>> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if server.is_finished() {
            match server.await {
                Ok(Err(error)) => panic!("control plane failed to start: {error}"),
                other => panic!("control plane stopped at start-up: {other:?}"),
            }
        }
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(url.to_owned()).expect("control plane URL");
        if let Some(ca) = &client_tls.ca {
            let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(std::fs::read(ca).expect("CA file")),
            );
            if let (Some(cert), Some(key)) = (&client_tls.cert, &client_tls.key) {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    std::fs::read(cert).expect("certificate file"),
                    std::fs::read(key).expect("key file"),
                ));
            }
            endpoint = endpoint.tls_config(tls).expect("TLS settings");
        }
        let channel = endpoint.connect().await;
        if let Ok(channel) = channel {
            let mut client = HealthClient::new(channel);
            let request = HealthCheckRequest {
                service: String::new(),
            };
            if let Ok(response) = client.check(request).await
                && response.into_inner().status() == ServingStatus::Serving
            {
                return server;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "control plane not serving after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An address on which nothing listens (bound, then released).
pub async fn unused_address() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}
