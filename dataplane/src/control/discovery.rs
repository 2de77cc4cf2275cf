//! Which control planes there are.
//!
//! `--control-plane` is a comma-separated list of targets, each one of
//! - `http://ADDRESS:PORT` (or `https://` with `--control-plane-ca`): one control plane;
//! - `http://NAME:PORT`: every address the system resolver gives for `NAME` — the Kubernetes
//!   headless-Service pattern, where each ready replica is one A/AAAA record;
//! - `dns://SERVER[:PORT]/NAME:PORT` (gRPC's naming syntax; `dns:///NAME:PORT` is the system
//!   resolver): the addresses the DNS server at `SERVER` gives for `NAME`.
//!
//! Names are resolved again every `--control-plane-resolve-interval`, so replicas that come and
//! go are followed without a restart; a lookup that fails keeps the addresses the name had.
//! Each round also reads the TLS files again (see `tls`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pool::{Found, Pool};
use super::tls::ClientTls;
use crate::config::ControlPlaneTls;

/// Longest the first round may hold up the start: a data plane starts even while DNS is down.
const FIRST_ROUND: Duration = Duration::from_secs(3);

/// How long after the start no control plane serving is worth a warning.
const STARTUP_CHECK: Duration = Duration::from_secs(2);

/// One entry of `--control-plane`.
struct Target {
    /// As written, for logs.
    text: String,
    host: Host,
    port: u16,
    https: bool,
}

enum Host {
    Address(IpAddr),
    /// Resolved by the system resolver.
    Name(String),
    /// Resolved by the DNS server of a `dns://SERVER/` target.
    NameAt(String, Box<TokioResolver>),
}

impl Target {
    fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("--control-plane {text:?}: {why}");
        if let Some(rest) = text.strip_prefix("dns:") {
            let (server, name) = match rest.strip_prefix("//") {
                Some(rest) => rest
                    .split_once('/')
                    .ok_or_else(|| invalid("expected dns://SERVER/NAME:PORT"))?,
                None => ("", rest),
            };
            let (name, port) = split_port(name).ok_or_else(|| invalid("expected NAME:PORT"))?;
            let host = if server.is_empty() {
                Host::Name(name.to_owned())
            } else {
                let server: SocketAddr = server
                    .parse()
                    .or_else(|_| server.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        invalid("the DNS server must be an IP address, with a port or not")
                    })?;
                Host::NameAt(name.to_owned(), Box::new(resolver_at(server)?))
            };
            return Ok(Self {
                text: text.to_owned(),
                host,
                port,
                https: false,
            });
        }
        let uri: http::Uri = text
            .parse()
            .map_err(|error| invalid(&format!("not a URL: {error}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("expected http://, https:// or dns://")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Address(ip),
            Err(_) => Host::Name(host.to_owned()),
        };
        Ok(Self {
            text: text.to_owned(),
            host,
            port,
            https,
        })
    }

    fn is_name(&self) -> bool {
        !matches!(self.host, Host::Address(_))
    }

    async fn resolve(&self) -> Result<Vec<Found>, String> {
        let found = |ip: IpAddr, server_name: &str| Found {
            address: SocketAddr::new(ip, self.port),
            server_name: server_name.to_owned(),
        };
        match &self.host {
            Host::Address(ip) => Ok(vec![found(*ip, &ip.to_string())]),
            Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), self.port))
                .await
                .map_err(|error| error.to_string())?
                .map(|address| found(address.ip(), name))
                .collect()),
            Host::NameAt(name, resolver) => Ok(resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|error| error.to_string())?
                .iter()
                .map(|ip| found(ip, name))
                .collect()),
        }
    }
}

/// `NAME:PORT`, the port required.
fn split_port(text: &str) -> Option<(&str, u16)> {
    let (name, port) = text.rsplit_once(':')?;
    Some((name, port.parse().ok()?)).filter(|(name, _)| !name.is_empty())
}

/// A resolver asking only `server`, with no cache: each round sees the records as they are.
fn resolver_at(server: SocketAddr) -> Result<TokioResolver, String> {
    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
        .into_iter()
        .map(|mut connection| {
            connection.port = server.port();
            connection
        })
        .collect();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        server.ip(),
        true,
        connections,
    )]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().cache_size = 0;
    builder
        .build()
        .map_err(|error| format!("DNS resolver for {server}: {error}"))
}

/// Finds the control planes and keeps the pool up to date.
pub struct Discovery {
    targets: Vec<Target>,
    /// What each target resolved to last.
    last: Mutex<Vec<Vec<Found>>>,
    tls_files: ControlPlaneTls,
    tls: Mutex<Option<Arc<ClientTls>>>,
    interval: Duration,
    pool: Arc<Pool>,
}

