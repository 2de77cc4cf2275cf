//! The control planes a data plane sends calls to, as discovery last found them, and what is
//! known of each one's health.
//!
//! Health has two sources. Each control plane's `grpc.health.v1` service is watched (a
//! server-streaming `Watch`, never a poll per call): an endpoint gets calls while it reports
//! SERVING. And real calls report what they saw: a control plane that could not take a stream,
//! or stopped answering one, is *ejected* — it gets no calls for a back-off (1 s, doubling with
//! each ejection in a row, at most 30 s), after which a fresh health watch must say SERVING
//! before it gets calls again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use luthien_api::limits;
use luthien_proto::dataplane::v1::control_plane_service_client::ControlPlaneServiceClient;
use luthien_telemetry::metrics::Label;
use luthien_telemetry::prometheus_client::metrics::counter::Counter;
use luthien_telemetry::prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::tls::ClientTls;
use crate::metrics::{ControlMetrics, EndpointLabels};

/// The service name the control plane reports on `grpc.health.v1`.
const CONTROL_PLANE_SERVICE: &str = "luthien.dataplane.v1.ControlPlaneService";

/// Pause before re-opening a broken health watch.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// The first ejection's back-off; each ejection in a row doubles it, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the data plane reaches control planes: the same for every endpoint.
#[derive(Clone)]
pub struct ChannelSettings {
    pub connect_timeout: Duration,
    /// TLS to the control planes (`--control-plane-ca`), as last loaded.
    pub tls: Option<Arc<ClientTls>>,
}

/// One address discovery found, and the name its TLS certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub address: SocketAddr,
    pub server_name: String,
}

/// The live set of control planes.
pub struct Pool {
    endpoints: RwLock<Arc<[Arc<ControlEndpoint>]>>,
    /// Round-robin position.
    next: AtomicUsize,
    settings: RwLock<ChannelSettings>,
    metrics: ControlMetrics,
    /// The endpoints' health watches.
    watches: TaskTracker,
    /// Stops every health watch (the data plane is leaving).
    stop: CancellationToken,
}

