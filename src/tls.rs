//! TLS on both sides, with rustls and the ring provider (passed explicitly, never the process default).
//!
//! - [`Server`]: the client listener's certificate and key (`tls_cert_file`, `tls_key_file`) and, for mutual
//!   TLS, the CA that client certificates must chain to (`tls_client_ca_file`).
//! - [`Client`]: how upstream connections (Redis nodes with `backend_tls`, sentinels with `sentinel_tls`)
//!   verify the server (`backend_tls_ca_file`, `backend_tls_server_name`) and which certificate they present
//!   (`backend_tls_cert_file`, `backend_tls_key_file`).
//!
//! Both hold their rustls configuration in an `ArcSwap`: [`Server::reload`] and [`Client::reload`] read the
//! files again and swap the configuration in only if all of it loads, so an invalid new certificate keeps
//! the running one. A connection takes the configuration in force when it starts and keeps it.
//!
//! [`WriteThrough`] makes a TLS writer behave like a socket for code that never flushes (the client
//! session): bytes count as written only once they are on the socket.

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::node::Addr;

/// The files of the client listener's TLS (`tls_cert_file`, `tls_key_file`, `tls_client_ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// Certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle, PEM, that client certificates must chain to; `None`: clients present no certificate.
    pub client_ca: Option<PathBuf>,
}

