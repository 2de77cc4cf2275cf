//! The Redis backend of the activity bus: two background tasks per bus.
//!
//! - The **publisher** drains a bounded queue that
//!   [`ActivityBus::publish`](super::ActivityBus::publish) fills without
//!   waiting, and `PUBLISH`es each message as JSON through a
//!   [`ConnectionManager`], which reconnects by itself. After a failure it
//!   backs off, counting messages as failures without trying, so a Redis
//!   outage costs neither a reconnect attempt per message nor a growing
//!   backlog.
//! - The **subscriber** holds a dedicated pub/sub connection (`SUBSCRIBE`
//!   takes a connection over, so it cannot share the publisher's), relays
//!   what arrives into the local broadcast channel, and reconnects with
//!   backoff whenever the connection is lost or stops answering pings.
//!
//! Redis pub/sub keeps no history: activity published while a subscriber is
//! disconnected is not replayed to it. Live activity is a view, the store is
//! the record.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{Client, Msg, RedisError};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::log_limit::LogLimiter;
use super::{ActivityError, ActivityMessage, Counters, DEFAULT_BROADCAST_CAPACITY};

/// The Redis pub/sub channel activity is published on.
pub const DEFAULT_CHANNEL: &str = "luthien:activity";

/// Messages waiting to be published before new ones are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Longest wait for any one Redis operation (connect, publish, ping).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a quiet subscription is checked. A half-open TCP connection
/// delivers nothing and reports nothing; only a round trip tells it from a
/// channel nobody publishes on.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// How often each kind of warning may be logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Publisher back-off after a failure. Capped low so that publishing resumes
/// within seconds of Redis returning.
const PUBLISH_BACKOFF_MIN: Duration = Duration::from_millis(250);
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Subscriber back-off between connection attempts.
const SUBSCRIBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const SUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of a Redis-backed [`ActivityBus`](super::ActivityBus).
#[derive(Clone)]
pub struct RedisActivityConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Pub/sub channel; control planes that should see each other's
    /// activity must use the same one.
    pub channel: String,
    /// Messages waiting to be published before new ones are dropped.
    pub queue_capacity: usize,
    /// How far a local subscriber may fall behind before it lags.
    pub broadcast_capacity: usize,
    /// Longest wait for any one Redis operation.
    pub io_timeout: Duration,
    /// This control plane's id on its messages; a fresh UUID when `None`.
    /// Must differ between control planes, or they discard each other's
    /// messages as their own echo.
    pub instance_id: Option<String>,
}

impl RedisActivityConfig {
    /// The defaults, for the Redis at `url`.
    pub fn new(url: &str) -> RedisActivityConfig {
        RedisActivityConfig {
            url: url.to_owned(),
            channel: DEFAULT_CHANNEL.to_owned(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            broadcast_capacity: DEFAULT_BROADCAST_CAPACITY,
            io_timeout: DEFAULT_IO_TIMEOUT,
            instance_id: None,
        }
    }
}

impl std::fmt::Debug for RedisActivityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisActivityConfig")
            .field("url", &"<redacted>")
            .field("channel", &self.channel)
            .field("queue_capacity", &self.queue_capacity)
            .field("broadcast_capacity", &self.broadcast_capacity)
            .field("io_timeout", &self.io_timeout)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// Why one Redis operation failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the subscription connection closed")]
    Closed,
}

/// The bus's handle on its two background tasks.
pub(super) struct RedisLink {
    queue: mpsc::Sender<ActivityMessage>,
    subscribed: watch::Receiver<bool>,
    drop_log: LogLimiter,
}

