//! The options as the file and the flags write them. Each is declared once, in the `options!` macro below,
//! which generates the file's fields ([`File`]), the flags ([`Flags`]: `max_lag_ms` is `--max-lag-ms`), the
//! list of names the tests compare with `conf/redsplit.example.toml` ([`OPTION_NAMES`]), and the merged
//! values ([`Raw`]) the rest of this module checks.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Consistency, Fallback, ZoneAffinity};

/// Where the topology comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// `primary` and `replica` seed discovery; roles are verified with ROLE and followed as they change.
    Static,
    /// Redis Sentinel (`sentinel`, `master_name`) says which node is the primary.
    Sentinel,
    /// The proxy starts a local primary, replicas and sentinels itself (for trying it out).
    Embedded,
    /// A Redis Cluster (`cluster` seeds): shards and slots come from `CLUSTER SHARDS` (or `CLUSTER SLOTS`).
    Cluster,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The merged type of an option: `T` with a default, `Option<T>` without.
macro_rules! merged_ty {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $default:expr) => { $ty };
}

/// The merged value of an option: flag, else file, else default (if it has one).
macro_rules! merged {
    ($v:expr) => {
        $v
    };
    ($v:expr, $default:expr) => {
        $v.unwrap_or_else(|| $default)
    };
}

