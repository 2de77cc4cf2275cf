//! Bus tests. The Redis ones use the real Redis of `LUTHIEN_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`, also in CI), each on its own channel so they can run in parallel, and a
//! private `redis-server` for the outage test, so the shared one is never
//! disturbed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use super::*;

/// The shared Redis, as every suite finds it.
fn shared_redis() -> String {
    std::env::var("LUTHIEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}
const WAIT: Duration = Duration::from_secs(10);

fn message(call_id: &str) -> ActivityMessage {
    ActivityMessage {
        v: ACTIVITY_VERSION,
        call_id: call_id.to_owned(),
        sequence: 0,
        event_type: "request".to_owned(),
        model: "gpt-4o".to_owned(),
        api: luthien_api::Api::OpenAiChat,
        timestamp_micros: 1_700_000_000_000_000,
        summary: "request".to_owned(),
        status: None,
        control_plane: "whoever".to_owned(),
    }
}

fn unique_channel() -> String {
    format!("luthien:activity:test:{}", uuid::Uuid::new_v4())
}

fn redis_bus(url: &str, channel: &str, cancel: &CancellationToken) -> ActivityBus {
    let config = RedisActivityConfig {
        channel: channel.to_owned(),
        ..RedisActivityConfig::new(url)
    };
    ActivityBus::redis_with_config(config, cancel.clone()).unwrap()
}

async fn subscribed(bus: &ActivityBus) {
    tokio::time::timeout(WAIT, bus.wait_subscribed())
        .await
        .expect("the bus subscribed to Redis in time");
}

async fn recv(receiver: &mut Receiver<ActivityMessage>) -> ActivityMessage {
    tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("a message arrived in time")
        .expect("the receiver did not lag or close")
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_process_round_trip_stamps_the_instance_id() {
    let bus = ActivityBus::in_process();
    let mut first = bus.subscribe();
    let mut second = bus.clone().subscribe();

    bus.publish(message("call-1"));

    let expected = ActivityMessage {
        control_plane: bus.instance_id().to_owned(),
        ..message("call-1")
    };
    assert_eq!(recv(&mut first).await, expected);
    assert_eq!(recv(&mut second).await, expected);
    assert_eq!(
        bus.stats(),
        ActivityStats {
            published: 1,
            dropped: 0,
            publish_failures: 0
        }
    );
    assert!(bus.is_subscribed());
}

#[tokio::test]
async fn in_process_publish_without_subscribers_is_fine() {
    let bus = ActivityBus::in_process();
    bus.publish(message("nobody-listens"));
    assert_eq!(bus.stats().published, 1);
}

#[tokio::test]
async fn slow_subscriber_lags_and_is_told_how_many_it_missed() {
    let bus = ActivityBus::in_process_with_capacity(4);
    let mut slow = bus.subscribe();

    for index in 0..10 {
        bus.publish(message(&format!("call-{index}")));
    }

    assert_eq!(bus.stats().published, 10, "the publisher never waited");
    assert!(matches!(slow.recv().await, Err(RecvError::Lagged(6))));
    for index in 6..10 {
        assert_eq!(recv(&mut slow).await.call_id, format!("call-{index}"));
    }
    assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn bad_redis_url_is_an_error() {
    let cancel = CancellationToken::new();
    for url in ["not a url", "http://127.0.0.1:6379"] {
        let result = ActivityBus::redis(url, cancel.clone());
        assert!(
            matches!(result, Err(ActivityError::InvalidUrl(_))),
            "{url}: {result:?}"
        );
    }
}

#[test]
fn redis_bus_outside_a_runtime_is_an_error_not_a_panic() {
    let result = ActivityBus::redis(&shared_redis(), CancellationToken::new());
    assert!(
        matches!(result, Err(ActivityError::NoRuntime)),
        "{result:?}"
    );
}

#[tokio::test]
async fn two_control_planes_see_each_others_activity_exactly_once() {
    let cancel = CancellationToken::new();
    let channel = unique_channel();
    let a = redis_bus(&shared_redis(), &channel, &cancel);
    let b = redis_bus(&shared_redis(), &channel, &cancel);
    assert_ne!(a.instance_id(), b.instance_id());
    subscribed(&a).await;
    subscribed(&b).await;
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();

    a.publish(message("from-a"));
    let seen_by_b = recv(&mut on_b).await;
    assert_eq!(seen_by_b.call_id, "from-a");
    assert_eq!(seen_by_b.control_plane, a.instance_id());

    b.publish(message("from-b"));
    // Redis delivers a channel's messages in order, so had A's own echo not
    // been skipped it would come between these two.
    assert_eq!(recv(&mut on_a).await.call_id, "from-a");
    let seen_by_a = recv(&mut on_a).await;
    assert_eq!(seen_by_a.call_id, "from-b");
    assert_eq!(seen_by_a.control_plane, b.instance_id());
    assert_eq!(recv(&mut on_b).await.call_id, "from-b");

    eventually("both publishes counted", || {
        a.stats().published == 1 && b.stats().published == 1
    })
    .await;
    assert_eq!(a.stats().publish_failures + a.stats().dropped, 0);
    cancel.cancel();
}

#[tokio::test]
async fn raw_redis_subscriber_reads_the_published_json() {
    let cancel = CancellationToken::new();
    let channel = unique_channel();
    let client = redis::Client::open(shared_redis()).unwrap();
    let mut raw = client.get_async_pubsub().await.unwrap();
    raw.subscribe(&channel).await.unwrap();
    let bus = redis_bus(&shared_redis(), &channel, &cancel);

    bus.publish(message("raw"));

    let mut stream = raw.on_message();
    let msg = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.get_channel_name(), channel);
    let json: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
    assert_eq!(json["v"], 1);
    let decoded: ActivityMessage = serde_json::from_value(json).unwrap();
    assert_eq!(
        decoded,
        ActivityMessage {
            control_plane: bus.instance_id().to_owned(),
            ..message("raw")
        }
    );
    cancel.cancel();
}

#[tokio::test]
async fn malformed_and_newer_messages_from_redis_are_skipped() {
    let cancel = CancellationToken::new();
    let channel = unique_channel();
    let bus = redis_bus(&shared_redis(), &channel, &cancel);
    subscribed(&bus).await;
    let mut local = bus.subscribe();
    let mut connection = redis::Client::open(shared_redis())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let newer = ActivityMessage {
        v: ACTIVITY_VERSION + 1,
        ..message("newer")
    };
    let fine = message("fine");
    for payload in [
        "{not json".to_owned(),
        serde_json::to_string(&newer).unwrap(),
        serde_json::to_string(&fine).unwrap(),
    ] {
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async::<i64>(&mut connection)
            .await
            .unwrap();
    }

    assert_eq!(recv(&mut local).await, fine);
    cancel.cancel();
}

#[tokio::test]
async fn unreachable_redis_degrades_without_blocking_publishers() {
    let cancel = CancellationToken::new();
    // Nothing listens on port 1.
    let config = RedisActivityConfig {
        queue_capacity: 4,
        channel: unique_channel(),
        ..RedisActivityConfig::new("redis://127.0.0.1:1")
    };
    let bus = ActivityBus::redis_with_config(config, cancel.clone()).unwrap();
    let mut local = bus.subscribe();

    let started = Instant::now();
    for index in 0..1000 {
        bus.publish(message(&format!("call-{index}")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "publishing took {:?}",
        started.elapsed()
    );

    // This instance's own activity still reaches its subscribers.
    assert_eq!(recv(&mut local).await.call_id, "call-0");
    assert!(!bus.is_subscribed());
    assert!(bus.stats().dropped > 0, "{:?}", bus.stats());
    eventually("publish failures counted", || {
        bus.stats().publish_failures > 0
    })
    .await;
    let stats = bus.stats();
    assert_eq!(stats.published, 0);
    assert!(stats.dropped + stats.publish_failures <= 1000, "{stats:?}");
    cancel.cancel();
}

#[tokio::test]
async fn cancelled_bus_drops_instead_of_queueing_forever() {
    let cancel = CancellationToken::new();
    let bus = redis_bus(&shared_redis(), &unique_channel(), &cancel);
    cancel.cancel();
    eventually("the publisher task to stop", || {
        bus.publish(message("late"));
        bus.stats().dropped > 0
    })
    .await;
}

/// A `redis-server` of the test's own, killed when dropped.
struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    fn on_free_port() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        PrivateRedis::on_port(port)
    }

    fn on_port(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        PrivateRedis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(mut self) -> u16 {
        self.kill();
        self.port
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes on `from` until `to` receives one of the messages: after an
/// outage, messages published before the subscriber is back are lost.
async fn publish_until_received(
    from: &ActivityBus,
    to: &mut Receiver<ActivityMessage>,
    call_id: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        from.publish(message(call_id));
        if let Ok(Ok(seen)) = tokio::time::timeout(Duration::from_millis(200), to.recv()).await
            && seen.call_id == call_id
        {
            return;
        }
        assert!(Instant::now() < deadline, "{call_id} never arrived");
    }
}

#[tokio::test]
async fn redis_outage_is_survived_and_recovered_from_without_restart() {
    let cancel = CancellationToken::new();
    let server = PrivateRedis::on_free_port();
    server.wait_ready().await;
    let url = server.url();
    let channel = unique_channel();
    let a = redis_bus(&url, &channel, &cancel);
    let b = redis_bus(&url, &channel, &cancel);
    subscribed(&a).await;
    subscribed(&b).await;
    let mut on_b = b.subscribe();
    publish_until_received(&a, &mut on_b, "before").await;

    let port = server.stop();
    eventually("both subscribers noticed the outage", || {
        !a.is_subscribed() && !b.is_subscribed()
    })
    .await;
    let mut on_a = a.subscribe();
    let failures_before = a.stats().publish_failures;
    eventually("publish failures counted", || {
        a.publish(message("during"));
        a.stats().publish_failures > failures_before
    })
    .await;
    assert_eq!(
        recv(&mut on_a).await.call_id,
        "during",
        "local delivery goes on"
    );

    let server = PrivateRedis::on_port(port);
    server.wait_ready().await;
    subscribed(&a).await;
    subscribed(&b).await;
    publish_until_received(&a, &mut on_b, "after").await;
    let published = a.stats().published;
    assert!(published >= 2, "{:?}", a.stats());
    cancel.cancel();
    drop(server);
}

#[tokio::test]
async fn redis_down_at_start_up_is_joined_once_it_comes_up() {
    let cancel = CancellationToken::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let channel = unique_channel();
    let a = redis_bus(&url, &channel, &cancel);
    let b = redis_bus(&url, &channel, &cancel);
    eventually("publish failures counted", || {
        a.publish(message("too-early"));
        a.stats().publish_failures > 0
    })
    .await;
    assert!(!a.is_subscribed());

    let server = PrivateRedis::on_port(port);
    server.wait_ready().await;
    subscribed(&a).await;
    subscribed(&b).await;
    let mut on_b = b.subscribe();
    publish_until_received(&a, &mut on_b, "on-time").await;
    cancel.cancel();
    drop(server);
}
