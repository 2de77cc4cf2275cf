//! The live activity bus: a one-line [`ActivityMessage`] per call event,
//! fanned out to whoever watches (the debug UI's live feed, tests).
//!
//! Two backends behind one [`ActivityBus`]:
//!
//! - **in-process** ([`ActivityBus::in_process`]): a bounded
//!   [`tokio::sync::broadcast`] channel. Only this control plane's activity.
//! - **Redis** ([`ActivityBus::redis`]): messages are also published as JSON
//!   on the `luthien:activity` channel, and a background task subscribes to
//!   it, so several control planes sharing one Redis see each other's
//!   activity.
//!
//! Either way [`ActivityBus::subscribe`] hands out a broadcast receiver, and
//! [`ActivityBus::publish`] is a plain `fn` that never blocks or awaits: the
//! bus sits on the hot path of every call, and live activity is a
//! best-effort view, not a record (the store is the record). So a slow
//! subscriber lags and is told how many messages it missed, a full Redis
//! queue drops messages, and a Redis outage only costs activity from other
//! control planes; all of it is counted in [`ActivityStats`].
//!
//! In Redis mode a message is delivered to this instance's subscribers at
//! publish time, and its echo from Redis is recognised by
//! [`ActivityMessage::control_plane`] and skipped. That delivers it exactly
//! once, and keeps local activity flowing while Redis is down.

mod log_limit;
mod message;
mod redis_backend;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use luthien_api::Api;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use luthien_store::events::CallEvent;

pub use message::{ACTIVITY_VERSION, ActivityMessage, MAX_SUMMARY_CHARS};
pub use redis_backend::{
    DEFAULT_CHANNEL, DEFAULT_IO_TIMEOUT, DEFAULT_QUEUE_CAPACITY, RedisActivityConfig,
};

use redis_backend::RedisLink;

/// How many messages a subscriber may fall behind before it lags.
pub const DEFAULT_BROADCAST_CAPACITY: usize = 1024;

/// Why an activity bus could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ActivityError {
    /// The Redis URL did not parse. The URL itself is not repeated: it may
    /// hold a password.
    #[error("invalid Redis URL for the activity bus")]
    InvalidUrl(#[source] ::redis::RedisError),
    /// The Redis client refused its configuration.
    #[error("cannot set up the Redis activity bus")]
    Redis(#[source] ::redis::RedisError),
    /// The Redis backend spawns background tasks, so it needs a runtime.
    #[error("the Redis activity bus must be created inside a Tokio runtime")]
    NoRuntime,
}

/// Counters since the bus was created, shared by all its clones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActivityStats {
    /// Messages handed to the backend: broadcast in-process, or
    /// successfully `PUBLISH`ed to Redis.
    pub published: u64,
    /// Messages dropped before reaching Redis because the publish queue was
    /// full (or the bus was shut down).
    pub dropped: u64,
    /// Messages Redis did not take: errors, timeouts, and messages skipped
    /// while backing off from a failing Redis.
    pub publish_failures: u64,
}

/// The atomic counters behind [`ActivityStats`].
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    publish_failures: AtomicU64,
}

impl Counters {
    fn add_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    fn add_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn add_publish_failure(&self) {
        self.publish_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ActivityStats {
        ActivityStats {
            published: self.published.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
        }
    }
}

/// The live activity bus. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ActivityBus {
    inner: Arc<Inner>,
}

struct Inner {
    instance_id: String,
    /// What [`ActivityBus::subscribe`] hands out receivers of.
    local: broadcast::Sender<ActivityMessage>,
    counters: Arc<Counters>,
    backend: Backend,
}

enum Backend {
    InProcess,
    Redis(RedisLink),
}

