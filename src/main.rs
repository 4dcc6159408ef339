//! The `redsplit` binary: parse flags, load the config, run the proxy until SIGINT or SIGTERM; SIGHUP reloads
//! the config (the file, with the same flags over it).

use anyhow::Context as _;
use clap::Parser;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use redsplit::config::{Cli, Command, Config, LogFormat};
use redsplit::Proxy;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), cli.flags.clone()) {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                eprintln!("config error: {p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            std::process::exit(2);
        }
    };
    if cli.check {
        println!("config ok");
        return Ok(());
    }
    if let Some(Command::Health) = cli.command {
        std::process::exit(health(config.admin_listen));
    }
    init_logging(&config);
    raise_open_files_limit(config.max_clients);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let reload = move || Config::load(cli.config.as_deref(), cli.flags.clone());
    runtime.block_on(run(config, reload))
}

/// Descriptors the proxy needs beside one per client: listeners, upstream connections (one set per worker
/// thread), sentinels, the admin server.
const SPARE_FILES: u64 = 256;

/// Every client takes a file descriptor, and the usual soft limit (1024) would refuse clients long before
/// `max_clients`: the soft limit is raised as far as the hard limit allows, as Redis does for `maxclients`.
fn raise_open_files_limit(max_clients: usize) {
    let wanted = max_clients as u64 + SPARE_FILES;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            limit = got,
            max_clients,
            "the open files limit is below max_clients + {SPARE_FILES}: clients past it are refused \
             (raise the hard limit, e.g. ulimit -Hn or the container's nofile ulimit)"
        ),
        Ok(got) => tracing::debug!(limit = got, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}

async fn run(
    config: Config,
    reload: impl Fn() -> Result<Config, Vec<String>>,
) -> anyhow::Result<()> {
    // Installed first: from here on SIGHUP no longer ends the process, even while the proxy starts.
    let signals = Signals::install()?;
    let proxy = Proxy::start(config).await.context("starting the proxy")?;
    if let Some(cluster) = &proxy.embedded {
        let replicas: Vec<String> = cluster
            .replicas()
            .iter()
            .map(|r| r.addr().to_string())
            .collect();
        let sentinels: Vec<String> = cluster
            .sentinels()
            .iter()
            .map(|s| s.addr().to_string())
            .collect();
        println!(
            "redsplit: embedded primary {}, replicas {}, sentinels {}",
            cluster.primary().addr(),
            replicas.join(", "),
            if sentinels.is_empty() {
                "none (static topology)".to_string()
            } else {
                sentinels.join(", ")
            }
        );
    }
    println!(
        "redsplit: listening on {} (try: redis-cli -p {}); admin on http://{}",
        proxy.listen,
        proxy.listen.port(),
        proxy.admin
    );
    if let Some(tls) = proxy.tls_listen {
        println!("redsplit: TLS clients on {tls}");
    }
    signals.wait(&proxy, reload).await?;
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

/// The signals the binary handles: SIGINT and SIGTERM stop it, SIGHUP reloads the config.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGINT or SIGTERM, reloading the config on each SIGHUP meanwhile. A config that does not
    /// load changes nothing: every problem is logged and the running config stays.
    async fn wait(
        mut self,
        proxy: &Proxy,
        reload: impl Fn() -> Result<Config, Vec<String>>,
    ) -> anyhow::Result<()> {
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                r = &mut ctrl_c => return r.context("waiting for ctrl-c"),
                _ = self.term.recv() => return Ok(()),
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    match reload() {
                        // Proxy::reload logs what it did.
                        Ok(config) => {
                            let _ = proxy.reload(&config);
                        }
                        Err(problems) => {
                            for problem in &problems {
                                tracing::error!(%problem, "configuration not reloaded");
                            }
                            tracing::error!(count = problems.len(), "configuration has problems; the running configuration stays");
                        }
                    }
                }
            }
        }
    }
}

/// `redsplit health`: GET /ready on the admin port; 0 if it answers 200.
fn health(mut admin: SocketAddr) -> i32 {
    // A proxy listening on every address is asked on loopback.
    if admin.ip().is_unspecified() {
        admin.set_ip(match admin.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let ask = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: redsplit\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    match ask() {
        Ok(reply) => {
            let ok = reply.split_whitespace().nth(1) == Some("200");
            let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
            println!("{body}");
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            println!("not ready: cannot ask {admin}: {e}");
            1
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
