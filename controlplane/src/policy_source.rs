//! The live policy chain and its hot reload.
//!
//! [`PolicySource`] holds the current chain behind an `ArcSwap`: each call
//! takes the chain once when it starts and keeps it to the end, so a reload
//! never changes a call in flight. A reload (SIGHUP, or the file changing on
//! disk) validates the new file first; a bad file is rejected with a log
//! line and the old chain stays. Every chain it holds measures into the
//! control plane's policy metrics.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use luthien_policy::Chain;
use luthien_policy::config::{self, ConfigError};

/// How often the policy file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A chain and where it came from.
#[derive(Debug)]
pub struct LoadedChain {
    pub chain: Arc<Chain>,
    /// The file it was read from; `None` for the built-in default.
    pub path: Option<PathBuf>,
    /// The file's text, for `GetPolicy` (empty for the default).
    pub yaml: String,
    pub loaded_at_micros: i64,
}

impl From<Chain> for PolicySource {
    fn from(chain: Chain) -> Self {
        Self::fixed(chain)
    }
}

/// The current chain, shared by the service, the debug API and the reloader.
#[derive(Clone)]
pub struct PolicySource {
    current: Arc<ArcSwap<LoadedChain>>,
    /// The last reload refused, until one succeeds: the file on disk is not what runs.
    failure: Arc<Mutex<Option<ReloadFailure>>>,
}

/// A refused reload, as the debug API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadFailure {
    pub error: String,
    pub at_micros: i64,
}

impl PolicySource {
    /// A fixed chain (no file to reload from).
    pub fn fixed(chain: Chain) -> Self {
        Self::from_loaded(LoadedChain {
            chain: Arc::new(measured(chain)),
            path: None,
            yaml: String::new(),
            loaded_at_micros: luthien_api::time::unix_micros(),
        })
    }

    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::from_loaded(load(path)?))
    }

    fn from_loaded(loaded: LoadedChain) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(loaded)),
            failure: Arc::default(),
        }
    }

    /// The chain new calls use.
    pub fn chain(&self) -> Arc<Chain> {
        Arc::clone(&self.current.load().chain)
    }

    /// The chain with its origin.
    pub fn current(&self) -> Arc<LoadedChain> {
        self.current.load_full()
    }

    /// The last reload refused since the chain running was loaded, if any.
    pub fn last_failure(&self) -> Option<ReloadFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Re-reads the file; on success swaps the chain atomically, on failure
    /// keeps the old one, remembers why (see [`PolicySource::last_failure`]) and returns the
    /// error.
    pub fn reload(&self) -> Result<Arc<LoadedChain>, ConfigError> {
        let Some(path) = self.current.load().path.clone() else {
            return Ok(self.current());
        };
        let metrics = crate::metrics::global();
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = match load(&path) {
            Ok(loaded) => Arc::new(loaded),
            Err(error) => {
                metrics.policy_reload_failures.inc();
                metrics.policy_reload_failing.set(1);
                *failure = Some(ReloadFailure {
                    error: error.to_string(),
                    at_micros: luthien_api::time::unix_micros(),
                });
                return Err(error);
            }
        };
        metrics.policy_reload_failing.set(0);
        *failure = None;
        drop(failure);
        self.current.store(Arc::clone(&loaded));
        tracing::info!(
            path = %path.display(),
            policies = ?loaded.chain.policy_names(),
            "policy chain reloaded"
        );
        Ok(loaded)
    }

    /// Reloads on SIGHUP and whenever the file's contents change, until
    /// `shutdown`. Does nothing for a fixed chain.
    pub fn spawn_reloader(&self, shutdown: CancellationToken) {
        let Some(path) = self.current.load().path.clone() else {
            return;
        };
        let source = self.clone();
        tokio::spawn(async move {
            let mut hangup = hangup_signal();
            let mut last_seen = std::fs::read(&path).ok();
            let mut ticks = tokio::time::interval(WATCH_INTERVAL);
            loop {
                let reason = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = next_hangup(&mut hangup) => "SIGHUP",
                    _ = ticks.tick() => {
                        // Compare contents, not mtimes: editors that save by
                        // rename and coarse mtimes both fool timestamps.
                        let now = std::fs::read(&path).ok();
                        if now == last_seen || now.is_none() {
                            continue;
                        }
                        last_seen = now;
                        "file changed"
                    }
                };
                if let Err(error) = source.reload() {
                    tracing::error!(%error, reason, "policy reload rejected; the previous chain stays active");
                }
            }
        });
    }
}

fn measured(chain: Chain) -> Chain {
    chain.with_metrics(Arc::clone(&crate::metrics::global().policy))
}

fn load(path: &Path) -> Result<LoadedChain, ConfigError> {
    let yaml = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })?;
    let chain = config::parse_chain(&yaml, &path.display().to_string())?;
    Ok(LoadedChain {
        chain: Arc::new(measured(chain)),
        path: Some(path.to_owned()),
        yaml,
        loaded_at_micros: luthien_api::time::unix_micros(),
    })
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    match hangup {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_good_file_swaps_the_chain_and_a_bad_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "policies: [{type: noop}]").unwrap();
        let source = PolicySource::from_file(&path).unwrap();
        let before = source.chain();
        assert_eq!(before.policy_names(), ["noop"]);

        std::fs::write(&path, "policies: [{type: all_caps}]").unwrap();
        source.reload().unwrap();
        assert_eq!(source.chain().policy_names(), ["all_caps"]);
        // A call that started before keeps its chain.
        assert_eq!(before.policy_names(), ["noop"]);

        std::fs::write(&path, "policies: [{type: no_such_policy}]").unwrap();
        let error = source.reload().unwrap_err().to_string();
        assert!(error.contains("no_such_policy"), "{error}");
        assert_eq!(source.chain().policy_names(), ["all_caps"]);
        assert!(source.current().yaml.contains("all_caps"));
    }

    #[tokio::test]
    async fn the_watcher_picks_up_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "policies: [{type: noop}]").unwrap();
        let source = PolicySource::from_file(&path).unwrap();
        let shutdown = CancellationToken::new();
        source.spawn_reloader(shutdown.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&path, "policies: [{type: all_caps}]").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while source.chain().policy_names() != ["all_caps"] {
            assert!(tokio::time::Instant::now() < deadline, "reload within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
    }
}
