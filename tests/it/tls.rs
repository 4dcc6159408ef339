//! TLS on both sides, with certificates made by rcgen at test time: clients to the proxy (beside the plain
//! listener, mutual TLS, redis-cli), the proxy to TLS-only redis-server nodes and sentinels, and
//! certificates reloaded (by `Proxy::reload_tls` and by SIGHUP to the binary) without dropping
//! connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use redsplit::config::Flags;
use redsplit::embedded;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::harness::*;

#[tokio::test]
async fn a_client_speaks_tls_to_the_proxy_while_the_plain_listener_serves_too() {
    let pki = Pki::new();
    let leaf = pki.ca.leaf("proxy");
    let (cert, key) = leaf.write(pki.dir(), "proxy");
    // Two workers: each has its own TLS listener on the shared port, as for the plain one.
    let (_cluster, p) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            tls_listener(f, &cert, &key, None);
            f.worker_threads = Some(2);
        })
        // Not waiting for the replica, as this test never did: after a diskless sync Redis holds a
        // replica's stream until its first REPLCONF ACK (up to a second), and the plain client's read
        // below, a new session, would find the replica without the write.
        .eligible(0)
        .proxy()
        .await;
    let tls_addr = p.tls_listen.expect("TLS listener bound");
    assert_ne!(tls_addr, p.listen);

    let mut tls = TlsConn::connect(tls_addr, pki.ca.client(None))
        .await
        .expect("TLS handshake with the proxy");
    assert_eq!(tls.peer_cert(), leaf.der, "the configured certificate");
    assert_eq!(tls.call(&["SET", "tls:k", "v1"]).await, b"+OK\r\n");
    assert_eq!(tls.call(&["GET", "tls:k"]).await, b"$2\r\nv1\r\n");
    // The plain listener serves at the same time, the same data. Each session reads the other's write
    // once the replica has it (another session's write may trail within the lag limit; seen under load).
    let mut plain = client(&p).await;
    eventually!(
        "the plain client reads the TLS client's write",
        q::<Option<String>>(&mut plain, &["GET", "tls:k"])
            .await
            .as_deref()
            == Some("v1")
    );
    let _: () = q(&mut plain, &["SET", "plain:k", "v2"]).await;
    eventually!(
        "the TLS client reads the plain client's write",
        tls.call(&["GET", "plain:k"]).await == b"$2\r\nv2\r\n"
    );

    // A reply far larger than socket buffers, to a client that reads it late: TLS keeps what the socket
    // does not take, and the proxy must still push all of it out.
    let big = "x".repeat(4 << 20);
    assert_eq!(tls.call(&["SET", "tls:big", &big]).await, b"+OK\r\n");
    tls.send(&["GET", "tls:big"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = tls.frame().await.expect("the whole large reply");
    assert_eq!(
        reply.len(),
        big.len() + format!("${}\r\n\r\n", big.len()).len()
    );

    // redis-cli, as a person would use it.
    let ca = pki.write("ca.pem", &pki.ca.pem());
    // A new session reads from the replica, which may trail within the lag limit (seen once under load).
    eventually!(
        "redis-cli reads the plain client's write",
        redis_cli(
            &["--tls", "--cacert", path(&ca)],
            tls_addr,
            &["GET", "plain:k"],
        )
        .await
            == "v2"
    );
    let out = redis_cli(&["--tls", "--cacert", path(&ca)], tls_addr, &["PING"]).await;
    assert_eq!(out, "PONG");
    // Many clients at once, spread over both workers' listeners.
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = TlsConn::connect(tls_addr, pki.ca.client(None))
            .await
            .expect("handshake");
        let v = format!("v{i}");
        assert_eq!(c.call(&["SET", &format!("many:{i}"), &v]).await, b"+OK\r\n");
        clients.push((c, v));
    }
    for (i, (c, v)) in clients.iter_mut().enumerate() {
        let want = format!("${}\r\n{v}\r\n", v.len());
        assert_eq!(
            c.call(&["GET", &format!("many:{i}")]).await,
            want.as_bytes()
        );
    }
    // A client that does not speak TLS gets no reply from the TLS port, and the proxy carries on.
    let mut raw = TcpStream::connect(tls_addr).await.expect("connect");
    raw.write_all(&resp(&["PING"])).await.expect("write");
    let mut junk = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut junk)).await;
    assert!(!String::from_utf8_lossy(&junk).contains("PONG"));
    assert_eq!(tls.call(&["PING"]).await, b"+PONG\r\n");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_and_admits_signed_ones() {
    let pki = Pki::new();
    let (cert, key) = pki.ca.leaf("proxy").write(pki.dir(), "proxy");
    let ca = pki.write("ca.pem", &pki.ca.pem());
    let (_cluster, p) = Cluster::builder()
        .flags(|f| tls_listener(f, &cert, &key, Some(&ca)))
        .proxy()
        .await;
    let addr = p.tls_listen.expect("TLS listener");

    // Without a certificate: the handshake fails (with TLS 1.3 the client learns it on its first read).
    assert!(
        try_ping(addr, pki.ca.client(None)).await.is_err(),
        "a client without a certificate was served"
    );
    // A certificate from another CA is refused too.
    let other = Ca::new("other CA");
    let stranger = other.leaf("stranger");
    assert!(
        try_ping(addr, pki.ca.client(Some(&stranger)))
            .await
            .is_err(),
        "a client with a certificate of another CA was served"
    );
    // Signed by the configured CA: served.
    let friend = pki.ca.leaf("friend");
    assert_eq!(
        try_ping(addr, pki.ca.client(Some(&friend)))
            .await
            .expect("a client with a signed certificate is served"),
        b"+PONG\r\n"
    );
    // redis-cli with and without its certificate.
    let (ccert, ckey) = friend.write(pki.dir(), "friend");
    let with = redis_cli(
        &[
            "--tls",
            "--cacert",
            path(&ca),
            "--cert",
            path(&ccert),
            "--key",
            path(&ckey),
        ],
        addr,
        &["PING"],
    )
    .await;
    assert_eq!(with, "PONG");
    let without = redis_cli(&["--tls", "--cacert", path(&ca)], addr, &["PING"]).await;
    assert_ne!(without, "PONG");
}