impl RedisLink {
    /// Starts the publisher and subscriber tasks; they run until `cancel`.
    /// Connecting happens in the background, so an unreachable Redis does
    /// not fail this.
    pub(super) fn start(
        config: &RedisActivityConfig,
        instance_id: &str,
        local: &broadcast::Sender<ActivityMessage>,
        counters: &Arc<Counters>,
        cancel: CancellationToken,
    ) -> Result<RedisLink, ActivityError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ActivityError::NoRuntime)?;
        let client = Client::open(config.url.as_str()).map_err(ActivityError::InvalidUrl)?;
        let manager = client
            .get_connection_manager_lazy(manager_config(config.io_timeout))
            .map_err(ActivityError::Redis)?;
        let (queue, queue_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (subscribed_tx, subscribed) = watch::channel(false);

        let publisher = Publisher {
            manager,
            channel: config.channel.clone(),
            io_timeout: config.io_timeout,
            counters: Arc::clone(counters),
            log: LogLimiter::new(LOG_INTERVAL),
            backoff: Backoff::new(PUBLISH_BACKOFF_MIN, PUBLISH_BACKOFF_MAX),
            retry_at: None,
        };
        runtime.spawn(publisher.run(queue_rx, cancel.clone()));

        let subscriber = Subscriber {
            client,
            channel: config.channel.clone(),
            instance_id: instance_id.to_owned(),
            io_timeout: config.io_timeout,
            local: local.clone(),
            subscribed: subscribed_tx,
            link_log: LogLimiter::new(LOG_INTERVAL),
            decode_log: LogLimiter::new(LOG_INTERVAL),
        };
        runtime.spawn(subscriber.run(cancel));

        Ok(RedisLink {
            queue,
            subscribed,
            drop_log: LogLimiter::new(LOG_INTERVAL),
        })
    }

    /// Queues `message` for the publisher without waiting; drops it when
    /// the queue is full.
    pub(super) fn enqueue(&self, message: ActivityMessage, counters: &Counters) {
        match self.queue.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.add_dropped();
                if let Some(suppressed) = self.drop_log.check() {
                    warn!(
                        suppressed,
                        "activity bus: Redis publish queue full, dropping activity"
                    );
                }
            }
            // The bus was shut down; there is nobody left to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => counters.add_dropped(),
        }
    }

    pub(super) fn is_subscribed(&self) -> bool {
        *self.subscribed.borrow()
    }

    /// Returns once subscribed, or once the bus has been shut down.
    pub(super) async fn wait_subscribed(&self) {
        let mut subscribed = self.subscribed.clone();
        // An error means the subscriber task has ended: nothing to wait for.
        let _ = subscribed.wait_for(|subscribed| *subscribed).await;
    }
}

/// The publisher's connection settings: every wait bounded by `io_timeout`,
/// and a single quick retry per reconnect, because the publisher has its
/// own back-off and a long retry loop inside the manager would only hold
/// the queue up.
fn manager_config(io_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(io_timeout))
        .set_response_timeout(Some(io_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1))
}

/// Exponential back-off between `min` and `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Drains the queue into `PUBLISH`.
struct Publisher {
    manager: ConnectionManager,
    channel: String,
    io_timeout: Duration,
    counters: Arc<Counters>,
    log: LogLimiter,
    backoff: Backoff,
    /// Set after a failure: until then, messages are counted as failures
    /// without trying.
    retry_at: Option<Instant>,
}

impl Publisher {
    async fn run(mut self, mut queue: mpsc::Receiver<ActivityMessage>, cancel: CancellationToken) {
        loop {
            let message = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                next = queue.recv() => match next {
                    Some(message) => message,
                    None => return,
                },
            };
            self.publish(&message).await;
        }
    }

    async fn publish(&mut self, message: &ActivityMessage) {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            self.counters.add_publish_failure();
            return;
        }
        match self.send(message).await {
            Ok(()) => self.succeeded(),
            Err(err) => self.failed(&err),
        }
    }

    async fn send(&mut self, message: &ActivityMessage) -> Result<(), LinkError> {
        let json = serde_json::to_string(message)?;
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(json);
        let io_timeout = self.io_timeout;
        // The reply (how many subscribers got it) does not matter: nobody
        // listening is not a failure.
        tokio::time::timeout(io_timeout, publish.query_async::<i64>(&mut self.manager))
            .await
            .map_err(|_| LinkError::Timeout(io_timeout))??;
        Ok(())
    }

    fn succeeded(&mut self) {
        self.counters.add_published();
        if self.retry_at.take().is_some() {
            self.backoff.reset();
            info!("activity bus: publishing to Redis again");
        }
    }

    fn failed(&mut self, err: &LinkError) {
        self.counters.add_publish_failure();
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        if let Some(suppressed) = self.log.check() {
            warn!(
                error = %err,
                suppressed,
                "activity bus: cannot publish to Redis, other control planes miss this activity"
            );
        }
    }
}

