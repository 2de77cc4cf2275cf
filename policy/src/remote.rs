//! `remote`: a policy that runs in a separate server, written in any language, speaking
//! `luthien.policy.v1.PolicyService` (see `proto/luthien/policy/v1/policy_service.proto`, the contract).
//!
//! ```yaml
//! - type: remote
//!   name: path-guard              # shown in logs, metrics and records
//!   config:
//!     endpoints: ["http://127.0.0.1:7000", "http://127.0.0.1:7001"]  # or endpoint: <url>
//!     timeout: 2s                 # per message: from sending a phase to its result (default 2s)
//!     inactivity_timeout: 1s      # max silence while waiting; keepalives restart it (default 1s)
//!     connect_timeout: 1s         # TCP/TLS connect (default: the smaller of the two above)
//!     on_error: block             # block (default) | allow
//!     phases: [request, response, stream]   # optional; narrows what Describe asks for
//!                                           # ([request] also keeps responses in observe mode)
//!     bearer_token_env: POLICY_TOKEN        # or bearer_token: "…"; sent as `authorization`
//!     tls:                        # optional; https:// endpoints use the system roots without it
//!       ca_file: /etc/luthien/policy-ca.pem
//!       domain: policy.internal   # name to verify, when it is not the endpoint's host
//! ```
//!
//! **Connection.** One HTTP/2 channel per chain entry, shared by all its calls: connected on
//! first use, kept alive (HTTP/2 pings every 30 s while calls are open), reconnected by tonic
//! after failures; several endpoints are load-balanced. `Describe` is asked once and cached;
//! after a connection failure it is asked again on the next call.
//!
//! **Per call.** The stream is opened on the first phase the server takes part in (the
//! `Describe` phases ∩ `phases`; `response` applies to non-streamed calls, `stream` to
//! streamed ones), with `start` and that phase's message sent together. After the last phase
//! the server takes part in, the stream is half-closed — a request-only server never sees the
//! response. A `read_only` server is sent every phase without being waited for (a bounded
//! queue; messages that do not fit are dropped and counted), and its results are ignored; the
//! records it sends are kept when they arrive before the call ends. Such a server still makes
//! the chain run in transform mode (the chain cannot know before `Describe` that the server
//! changes nothing), but it adds no wait.
//!
//! **Failures** — connect failure, gRPC error, timeout, a closed stream, an answer that breaks
//! the protocol (wrong result kind or `seq`, a body that is not JSON) — end the server's part
//! in the call (later phases of the call pass unchanged) and are recorded as a
//! `remote_failed` policy event. With `on_error: block`:
//! - request phase: the call is answered with an error in the client's API format (504 for
//!   a timeout, 502 otherwise) and never goes upstream;
//! - response phase: the response is withheld and replaced by a notice (see [`withhold`]);
//! - stream phase: what already reached the client is closed cleanly, a notice is added and
//!   the rest of the upstream stream is dropped.
//!
//! With `on_error: allow` the phase passes unchanged (counted as fail-open); in a stream, the
//! failing event and every later one pass unchanged, and events the server was holding are
//! lost. Either way no call waits for a server longer than its timeouts; hooks never return a
//! [`PolicyError`].
//!
//! The control plane sends keepalives to the data plane while it waits, but the data plane's
//! `cp-message-timeout` (30 s by default) still bounds a whole decision: keep `timeout` well
//! below it.
//!
//! **Metrics**: [`Remote::stats`], reported by the chain's `PolicyMetrics`; spans
//! `remote_policy` with `policy`, `phase` and `call_id`.

mod session;
pub(crate) mod stats;
mod withhold;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use luthien_api::limits;
use luthien_proto::policy::v1::policy_request::Message as ToServer;
use luthien_proto::policy::v1::policy_request_result::Action;
use luthien_proto::policy::v1::policy_response::Message as FromServer;
use luthien_proto::policy::v1::{
    PolicyCallStart, PolicyImmediateResponse, PolicyRequest, PolicyRequestPhase,
    PolicyResponsePhase, PolicyStreamEnd, PolicyStreamEvent,
};
use luthien_telemetry::propagation;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::Instrument;