#[tokio::test]
async fn the_proxy_talks_tls_to_tls_only_redis_and_reads_reach_the_replica() {
    let pki = Pki::new();
    let servers = TlsRedisSet::start(&pki, false).await;
    let (ccert, ckey) = pki.ca.leaf("redsplit").write(pki.dir(), "redsplit-client");
    let mut f = base_flags();
    f.primary = Some(format!("127.0.0.1:{}", servers.primary.port));
    f.replica = Some(vec![format!("127.0.0.1:{}", servers.replica.port)]);
    f.consistency = Some(redsplit::config::Consistency::Eventual);
    let f = backend_tls(f, &servers.ca, Some((&ccert, &ckey)));
    let p = proxy_with(f).await;
    wait_eligible(&p, 1).await;

    let mut c = client(&p).await;
    let _: () = q(&mut c, &["SET", "k", "over tls"]).await;
    servers.replica.wait_for(&pki, "k", "over tls").await;
    let before = servers.replica.calls(&pki, "get").await;
    for _ in 0..20 {
        assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "over tls");
    }
    let after = servers.replica.calls(&pki, "get").await;
    assert!(
        after >= before + 20,
        "reads reached the replica over TLS: {before} -> {after}"
    );
    assert!(servers.primary.calls(&pki, "set").await >= 1);
    // Dedicated connections (MULTI, blocking commands) go over TLS too.
    let (ok, n): (String, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("tx")
        .arg("1")
        .cmd("INCR")
        .arg("tx")
        .query_async(&mut c)
        .await
        .expect("MULTI over a TLS upstream");
    assert_eq!((ok.as_str(), n), ("OK", 2));
    let _: () = q(&mut c, &["RPUSH", "list", "a"]).await;
    let popped: Vec<String> = q(&mut c, &["BLPOP", "list", "1"]).await;
    assert_eq!(popped, vec!["list".to_string(), "a".to_string()]);

    // An unreadable new CA bundle keeps the running configuration: new upstream connections still work.
    std::fs::write(&servers.ca, "garbage").expect("write");
    let problems = p.reload_tls().expect_err("the new CA bundle is garbage");
    assert!(
        problems.to_string().contains("ca.pem"),
        "the problem names the file: {problems}"
    );
    let mut c2 = client(&p).await;
    let (ok,): (String,) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("tx2")
        .arg("1")
        .query_async(&mut c2)
        .await
        .expect("a new dedicated connection with the kept configuration");
    assert_eq!(ok, "OK");
}