/// The files and names of upstream TLS (`backend_tls_*`), used for Redis nodes and for sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA bundle, PEM, that servers' certificates must chain to.
    pub ca: PathBuf,
    /// Name every server's certificate is verified against (and sent as SNI); `None`: the host part of the
    /// address connected to (an IP address is checked against the certificate's IP addresses).
    pub server_name: Option<String>,
    /// Client certificate chain and key, PEM, for servers that require one (`tls-auth-clients yes`).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A TLS configuration problem: one file or one combination of them. The operator's files are at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing of the kind expected (missing, unreadable, not PEM,
    /// a key where certificates belong).
    #[error("cannot read the {what} from {path}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A CA bundle holds a certificate rustls cannot use as a trust anchor.
    #[error("unusable CA certificate in {path}")]
    Ca {
        /// The bundle.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client CA bundle cannot verify client certificates (no usable anchor in it).
    #[error("cannot verify client certificates with {path}")]
    Verifier {
        /// The bundle.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The key is not usable, or does not belong to the certificate.
    #[error("certificate {cert} and key {key} are not a usable pair")]
    KeyPair {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// `backend_tls_server_name` is neither a DNS name nor an IP address.
    #[error("`{name}` is not a DNS name or IP address")]
    ServerName {
        /// The name.
        name: String,
    },
    /// The provider supports none of the default protocol versions (a bug: ring supports them all).
    #[error("cannot set up TLS")]
    Setup(#[source] rustls::Error),
}

/// Every problem found loading one TLS configuration, in the order met.
#[derive(Debug)]
pub struct Problems(pub Vec<Error>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&chain(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {
    /// Each problem with its causes, one line each.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(|e| chain(e)).collect()
    }
}

/// The client listener's TLS: a reloadable acceptor configuration.
#[derive(Debug)]
pub struct Server {
    files: Mutex<ServerFiles>,
    config: ArcSwap<ServerConfig>,
    handshake_timeout: Duration,
}

impl Server {
    /// Loads the files; a handshake that takes longer than `handshake_timeout` is abandoned.
    pub fn load(files: ServerFiles, handshake_timeout: Duration) -> Result<Server, Problems> {
        let config = server_config(&files)?;
        Ok(Server {
            files: Mutex::new(files),
            config: ArcSwap::new(config),
            handshake_timeout,
        })
    }

    /// Reads the files again (or, with `files`, these instead, from now on) and uses them for new
    /// connections, if all of them load; else keeps the running configuration and files.
    pub fn reload(&self, files: Option<&ServerFiles>) -> Result<(), Problems> {
        let mut current = lock(&self.files);
        let files = files.unwrap_or(&current).clone();
        self.config.store(server_config(&files)?);
        *current = files;
        Ok(())
    }

    /// The TLS handshake with a client, bounded by the handshake timeout.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

/// Upstream TLS: a reloadable connector configuration and the server name to verify.
#[derive(Debug)]
pub struct Client {
    files: Mutex<ClientFiles>,
    loaded: ArcSwap<Connector>,
}

/// What upstream handshakes use: the rustls configuration and the name to verify.
#[derive(Debug)]
struct Connector {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    fn load(files: &ClientFiles) -> Result<Connector, Problems> {
        let server_name = match &files.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map(Some)
                .map_err(|_| Error::ServerName { name: name.clone() }),
            None => Ok(None),
        };
        match (server_name, client_config(files)) {
            (Ok(server_name), Ok(config)) => Ok(Connector {
                config,
                server_name,
            }),
            (name, config) => {
                let mut problems: Vec<Error> = name.err().into_iter().collect();
                problems.extend(config.err().into_iter().flat_map(|p| p.0));
                Err(Problems(problems))
            }
        }
    }
}

impl Client {
    /// Loads the files.
    pub fn load(files: ClientFiles) -> Result<Client, Problems> {
        let loaded = Connector::load(&files)?;
        Ok(Client {
            files: Mutex::new(files),
            loaded: ArcSwap::from_pointee(loaded),
        })
    }

    /// Reads the files again (or, with `files`, these instead, from now on) and uses them for new
    /// connections, if all of them load; else keeps the running configuration and files.
    pub fn reload(&self, files: Option<&ClientFiles>) -> Result<(), Problems> {
        let mut current = lock(&self.files);
        let files = files.unwrap_or(&current).clone();
        self.loaded.store(Arc::new(Connector::load(&files)?));
        *current = files;
        Ok(())
    }

    /// The TLS handshake on a connected socket to `addr`. The caller bounds the time it takes.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: &Addr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let loaded = self.loaded.load_full();
        let name = match &loaded.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(addr.host().to_string()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{}` is not a DNS name or IP address", addr.host()),
                )
            })?,
        };
        tokio_rustls::TlsConnector::from(loaded.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// The files in use; a panic elsewhere while holding the lock cannot leave them half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks a listener's files without keeping them: every problem, for `--check`.
pub fn check_server(files: &ServerFiles) -> Vec<String> {
    server_config(files)
        .err()
        .map_or_else(Vec::new, |p| p.lines())
}

/// Checks upstream TLS files without keeping them: every problem, for `--check`.
pub fn check_client(files: &ClientFiles) -> Vec<String> {
    Client::load(files.clone())
        .err()
        .map_or_else(Vec::new, |p| p.lines())
}

/// A writer whose bytes count as written only once they have reached the inner writer's destination.
///
/// A TLS stream encrypts what it is given and keeps whatever the socket does not take at once; it goes
/// out on the next write or flush. Code written for sockets never flushes and stops writing once its own
/// buffer is empty, which would leave those bytes behind for good. This wrapper flushes after every write;
/// when the flush cannot finish, it reports `Pending` and remembers how many bytes the inner writer took:
/// the caller calls again with the same bytes first (as every caller that keeps unwritten bytes in order
/// does, [`crate::io::OutBuf`] included), and once the flush finishes those bytes are reported written.
/// A caller that offers different bytes instead gets an error rather than a corrupted stream.
#[derive(Debug)]
pub struct WriteThrough<W> {
    inner: W,
    /// Bytes the inner writer took and has not finished flushing, not yet reported to the caller.
    taken: Vec<u8>,
}

impl<W> WriteThrough<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> WriteThrough<W> {
        WriteThrough {
            inner,
            taken: Vec::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> WriteThrough<W> {
    /// Reports the bytes taken earlier once flushed, if `offered` starts with them.
    fn finish_taken(&mut self, cx: &mut Context<'_>, offered: &[&[u8]]) -> Poll<io::Result<usize>> {
        if !starts_with(offered, &self.taken) {
            return Poll::Ready(Err(io::Error::other(
                "write retried with different bytes after Pending",
            )));
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        let n = self.taken.len();
        self.taken.clear();
        Poll::Ready(Ok(n))
    }

    /// After the inner writer took `n` bytes of `offered`: reports them once flushed.
    fn flush_taken(
        &mut self,
        cx: &mut Context<'_>,
        offered: &[&[u8]],
        n: usize,
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Rare (the peer is not reading): keep a copy to check the retry against.
                let mut left = n;
                for b in offered {
                    let take = left.min(b.len());
                    self.taken.extend_from_slice(&b[..take]);
                    left -= take;
                }
                Poll::Pending
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteThrough<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.taken.is_empty() {
            return this.finish_taken(cx, &[buf]);
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.flush_taken(cx, &[buf], n)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let offered: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        if !this.taken.is_empty() {
            return this.finish_taken(cx, &offered);
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.flush_taken(cx, &offered, n)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// True if the concatenation of `bufs` starts with `prefix`.
fn starts_with(bufs: &[&[u8]], mut prefix: &[u8]) -> bool {
    for b in bufs {
        if prefix.is_empty() {
            break;
        }
        let n = b.len().min(prefix.len());
        if b[..n] != prefix[..n] {
            return false;
        }
        prefix = &prefix[n..];
    }
    prefix.is_empty()
}

/// The ring provider, passed to every builder: the process-wide default is never installed or used.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, Problems> {
    let provider = provider();
    let mut problems = Vec::new();
    let certs = keep(
        &mut problems,
        certificates(&files.cert, "certificate chain"),
    );
    let key = keep(&mut problems, private_key(&files.key));
    let verifier = match &files.client_ca {
        None => Some(WebPkiClientVerifier::no_client_auth()),
        Some(ca) => keep(
            &mut problems,
            roots(ca).and_then(|roots| {
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|source| Error::Verifier {
                        path: ca.clone(),
                        source,
                    })
            }),
        ),
    };
    let (Some(certs), Some(key), Some(verifier)) = (certs, key, verifier) else {
        return Err(Problems(problems));
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Problems(vec![Error::Setup(e)]))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|source| {
            Problems(vec![Error::KeyPair {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            }])
        })?;
    Ok(Arc::new(config))
}

fn client_config(files: &ClientFiles) -> Result<Arc<ClientConfig>, Problems> {
    let provider = provider();
    let mut problems = Vec::new();
    let roots = keep(&mut problems, roots(&files.ca));
    let identity = match &files.identity {
        None => Some(None),
        Some((cert, key)) => {
            let certs = keep(
                &mut problems,
                certificates(cert, "client certificate chain"),
            );
            let key = keep(&mut problems, private_key(key));
            certs.zip(key).map(Some)
        }
    };
    let (Some(roots), Some(identity)) = (roots, identity) else {
        return Err(Problems(problems));
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Problems(vec![Error::Setup(e)]))?
        .with_root_certificates(roots);
    let config = match (identity, &files.identity) {
        (Some((certs, key)), Some((cert_path, key_path))) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|source| {
                Problems(vec![Error::KeyPair {
                    cert: cert_path.clone(),
                    key: key_path.clone(),
                    source,
                }])
            })?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = |source| Error::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(pem(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| Error::Pem {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })
}

/// A CA bundle as trust anchors; every certificate in it must be usable.
fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "CA certificates")? {
        roots.add(cert).map_err(|source| Error::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The value, or `None` with its error added to `problems`: so every file is looked at before giving up.
fn keep<T>(problems: &mut Vec<Error>, r: Result<T, Error>) -> Option<T> {
    r.map_err(|e| problems.push(e)).ok()
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that takes everything but cannot flush until told to.
    #[derive(Default)]
    struct Stuck {
        got: Vec<u8>,
        flushable: bool,
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().got.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.flushable {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn poll_write(w: &mut WriteThrough<Stuck>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(w).poll_write(&mut cx, buf)
    }

    #[test]
    fn bytes_count_as_written_only_once_flushed() {
        let mut w = WriteThrough::new(Stuck::default());
        assert!(poll_write(&mut w, b"+OK\r\n").is_pending());
        // The retry offers the same bytes and more; nothing is taken twice.
        assert!(poll_write(&mut w, b"+OK\r\n:1\r\n").is_pending());
        w.inner.flushable = true;
        assert!(matches!(
            poll_write(&mut w, b"+OK\r\n:1\r\n"),
            Poll::Ready(Ok(5))
        ));
        assert!(matches!(poll_write(&mut w, b":1\r\n"), Poll::Ready(Ok(4))));
        assert_eq!(w.inner.got, b"+OK\r\n:1\r\n");
    }

    #[test]
    fn a_retry_with_other_bytes_is_an_error() {
        let mut w = WriteThrough::new(Stuck::default());
        assert!(poll_write(&mut w, b"+OK\r\n").is_pending());
        assert!(matches!(
            poll_write(&mut w, b"-ERR\r\n"),
            Poll::Ready(Err(_))
        ));
    }

    #[tokio::test]
    async fn vectored_writes_go_through_in_order() {
        let mut w = WriteThrough::new(Stuck {
            flushable: true,
            ..Stuck::default()
        });
        let n = w
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .await
            .expect("write");
        assert_eq!(&w.inner.got[..n], &b"abcd"[..n]);
    }

    #[test]
    fn prefixes_span_buffers() {
        assert!(starts_with(&[b"ab", b"cd"], b"abc"));
        assert!(starts_with(&[b"ab"], b""));
        assert!(!starts_with(&[b"ab"], b"abc"));
        assert!(!starts_with(&[b"ab", b"xd"], b"abc"));
    }

    #[test]
    fn every_bad_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write");
        let files = ServerFiles {
            cert: junk.clone(),
            key: dir.path().join("missing.pem"),
            client_ca: Some(junk),
        };
        let problems = check_server(&files);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[1].contains("missing.pem"), "{problems:#?}");
    }
}