impl Pool {
    pub fn new(settings: ChannelSettings, metrics: ControlMetrics) -> Self {
        Self {
            endpoints: RwLock::new(Arc::new([])),
            next: AtomicUsize::new(0),
            settings: RwLock::new(settings),
            metrics,
            watches: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    pub fn endpoints(&self) -> Arc<[Arc<ControlEndpoint>]> {
        Arc::clone(
            &self
                .endpoints
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    /// Whether some control plane reports SERVING.
    pub fn any_serving(&self) -> bool {
        self.endpoints()
            .iter()
            .any(|endpoint| endpoint.is_serving())
    }

    /// The endpoints in the order a call tries them: round robin over those that get calls
    /// (SERVING, not ejected), then the others as a last resort (a watch may lag behind a
    /// control plane that just came back, and with a single control plane there is no other).
    pub fn order(&self) -> Vec<Arc<ControlEndpoint>> {
        let endpoints = self.endpoints();
        let count = endpoints.len();
        if count == 0 {
            return Vec::new();
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let mut order: Vec<Arc<ControlEndpoint>> = endpoints[first..]
            .iter()
            .chain(&endpoints[..first])
            .cloned()
            .collect();
        // Stable: the round-robin order holds within each group.
        order.sort_by_key(|endpoint| !endpoint.is_serving());
        order
    }

    /// New TLS settings: every endpoint is rebuilt so that new connections use them (streams
    /// already open finish on the old ones).
    pub fn set_tls(&self, tls: Option<Arc<ClientTls>>) {
        self.settings
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .tls = tls;
        let found: Vec<Found> = self.endpoints().iter().map(|e| e.found.clone()).collect();
        self.replace(&found, true);
    }

    /// Makes `found` the set of control planes: new addresses join (their health watch
    /// starts), missing ones leave (their watch stops; streams open on them finish).
    pub fn update(&self, found: &[Found]) {
        self.replace(found, false);
    }

    fn replace(&self, found: &[Found], rebuild: bool) {
        let current = self.endpoints();
        let mut by_address: HashMap<SocketAddr, &Arc<ControlEndpoint>> =
            current.iter().map(|e| (e.found.address, e)).collect();
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let mut next = Vec::with_capacity(found.len());
        for item in found {
            match by_address.remove(&item.address) {
                Some(kept) if !rebuild && kept.found == *item => next.push(Arc::clone(kept)),
                previous => match ControlEndpoint::new(item.clone(), &settings, &self.metrics) {
                    Ok(endpoint) => {
                        let endpoint = Arc::new(endpoint);
                        if let Some(previous) = previous {
                            // Same control plane, new channel: it keeps its standing.
                            endpoint.inherit(previous);
                            previous.leave.cancel();
                        }
                        self.watch(Arc::clone(&endpoint));
                        next.push(endpoint);
                    }
                    Err(error) => {
                        tracing::error!(endpoint = %item.address, %error, "cannot set up a channel to this control plane; leaving it out");
                    }
                },
            }
        }
        for gone in by_address.into_values() {
            gone.leave.cancel();
            gone.forget_metrics(&self.metrics);
        }
        let changed = next.len() != current.len()
            || next
                .iter()
                .zip(current.iter())
                .any(|(a, b)| a.found.address != b.found.address);
        *self
            .endpoints
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = next.into();
        if changed {
            let addresses: Vec<String> = self
                .endpoints()
                .iter()
                .map(|e| e.found.address.to_string())
                .collect();
            tracing::info!(control_planes = ?addresses, "control plane set changed");
        }
    }

    /// Follows one endpoint's health until it leaves or the pool stops.
    fn watch(&self, endpoint: Arc<ControlEndpoint>) {
        let stop = self.stop.clone();
        self.watches.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = endpoint.leave.cancelled() => {}
                () = endpoint.follow_health() => {}
            }
        });
    }

    /// Stops every health watch and waits for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.watches.close();
        self.watches.wait().await;
    }
}

/// Ejection state: the back-off's end, and how many ejections in a row led to it.
#[derive(Clone, Copy, Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    in_a_row: u32,
}

/// One control plane.
pub struct ControlEndpoint {
    pub found: Found,
    pub client: ControlPlaneServiceClient<Channel>,
    channel: Channel,
    /// Whether it gets calls: its health watch said SERVING, and nothing since ejected it.
    serving: AtomicBool,
    /// Each ejection wakes the health watch, which drops its stream and waits out the back-off.
    ejection: watch::Sender<Ejection>,
    /// Cancelled when the endpoint leaves the pool.
    leave: CancellationToken,
    pub streams: Counter,
    failures: Counter,
    ejections: Counter,
    serving_gauge: Gauge,
}