#[tokio::test]
async fn an_upstream_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let servers = TlsRedisSet::start(&pki, false).await;
    let other = pki.write("other-ca.pem", &Ca::new("other CA").pem());
    let (ccert, ckey) = pki.ca.leaf("redsplit").write(pki.dir(), "redsplit-client");
    let mut f = base_flags();
    f.primary = Some(format!("127.0.0.1:{}", servers.primary.port));
    f.write_hold_ms = Some(200);
    let p = proxy_with(backend_tls(f, &other, Some((&ccert, &ckey)))).await;
    let mut c = client(&p).await;
    assert!(
        try_q(&mut c, &["SET", "k", "v"]).await.is_err(),
        "a write went to a server whose certificate is not trusted"
    );
    assert!(p.topo.snapshot().primary().is_none());
}

#[tokio::test]
async fn sentinels_are_asked_over_tls() {
    let pki = Pki::new();
    let servers = TlsRedisSet::start(&pki, true).await;
    let sentinel = servers.sentinel.as_ref().expect("a sentinel");
    let (ccert, ckey) = pki.ca.leaf("redsplit").write(pki.dir(), "redsplit-client");
    let mut f = base_flags();
    f.sentinel = Some(vec![format!("127.0.0.1:{}", sentinel.port)]);
    f.master_name = Some("mymaster".into());
    f.sentinel_tls = Some(true);
    f.consistency = Some(redsplit::config::Consistency::Eventual);
    let p = proxy_with(backend_tls(f, &servers.ca, Some((&ccert, &ckey)))).await;
    wait_eligible(&p, 1).await;
    let snap = p.topo.snapshot();
    assert_eq!(
        snap.primary().map(|n| n.addr.port()),
        Some(servers.primary.port),
        "the sentinel named the primary"
    );
    let mut c = client(&p).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    servers.replica.wait_for(&pki, "k", "v").await;
    let before = servers.replica.calls(&pki, "get").await;
    for _ in 0..10 {
        assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "v");
    }
    assert!(servers.replica.calls(&pki, "get").await >= before + 10);
}

#[tokio::test]
async fn certificates_reload_for_new_clients_while_connected_ones_go_on() {
    let pki = Pki::new();
    let first = pki.ca.leaf("first");
    let (cert, key) = first.write(pki.dir(), "proxy");
    let (_cluster, p) = Cluster::builder()
        .flags(|f| tls_listener(f, &cert, &key, None))
        .proxy()
        .await;
    let addr = p.tls_listen.expect("TLS listener");
    let mut old = TlsConn::connect(addr, pki.ca.client(None))
        .await
        .expect("handshake");
    assert_eq!(old.peer_cert(), first.der);

    // A new pair, written over the old files.
    let second = pki.ca.leaf("second");
    second.write(pki.dir(), "proxy");
    p.reload_tls().expect("the new pair loads");
    let mut new = TlsConn::connect(addr, pki.ca.client(None))
        .await
        .expect("handshake");
    assert_eq!(new.peer_cert(), second.der, "a new client sees the new one");
    assert_eq!(old.call(&["SET", "k", "still here"]).await, b"+OK\r\n");
    assert_eq!(new.call(&["GET", "k"]).await, b"$10\r\nstill here\r\n");

    // An invalid certificate keeps the running one, and every problem is reported.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("write");
    std::fs::write(&key, "nothing").expect("write");
    let problems = p.reload_tls().expect_err("garbage does not load");
    assert_eq!(problems.0.len(), 2, "both files reported: {problems}");
    let mut after = TlsConn::connect(addr, pki.ca.client(None))
        .await
        .expect("handshake after a failed reload");
    assert_eq!(after.peer_cert(), second.der);
    assert_eq!(after.call(&["PING"]).await, b"+PONG\r\n");
    // A certificate with somebody else's key is refused as well.
    let third = pki.ca.leaf("third");
    std::fs::write(&cert, &third.cert).expect("write");
    std::fs::write(&key, &second.key).expect("write");
    let problems = p
        .reload_tls()
        .expect_err("key and certificate do not match");
    assert!(
        problems.to_string().contains("not a usable pair"),
        "{problems}"
    );
    let mut last = TlsConn::connect(addr, pki.ca.client(None))
        .await
        .expect("handshake");
    assert_eq!(last.peer_cert(), second.der);
    assert_eq!(old.call(&["GET", "k"]).await, b"$10\r\nstill here\r\n");
    assert_eq!(last.call(&["PING"]).await, b"+PONG\r\n");
}