/// Relays the Redis channel into the local broadcast channel.
struct Subscriber {
    client: Client,
    channel: String,
    instance_id: String,
    io_timeout: Duration,
    local: broadcast::Sender<ActivityMessage>,
    subscribed: watch::Sender<bool>,
    link_log: LogLimiter,
    decode_log: LogLimiter,
}

/// Why a subscription session ended.
enum SessionEnd {
    Cancelled,
    Lost(LinkError),
}

impl Subscriber {
    /// Subscribes, relays until the connection is lost, waits, subscribes
    /// again; until `cancel`.
    async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(SUBSCRIBE_BACKOFF_MIN, SUBSCRIBE_BACKOFF_MAX);
        loop {
            let connected = tokio::select! {
                () = cancel.cancelled() => return,
                connected = self.connect() => connected,
            };
            match connected {
                Ok((sink, stream)) => {
                    backoff.reset();
                    match self.session(sink, stream, &cancel).await {
                        SessionEnd::Cancelled => return,
                        SessionEnd::Lost(err) => {
                            self.warn(&err, "activity bus: lost the Redis subscription");
                        }
                    }
                }
                Err(err) => self.warn(&err, "activity bus: cannot subscribe to Redis"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn connect(&self) -> Result<(PubSubSink, PubSubStream), LinkError> {
        let subscribe = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            sink.subscribe(&self.channel).await?;
            Ok::<_, RedisError>((sink, stream))
        };
        Ok(tokio::time::timeout(self.io_timeout, subscribe)
            .await
            .map_err(|_| LinkError::Timeout(self.io_timeout))??)
    }

    /// One connected stretch, with `subscribed` raised for its duration.
    async fn session(
        &self,
        sink: PubSubSink,
        stream: PubSubStream,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        self.subscribed.send_replace(true);
        info!(channel = %self.channel, "activity bus: subscribed to Redis");
        let end = self.relay(sink, stream, cancel).await;
        self.subscribed.send_replace(false);
        end
    }

    async fn relay(
        &self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return SessionEnd::Cancelled,
                next = stream.next() => match next {
                    Some(msg) => self.forward(&msg),
                    None => return SessionEnd::Lost(LinkError::Closed),
                },
                _ = ping.tick() => {
                    if let Err(err) = self.ping(&mut sink).await {
                        return SessionEnd::Lost(err);
                    }
                }
            }
        }
    }

    async fn ping(&self, sink: &mut PubSubSink) -> Result<(), LinkError> {
        tokio::time::timeout(self.io_timeout, sink.ping::<redis::Value>())
            .await
            .map_err(|_| LinkError::Timeout(self.io_timeout))??;
        Ok(())
    }

    fn forward(&self, msg: &Msg) {
        let message: ActivityMessage = match serde_json::from_slice(msg.get_payload_bytes()) {
            Ok(message) => message,
            Err(err) => {
                if let Some(suppressed) = self.decode_log.check() {
                    warn!(
                        error = %err,
                        suppressed,
                        "activity bus: skipping a malformed message from Redis"
                    );
                }
                return;
            }
        };
        // Our own messages reached local subscribers when published; a newer
        // control plane's messages may mean something this build misreads.
        if message.control_plane == self.instance_id || !message.is_supported_version() {
            return;
        }
        // An error only means nobody is subscribed right now.
        let _ = self.local.send(message);
    }

    fn warn(&self, err: &LinkError, what: &str) {
        if let Some(suppressed) = self.link_log.check() {
            warn!(error = %err, suppressed, "{what}; retrying");
        }
    }
}
