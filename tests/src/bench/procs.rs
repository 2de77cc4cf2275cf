//! The processes under test: the mock provider, nginx in front of it (the baseline a plain
//! reverse proxy sets) and, per policy, a control plane and a data plane, each a child
//! process of the release binaries next to this one, on a free 127.0.0.1 port, logging into
//! a file of the work directory (the planes at their default level unless told otherwise).
//! A [`Process`] kills its child when dropped, so an error anywhere still cleans up.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::load::HttpClient;

/// Longest a process may take to accept connections after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The three binaries, from the target directory this benchmark was built into.
#[derive(Debug)]
pub struct Binaries {
    pub mock: PathBuf,
    pub controlplane: PathBuf,
    pub dataplane: PathBuf,
}

impl Binaries {
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the path of this executable")?;
        let dir = exe
            .parent()
            .with_context(|| format!("{} has no parent directory", exe.display()))?;
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} not found; build the binaries first: cargo build --release --workspace --bins",
                    path.display()
                )
            }
        };
        Ok(Self {
            mock: find("mock-upstream")?,
            controlplane: find("luthien-controlplane")?,
            dataplane: find("luthien-dataplane")?,
        })
    }
}

/// Where policy files and process logs go; kept after the run for inspection.
pub fn work_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("luthien-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Starts the mock provider on a free port (recording nothing) and waits until it listens.
pub async fn start_mock(binaries: &Binaries, dir: &Path) -> anyhow::Result<(Process, SocketAddr)> {
    let address = free_addr()?;
    let args = ["--listen".into(), address.to_string(), "--no-record".into()];
    let mut mock = Process::spawn("mock-upstream", &binaries.mock, &args, dir)?;
    mock.wait_for_port(address).await?;
    Ok((mock, address))
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    listener.local_addr().context("cannot read a bound address")
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the highest resident size so far.
    pub peak_kib: u64,
}

/// A running child process, killed (and reaped) on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` in `dir` with `RUST_LOG=warn` and without any inherited Luthien or
    /// provider settings, so the environment of the shell cannot change what is measured
    /// (and relative default paths, like the control plane's SQLite file, land in `dir`).
    pub fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> anyhow::Result<Self> {
        Self::spawn_logging(name, program, args, dir, Some("warn"))
    }

    /// [`Process::spawn`] with `RUST_LOG=rust_log`, or without `RUST_LOG` at all (`None`): the
    /// program's own default level, as a user runs it.
    pub fn spawn_logging(
        name: &str,
        program: &Path,
        args: &[String],
        dir: &Path,
        rust_log: Option<&str>,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let stdout =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let stderr = stdout.try_clone().context("cannot share a log file")?;
        let mut command = Command::new(program);
        command.args(args).current_dir(dir).env_remove("RUST_LOG");
        if let Some(level) = rust_log {
            command.env("RUST_LOG", level);
        }
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if [
                "LUTHIEN_",
                "MOCK_UPSTREAM_",
                "OPENAI_",
                "ANTHROPIC_",
                "DATABASE_URL",
                "REDIS_URL",
            ]
            .iter()
            .any(|prefix| key_text.starts_with(prefix))
            {
                command.env_remove(&key);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails, with the end of the process's log, when it has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            ),
            Err(error) => Err(error).with_context(|| format!("cannot check on {}", self.name)),
        }
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |key: &str| {
            status_kib(&status, key).with_context(|| format!("no {key} line in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    /// CPU time (user + system) the process has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        cpu_ticks(&stat)
            .map(|ticks| Duration::from_millis(ticks * 1000 / CLOCK_TICKS_PER_SECOND))
            .with_context(|| format!("cannot parse {path}"))
    }

    /// Log lines at `WARN` or `ERROR` so far (the processes log at `warn`, so that is
    /// every line that mentions a level), with the first few of them.
    pub fn log_problems(&self) -> LogProblems {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        LogProblems {
            count: lines.len(),
            first: lines.iter().take(3).map(|line| strip_ansi(line)).collect(),
        }
    }

    /// Waits until the process accepts TCP connections on `addr`.
    pub async fn wait_for_port(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.ensure_running()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} does not accept connections on {addr}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `GET url` answers `200`.
    pub async fn wait_for_health(&mut self, client: &HttpClient, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.ensure_running()?;
            let request = Request::get(url)
                .body(Full::new(Bytes::new()))
                .with_context(|| format!("invalid URL {url}"))?;
            if let Ok(response) = client.request(request).await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} does not answer 200 on {url}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Already exited is fine; nothing else can be done about a failed kill here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Warning and error lines a process logged.
#[derive(Debug, Clone, Default)]
pub struct LogProblems {
    pub count: usize,
    pub first: Vec<String>,
}

/// `USER_HZ`, the unit of the times in `/proc/<pid>/stat`: 100 on every Linux
/// architecture Luthien targets (reading it needs `sysconf`, i.e. libc).
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A log line without its terminal colour codes (`ESC [ … m`), which tracing writes even
/// into files.
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for code in chars.by_ref() {
                if code.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..]
        .iter()
        .map(|line| strip_ansi(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A control plane and a data plane running one policy chain, in front of the mock.
#[derive(Debug)]
pub struct Luthien {
    // Field order is drop order: the data plane stops before its control plane.
    pub dataplane: Process,
    pub controlplane: Process,
    /// `http://ADDR` of the data plane.
    pub base_url: String,
    /// `http://ADDR` of the control plane's debug HTTP server (which serves `/metrics`).
    pub controlplane_http: String,
}

/// What the planes run with beyond their defaults: arguments appended to each command line
/// (for experiments, e.g. `--no-store`), and `RUST_LOG` (`None`: their default level).
#[derive(Debug, Clone, Default)]
pub struct ExtraArgs {
    pub controlplane: Vec<String>,
    pub dataplane: Vec<String>,
    pub rust_log: Option<String>,
}

/// nginx `proxy_pass` in front of the mock, configured as a reverse proxy for LLM APIs is:
/// keep-alive connections to the upstream, no response buffering (so streams flow), the
/// access log on (as by default; Luthien logs a line per call too), `worker_processes auto`.
pub struct Nginx {
    process: Process,
    pub base_url: String,
}

impl Nginx {
    /// The nginx binary: `nginx` on the `PATH`, else `/usr/sbin/nginx`; `None` when neither.
    pub fn find() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("nginx"));
        on_path
            .chain([PathBuf::from("/usr/sbin/nginx")])
            .find(|candidate| candidate.is_file())
    }

    /// Writes the configuration into `dir` and starts nginx on a free port.
    pub async fn start(program: &Path, dir: &Path, mock: SocketAddr) -> anyhow::Result<Self> {
        let listen = free_addr()?;
        let prefix = dir.join("nginx");
        fs::create_dir_all(&prefix)
            .with_context(|| format!("cannot create {}", prefix.display()))?;
        let p = prefix.display();
        let config = format!(
            "daemon off;\n\
             worker_processes auto;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             \x20 access_log {p}/access.log;\n\
             \x20 client_body_temp_path {p}/body;\n\
             \x20 proxy_temp_path {p}/proxy;\n\
             \x20 fastcgi_temp_path {p}/fastcgi;\n\
             \x20 uwsgi_temp_path {p}/uwsgi;\n\
             \x20 scgi_temp_path {p}/scgi;\n\
             \x20 upstream mock {{ server {mock}; keepalive 64; }}\n\
             \x20 server {{\n\
             \x20   listen {listen};\n\
             \x20   location / {{\n\
             \x20     proxy_pass http://mock;\n\
             \x20     proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\";\n\
             \x20     proxy_buffering off;\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n"
        );
        let config_file = prefix.join("nginx.conf");
        fs::write(&config_file, config)
            .with_context(|| format!("cannot write {}", config_file.display()))?;
        let args = [
            "-p".to_owned(),
            format!("{p}/"),
            "-c".to_owned(),
            config_file.display().to_string(),
            "-e".to_owned(),
            format!("{p}/error.log"),
        ];
        let mut process = Process::spawn("nginx", program, &args, dir)?;
        process.wait_for_port(listen).await?;
        Ok(Self {
            process,
            base_url: format!("http://{listen}"),
        })
    }

    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers (a SIGKILLed master leaves them behind).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.process.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.process.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// CPU time used so far by each plane.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub dataplane: Duration,
    pub controlplane: Duration,
}

impl CpuTime {
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            dataplane: self.dataplane.saturating_sub(earlier.dataplane),
            controlplane: self.controlplane.saturating_sub(earlier.controlplane),
        }
    }
}

impl Luthien {
    pub fn cpu_time(&self) -> anyhow::Result<CpuTime> {
        Ok(CpuTime {
            dataplane: self.dataplane.cpu_time()?,
            controlplane: self.controlplane.cpu_time()?,
        })
    }

    /// Writes the policy file, starts both planes (each with its default settings but for
    /// addresses and files, plus `extra` arguments) and waits until the data plane is
    /// healthy. The control plane records calls in its default SQLite store, a fresh file
    /// in `dir`.
    pub async fn start(
        binaries: &Binaries,
        dir: &Path,
        policy: &str,
        mock: SocketAddr,
        client: &HttpClient,
        extra: &ExtraArgs,
    ) -> anyhow::Result<Self> {
        let policy_file = dir.join(format!("policy-{policy}.yaml"));
        fs::write(&policy_file, format!("policies:\n  - type: {policy}\n"))
            .with_context(|| format!("cannot write {}", policy_file.display()))?;

        let database = dir.join(format!("events-{policy}.db"));
        remove_if_present(&database)?;
        let grpc = free_addr()?;
        let http = free_addr()?;
        let mut args = vec![
            "--grpc-listen".into(),
            grpc.to_string(),
            "--http-listen".into(),
            http.to_string(),
            "--policy-config".into(),
            policy_file.display().to_string(),
            "--database-url".into(),
            format!("sqlite://{}", database.display()),
        ];
        args.extend(extra.controlplane.iter().cloned());
        let mut controlplane = Process::spawn_logging(
            &format!("controlplane-{policy}"),
            &binaries.controlplane,
            &args,
            dir,
            extra.rust_log.as_deref(),
        )?;
        controlplane.wait_for_port(grpc).await?;

        let listen = free_addr()?;
        let mut args = vec![
            "--listen".into(),
            listen.to_string(),
            "--control-plane".into(),
            format!("http://{grpc}"),
            "--openai-base-url".into(),
            format!("http://{mock}/v1"),
            "--anthropic-base-url".into(),
            format!("http://{mock}"),
        ];
        args.extend(extra.dataplane.iter().cloned());
        let mut dataplane = Process::spawn_logging(
            &format!("dataplane-{policy}"),
            &binaries.dataplane,
            &args,
            dir,
            extra.rust_log.as_deref(),
        )?;
        let base_url = format!("http://{listen}");
        dataplane
            .wait_for_health(client, &format!("{base_url}/health"))
            .await?;
        Ok(Self {
            dataplane,
            controlplane,
            base_url,
            controlplane_http: format!("http://{http}"),
        })
    }

    /// The control plane's event-store counters from its `/metrics`, `None` when it does
    /// not serve them (e.g. with `--no-store`).
    pub async fn event_counts(&self, client: &HttpClient) -> Option<EventCounts> {
        let url = format!("{}/metrics", self.controlplane_http);
        let request = Request::get(url).body(Full::new(Bytes::new())).ok()?;
        let response = tokio::time::timeout(Duration::from_secs(5), client.request(request))
            .await
            .ok()?
            .ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let text = std::str::from_utf8(&body).ok()?;
        Some(EventCounts {
            written: metric(text, "luthien_events_written")?,
            dropped: metric(text, "luthien_events_dropped")?,
        })
    }
}

/// Event records the control plane stored, and those it dropped because its queue was full.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventCounts {
    pub written: u64,
    pub dropped: u64,
}

/// Sum of a counter's samples in Prometheus text (with or without the `_total` suffix,
/// over every label set).
fn metric(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let base = series.split('{').next().unwrap_or(series);
        if base == name || base.strip_suffix("_total") == Some(name) {
            let value = value.trim().parse::<f64>().ok()?;
            *found.get_or_insert(0) += value as u64;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status_fields() {
        let status = "Name:\tx\nVmHWM:\t   10240 kB\nVmRSS:\t    8404 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(8404));
        assert_eq!(status_kib(status, "VmHWM:"), Some(10240));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_prometheus_counters() {
        let text = "# HELP luthien_events_dropped Records dropped.\n\
                    # TYPE luthien_events_dropped counter\n\
                    luthien_events_dropped_total 7\n\
                    luthien_events_written_total{backend=\"sqlite\"} 40\n\
                    luthien_events_written_total{backend=\"other\"} 2\n";
        assert_eq!(metric(text, "luthien_events_dropped"), Some(7));
        assert_eq!(metric(text, "luthien_events_written"), Some(42));
        assert_eq!(metric(text, "luthien_events_rejected"), None);
    }

    #[test]
    fn strips_colour_codes() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m queue full";
        assert_eq!(strip_ansi(line), "2026  WARN queue full");
    }

    #[test]
    fn reads_cpu_ticks() {
        let stat = "4242 (luthien (dp)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 6 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }
}
