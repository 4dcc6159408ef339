//! Configuration: a TOML file, overridden option by option by command-line flags of the same name.
//!
//! Every option is declared once, in the `options!` macro (`config/options.rs`), which generates the file's
//! fields, the flags (`max_lag_ms` is `--max-lag-ms`) and the list of names the tests compare with
//! `conf/redsplit.example.toml`. [`Config::load`] turns file and flags into a checked [`Config`], reporting
//! every problem at once; nothing checks the values again after that.
//!
//! Checking is parsing, one concern per parser; each reports its problems and yields a typed value only if
//! it found none:
//!
//! - `value`: one value of any option: a number within bounds (`Ranged`), an address, a secret
//! - `limits`: intervals and timeouts, worker threads and connections, what one client may send and hold
//! - `source`: the topology source ([`Source`]), with the options only one kind uses, and the address map
//! - `credentials`: what the proxy presents upstream, and the users clients authenticate as
//! - `tls`: the TLS listener and upstream TLS, whose files are loaded to be checked

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::ClientUser;
pub use crate::node::Addr;
use crate::resp::Limits;
pub use crate::route::{Consistency, Fallback, ZoneAffinity};
use crate::upstream::Credentials;

mod credentials;
mod durability;
mod limits;
mod options;
mod source;
mod tls;
mod value;

use credentials::{ClientAuth, Upstream};
use limits::{ClientLimits, Timing, Workers};
use options::Raw;
pub use options::{File, Flags, LogFormat, TopologyKind, OPTION_NAMES};
pub use source::Source;
use tls::UpstreamTls;
pub use value::resolve_secret;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener.
    pub listen: SocketAddr,
    /// Admin HTTP listener.
    pub admin_listen: SocketAddr,
    /// The token state-changing admin requests must carry, if set.
    pub admin_token: Option<String>,
    /// Answer as a Sentinel too.
    pub sentinel_facade: bool,
    /// Topology source.
    pub source: Source,
    /// Read consistency.
    pub consistency: Consistency,
    /// Lag limit in time.
    pub max_lag: Duration,
    /// Lag limit in bytes, if any.
    pub max_lag_bytes: Option<u64>,
    /// No-replica fallback.
    pub fallback: Fallback,
    /// The proxy's zone and the configured zones of nodes.
    pub zones: crate::node::Zones,
    /// Which zones' nodes reads prefer.
    pub zone_affinity: ZoneAffinity,
    /// Offset probe interval.
    pub probe_interval: Duration,
    /// Worker threads (resolved: at least 1).
    pub worker_threads: usize,
    /// Shared connections per node, key and worker.
    pub backend_connections: usize,
    /// Connect and greeting timeout.
    pub connect_timeout: Duration,
    /// Upstream credentials, if any.
    pub backend_credentials: Option<Credentials>,
    /// Credentials for Sentinel connections.
    pub sentinel_credentials: Option<Credentials>,
    /// The default user's password for clients, if proxy-side auth is on.
    pub requirepass: Option<String>,
    /// Named client users.
    pub users: Vec<ClientUser>,
    /// Refresh the command table from the primary.
    pub refresh_commands: bool,
    /// Announced address to reachable address.
    pub address_map: Vec<(Addr, Addr)>,
    /// Interval between discoveries.
    pub discovery_interval: Duration,
    /// How long writes wait for a primary.
    pub write_hold: Duration,
    /// How long a read may take on one node before a retry elsewhere.
    pub read_timeout: Duration,
    /// How long a read may go unanswered on one node before it goes to another; `None`: automatic.
    pub read_hedge: Option<Duration>,
    /// How long a write may wait on a silent node before its client is told it may have run.
    pub write_timeout: Duration,
    /// Scanner limits.
    pub limits: Limits,
    /// Per-client unforwarded input limit.
    pub max_request_bytes: usize,
    /// Per-client in-flight command limit.
    pub max_client_inflight: usize,
    /// Per-client limit on reply bytes waiting to be written (`None`: no limit).
    pub max_client_output_bytes: Option<usize>,
    /// Limit on reply bytes waiting to be written, over every client (`None`: no limit).
    pub max_total_output_bytes: Option<usize>,
    /// Most client connections.
    pub max_clients: usize,
    /// Idle client timeout, if any.
    pub client_idle_timeout: Option<Duration>,
    /// TLS client listener and the files of its certificates, if any.
    pub tls_listen: Option<(SocketAddr, crate::tls::ServerFiles)>,
    /// TLS for connections to Redis nodes, if on.
    pub backend_tls: Option<crate::tls::ClientFiles>,
    /// TLS for connections to sentinels, if on (the same files as `backend_tls`).
    pub sentinel_tls: Option<crate::tls::ClientFiles>,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Write acknowledgements by replicas and the split-brain guard.
    pub durability: crate::client::Durability,
}