use self::session::{AuditSession, Connection, Phases, RemoteError, Session, Timeouts};
use self::stats::RemoteStats;
pub use self::stats::{
    LATENCY_BUCKETS_MICROS, PhaseSnapshot, RemoteStatsSnapshot, StatPhase, render_prometheus,
};
use self::withhold::StreamCut;
use super::{
    CallInfo, CallPolicy, FromConfig, ImmediateResponse, Policy, PolicyError, PolicyEvent,
    PolicyMetrics, RequestVerdict, SseEvent,
};
use crate::shapes;

/// The `config` of a `remote` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// One server (alternative to `endpoints`).
    pub endpoint: Option<String>,
    /// Several servers, balanced.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default = "default_inactivity_timeout")]
    pub inactivity_timeout: String,
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    pub phases: Option<Vec<PhaseName>>,
    pub bearer_token: Option<String>,
    pub bearer_token_env: Option<String>,
    pub tls: Option<TlsConfig>,
}

fn default_timeout() -> String {
    "2s".to_owned()
}

fn default_inactivity_timeout() -> String {
    "1s".to_owned()
}

/// What happens to a call when its remote server fails.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail closed: block the request, withhold the response.
    #[default]
    Block,
    /// Fail open: pass unchanged.
    Allow,
}

impl OnError {
    fn as_str(self) -> &'static str {
        match self {
            OnError::Block => "block",
            OnError::Allow => "allow",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PhaseName {
    Request,
    Response,
    Stream,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that sign the server's certificate; without it the system roots.
    pub ca_file: Option<String>,
    /// The name the server's certificate must carry, when it is not the endpoint's host.
    pub domain: Option<String>,
}

/// A chain entry backed by a remote policy server.
pub struct Remote {
    name: String,
    endpoints: Vec<String>,
    settings: Arc<Settings>,
}

/// What every call of one entry shares.
struct Settings {
    name: String,
    on_error: OnError,
    /// The `phases` setting (all when absent).
    phases: Phases,
    connection: Connection,
}

impl Remote {
    /// A snapshot of this entry's counters.
    pub fn stats(&self) -> RemoteStatsSnapshot {
        self.settings
            .connection
            .stats
            .snapshot(&self.name, &self.endpoints)
    }
}

fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| format!("{key}: {error}"))?;
    if duration.is_zero() {
        return Err(format!("{key}: must be more than 0"));
    }
    Ok(duration)
}

impl FromConfig for Remote {
    const KIND: &'static str = "remote";
    type Config = RemoteConfig;

    fn from_config(name: String, config: RemoteConfig) -> Result<Self, String> {
        let (urls, key) = match (config.endpoint, config.endpoints.is_empty()) {
            (Some(_), false) => {
                return Err("endpoint: give either `endpoint` or `endpoints`, not both".to_owned());
            }
            (Some(url), true) => (vec![url], "endpoint"),
            (None, false) => (config.endpoints, "endpoints"),
            (None, true) => return Err("endpoints: at least one endpoint is required".to_owned()),
        };
        let timeouts = Timeouts {
            message: parse_duration("timeout", &config.timeout)?,
            inactivity: parse_duration("inactivity_timeout", &config.inactivity_timeout)?,
        };
        let connect_timeout = match &config.connect_timeout {
            Some(text) => parse_duration("connect_timeout", text)?,
            None => timeouts.message.min(timeouts.inactivity),
        };
        let tls = match &config.tls {
            None => None,
            Some(tls) => Some(tls_settings(tls)?),
        };
        let mut endpoints = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let key = if key == "endpoint" {
                key.to_owned()
            } else {
                format!("{key}[{index}]")
            };
            endpoints.push(endpoint(&key, url, connect_timeout, tls.as_ref())?);
        }
        let token = match (config.bearer_token, config.bearer_token_env) {
            (Some(_), Some(_)) => {
                return Err(
                    "bearer_token: give either `bearer_token` or `bearer_token_env`, not both"
                        .to_owned(),
                );
            }
            (Some(token), None) => Some(token),
            (None, Some(variable)) => match std::env::var(&variable) {
                Ok(token) if !token.is_empty() => Some(token),
                _ => {
                    return Err(format!(
                        "bearer_token_env: environment variable {variable} is not set"
                    ));
                }
            },
            (None, None) => None,
        };
        let authorization = match token {
            None => None,
            Some(token) => Some(
                AsciiMetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| "bearer_token: must be printable ASCII".to_owned())?,
            ),
        };
        let phases = match config.phases {
            None => Phases::ALL,
            Some(list) if list.is_empty() => {
                return Err("phases: list at least one of request, response, stream".to_owned());
            }
            Some(list) => Phases {
                request: list.contains(&PhaseName::Request),
                response: list.contains(&PhaseName::Response),
                stream: list.contains(&PhaseName::Stream),
            },
        };
        let stats = Arc::new(RemoteStats::default());
        Ok(Self {
            endpoints: urls,
            settings: Arc::new(Settings {
                name: name.clone(),
                on_error: config.on_error,
                phases,
                connection: Connection::new(
                    name.clone(),
                    endpoints,
                    authorization,
                    timeouts,
                    stats,
                ),
            }),
            name,
        })
    }
}