#[tokio::test]
async fn sighup_reloads_the_certificates_of_the_running_binary() {
    let pki = Pki::new();
    let first = pki.ca.leaf("first");
    let (cert, key) = first.write(pki.dir(), "proxy");
    let cluster = Cluster::builder().start().await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redsplit"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--tls-listen", "127.0.0.1:0", "--tls-cert-file"])
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .args(["--primary", cluster.primary().addr().as_str()])
        .args(["--log-level", "warn"]);
    let mut running = Running::spawn(cmd).await;
    let line = running.stdout_line("TLS clients on").await;
    let addr: SocketAddr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("TLS address");
    let mut old = TlsConn::connect(addr, pki.ca.client(None))
        .await
        .expect("handshake");
    assert_eq!(old.peer_cert(), first.der);

    let second = pki.ca.leaf("second");
    second.write(pki.dir(), "proxy");
    running.hup();
    eventually!("a new client sees the new certificate", {
        let c = TlsConn::connect(addr, pki.ca.client(None)).await;
        c.is_ok_and(|c| c.peer_cert() == second.der)
    });
    assert_eq!(old.call(&["PING"]).await, b"+PONG\r\n");
}

#[test]
fn tls_options_are_checked_together_and_their_files_loaded() {
    let pki = Pki::new();
    let junk = pki.write("junk.pem", "not a certificate");
    let flags = Flags {
        primary: Some("127.0.0.1:6379".into()),
        tls_listen: Some("127.0.0.1:0".into()),
        tls_cert_file: Some(junk.clone()),
        tls_key_file: Some(pki.dir().join("missing.key")),
        backend_tls: Some(true),
        backend_tls_cert_file: Some(junk),
        sentinel_tls: Some(true),
        ..Flags::default()
    };
    let problems = redsplit::config::Config::load(None, flags).expect_err("invalid");
    let all = problems.join("\n");
    for want in [
        "TLS listener: cannot read the certificate chain from",
        "missing.key",
        "need `backend_tls_ca_file`",
        "`sentinel_tls` needs topology \"sentinel\"",
    ] {
        assert!(all.contains(want), "{want:?} missing from:\n{all}");
    }
    assert_eq!(problems.len(), 4, "{all}");

    let flags = Flags {
        tls_cert_file: Some(pki.dir().join("a.crt")),
        backend_tls_ca_file: Some(pki.dir().join("ca.pem")),
        ..Flags::default()
    };
    let problems = redsplit::config::Config::load(None, flags).expect_err("invalid");
    assert_eq!(
        problems,
        vec![
            "option `tls_cert_file` needs `tls_listen`".to_string(),
            "option `backend_tls_ca_file` needs `backend_tls` or `sentinel_tls`".to_string(),
        ]
    );
}

// --- Certificates -------------------------------------------------------------------------------------

