//! A proxy over a test's servers, started in-process on free ports, so that a test's set-up reads as the
//! scenario it is:
//!
//! ```ignore
//! let (cluster, proxy) = Cluster::builder().replicas(2).sentinels(3).proxy().await;
//! let (cluster, proxy) = Cluster::builder()
//!     .replicas(1)
//!     .delay_replica(0, Duration::from_millis(600))
//!     .flags(|f| f.max_lag_ms = Some(300))
//!     .eligible(0)
//!     .proxy()
//!     .await;
//! ```

use redsplit::config::{Config, Consistency, Flags, TopologyKind};
use redsplit::embedded::MASTER_NAME;
use redsplit::Proxy;

use crate::cluster::{Builder, Cluster, Server};

/// How [`Builder::proxy`] sets up its proxy.
#[derive(Default)]
pub struct ProxyOptions<'a> {
    tweaks: Vec<Tweak<'a>>,
    eligible: Option<usize>,
}

/// A test's change to the proxy's flags.
type Tweak<'a> = Box<dyn FnOnce(&mut Flags) + 'a>;

impl<'a> Builder<'a> {
    /// Changes the flags of the proxy (by default [`Cluster::flags`]).
    pub fn flags(mut self, tweak: impl FnOnce(&mut Flags) + 'a) -> Self {
        self.proxy.tweaks.push(Box::new(tweak));
        self
    }

    /// The proxy promises nothing about reading one's writes: `consistency = "eventual"`.
    pub fn eventual(self) -> Self {
        self.flags(|f| f.consistency = Some(Consistency::Eventual))
    }

    /// The proxy is returned once `n` replicas are eligible for reads (0: at once). Default: every replica.
    pub fn eligible(mut self, n: usize) -> Self {
        self.proxy.eligible = Some(n);
        self
    }

    /// Starts the servers, then a proxy over them.
    pub async fn proxy(mut self) -> (Cluster, Proxy) {
        let options = std::mem::take(&mut self.proxy);
        let cluster = self.start().await;
        let mut flags = cluster.flags();
        for tweak in options.tweaks {
            tweak(&mut flags);
        }
        let proxy = proxy_with(flags).await;
        wait_eligible(&proxy, options.eligible.unwrap_or(cluster.replicas().len())).await;
        (cluster, proxy)
    }
}

impl Cluster {
    /// Flags for a proxy over these servers on free ports, probing fast: following the sentinels if there
    /// are any, else a static topology (a delayed replica's relay, which it announces as its primary,
    /// mapped back to the primary); with the servers' and sentinels' passwords.
    pub fn flags(&self) -> Flags {
        let addrs =
            |servers: &[Server]| Some(servers.iter().map(|s| s.addr().to_string()).collect());
        let topology = if self.sentinels().is_empty() {
            let relays: Vec<String> = self.relays.iter().map(|r| r.mapping(self)).collect();
            Flags {
                primary: Some(self.primary().addr().to_string()),
                replica: addrs(self.replicas()),
                address_map: (!relays.is_empty()).then_some(relays),
                ..Flags::default()
            }
        } else {
            Flags {
                topology: Some(TopologyKind::Sentinel),
                sentinel: addrs(self.sentinels()),
                master_name: Some(MASTER_NAME.into()),
                ..Flags::default()
            }
        };
        Flags {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            probe_interval_ms: Some(20),
            log_level: Some("warn".into()),
            backend_password: self.password.clone(),
            sentinel_password: self.sentinel_password.clone(),
            ..topology
        }
    }
}

/// Starts a proxy with `flags`. Logs go to the test output, filtered by `RUST_LOG` (default: warnings).
pub async fn proxy_with(flags: Flags) -> Proxy {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let config = Config::load(None, flags).expect("valid test config");
    Proxy::start(config).await.expect("proxy starts")
}

/// Waits until `n` replicas are eligible for reads.
pub async fn wait_eligible(p: &Proxy, n: usize) {
    eventually!(
        "replicas eligible",
        p.topo
            .snapshot()
            .replica_nodes()
            .filter(|r| r.repl.is_eligible())
            .count()
            >= n
    );
}