fn tls_settings(tls: &TlsConfig) -> Result<ClientTlsConfig, String> {
    let mut settings = ClientTlsConfig::new();
    match &tls.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|error| format!("tls.ca_file: {path}: {error}"))?;
            settings = settings.ca_certificate(Certificate::from_pem(pem));
        }
        None => settings = settings.with_native_roots(),
    }
    if let Some(domain) = &tls.domain {
        settings = settings.domain_name(domain.clone());
    }
    Ok(settings)
}

fn endpoint(
    key: &str,
    url: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| format!("{key}: invalid URL {url:?}: {error}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Pings only while calls are open: gRPC servers (grpcio's defaults in particular)
        // treat frequent pings on an idle connection as abuse and close it.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(false)
        .initial_stream_window_size(limits::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::CONNECTION_WINDOW_BYTES);
    let scheme = endpoint.uri().scheme_str().unwrap_or_default().to_owned();
    let tls = match (scheme.as_str(), tls) {
        ("http", None) => return Ok(endpoint),
        ("http", Some(_)) => {
            return Err(format!(
                "{key}: `tls` needs https:// endpoints, got {url:?}"
            ));
        }
        ("https", Some(tls)) => tls.clone(),
        ("https", None) => ClientTlsConfig::new().with_native_roots(),
        _ => {
            return Err(format!(
                "{key}: {url:?} must start with http:// or https://"
            ));
        }
    };
    endpoint
        .tls_config(tls)
        .map_err(|error| format!("{key}: TLS: {error}"))
}

impl Policy for Remote {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Never: whether the server changes anything is only known after `Describe`, and a
    /// read-only chain is run in observe mode, where no policy is called at all.
    fn read_only(&self) -> bool {
        false
    }

    /// Only when `phases` allows the response or stream phase: with `phases: [request]` (and
    /// no other policy changing responses) responses run in observe mode, without a round
    /// trip per chunk. `Describe` cannot widen this, it is only known later.
    fn transforms_responses(&self) -> bool {
        self.settings.phases.response || self.settings.phases.stream
    }

    /// Only with the request phase allowed; `Describe` can only narrow it.
    fn inspects_requests(&self) -> bool {
        self.settings.phases.request
    }

    fn background_tasks(&self) -> Option<&TaskTracker> {
        Some(&self.settings.connection.background)
    }

    fn register_metrics(&self, metrics: &PolicyMetrics) {
        metrics.register_remote(&self.name, &self.endpoints, &self.settings.connection.stats);
    }

    fn start_call(&self, call: &CallInfo) -> Box<dyn CallPolicy> {
        Box::new(RemoteCall {
            settings: Arc::clone(&self.settings),
            info: call.clone(),
            plan: None,
            link: Link::Idle,
            seq: 0,
            broken: None,
            cut: StreamCut::default(),
            events: Vec::new(),
        })
    }
}

/// Which phases of this call go to the server.
#[derive(Clone, Copy, Debug)]
struct Plan {
    request: bool,
    response: bool,
    stream: bool,
    read_only: bool,
}

enum Link {
    /// No stream yet.
    Idle,
    Waiting(Box<Session>),
    Audit(AuditSession),
    /// The server's part in the call is over (or failed).
    Done,
}

struct RemoteCall {
    settings: Arc<Settings>,
    info: CallInfo,
    plan: Option<Plan>,
    link: Link,
    /// The next stream event's `seq`.
    seq: u64,
    /// Set when the server failed in the stream phase: what to do with the rest.
    broken: Option<OnError>,
    cut: StreamCut,
    events: Vec<PolicyEvent>,
}

impl RemoteCall {
    fn connection(&self) -> &Connection {
        &self.settings.connection
    }

    /// The phases of this call the server takes part in; asks `Describe` when needed.
    async fn plan(&mut self) -> Result<Plan, RemoteError> {
        if let Some(plan) = self.plan {
            return Ok(plan);
        }
        let applicable = Phases {
            request: true,
            response: !self.info.stream,
            stream: self.info.stream,
        }
        .intersect(self.settings.phases);
        let plan = if applicable == Phases::default() {
            Plan {
                request: false,
                response: false,
                stream: false,
                read_only: false,
            }
        } else {
            let description = self.connection().describe().await?;
            let wanted = applicable.intersect(description.phases);
            Plan {
                request: wanted.request,
                response: wanted.response,
                stream: wanted.stream,
                read_only: description.read_only,
            }
        };
        self.plan = Some(plan);
        Ok(plan)
    }

    /// Opens the server's stream for this call. `span` is the span the
    /// server's own spans become children of.
    fn start_message(&self, span: &tracing::Span) -> PolicyRequest {
        let trace = propagation::outgoing(span, &self.info.trace);
        // The data plane already strips credentials; applying the rule again here keeps
        // them from a third party whatever sent the call.
        let headers = self
            .info
            .headers
            .iter()
            .filter(|header| !luthien_api::is_credential(&header.name))
            .cloned()
            .collect();
        PolicyRequest {
            message: Some(ToServer::Start(PolicyCallStart {
                call_id: self.info.call_id.clone(),
                api: self.info.api.kind().into(),
                model: self.info.model.clone(),
                stream: self.info.stream,
                headers,
                traceparent: trace.traceparent,
                tracestate: trace.tracestate,
            })),
        }
    }

    /// Sends one phase's message and waits for its result (opening the stream first when
    /// needed). Measured, traced and counted as `phase`.
    async fn exchange(
        &mut self,
        phase: StatPhase,
        message: ToServer,
    ) -> Result<FromServer, RemoteError> {
        let stats = Arc::clone(&self.connection().stats);
        stats.request(phase);
        let started = Instant::now();
        // Stream events are many and short: their spans are debug level.
        let span = if phase == StatPhase::Stream {
            tracing::debug_span!(
                "luthien.remote_policy",
                otel.kind = "client",
                luthien.policy.name = %self.settings.name,
                luthien.policy.phase = phase.as_str(),
                luthien.call_id = %self.info.call_id,
            )
        } else {
            tracing::info_span!(
                "luthien.remote_policy",
                otel.kind = "client",
                luthien.policy.name = %self.settings.name,
                luthien.policy.phase = phase.as_str(),
                luthien.call_id = %self.info.call_id,
            )
        };
        if matches!(self.link, Link::Idle) {
            // A filtered-out (debug) span has no context; use its parent's.
            let parent = if span.is_disabled() {
                tracing::Span::current()
            } else {
                span.clone()
            };
            let session = self.connection().open(self.start_message(&parent));
            self.link = Link::Waiting(Box::new(session));
        }
        let Link::Waiting(session) = &mut self.link else {
            return Err(RemoteError::Closed);
        };
        let result = session.exchange(message).instrument(span).await;
        self.events.extend(session.take_records());
        stats.latency(phase, started.elapsed());
        result
    }

    /// Sends one phase's message to a read-only server, never waiting.
    fn audit(&mut self, phase: StatPhase, message: ToServer) {
        if matches!(self.link, Link::Idle) {
            let session = self
                .connection()
                .open_audit(self.start_message(&tracing::Span::current()));
            self.link = Link::Audit(session);
        }
        if let Link::Audit(session) = &self.link {
            let stats = &self.settings.connection.stats;
            stats.request(phase);
            if !session.send(message) {
                stats.audit_dropped();
            }
        }
    }

    /// Ends the server's part in the call (half-closes its stream).
    fn finish(&mut self) {
        if let Link::Audit(session) = &self.link {
            self.events.extend(session.take_records());
        }
        self.link = Link::Done;
    }

    /// Counts, logs and records a failure; the server's part in the call is over.
    fn failed(&mut self, phase: StatPhase, error: &RemoteError) {
        let settings = Arc::clone(&self.settings);
        let stats = &settings.connection.stats;
        stats.error(phase, error.is_timeout());
        match settings.on_error {
            OnError::Block => stats.fail_closed(phase),
            OnError::Allow => stats.fail_open(phase),
        }
        settings.connection.failed(error);
        self.finish();
        let on_error = settings.on_error.as_str();
        tracing::warn!(
            call_id = %self.info.call_id, policy = %settings.name, phase = phase.as_str(),
            %error, on_error, "remote policy failed"
        );
        self.events.push(PolicyEvent {
            action: "remote_failed".to_owned(),
            summary: format!(
                "remote policy failed in the {} phase ({error}); on_error: {on_error}",
                phase.as_str()
            ),
            data: json!({
                "phase": phase.as_str(),
                "error": error.to_string(),
                "kind": error.kind(),
                "on_error": on_error,
            }),
        });
    }

    fn notice(&self, error: &RemoteError) -> String {
        format!(
            "[Luthien] The rest of this response was withheld: the remote policy `{}` failed ({}).",
            self.settings.name,
            error.kind()
        )
    }

    async fn request_phase(&mut self, request: &mut Value) -> Result<RequestVerdict, RemoteError> {
        let plan = self.plan().await?;
        if !plan.request {
            if !plan.response && !plan.stream {
                self.finish();
            }
            return Ok(RequestVerdict::Continue);
        }
        let body = request_body(request)?;
        let message = ToServer::Request(PolicyRequestPhase { body });
        if plan.read_only {
            self.audit(StatPhase::Request, message);
            if !plan.response && !plan.stream {
                self.finish();
            }
            return Ok(RequestVerdict::Continue);
        }
        let verdict = match self.exchange(StatPhase::Request, message).await? {
            FromServer::RequestResult(result) => match result.action {
                None => {
                    return Err(protocol("request_result without an action"));
                }
                Some(Action::ContinueRequest(continued)) => {
                    if let Some(body) = continued.body {
                        *request = parse_body("request_result.continue_request.body", &body)?;
                    }
                    RequestVerdict::Continue
                }
                Some(Action::Respond(response)) => {
                    RequestVerdict::Respond(immediate_response(response)?)
                }
            },
            other => return Err(unexpected("request_result", &other)),
        };
        if !plan.response && !plan.stream || matches!(verdict, RequestVerdict::Respond(_)) {
            self.finish();
        }
        Ok(verdict)
    }

    async fn response_phase(&mut self, response: &mut Value) -> Result<(), RemoteError> {
        if matches!(self.link, Link::Done) {
            return Ok(());
        }
        let plan = self.plan().await?;
        if !plan.response {
            return Ok(());
        }
        let body = request_body(response)?;
        let message = ToServer::Response(PolicyResponsePhase { body });
        if plan.read_only {
            self.audit(StatPhase::Response, message);
            self.finish();
            return Ok(());
        }
        let result = self.exchange(StatPhase::Response, message).await?;
        self.finish();
        match result {
            FromServer::ResponseResult(result) => {
                if let Some(body) = result.body {
                    *response = parse_body("response_result.body", &body)?;
                }
                Ok(())
            }
            other => Err(unexpected("response_result", &other)),
        }
    }

    /// Runs one event through the server; `Ok(false)` when the server does not see it.
    async fn event_phase(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<SseEvent>,
    ) -> Result<bool, RemoteError> {
        if matches!(self.link, Link::Done) {
            return Ok(false);
        }
        let plan = self.plan().await?;
        if !plan.stream {
            return Ok(false);
        }
        let seq = self.seq;
        self.seq += 1;
        let message = ToServer::Event(event_to_remote(seq, event));
        if plan.read_only {
            self.audit(StatPhase::Stream, message);
            return Ok(false);
        }
        match self.exchange(StatPhase::Stream, message).await? {
            FromServer::EventResult(result) if result.seq == seq => {
                for remote in result.events {
                    let event = event_from_remote(remote, Some(event))?;
                    self.cut.sent(self.info.api, &event);
                    out.push(event);
                }
                Ok(true)
            }
            FromServer::EventResult(result) => Err(protocol(format!(
                "event_result for seq {} while waiting for {seq}",
                result.seq
            ))),
            other => Err(unexpected("event_result", &other)),
        }
    }

    async fn stream_end_phase(&mut self, out: &mut Vec<SseEvent>) -> Result<(), RemoteError> {
        if matches!(self.link, Link::Done) {
            return Ok(());
        }
        let plan = self.plan().await?;
        if !plan.stream {
            return Ok(());
        }
        let message = ToServer::StreamEnd(PolicyStreamEnd { events: self.seq });
        if plan.read_only {
            self.audit(StatPhase::Stream, message);
            self.finish();
            return Ok(());
        }
        let result = self.exchange(StatPhase::Stream, message).await?;
        self.finish();
        match result {
            FromServer::StreamEndResult(result) => {
                for remote in result.events {
                    let event = event_from_remote(remote, None)?;
                    self.cut.sent(self.info.api, &event);
                    out.push(event);
                }
                Ok(())
            }
            other => Err(unexpected("stream_end_result", &other)),
        }
    }
}

#[async_trait]
impl CallPolicy for RemoteCall {
    async fn on_request(&mut self, request: &mut Value) -> Result<RequestVerdict, PolicyError> {
        // The request is only changed once the server's answer is known to be good.
        match self.request_phase(request).await {
            Ok(verdict) => Ok(verdict),
            Err(error) => {
                self.failed(StatPhase::Request, &error);
                match self.settings.on_error {
                    OnError::Allow => Ok(RequestVerdict::Continue),
                    OnError::Block => {
                        let status = if error.is_timeout() { 504 } else { 502 };
                        let message = format!(
                            "request blocked: the remote policy `{}` failed ({}) and its on_error is block",
                            self.settings.name,
                            error.kind()
                        );
                        Ok(RequestVerdict::Respond(shapes::error_response(
                            self.info.api,
                            status,
                            &message,
                        )))
                    }
                }
            }
        }
    }

    async fn on_response(&mut self, response: &mut Value) -> Result<(), PolicyError> {
        if let Err(error) = self.response_phase(response).await {
            self.failed(StatPhase::Response, &error);
            if self.settings.on_error == OnError::Block {
                let notice = self.notice(&error).replace("The rest of this", "This");
                withhold::withhold_response(self.info.api, response, &self.info.model, &notice);
            }
        }
        Ok(())
    }

    async fn on_event(
        &mut self,
        event: SseEvent,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), PolicyError> {
        match self.broken {
            Some(OnError::Allow) => {
                out.push(event);
                return Ok(());
            }
            Some(OnError::Block) => return Ok(()),
            None => {}
        }
        self.cut.saw_upstream(self.info.api, &event);
        let before = out.len();
        match self.event_phase(&event, out).await {
            Ok(true) => {}
            Ok(false) => {
                self.cut.sent(self.info.api, &event);
                out.push(event);
            }
            Err(error) => {
                out.truncate(before);
                self.failed(StatPhase::Stream, &error);
                self.broken = Some(self.settings.on_error);
                match self.settings.on_error {
                    OnError::Allow => out.push(event),
                    OnError::Block => {
                        let notice = self.notice(&error);
                        out.extend(self.cut.cut(self.info.api, &self.info.model, &notice));
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_stream_end(&mut self, out: &mut Vec<SseEvent>) -> Result<(), PolicyError> {
        if self.broken.is_some() {
            return Ok(());
        }
        let before = out.len();
        if let Err(error) = self.stream_end_phase(out).await {
            out.truncate(before);
            self.failed(StatPhase::Stream, &error);
            self.broken = Some(self.settings.on_error);
            if self.settings.on_error == OnError::Block {
                let notice = self.notice(&error);
                out.extend(self.cut.cut(self.info.api, &self.info.model, &notice));
            }
        }
        Ok(())
    }

    fn take_events(&mut self) -> Vec<PolicyEvent> {
        if let Link::Audit(session) = &self.link {
            self.events.extend(session.take_records());
        }
        std::mem::take(&mut self.events)
    }
}

fn protocol(message: impl Into<String>) -> RemoteError {
    RemoteError::Protocol(message.into())
}

fn unexpected(wanted: &str, got: &FromServer) -> RemoteError {
    let got = match got {
        FromServer::RequestResult(_) => "request_result",
        FromServer::ResponseResult(_) => "response_result",
        FromServer::EventResult(_) => "event_result",
        FromServer::StreamEndResult(_) => "stream_end_result",
        FromServer::Keepalive(_) => "keepalive",
        FromServer::Record(_) => "record",
    };
    protocol(format!("expected {wanted}, got {got}"))
}

fn request_body(value: &Value) -> Result<Bytes, RemoteError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| protocol(format!("body could not be encoded: {error}")))
}

fn parse_body(field: &str, body: &[u8]) -> Result<Value, RemoteError> {
    serde_json::from_slice(body).map_err(|error| protocol(format!("{field} is not JSON: {error}")))
}

fn immediate_response(response: PolicyImmediateResponse) -> Result<ImmediateResponse, RemoteError> {
    let status = match response.status {
        0 => 200,
        status @ 200..=599 => status as u16,
        other => {
            return Err(protocol(format!(
                "respond.status {other} is not an HTTP status"
            )));
        }
    };
    let content_type = match response.content_type.split(';').next().map(str::trim) {
        None | Some("") | Some("application/json") => "application/json",
        Some("text/event-stream") => "text/event-stream",
        Some("text/plain") => "text/plain; charset=utf-8",
        Some(other) => {
            return Err(protocol(format!(
                "respond.content_type {other:?}: use application/json, text/event-stream or text/plain"
            )));
        }
    };
    let reason = if response.reason.is_empty() {
        "answered by a remote policy".to_owned()
    } else {
        response.reason
    };
    Ok(ImmediateResponse {
        status,
        content_type,
        body: response.body,
        reason,
    })
}

/// Turns a server's event into one for the client. An event the server sent back unchanged
/// is the original, so it leaves byte-identical.
/// An event as the policy protocol carries it.
pub(crate) fn event_to_remote(seq: u64, event: &SseEvent) -> PolicyStreamEvent {
    PolicyStreamEvent {
        seq,
        event_type: event.event_type().unwrap_or_default().to_owned(),
        data: Bytes::copy_from_slice(event.data().as_bytes()),
    }
}

/// An event the policy protocol carried; `original` is reused when it comes back unchanged.
pub(crate) fn event_from_remote(
    remote: PolicyStreamEvent,
    original: Option<&SseEvent>,
) -> Result<SseEvent, RemoteError> {
    if let Some(original) = original
        && original.event_type().unwrap_or_default() == remote.event_type
        && original.data().as_bytes() == remote.data.as_ref()
    {
        return Ok(original.clone());
    }
    if remote.event_type.contains(['\n', '\r']) {
        return Err(protocol("event_type contains a line break"));
    }
    let data =
        std::str::from_utf8(&remote.data).map_err(|_| protocol("event data is not UTF-8"))?;
    let event_type = (!remote.event_type.is_empty()).then_some(remote.event_type.as_str());
    if let Ok(value) = serde_json::from_str::<Value>(data) {
        return Ok(SseEvent::from_json(event_type, value));
    }
    if data.contains('\r') {
        return Err(protocol("non-JSON event data contains a carriage return"));
    }
    let mut wire = String::with_capacity(data.len() + 32);
    if let Some(event_type) = event_type {
        wire.push_str("event: ");
        wire.push_str(event_type);
        wire.push('\n');
    }
    for line in data.split('\n') {
        wire.push_str("data: ");
        wire.push_str(line);
        wire.push('\n');
    }
    wire.push('\n');
    Ok(SseEvent::from_wire(Bytes::from(wire)))
}

#[cfg(test)]
mod tests;
