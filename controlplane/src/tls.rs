//! TLS on the control plane's gRPC port: its certificate (`--tls-cert`, `--tls-key`) and, with
//! `--tls-client-ca`, client certificates required of every data plane.
//!
//! The files are read again every few seconds, as Kubernetes rotates a mounted Secret: new
//! connections get the new certificate or CA, connections already open go on. A file that
//! does not load keeps the previous configuration, and says so in the log. A handshake that
//! fails (unknown CA, no client certificate, an expired one) is logged with the peer and the
//! reason; the connection never reaches the gRPC services.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How often the files are read again.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a client gets to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM) the gRPC port presents; with --tls-key, the port speaks TLS only.
    #[arg(long = "tls-cert", env = "LUTHIEN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long = "tls-key", env = "LUTHIEN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) that data planes' client certificates must chain to; setting it requires a
    /// client certificate on every connection.
    #[arg(
        long = "tls-client-ca",
        env = "LUTHIEN_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

/// The files' contents, to tell when they changed.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The gRPC port's TLS configuration, as last loaded.
pub struct ServerTls {
    args: TlsArgs,
    config: ArcSwap<ServerConfig>,
    loaded: Mutex<Files>,
}

impl ServerTls {
    /// Loads the files; `None` when TLS is off (no `--tls-cert`).
    pub fn load(args: &TlsArgs) -> Result<Option<Arc<Self>>, String> {
        let (Some(_), Some(_)) = (&args.tls_cert, &args.tls_key) else {
            if args.tls_client_ca.is_some() || args.tls_cert.is_some() || args.tls_key.is_some() {
                return Err(
                    "--tls-cert and --tls-key go together (and --tls-client-ca needs them)".into(),
                );
            }
            return Ok(None);
        };
        let files = read_files(args)?;
        let config = build(&files)?;
        Ok(Some(Arc::new(Self {
            args: args.clone(),
            config: ArcSwap::from_pointee(config),
            loaded: Mutex::new(files),
        })))
    }

    /// Whether data planes must present a client certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.args.tls_client_ca.is_some()
    }

    /// Reads the files again every few seconds until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                tls.reload();
            }
        });
    }

    fn reload(&self) {
        let files = match read_files(&self.args) {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(%error, "cannot read the TLS files; keeping the ones loaded");
                return;
            }
        };
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if *loaded == files {
            return;
        }
        match build(&files) {
            Ok(config) => {
                self.config.store(Arc::new(config));
                *loaded = files;
                tracing::info!("TLS files changed; new connections use them");
            }
            Err(error) => {
                tracing::error!(%error, "the TLS files changed but do not load; keeping the ones loaded")
            }
        }
    }

    /// The connections of `listener` once their TLS handshake succeeded, for the gRPC server.
    /// Handshakes run concurrently, each bounded, so a slow client holds up no one.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (accepted, incoming) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = accepted.closed() => return,
                    next = listener.accept() => match next {
                        Ok(next) => next,
                        Err(error) => {
                            // Out of file descriptors, typically: wait rather than spin.
                            tracing::warn!(%error, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                // Nagle + delayed ACK would add ~40 ms to every reply.
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(self.config.load_full());
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    if let Some(stream) = handshake(acceptor, stream, peer).await {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                });
            }
        });
        ReceiverStream::new(incoming)
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "TLS handshake refused on the gRPC port");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake not completed in time on the gRPC port");
            None
        }
    }
}

fn read_files(args: &TlsArgs) -> Result<Files, String> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|error| format!("{flag} {}: {error}", path.display()))
    };
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Err("--tls-cert and --tls-key go together".into());
    };
    Ok(Files {
        cert: read("--tls-cert", cert)?,
        key: read("--tls-key", key)?,
        client_ca: args
            .tls_client_ca
            .as_deref()
            .map(|path| read("--tls-client-ca", path))
            .transpose()?,
    })
}

fn certificates(flag: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{flag}: {error}"))?;
    if certificates.is_empty() {
        return Err(format!("{flag}: no PEM certificate in the file"));
    }
    Ok(certificates)
}

fn build(files: &Files) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|error| format!("--tls-key: no PEM private key: {error}"))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match &files.client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates("--tls-client-ca", pem)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("--tls-client-ca: {error}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("--tls-client-ca: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| format!("--tls-cert/--tls-key: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