/// A CA and a temp dir for the files.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            ca: Ca::new("redsplit test CA"),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir().join(name);
        std::fs::write(&p, text).expect("write PEM");
        p
    }
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate for localhost and 127.0.0.1, fit for a server and a client, and its key.
struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration trusting this CA, presenting `identity` if given.
    fn client(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA is a root");
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots);
        Arc::new(match identity {
            None => builder.with_no_client_auth(),
            Some(l) => builder
                .with_client_auth_cert(
                    vec![l.der.clone()],
                    PrivateKeyDer::from_pem_slice(l.key.as_bytes()).expect("key"),
                )
                .expect("client identity"),
        })
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` (over any earlier pair).
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).expect("write certificate");
        std::fs::write(&key, &self.key).expect("write key");
        (cert, key)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

// --- Proxy flags --------------------------------------------------------------------------------------

/// Free ports, fast probes, no topology.
fn base_flags() -> Flags {
    Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        probe_interval_ms: Some(20),
        log_level: Some("warn".into()),
        ..Flags::default()
    }
}

fn tls_listener(f: &mut Flags, cert: &Path, key: &Path, client_ca: Option<&Path>) {
    f.tls_listen = Some("127.0.0.1:0".into());
    f.tls_cert_file = Some(cert.to_path_buf());
    f.tls_key_file = Some(key.to_path_buf());
    f.tls_client_ca_file = client_ca.map(Path::to_path_buf);
}

fn backend_tls(mut f: Flags, ca: &Path, identity: Option<(&Path, &Path)>) -> Flags {
    f.backend_tls = Some(true);
    f.backend_tls_ca_file = Some(ca.to_path_buf());
    f.backend_tls_cert_file = identity.map(|(c, _)| c.to_path_buf());
    f.backend_tls_key_file = identity.map(|(_, k)| k.to_path_buf());
    f
}

// --- A TLS client -------------------------------------------------------------------------------------

/// One TLS connection, sending RESP and reading whole reply frames.
struct TlsConn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl TlsConn {
    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("a DNS name");
        let stream = tokio::time::timeout(
            PATIENCE,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
        Ok(TlsConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// The certificate the server presented.
    fn peer_cert(&self) -> CertificateDer<'static> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("the server presented a certificate")
            .clone()
            .into_owned()
    }

    async fn send(&mut self, args: &[&str]) {
        self.stream.write_all(&resp(args)).await.expect("TLS write");
        self.stream.flush().await.expect("TLS flush");
    }

    async fn call(&mut self, args: &[&str]) -> Vec<u8> {
        self.send(args).await;
        self.frame()
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// One reply frame; an error if the connection fails or closes first.
    async fn frame(&mut self) -> std::io::Result<Vec<u8>> {
        let mut scanner = redsplit::resp::ReplyScanner::new(redsplit::resp::Limits::default());
        loop {
            if let Some(f) = scanner
                .scan(&self.buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                return Ok(self.buf.drain(..f.len).collect());
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("no reply in time"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Connects, sends PING and returns the reply: an error if the handshake or the reply fails.
async fn try_ping(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Vec<u8>> {
    let mut c = TlsConn::connect(addr, config).await?;
    c.stream.write_all(&resp(&["PING"])).await?;
    c.stream.flush().await?;
    c.frame().await
}

/// Runs redis-cli with `tls` options against `addr`; its trimmed output (stdout, else stderr).
async fn redis_cli(tls: &[&str], addr: SocketAddr, cmd: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(tls)
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run redis-cli");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if stdout.is_empty() {
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    } else {
        stdout
    }
}

// --- TLS-only redis-server processes ------------------------------------------------------------------

/// A primary and a replica that listen only on TLS ports and replicate over TLS, and optionally one
/// sentinel (quorum 1) on a TLS port. Every one requires client certificates (`tls-auth-clients yes`,
/// Redis's default). Killed on drop.
struct TlsRedisSet {
    primary: embedded::Server,
    replica: embedded::Server,
    sentinel: Option<embedded::Server>,
    /// The CA bundle file the servers trust (the test may overwrite it: the servers have read it).
    ca: PathBuf,
}

impl TlsRedisSet {
    async fn start(pki: &Pki, with_sentinel: bool) -> TlsRedisSet {
        let ca = pki.write("ca.pem", &pki.ca.pem());
        let (cert, key) = pki.ca.leaf("redis").write(pki.dir(), "redis");
        // The embedded mode's arguments, the plain port closed (a later argument wins) and a TLS one open.
        let tls_args = |port: u16, dir: &Path, primary: Option<u16>| -> Vec<String> {
            let mut args = embedded::server_args(port, dir, primary);
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    path(&cert),
                    "--tls-key-file",
                    path(&key),
                    "--tls-ca-cert-file",
                    path(&ca),
                    "--tls-replication",
                    "yes",
                ]
                .map(String::from),
            );
            args
        };
        let primary = start_tls(pki, "primary", |port, dir| tls_args(port, dir, None)).await;
        let primary_port = primary.port;
        let replica = start_tls(pki, "replica", |port, dir| {
            tls_args(port, dir, Some(primary_port))
        })
        .await;
        eventually!(
            "the replica is in sync over TLS",
            replica.info(pki).await.contains("master_link_status:up")
        );
        let sentinel = if with_sentinel {
            let sentinel = start_tls(pki, "sentinel", |port, dir| {
                let conf = dir.join(format!("sentinel-{port}.conf"));
                let mut text = embedded::sentinel_config(port, dir, primary_port, 1);
                text.push_str(&format!(
                    "port 0\ntls-port {port}\n\
                     tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                     tls-replication yes\n",
                    cert = cert.display(),
                    key = key.display(),
                    ca = ca.display(),
                ));
                std::fs::write(&conf, text).expect("sentinel config");
                vec![path(&conf).to_string(), "--sentinel".to_string()]
            })
            .await;
            Some(sentinel)
        } else {
            None
        };
        TlsRedisSet {
            primary,
            replica,
            sentinel,
            ca,
        }
    }
}

/// Starts `redis-server` with the arguments `args(port, dir)` on a free port, in a directory of its own,
/// and waits until it answers over TLS. A port found free can be taken before the server binds it: a
/// server that exits is started again on another port, five times at most. Always Redis's own server,
/// also when the suite runs against another (`REDSPLIT_SERVER_BIN`): the Valkey CI installs is built
/// without TLS.
async fn start_tls(
    pki: &Pki,
    name: &str,
    args: impl Fn(u16, &Path) -> Vec<String>,
) -> embedded::Server {
    let dir = pki.dir().join(name);
    std::fs::create_dir_all(&dir).expect("server dir");
    for _ in 0..5 {
        let port = embedded::free_port().expect("free port");
        let process = embedded::spawn_program("redis-server", &dir, &args(port, &dir))
            .expect("run redis-server");
        let mut server = embedded::Server { port, process };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if server.process.try_wait().ok().flatten().is_some() {
                break;
            }
            if server.call(pki, &["PING"]).await.is_ok() {
                return server;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not answer over TLS"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("{name} did not start");
}

/// Asking a TLS-only server, with a client certificate of the test CA.
trait OverTls {
    /// One command on a fresh TLS connection.
    async fn call(&self, pki: &Pki, args: &[&str]) -> std::io::Result<Vec<u8>>;

    async fn info(&self, pki: &Pki) -> String {
        self.call(pki, &["INFO"])
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `key` holds `value` here (replication has caught up).
    async fn wait_for(&self, pki: &Pki, key: &str, value: &str) {
        let want = format!("${}\r\n{value}\r\n", value.len());
        eventually!(
            "the replica has the write",
            self.call(pki, &["GET", key])
                .await
                .is_ok_and(|r| r == want.as_bytes())
        );
    }

    /// Calls of `cmd` (lower case) the server has run.
    async fn calls(&self, pki: &Pki, cmd: &str) -> u64 {
        let reply = self
            .call(pki, &["INFO", "commandstats"])
            .await
            .expect("INFO commandstats over TLS");
        let text = String::from_utf8_lossy(&reply).into_owned();
        let prefix = format!("cmdstat_{cmd}:calls=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl OverTls for embedded::Server {
    async fn call(&self, pki: &Pki, args: &[&str]) -> std::io::Result<Vec<u8>> {
        let me = pki.ca.leaf("test client");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut c = TlsConn::connect(addr, pki.ca.client(Some(&me))).await?;
        c.stream.write_all(&resp(args)).await?;
        c.stream.flush().await?;
        c.frame().await
    }
}