impl std::fmt::Debug for ActivityBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.inner.backend {
            Backend::InProcess => "in-process",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("ActivityBus")
            .field("instance_id", &self.inner.instance_id)
            .field("backend", &backend)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ActivityBus {
    /// A bus local to this process.
    pub fn in_process() -> ActivityBus {
        ActivityBus::in_process_with_capacity(DEFAULT_BROADCAST_CAPACITY)
    }

    /// A bus local to this process whose subscribers lag after falling
    /// `capacity` messages behind.
    pub fn in_process_with_capacity(capacity: usize) -> ActivityBus {
        ActivityBus::from_parts(
            new_instance_id(),
            local_channel(capacity),
            Arc::default(),
            Backend::InProcess,
        )
    }

    /// A bus shared through the Redis at `url`, on [`DEFAULT_CHANNEL`].
    ///
    /// Fails only on a bad URL or outside a Tokio runtime: an unreachable
    /// Redis does not fail start-up, the bus degrades (local activity only)
    /// and keeps retrying in the background until `cancel` fires.
    pub fn redis(url: &str, cancel: CancellationToken) -> Result<ActivityBus, ActivityError> {
        ActivityBus::redis_with_config(RedisActivityConfig::new(url), cancel)
    }

    /// [`ActivityBus::redis`] with every knob.
    pub fn redis_with_config(
        config: RedisActivityConfig,
        cancel: CancellationToken,
    ) -> Result<ActivityBus, ActivityError> {
        let instance_id = config.instance_id.clone().unwrap_or_else(new_instance_id);
        let local = local_channel(config.broadcast_capacity);
        let counters = Arc::<Counters>::default();
        let link = RedisLink::start(&config, &instance_id, &local, &counters, cancel)?;
        Ok(ActivityBus::from_parts(
            instance_id,
            local,
            counters,
            Backend::Redis(link),
        ))
    }

    fn from_parts(
        instance_id: String,
        local: broadcast::Sender<ActivityMessage>,
        counters: Arc<Counters>,
        backend: Backend,
    ) -> ActivityBus {
        ActivityBus {
            inner: Arc::new(Inner {
                instance_id,
                local,
                counters,
                backend,
            }),
        }
    }

    /// This control plane's id, stamped on every message it publishes.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Sends `message` to every subscriber (of every control plane, in Redis
    /// mode). Never blocks or awaits; see the module docs for what happens
    /// when something cannot keep up.
    pub fn publish(&self, mut message: ActivityMessage) {
        message.control_plane.clone_from(&self.inner.instance_id);
        match &self.inner.backend {
            Backend::InProcess => {
                self.deliver_locally(message);
                self.inner.counters.add_published();
            }
            Backend::Redis(link) => {
                self.deliver_locally(message.clone());
                link.enqueue(message, &self.inner.counters);
            }
        }
    }

    /// [`ActivityMessage::from_event`] then [`ActivityBus::publish`].
    pub fn publish_event(&self, event: &CallEvent, model: &str, api: Api) {
        self.publish(ActivityMessage::from_event(event, model, api));
    }

    /// A receiver of every message published from now on. A receiver that
    /// falls more than the channel's capacity behind gets
    /// [`broadcast::error::RecvError::Lagged`] with the number it missed,
    /// then resumes with the oldest message still held.
    pub fn subscribe(&self) -> broadcast::Receiver<ActivityMessage> {
        self.inner.local.subscribe()
    }

    /// Counters since the bus was created.
    pub fn stats(&self) -> ActivityStats {
        self.inner.counters.snapshot()
    }

    /// Whether activity from other control planes is currently arriving:
    /// always for the in-process bus, while subscribed for Redis.
    pub fn is_subscribed(&self) -> bool {
        match &self.inner.backend {
            Backend::InProcess => true,
            Backend::Redis(link) => link.is_subscribed(),
        }
    }

    /// Waits until [`ActivityBus::is_subscribed`]. Messages published to
    /// Redis before then are not seen by this instance's subscribers (Redis
    /// pub/sub keeps no history), so tests and start-up checks wait on this.
    pub async fn wait_subscribed(&self) {
        if let Backend::Redis(link) = &self.inner.backend {
            link.wait_subscribed().await;
        }
    }

    fn deliver_locally(&self, message: ActivityMessage) {
        // An error only means nobody is subscribed right now.
        let _ = self.inner.local.send(message);
    }
}

/// The bounded local channel. Tokio rejects a zero capacity, and a bus
/// that cannot hold one message is no bus, so it is raised to one.
fn local_channel(capacity: usize) -> broadcast::Sender<ActivityMessage> {
    broadcast::channel(capacity.max(1)).0
}

/// A fresh id per bus, so two control planes never mistake each other's
/// messages for their own echo.
fn new_instance_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