impl Config {
    /// What serving clients needs of the configuration.
    pub fn client_settings(&self) -> crate::client::Settings {
        crate::client::Settings {
            consistency: self.consistency,
            fallback: self.fallback,
            zone_affinity: self.zone_affinity,
            limits: self.limits,
            max_request_bytes: self.max_request_bytes,
            max_inflight: self.max_client_inflight,
            write_hold: self.write_hold,
            read_timeout: self.read_timeout,
            read_hedge: self.read_hedge,
            write_timeout: self.write_timeout,
            max_output: self.max_client_output_bytes,
            max_total_output: self.max_total_output_bytes,
            idle_timeout: self.client_idle_timeout,
            max_clients: self.max_clients,
            sentinel_facade: self.sentinel_facade.then(|| match &self.source {
                Source::Sentinel { master_name, .. } => master_name.clone(),
                _ => crate::client::FACADE_NAME.to_string(),
            }),
            durability: self.durability.clone(),
        }
    }

    /// The options, other than those a reload applies (the reload module), whose values differ
    /// between `self` and `new`: they take effect only when the proxy restarts.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut names = Vec::new();
        macro_rules! compare {
            ($($field:ident => $name:literal),* $(,)?) => {
                $(if self.$field != new.$field { names.push($name); })*
            };
        }
        compare!(
            listen => "listen",
            admin_listen => "admin_listen",
            admin_token => "admin_token",
            sentinel_facade => "sentinel_facade",
            consistency => "consistency",
            fallback => "fallback",
            zones => "zone/node_zones",
            zone_affinity => "zone_affinity",
            probe_interval => "probe_interval_ms",
            worker_threads => "worker_threads",
            backend_connections => "backend_connections",
            connect_timeout => "connect_timeout_ms",
            backend_credentials => "backend_username/backend_password",
            sentinel_credentials => "sentinel_username/sentinel_password",
            refresh_commands => "refresh_commands",
            address_map => "address_map",
            discovery_interval => "discovery_interval_ms",
            write_hold => "write_hold_ms",
            read_timeout => "read_timeout_ms",
            read_hedge => "read_hedge_ms",
            write_timeout => "write_timeout_ms",
            limits => "max_bulk_bytes/max_array_len/max_inline_bytes",
            max_request_bytes => "max_request_bytes",
            max_client_inflight => "max_client_inflight",
            max_client_output_bytes => "max_client_output_bytes",
            max_total_output_bytes => "max_total_output_bytes",
            max_clients => "max_clients",
            client_idle_timeout => "client_idle_timeout_ms",
            shutdown_grace => "shutdown_grace_ms",
            log_level => "log_level",
            log_format => "log_format",
            durability => "min_write_acks/write_ack_timeout_ms/user_min_write_acks/user_write_ack_timeout_ms/min_replicas/min_replicas_max_lag_ms",
        );
        names
    }

    /// Reads `file` (if any), applies `flags`, and checks everything, returning every problem found.
    pub fn load(file: Option<&Path>, flags: Flags) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let parsed = match file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => File::parse(&text, &mut problems),
                Err(e) => {
                    problems.push(format!("cannot read config file {}: {e}", path.display()));
                    File::default()
                }
            },
            None => File::default(),
        };
        let config = Config::check(parsed.merge(flags), &mut problems);
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(problems),
        }
    }

    /// Parses each concern of `raw` on its own: each parser reports its problems and yields a value only if
    /// it found none. Every parser runs before any result is looked at, so every problem is reported; the
    /// configuration exists only if every parser yielded a value.
    fn check(raw: Raw, problems: &mut Vec<String>) -> Option<Config> {
        let listen = value::socket_addr("listen", &raw.listen, problems);
        let admin_listen = value::socket_addr("admin_listen", &raw.admin_listen, problems);
        let admin_token = match &raw.admin_token {
            Some(t) => value::secret("admin_token", t, problems).map(Some),
            None => Some(None),
        };
        let timing = Timing::parse(&raw, problems);
        let workers = Workers::parse(&raw, problems);
        let clients = ClientLimits::parse(&raw, problems);
        let kind = Source::kind(&raw);
        let source = Source::parse(&raw, kind, problems);
        let address_map = source::address_map(&raw.address_map, problems);
        let zones = zones(&raw, problems);
        let upstream = Upstream::parse(&raw, problems);
        let client_auth = ClientAuth::parse(&raw, problems);
        let durability = {
            let mut users: Vec<String> = client_auth
                .iter()
                .flat_map(|a| a.users.iter().map(|u| u.name.clone()))
                .collect();
            if client_auth
                .as_ref()
                .is_some_and(|a| a.requirepass.is_some())
            {
                users.push("default".into());
            }
            durability::parse(&raw, &users, problems)
        };
        let tls_listen = tls::listener(&raw, problems);
        let upstream_tls = UpstreamTls::parse(&raw, kind, problems);
        let log_level = log_level(&raw.log_level, problems);
        if raw.max_nesting_depth.is_some() {
            tracing::warn!("option max_nesting_depth is ignored: replies are scanned at any depth");
        }
        let (timing, workers, clients) = (timing?, workers?, clients?);
        let (upstream, client_auth) = (upstream?, client_auth?);
        let (tls_listen, upstream_tls) = (tls_listen?, upstream_tls?);
        Some(Config {
            listen: listen?,
            admin_listen: admin_listen?,
            admin_token: admin_token?,
            sentinel_facade: raw.sentinel_facade,
            source: source?,
            consistency: raw.consistency,
            max_lag: timing.max_lag,
            max_lag_bytes: (raw.max_lag_bytes > 0).then_some(raw.max_lag_bytes),
            fallback: raw.fallback,
            zones: zones?,
            zone_affinity: raw.zone_affinity,
            probe_interval: timing.probe_interval,
            worker_threads: workers.threads,
            backend_connections: workers.backend_connections,
            connect_timeout: timing.connect_timeout,
            backend_credentials: upstream.backend,
            sentinel_credentials: upstream.sentinel,
            requirepass: client_auth.requirepass,
            users: client_auth.users,
            refresh_commands: raw.refresh_commands,
            address_map: address_map?,
            discovery_interval: timing.discovery_interval,
            write_hold: timing.write_hold,
            read_timeout: timing.read_timeout,
            read_hedge: timing.read_hedge,
            write_timeout: timing.write_timeout,
            limits: clients.scanner,
            max_request_bytes: clients.max_request_bytes,
            max_client_inflight: clients.max_inflight,
            max_client_output_bytes: clients.max_output_bytes,
            max_total_output_bytes: clients.max_total_output_bytes,
            max_clients: clients.max_clients,
            client_idle_timeout: timing.client_idle_timeout,
            tls_listen,
            backend_tls: upstream_tls.backend,
            sentinel_tls: upstream_tls.sentinel,
            shutdown_grace: timing.shutdown_grace,
            log_level: log_level?,
            log_format: raw.log_format,
            durability: durability?,
        })
    }
}