impl Discovery {
    /// Parses `--control-plane` and loads the TLS files; nothing is resolved yet.
    pub fn new(
        list: &str,
        tls_files: ControlPlaneTls,
        interval: Duration,
        pool: Arc<Pool>,
        tls: Option<Arc<ClientTls>>,
    ) -> Result<Self, String> {
        let targets = list
            .split(',')
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err("--control-plane names no control plane".into());
        }
        for target in &targets {
            match (target.https, tls.is_some()) {
                (true, false) => {
                    return Err(format!(
                        "--control-plane {:?}: https:// needs --control-plane-ca, the CA the control planes' certificates are checked against",
                        target.text
                    ));
                }
                (false, true) if target.text.starts_with("http:") => {
                    return Err(format!(
                        "--control-plane {:?}: with --control-plane-ca every control plane is reached over TLS; write it https://",
                        target.text
                    ));
                }
                _ => {}
            }
        }
        Ok(Self {
            last: Mutex::new(vec![Vec::new(); targets.len()]),
            targets,
            tls_files,
            tls: Mutex::new(tls),
            interval,
            pool,
        })
    }

    /// Runs the first round (bounded, so that a DNS outage does not stop the start), then one
    /// round every interval until `stop`, when there are names to follow or files to watch.
    pub async fn start(self: &Arc<Self>, tasks: &TaskTracker, stop: CancellationToken) {
        if tokio::time::timeout(FIRST_ROUND, self.round())
            .await
            .is_err()
        {
            tracing::warn!("control plane discovery is slow; calls wait for its next round");
        }
        let discovery = Arc::clone(self);
        let stopped = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = stopped.cancelled() => {}
                () = tokio::time::sleep(STARTUP_CHECK) => discovery.warn_if_alone(),
            }
        });
        let follow = self.targets.iter().any(Target::is_name) || self.tls_files.ca.is_some();
        if !follow {
            return;
        }
        let discovery = Arc::clone(self);
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(discovery.interval) => {}
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = discovery.round() => {}
                }
            }
        });
    }

    /// A data plane that finds no control plane serving soon after its start says where it
    /// looked: the fail mode rules every call until one serves.
    fn warn_if_alone(&self) {
        if self.pool.any_serving() {
            return;
        }
        let targets: Vec<&str> = self.targets.iter().map(|t| t.text.as_str()).collect();
        let addresses: Vec<String> = self
            .pool
            .endpoints()
            .iter()
            .map(|endpoint| endpoint.found.address.to_string())
            .collect();
        tracing::warn!(
            control_plane = ?targets,
            addresses = ?addresses,
            "no control plane reachable since start-up; until one serves, every call gets the fail mode"
        );
    }

    /// One round: the TLS files, then every target.
    async fn round(&self) {
        self.reload_tls();
        let mut resolved = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            resolved.push(target.resolve().await);
        }
        let mut found = Vec::new();
        {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            for ((target, result), last) in self.targets.iter().zip(resolved).zip(last.iter_mut()) {
                match result {
                    Ok(addresses) if !addresses.is_empty() => *last = addresses,
                    Ok(_) => {
                        tracing::warn!(target = %target.text, kept = last.len(), "control plane name has no addresses; keeping the ones it had")
                    }
                    Err(error) => {
                        tracing::warn!(target = %target.text, %error, kept = last.len(), "cannot resolve control plane name; keeping the addresses it had")
                    }
                }
                found.extend(last.iter().cloned());
            }
        }
        found.sort_by_key(|found| found.address);
        found.dedup_by_key(|found| found.address);
        self.pool.update(&found);
    }

    /// Reads the TLS files again; when they changed (and hold what they should), new
    /// connections use them.
    fn reload_tls(&self) {
        if self.tls_files.ca.is_none() {
            return;
        }
        let mut current = self.tls.lock().unwrap_or_else(|poison| poison.into_inner());
        match ClientTls::load(&self.tls_files) {
            Ok(Some(loaded)) if current.as_deref() != Some(&loaded) => {
                let loaded = Arc::new(loaded);
                *current = Some(Arc::clone(&loaded));
                drop(current);
                tracing::info!("control-plane TLS files changed; new connections use them");
                self.pool.set_tls(Some(loaded));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "cannot reload the control-plane TLS files; keeping the ones loaded")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines logged, for the test to read.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_data_plane_without_a_control_plane_says_where_it_looked() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let pool = Arc::new(Pool::new(
                    super::super::pool::ChannelSettings {
                        connect_timeout: Duration::from_millis(200),
                        tls: None,
                    },
                    Default::default(),
                ));
                let target = format!("http://127.0.0.1:{port}");
                let discovery = Arc::new(
                    Discovery::new(
                        &target,
                        ControlPlaneTls::default(),
                        Duration::from_secs(5),
                        Arc::clone(&pool),
                        None,
                    )
                    .unwrap(),
                );
                let tasks = TaskTracker::new();
                let stop = CancellationToken::new();
                discovery.start(&tasks, stop.clone()).await;
                tokio::time::sleep(STARTUP_CHECK + Duration::from_millis(300)).await;
                stop.cancel();
                pool.stop().await;
            });
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("no control plane reachable")
                && text.contains(&format!("127.0.0.1:{port}")),
            "{text}"
        );
    }

    #[test]
    fn targets_parse() {
        let target = Target::parse("http://127.0.0.1:50051").unwrap();
        assert!(matches!(target.host, Host::Address(_)) && target.port == 50051);
        let target = Target::parse("http://[::1]:7").unwrap();
        assert!(matches!(target.host, Host::Address(IpAddr::V6(_))) && target.port == 7);
        let target = Target::parse("http://luthien-controlplane:50051").unwrap();
        assert!(matches!(&target.host, Host::Name(name) if name == "luthien-controlplane"));
        let target = Target::parse("dns:///cp.svc:50051").unwrap();
        assert!(matches!(&target.host, Host::Name(name) if name == "cp.svc"));
        assert!(Target::parse("https://cp:1").unwrap().https);
        for bad in [
            "ftp://x:1",
            "dns://not-an-ip/cp:1",
            "dns://127.0.0.1/cp",
            "127.0.0.1:50051",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