impl ControlEndpoint {
    fn new(
        found: Found,
        settings: &ChannelSettings,
        metrics: &ControlMetrics,
    ) -> Result<Self, tonic::transport::Error> {
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", found.address))?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(limits::HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(limits::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(limits::CONNECTION_WINDOW_BYTES);
        if let Some(tls) = &settings.tls {
            let config: ClientTlsConfig = tls.config(&found.server_name);
            endpoint = endpoint.tls_config(config)?;
        }
        let channel = endpoint.connect_lazy();
        let client = ControlPlaneServiceClient::new(channel.clone())
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);
        let labels = labels(&found);
        let serving_gauge = metrics.serving.get_or_create(&labels).clone();
        serving_gauge.set(0);
        Ok(Self {
            client,
            channel,
            serving: AtomicBool::new(false),
            ejection: watch::Sender::new(Ejection::default()),
            leave: CancellationToken::new(),
            streams: metrics.streams.get_or_create(&labels).clone(),
            failures: metrics.failures.get_or_create(&labels).clone(),
            ejections: metrics.ejections.get_or_create(&labels).clone(),
            serving_gauge,
            found,
        })
    }

    /// Takes over the standing of the endpoint it replaces (a new channel to the same place).
    fn inherit(&self, previous: &ControlEndpoint) {
        self.serving.store(previous.is_serving(), Ordering::Relaxed);
        self.serving_gauge.set(i64::from(previous.is_serving()));
        let ejection = *previous.ejection.borrow();
        self.ejection.send_replace(ejection);
    }

    fn forget_metrics(&self, metrics: &ControlMetrics) {
        let labels = labels(&self.found);
        metrics.streams.remove(&labels);
        metrics.failures.remove(&labels);
        metrics.ejections.remove(&labels);
        metrics.serving.remove(&labels);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    fn set_serving(&self, serving: bool) {
        if self.serving.swap(serving, Ordering::Relaxed) != serving {
            self.serving_gauge.set(i64::from(serving));
            tracing::info!(endpoint = %self.found.address, serving, "control plane health changed");
        }
    }

    /// A stream opened: the control plane works, so the next ejection starts the back-off over.
    pub fn succeeded(&self) {
        // Not an ejection: the health watch is not woken.
        self.ejection.send_if_modified(|ejection| {
            ejection.in_a_row = 0;
            false
        });
    }

    /// A real call found this control plane failing (`reason`): it gets no calls until its
    /// back-off is over and a fresh health watch says SERVING. An endpoint already ejected
    /// stays ejected as it was: calls that were on it when it failed say nothing new.
    pub fn failed(&self, reason: &str) {
        self.failures.inc();
        let now = Instant::now();
        if self
            .ejection
            .borrow()
            .until
            .is_some_and(|until| until > now)
        {
            return;
        }
        let mut backoff = FIRST_BACKOFF;
        self.ejection.send_modify(|ejection| {
            ejection.in_a_row = ejection.in_a_row.saturating_add(1);
            backoff = FIRST_BACKOFF
                .saturating_mul(1 << ejection.in_a_row.saturating_sub(1).min(5))
                .min(MAX_BACKOFF);
            ejection.until = Some(now + backoff);
        });
        self.ejections.inc();
        self.set_serving(false);
        tracing::warn!(
            endpoint = %self.found.address,
            %reason,
            backoff = %humantime::format_duration(backoff),
            "control plane ejected"
        );
    }

    /// Follows the health watch, re-opening it after a break, and after each ejection once the
    /// back-off is over.
    async fn follow_health(&self) {
        let mut ejections = self.ejection.subscribe();
        loop {
            // Wait out an ejection (which may grow while waiting).
            loop {
                let until = ejections.borrow_and_update().until;
                match until {
                    Some(until) if until > Instant::now() => {
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => {}
                            _ = ejections.changed() => {}
                        }
                    }
                    _ => break,
                }
            }
            tokio::select! {
                () = self.watch_once() => {}
                _ = ejections.changed() => {}
            }
            self.set_serving(false);
            tokio::time::sleep(REWATCH_AFTER).await;
        }
    }

    /// One `Watch` stream, until it breaks or reports anything but SERVING.
    async fn watch_once(&self) {
        let request = HealthCheckRequest {
            service: CONTROL_PLANE_SERVICE.to_owned(),
        };
        let Ok(response) = HealthClient::new(self.channel.clone()).watch(request).await else {
            return;
        };
        let mut updates = response.into_inner();
        while let Ok(Some(update)) = updates.message().await {
            if update.status() != ServingStatus::Serving {
                // A control plane that is leaving waits for open streams: let this watch go
                // and ask again shortly (a passing NOT_SERVING is followed by SERVING then).
                return;
            }
            // Not an ejection: this watch is not woken by it.
            let mut readmitted = false;
            self.ejection.send_if_modified(|ejection| {
                readmitted = ejection.until.take().is_some();
                false
            });
            if readmitted {
                tracing::info!(endpoint = %self.found.address, "control plane readmitted: its health check says SERVING after the back-off");
            }
            self.set_serving(true);
        }
    }
}

fn labels(found: &Found) -> EndpointLabels {
    EndpointLabels {
        endpoint: Label::new(&found.address.to_string()),
    }
}