/// The proxy's zone and the `node_zones` entries, if every entry parses.
fn zones(raw: &Raw, problems: &mut Vec<String>) -> Option<crate::node::Zones> {
    let before = problems.len();
    let own = match raw.zone.as_deref().map(str::trim) {
        Some("") => {
            problems.push("option `zone`: empty; leave it out for no zone".into());
            None
        }
        z => z.map(|z| crate::node::Zone(z.to_string())),
    };
    let rules = raw
        .node_zones
        .iter()
        .filter_map(|r| match crate::node::ZoneRule::parse(r) {
            Ok(rule) => Some(rule),
            Err(e) => {
                problems.push(format!("option `node_zones`: {e}"));
                None
            }
        })
        .collect();
    (problems.len() == before).then_some(crate::node::Zones { own, rules })
}

/// The `log_level` filter, if it parses (RUST_LOG syntax).
fn log_level(level: &str, problems: &mut Vec<String>) -> Option<String> {
    match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(_) => Some(level.to_string()),
        Err(e) => {
            problems.push(format!("option `log_level`: {e}"));
            None
        }
    }
}

/// Command line: `--config FILE`, `--check`, and one flag per option.
#[derive(Debug, clap::Parser)]
// A flag given again replaces the earlier value (repeatable options such as `--replica` add to it), so
// that arguments after a container image's ENTRYPOINT can change the listeners it sets.
#[command(
    name = "redsplit",
    version,
    about = "Replication-aware Redis proxy",
    args_override_self = true
)]
pub struct Cli {
    /// TOML config file; flags override its options.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Check the configuration, report every problem, and exit without binding anything.
    #[arg(long)]
    pub check: bool,
    /// Options.
    #[command(flatten)]
    pub flags: Flags,
    /// What to do; by default, run the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Ask a running proxy's admin port whether it is ready (GET /ready); exit 0 if so, 1 if not.
    /// Meant for container health checks: it needs no other tool.
    Health,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, flags: Flags) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let file = File::parse(text, &mut problems);
        let c = Config::check(file.merge(flags), &mut problems);
        match c {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(problems),
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = load(
            "listen = \"nope\"\nprimary = \"x\"\nbogus = 1\nmax_lag_ms = \"ten\"\nprobe_interval_ms = 1\n",
            Flags::default(),
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Flags {
            max_lag_ms: Some(5),
            replica: Some(vec!["b:2".into()]),
            ..Flags::default()
        };
        let c = load(
            "primary = \"a:1\"\nmax_lag_ms = 300\nreplica = [\"c:3\"]\n",
            flags,
        )
        .expect("valid");
        assert_eq!(c.max_lag, Duration::from_millis(5));
        let Source::Static { replicas, .. } = c.source else {
            panic!("static expected")
        };
        assert_eq!(replicas, vec![Addr::parse("b:2").expect("addr")]);
    }

    #[test]
    fn no_primary_means_embedded() {
        let c = load("", Flags::default()).expect("valid");
        assert_eq!(
            c.source,
            Source::Embedded {
                replicas: 2,
                sentinels: 3
            }
        );
        assert_eq!(c.consistency, Consistency::Session);
    }

    #[test]
    fn every_option_has_a_flag_of_the_same_name() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for name in OPTION_NAMES {
            let flag = name.replace('_', "-");
            assert!(
                cmd.get_arguments()
                    .any(|a| a.get_long() == Some(flag.as_str())),
                "--{flag} missing"
            );
        }
    }

    #[test]
    fn secrets_come_from_the_environment_or_files() {
        let dir = std::env::temp_dir().join(format!("redsplit-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").expect("write secret");
        let flags = Flags {
            requirepass: Some(format!("file:{}", dir.display())),
            user: Some(vec!["alice:env:PATH".into()]),
            readonly_user: Some(vec!["bob:plain".into()]),
            ..Flags::default()
        };
        let c = load("", flags).expect("valid");
        assert_eq!(c.requirepass.as_deref(), Some("s3cret"));
        assert_eq!(c.users.len(), 2);
        assert_eq!(
            c.users[0].password,
            std::env::var("PATH").expect("PATH is set")
        );
        assert!(c.users[1].readonly());
        let _ = std::fs::remove_file(dir);
        let bad = Flags {
            requirepass: Some("env:REDSPLIT_NO_SUCH_VARIABLE".into()),
            user: Some(vec!["nocolon".into(), ":hunter2".into()]),
            ..Flags::default()
        };
        let problems = load("", bad).expect_err("invalid");
        assert_eq!(problems.len(), 3);
        // A malformed entry may be a bare password: it is never echoed.
        assert!(problems
            .iter()
            .all(|p| !p.contains("hunter2") && !p.contains("nocolon")));
    }

    #[test]
    fn a_flag_given_again_replaces_the_earlier_one_and_repeatable_ones_add_up() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "redsplit",
            "--listen",
            "0.0.0.0:6380",
            "--listen",
            "127.0.0.1:7000",
            "--replica",
            "a:1",
            "--replica",
            "b:2",
        ])
        .expect("parses");
        assert_eq!(cli.flags.listen.as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(cli.flags.replica.map(|r| r.len()), Some(2));
    }

    #[test]
    fn addresses_need_host_and_port() {
        assert!(Addr::parse("localhost:6379").is_ok());
        assert!(Addr::parse("[::1]:6379").is_ok());
        assert_eq!(Addr::parse("[::1]:6379").expect("v6").host(), "::1");
        assert!(Addr::parse("localhost").is_err());
        assert!(Addr::parse(":6379").is_err());
        assert!(Addr::parse("h:0").is_err());
        assert!(Addr::parse("10.0.0.300:6379").is_err());
        assert!(Addr::parse("10.0.0.3:6379").is_ok());
        assert!(Addr::parse("1host:6379").is_ok());
    }

    #[test]
    fn listeners_take_a_host_name_and_typos_get_a_suggestion() {
        let c = load("listen = \"localhost:6380\"\n", Flags::default()).expect("valid");
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.listen.port(), 6380);
        let problems = load(
            "max_lag = 10\nlisten = \"10.0.0.300:6380\"\n",
            Flags::default(),
        )
        .expect_err("invalid");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown option `max_lag`") && p.contains("max_lag_ms")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
