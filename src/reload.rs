//! Configuration reload (SIGHUP) in a running proxy, without dropping a client.
//!
//! What changes at once:
//! - lag limits (`max_lag_ms`, `max_lag_bytes`): every probe from the next one on judges by them;
//! - the topology source (seeds `primary`/`replica`, `sentinel`, `master_name`, `cluster`): discovery starts
//!   again from the new source while the current topology keeps serving, and replaces it once it has
//!   decided (moving into or out of cluster mode takes a restart);
//! - client users (`requirepass`, `user`, `readonly_user`): new authentications check against them;
//!   connections already authenticated keep their user, and connections made while auth was off stay
//!   allowed, as Redis does when `requirepass` is set at run time;
//! - TLS certificates, keys and CA files (the paths too): new connections use them, open ones go on.
//!
//! Any other option that differs is reported as needing a restart and keeps its running value. A file that
//! does not load changes nothing (the caller logs its problems); certificates that do not load keep the
//! running ones while the rest of the reload applies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminState, Switchover};
use crate::config::{Config, Source};
use crate::topology::probe::LagLimits;
use crate::topology::{self, AddressMap, Topo};
use crate::upstream::{Node, Settings};
use crate::{auth, client, tls};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Options now in force with their new values.
    pub applied: Vec<&'static str>,
    /// Options that differ but keep their running values until a restart.
    pub restart_needed: Vec<&'static str>,
    /// What could not be applied (certificates that do not load), one line each.
    pub problems: Vec<String>,
}