macro_rules! options {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty $(= $default:expr)? $(, flag $flag:literal)? ; )*) => {
        /// The TOML file, as written. Every field is optional; defaults apply after flags.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct File {
            $( $(#[doc = $doc])* pub $name: Option<$ty>, )*
        }

        /// One flag per file option, same name in kebab case; a flag overrides the file.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct Flags {
            $( $(#[doc = $doc])* #[arg(long $(, visible_alias = $flag)?)] pub $name: Option<$ty>, )*
        }

        /// The name of every option, as written in the file.
        pub const OPTION_NAMES: &[&str] = &[$(stringify!($name)),*];

        /// Option values after merging file, flags and defaults, not yet checked.
        #[derive(Debug, Clone)]
        pub(super) struct Raw { $( pub(super) $name: merged_ty!($ty $(, $default)?), )* }

        impl File {
            /// Reads one TOML document option by option, so that every bad option is reported, not
            /// only the first.
            pub fn parse(text: &str, problems: &mut Vec<String>) -> File {
                let table: toml::Table = match text.parse() {
                    Ok(t) => t,
                    Err(e) => {
                        problems.push(format!("config is not valid TOML: {e}"));
                        return File::default();
                    }
                };
                let mut file = File::default();
                for (key, value) in table {
                    match key.as_str() {
                        $( stringify!($name) => match value.try_into() {
                            Ok(v) => file.$name = Some(v),
                            Err(e) => problems.push(format!("option `{key}`: {e}")),
                        }, )*
                        _ => problems.push(match did_you_mean(&key) {
                            Some(near) => format!("unknown option `{key}` (did you mean `{near}`?)"),
                            None => format!("unknown option `{key}`"),
                        }),
                    }
                }
                file
            }

            /// Applies `flags` over the file, then the defaults.
            pub(super) fn merge(self, flags: Flags) -> Raw {
                Raw { $( $name: merged!(flags.$name.or(self.$name) $(, $default)?), )* }
            }
        }
    };
}

options! {
    /// Client listener address. Default "127.0.0.1:6380".
    listen: String = "127.0.0.1:6380".into();
    /// Admin HTTP listener address: probes, metrics, topology, switchover. Default "127.0.0.1:9121".
    admin_listen: String = "127.0.0.1:9121".into();
    /// Token the admin port requires (`Authorization: Bearer <token>`) for every request that changes
    /// state (`POST /failover`); "env:NAME" or "file:PATH" reads it from there. Default none: such
    /// requests are then served only while `admin_listen` is a loopback address, refused otherwise.
    admin_token: String;
    /// Answer as a Redis Sentinel too (`SENTINEL get-master-addr-by-name`, `masters`, `master`,
    /// `replicas`, `sentinels`, and `ROLE`), naming the proxy's own address for any master name, so that
    /// applications configured for Sentinel use the proxy unchanged: true or false. Default false.
    sentinel_facade: bool = false;
    /// Where the topology comes from: "static" (primary and replica seeds), "sentinel" (sentinel and
    /// master_name), "cluster" (cluster seeds) or "embedded" (start local Redis servers and sentinels).
    /// Default: "static" when `primary` is set, "sentinel" when `sentinel` is, "cluster" when `cluster`
    /// is, else "embedded".
    topology: TopologyKind;
    /// Primary address, host:port: a seed of discovery. Static topology only. No default.
    primary: String;
    /// Replica addresses, host:port, repeatable: seeds of discovery. Static topology only. Default none.
    replica: Vec<String> = Vec::new();
    /// Sentinel addresses, host:port, repeatable. Sentinel topology only. Default none.
    sentinel: Vec<String> = Vec::new();
    /// Name of the master the sentinels monitor. Sentinel topology only. No default.
    master_name: String;
    /// Redis Cluster node addresses, host:port, repeatable: seeds of cluster discovery (any node of the
    /// cluster will do; the rest are learned from it). Cluster topology only. Default none.
    cluster: Vec<String> = Vec::new();
    /// Address mapping, repeatable "announced=reachable" (host:port each): addresses nodes and sentinels
    /// announce (containers, NAT) are replaced by the reachable ones. Default none.
    address_map: Vec<String> = Vec::new();
    /// The proxy's own zone (datacenter, site, availability zone): reads prefer replicas in it (see
    /// `zone_affinity`). Default none: reads ignore zones.
    zone: String;
    /// Zones of nodes, repeatable, "ADDR=ZONE" (host:port as the proxy reaches the node), "HOST=ZONE"
    /// (every port) or "CIDR=ZONE" (nodes addressed by IP in that network); the most specific entry
    /// wins. A node without an entry has the zone it reports itself (Valkey 8.1's `availability-zone`),
    /// else none (it counts as remote). Flag `--node-zone` (or `--node-zones`). Default none.
    node_zones: Vec<String> = Vec::new(), flag "node-zone";
    /// With `zone` set, the order reads try nodes in: "replicas" (replicas in the proxy's zone, then
    /// replicas in other zones, then the primary: GLIDE's AZ_AFFINITY) or "replicas-and-primary"
    /// (replicas in the zone, then the primary if it is in the zone, then other replicas: GLIDE's
    /// AZ_AFFINITY_REPLICAS_AND_PRIMARY). Lag limits and consistency apply in every tier. Default
    /// "replicas".
    zone_affinity: ZoneAffinity = ZoneAffinity::Replicas;
    /// Replicas the embedded topology starts. Default 2.
    embedded_replicas: u32 = 2;
    /// Sentinels the embedded topology starts. Default 3.
    embedded_sentinels: u32 = 3;
    /// Interval between topology discoveries (INFO replication of every node, or the sentinels' view), in
    /// milliseconds; failures and sentinel events trigger one at once. Default 1000.
    discovery_interval_ms: u64 = 1000;
    /// How long a write waits for a primary when none is reachable (failover), in milliseconds; past it
    /// the write fails. Default 10000.
    write_hold_ms: u64 = 10_000;
    /// How long a read may take on one node before it is retried on another, in milliseconds; counted
    /// from the later of its sending and the last bytes the node sent on its connection (a node
    /// streaming the replies ahead of it is not stalled). Default 1000.
    read_timeout_ms: u64 = 1000;
    /// How long a write sent to a node may wait while the node sends nothing on its connection, in
    /// milliseconds; past it the client gets an error saying the write may have run (it is never sent
    /// again). Default 10000.
    write_timeout_ms: u64 = 10_000;
    /// Replicas that must acknowledge a write (Redis WAIT, sent by the proxy after each batch of writes
    /// on a connection) before its client gets the reply; with fewer by `write_ack_timeout_ms` the client
    /// gets an error saying the write ran on the primary but was not acknowledged (treat it as
    /// unknown). 0 turns acknowledgements off. Default 0.
    min_write_acks: u32 = 0;
    /// How long a write waits for `min_write_acks` replicas to acknowledge it, in milliseconds; must be
    /// below `write_timeout_ms`. The shared connection that carried the write runs nothing else
    /// meanwhile. Default 500.
    write_ack_timeout_ms: u64 = 500;
    /// Per proxy user, repeatable, "name=N": `min_write_acks` for that user's connections (0: none).
    /// Default none (every user gets `min_write_acks`).
    user_min_write_acks: Vec<String> = Vec::new();
    /// Per proxy user, repeatable, "name=MS": `write_ack_timeout_ms` for that user's connections, in
    /// milliseconds. Default none (every user gets `write_ack_timeout_ms`).
    user_write_ack_timeout_ms: Vec<String> = Vec::new();
    /// Split-brain guard: writes are refused (-NOREPLICAS, nothing sent) while fewer than this many
    /// replicas are connected to the primary within `min_replicas_max_lag_ms`, as the proxy's probes
    /// measure them; reads go on. 0 turns the guard off. Default 0.
    min_replicas: u32 = 0;
    /// Largest lag, in milliseconds, at which a replica counts for `min_replicas`: the lag its last
    /// probe measured plus the time since that probe. At least twice `probe_interval_ms`. Default 10000.
    min_replicas_max_lag_ms: u64 = 10_000;
    /// How long a read may go unanswered on one node before it is sent to another node instead (a
    /// hedge: the node may be frozen), in milliseconds; 0: ten times the recent read latency, at least 20
    /// and at most half of read_timeout_ms. Only reads are sent again. Default 0.
    read_hedge_ms: u64 = 0;
    /// Read consistency: "session" (read-your-writes, monotonic reads), "global" (as session, and a read
    /// sees every write acknowledged through this proxy before it began), "eventual" (lag limit only),
    /// "primary" (all reads to the primary). Default "session".
    consistency: Consistency = Consistency::Session;
    /// Largest replication lag, in milliseconds, at which a replica still gets reads: no read returns
    /// data older than this. Default 1000. The primary's offset is sampled about once per probe: keep
    /// it well above `probe_interval_ms`.
    max_lag_ms: u64 = 1000;
    /// Largest replication lag, in bytes of replication stream, at which a replica still gets reads; 0
    /// disables the byte limit. Default 0.
    max_lag_bytes: u64 = 0;
    /// Where reads go when no replica is eligible: "primary" or "error". Default "primary".
    fallback: Fallback = Fallback::Primary;
    /// Interval between replication offset probes (ROLE) of every node, in milliseconds. Default 100.
    probe_interval_ms: u64 = 100;
    /// Threads serving clients, each with its own connections to every node; 0: half the CPU cores, at
    /// least one. Default 0.
    worker_threads: u32 = 0;
    /// Shared pipelined connections per upstream node, per worker thread (and per database and protocol
    /// in use). Default 1.
    backend_connections: u32 = 1;
    /// Timeout for connecting to and greeting an upstream node, in milliseconds. Default 1000.
    connect_timeout_ms: u64 = 1000;
    /// Username for upstream connections (Redis ACL). Default none (the `default` user).
    backend_username: String;
    /// Password for upstream connections; "env:NAME" or "file:PATH" reads it from there. Default none.
    backend_password: String;
    /// Username for Sentinel connections (Sentinel's own ACL). Default none (the `default` user).
    sentinel_username: String;
    /// Password for Sentinel connections (Sentinel's own `requirepass`, not the data nodes'); "env:NAME"
    /// or "file:PATH" reads it from there. Default none.
    sentinel_password: String;
    /// Password clients must give (AUTH password) before anything else, independent of the upstream
    /// credentials; "env:NAME" or "file:PATH" reads it from there. Default none: no proxy-side auth.
    requirepass: String;
    /// Named users, repeatable, "name:password" (AUTH name password, HELLO 3 AUTH name password); the
    /// password may be "env:NAME" or "file:PATH". Default none.
    user: Vec<String> = Vec::new();
    /// Read-only users, repeatable, "name:password": they may run only read-only commands; anything else
    /// gets -NOPERM. Default none.
    readonly_user: Vec<String> = Vec::new();
    /// Admin users, repeatable, "name:password": they may also run the commands that stop, move or
    /// reshape nodes (SHUTDOWN, REPLICAOF, FAILOVER, DEBUG, CLUSTER changes, CONFIG SET of replication
    /// settings), which everyone else gets -NOPERM for. Default none.
    admin_user: Vec<String> = Vec::new();
    /// Refresh the command table from the primary's COMMAND reply: true or false. Default true.
    refresh_commands: bool = true;
    /// Largest bulk string in a request, in bytes. Replies are held to it too, but never to less than
    /// Redis's own 512 MiB. Default 536870912 (512 MiB, as Redis).
    max_bulk_bytes: u64 = 512 * 1024 * 1024;
    /// Most arguments in one request. Default 1048576.
    max_array_len: u64 = 1024 * 1024;
    /// Longest inline (telnet-style) command line, in bytes. Default 65536.
    max_inline_bytes: u64 = 64 * 1024;
    /// Ignored, and accepted so that files written for earlier versions still load: replies are scanned
    /// at any depth a server produces. Default none.
    max_nesting_depth: u64;
    /// Most bytes a client may have sent that are not yet forwarded (one request must fit), in bytes.
    /// Default 1073741824 (1 GiB, as Redis's client-query-buffer-limit).
    max_request_bytes: u64 = 1024 * 1024 * 1024;
    /// Most commands of one client awaiting replies; past it the proxy stops reading from that client.
    /// Default 4096.
    max_client_inflight: u64 = 4096;
    /// Most reply bytes waiting for a client that does not read them; past it the client is
    /// disconnected (Redis's client-output-buffer-limit). 0 disables the limit. Default 67108864 (64 MiB).
    max_client_output_bytes: u64 = 64 * 1024 * 1024;
    /// Most reply bytes waiting for clients that do not read them, over every client; past it the
    /// clients holding the most are disconnected first until the rest fits (Redis's maxmemory-clients).
    /// Output under 4 KiB per client is not counted. 0 disables the limit. Default 268435456 (256 MiB).
    max_total_output_bytes: u64 = 256 * 1024 * 1024;
    /// Most client connections; past it a new client gets "-ERR max number of clients reached" and is
    /// closed. Default 10000.
    max_clients: u64 = 10_000;
    /// Close a client idle this long, in milliseconds (not pub/sub, MONITOR or blocked clients); 0
    /// disables it. Default 0.
    client_idle_timeout_ms: u64 = 0;
    /// TLS client listener address (ip:port), served alongside `listen`; needs `tls_cert_file` and
    /// `tls_key_file`. A client's handshake must finish within `connect_timeout_ms`. Default none (no TLS
    /// listener).
    tls_listen: String;
    /// Certificate chain (PEM, leaf first) the TLS listener presents; read again on SIGHUP. Default none.
    tls_cert_file: PathBuf;
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`; read again on SIGHUP. Default none.
    tls_key_file: PathBuf;
    /// CA bundle (PEM) for mutual TLS: clients of the TLS listener must present a certificate it signed;
    /// read again on SIGHUP. Default none (no client certificate asked for).
    tls_client_ca_file: PathBuf;
    /// Connect to Redis nodes over TLS: true or false; needs `backend_tls_ca_file`. Default false.
    backend_tls: bool = false;
    /// CA bundle (PEM) that upstream certificates (nodes with `backend_tls`, sentinels with `sentinel_tls`)
    /// must chain to; read again on SIGHUP. Default none.
    backend_tls_ca_file: PathBuf;
    /// Name upstream certificates are verified against, and sent as SNI. Default: the host part of each
    /// address connected to (an IP address is checked against the certificate's IP addresses).
    backend_tls_server_name: String;
    /// Client certificate chain (PEM) for upstream servers that ask for one; needs `backend_tls_key_file`;
    /// read again on SIGHUP. Default none.
    backend_tls_cert_file: PathBuf;
    /// Private key (PEM) of `backend_tls_cert_file`; read again on SIGHUP. Default none.
    backend_tls_key_file: PathBuf;
    /// Connect to sentinels over TLS, with the `backend_tls_*` CA, name and certificate: true or false.
    /// Default false.
    sentinel_tls: bool = false;
    /// Time allowed for in-flight replies after SIGTERM, in milliseconds. Default 5000.
    shutdown_grace_ms: u64 = 5000;
    /// Log level or filter (RUST_LOG syntax), used when RUST_LOG is unset. Default "info".
    log_level: String = "info".into();
    /// Log format: "text" or "json". Default "text".
    log_format: LogFormat = LogFormat::Text;
}

/// The option closest to a name that is none, if one is close: a few letters apart, or naming it
/// without its unit (`max_lag` for `max_lag_ms`).
fn did_you_mean(key: &str) -> Option<&'static str> {
    let key = key.replace('-', "_").to_ascii_lowercase();
    let (best, distance) = OPTION_NAMES
        .iter()
        .map(|name| (*name, edit_distance(&key, name)))
        .min_by_key(|(_, d)| *d)?;
    let prefix = OPTION_NAMES
        .iter()
        .find(|name| name.starts_with(&key) && key.len() >= 4);
    if distance <= 2.max(key.len() / 4) {
        Some(best)
    } else {
        prefix.copied()
    }
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_option_is_matched_to_the_nearest_one() {
        assert_eq!(did_you_mean("max_lag"), Some("max_lag_ms"));
        assert_eq!(did_you_mean("sentinels"), Some("sentinel"));
        assert_eq!(did_you_mean("probe-interval-ms"), Some("probe_interval_ms"));
        assert_eq!(did_you_mean("requirepas"), Some("requirepass"));
        assert_eq!(did_you_mean("completely_unrelated_thing"), None);
    }
}