/// Starts the task that follows the topology source (discovery from seeds, or sentinels).
#[derive(Debug)]
pub(crate) struct SourceRunner {
    pub topo: Arc<Topo>,
    pub map: AddressMap,
    pub interval: Duration,
    /// How long a cluster slot that moved keeps its reads on primaries (the new owner's replicas may
    /// lag behind the keys the move wrote).
    pub settle: Duration,
    pub sentinel_settings: Arc<Settings>,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl SourceRunner {
    /// Starts following `source` (static or sentinel); cancelling the token returned stops it.
    pub fn spawn(&self, source: &Source) -> CancellationToken {
        let cancel = self.cancel.child_token();
        match source.clone() {
            Source::Static { primary, replicas } => {
                let seeds = std::iter::once(primary).chain(replicas).collect();
                self.tracker.spawn(topology::discovery::run(
                    self.topo.clone(),
                    seeds,
                    self.map.clone(),
                    self.interval,
                    cancel.clone(),
                ));
            }
            Source::Sentinel {
                sentinels,
                master_name,
            } => {
                self.tracker.spawn(topology::sentinel::run(
                    self.topo.clone(),
                    sentinels,
                    master_name,
                    self.map.clone(),
                    self.interval,
                    self.sentinel_settings.clone(),
                    cancel.clone(),
                    self.tracker.clone(),
                ));
            }
            Source::Cluster { seeds } => {
                self.tracker.spawn(topology::cluster::run(
                    self.topo.clone(),
                    seeds,
                    self.map.clone(),
                    self.interval,
                    self.settle,
                    cancel.clone(),
                ));
            }
            Source::Embedded { .. } => {
                unreachable!("embedded is resolved to static or sentinel before it runs")
            }
        }
        cancel
    }

    /// How `POST /failover` switches over with `source`.
    pub fn switchover(&self, source: &Source) -> Switchover {
        match source {
            Source::Sentinel {
                sentinels,
                master_name,
            } => Switchover::Sentinel {
                sentinels: sentinels
                    .iter()
                    .map(|a| Node::new(a.clone(), self.sentinel_settings.clone()))
                    .collect(),
                master_name: master_name.clone(),
            },
            Source::Cluster { .. } => Switchover::Cluster,
            _ => Switchover::Static,
        }
    }
}

/// The running proxy's reloadable parts.
pub(crate) struct Reloader {
    /// The configuration in force (options that need a restart keep their values here).
    pub running: Mutex<Config>,
    pub lag: Arc<ArcSwap<LagLimits>>,
    pub ctx: Arc<client::Context>,
    pub admin: Arc<AdminState>,
    pub source: SourceRunner,
    /// The resolved source being followed, and the token that stops it.
    pub following: Mutex<(Source, CancellationToken)>,
    pub tls_server: Option<Arc<tls::Server>>,
    pub tls_client: Option<Arc<tls::Client>>,
}

impl Reloader {
    /// Applies what can change of `new`; see the module documentation.
    pub fn reload(&self, new: &Config) -> Outcome {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Outcome {
            restart_needed: running.restart_needed(new),
            ..Outcome::default()
        };

        if (running.max_lag, running.max_lag_bytes) != (new.max_lag, new.max_lag_bytes) {
            self.lag.store(Arc::new(LagLimits {
                max_lag: new.max_lag,
                max_lag_bytes: new.max_lag_bytes,
            }));
            running.max_lag = new.max_lag;
            running.max_lag_bytes = new.max_lag_bytes;
            out.applied.push("max_lag_ms/max_lag_bytes");
        }

        if (&running.requirepass, &running.users) != (&new.requirepass, &new.users) {
            self.ctx
                .auth
                .store(auth::Auth::new(new.requirepass.clone(), new.users.clone()));
            running.requirepass = new.requirepass.clone();
            running.users = new.users.clone();
            out.applied
                .push("requirepass/user/readonly_user/admin_user");
        }

        if running.source != new.source {
            if matches!(running.source, Source::Embedded { .. })
                || matches!(new.source, Source::Embedded { .. })
            {
                // The embedded servers belong to this process: they start and stop with it.
                out.restart_needed.push("topology source (embedded)");
            } else if matches!(running.source, Source::Cluster { .. })
                != matches!(new.source, Source::Cluster { .. })
            {
                // Connections to cluster nodes are greeted differently (READONLY), and sessions keep
                // per-shard state: in or out of cluster mode takes a restart. Other cluster seeds do not.
                out.restart_needed.push("topology source (cluster)");
            } else {
                let mut following = self.following.lock().unwrap_or_else(|e| e.into_inner());
                following.1.cancel();
                *following = (new.source.clone(), self.source.spawn(&new.source));
                self.admin
                    .switchover
                    .store(Arc::new(self.source.switchover(&new.source)));
                running.source = new.source.clone();
                out.applied.push("topology source");
            }
        }

        // Certificates: the same listener and the same kinds of upstream TLS, with new or changed files.
        match (&self.tls_server, &running.tls_listen, &new.tls_listen) {
            (Some(server), Some((addr, _)), Some((new_addr, files))) if addr == new_addr => {
                match server.reload(Some(files)) {
                    Ok(()) => {
                        running.tls_listen = new.tls_listen.clone();
                        out.applied.push("tls certificates (listener)");
                    }
                    Err(p) => out.problems.extend(p.lines()),
                }
            }
            (None, None, None) => {}
            _ => out.restart_needed.push("tls_listen"),
        }
        let upstream = |c: &Config| c.backend_tls.clone().or(c.sentinel_tls.clone());
        let same_kinds = (
            running.backend_tls.is_some(),
            running.sentinel_tls.is_some(),
        ) == (new.backend_tls.is_some(), new.sentinel_tls.is_some());
        match (&self.tls_client, upstream(new)) {
            (Some(client), Some(files)) if same_kinds => match client.reload(Some(&files)) {
                Ok(()) => {
                    running.backend_tls = new.backend_tls.clone();
                    running.sentinel_tls = new.sentinel_tls.clone();
                    out.applied.push("tls certificates (upstream)");
                }
                Err(p) => out.problems.extend(p.lines()),
            },
            (None, None) => {}
            _ => out.restart_needed.push("backend_tls/sentinel_tls"),
        }
        out
    }
}
