//! Commands about the servers, answered through them and rewritten ([`super::rewrite`]): `INFO` (the
//! primary's sections and the proxy's own), `CONFIG GET` and `ACL LIST`/`GETUSER` (secrets left out),
//! and `CONFIG SET`, which reaches every node for the settings that must be equal everywhere.
//!
//! Each runs as a task of its own on the session's shared connections, off the hot path, and answers in
//! order with the session's other commands.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::dispatch::{Batch, Step};
use super::queue::{Then, Wait};
use super::reply::ClientError;
use super::session::Session;
use crate::metrics::Kind;
use crate::resp::{encode_command, Request};
use crate::topology::Shard;
use crate::upstream::{self, Node};

/// Settings `CONFIG SET` changes on every node, primary and replicas, and answers OK for only if every
/// node accepted. Reads go to replicas, and a replica may become the primary, so whatever decides what a
/// read returns or what happens to a key must match: memory limit and eviction, lazy freeing, the
/// encodings' thresholds, keyspace notifications, script and command limits, slow log and latency
/// tracking, client timeouts and limits. Settings that are a node's own (persistence, files, ports,
/// logging) go to the primary only; replication settings are guarded (admin users only).
pub const EVERYWHERE: &[&str] = &[
    "maxmemory",
    "maxmemory-",
    "lazyfree-",
    "hash-max-",
    "list-max-",
    "list-compress-depth",
    "set-max-",
    "zset-max-",
    "stream-node-max-",
    "hll-sparse-max-bytes",
    "lfu-",
    "active-expire-effort",
    "activedefrag",
    "active-defrag-",
    "notify-keyspace-events",
    "busy-reply-threshold",
    "lua-time-limit",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "client-output-buffer-limit",
    "maxclients",
    "timeout",
    "tcp-keepalive",
    "slowlog-",
    "latency-",
    "tracking-table-max-keys",
    "hz",
    "dynamic-hz",
];

/// True if `CONFIG SET` of `name` reaches every node (see [`EVERYWHERE`]).
pub fn everywhere(name: &[u8]) -> bool {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    EVERYWHERE.iter().any(|s| {
        if s.ends_with('-') {
            name.starts_with(s)
        } else {
            name == *s
        }
    })
}

impl Session {
    /// `CONFIG GET pattern...`: the primary's reply without secret values.
    pub(super) fn config_get(
        &mut self,
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        self.through_primary(req, shard, batch, None, super::rewrite::config_get)
    }

    /// `ACL LIST`, `ACL GETUSER`: the primary's reply without password hashes.
    pub(super) fn acl_show(
        &mut self,
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        self.through_primary(req, shard, batch, None, super::rewrite::acl)
    }

    /// `INFO [section...]`: the primary's sections, with the proxy's (`# Proxy`) when every section, the
    /// default ones, or `proxy` is asked for; `INFO proxy` alone is answered here.
    pub(super) fn info(
        &mut self,
        args: &[Vec<u8>],
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        let sections: Vec<String> = args[1..]
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .collect();
        let proxy = sections.is_empty()
            || sections
                .iter()
                .any(|s| matches!(s.as_str(), "default" | "all" | "everything" | "proxy"));
        if !proxy {
            return self.through_primary(req, shard, batch, None, Bytes::copy_from_slice);
        }
        let section = self.proxy_section(shard);
        let upstream: Vec<&[u8]> = args
            .iter()
            .filter(|a| !a.eq_ignore_ascii_case(b"proxy"))
            .map(Vec::as_slice)
            .collect();
        if upstream.len() == 1 && !sections.is_empty() {
            let reply = self.verbatim(section.as_bytes());
            return self.reply_local(batch, req, reply);
        }
        let mut cmd = Vec::new();
        encode_command(&mut cmd, &upstream);
        self.through_primary(req, shard, batch, Some(Bytes::from(cmd)), move |r| {
            super::rewrite::info_with(r, &section)
        })
    }

    /// `CONFIG SET name value ...`: to every node if every name is a setting that must be equal
    /// everywhere (answering OK only if all accepted), to the primary if none is; a mix is refused, since
    /// Redis sets the pairs of one call together or not at all.
    pub(super) fn config_set(
        &mut self,
        args: &[Vec<u8>],
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        let names: Vec<&Vec<u8>> = args.iter().skip(2).step_by(2).collect();
        let all = !names.is_empty() && names.iter().all(|n| everywhere(n));
        let any = names.iter().any(|n| everywhere(n));
        if any && !all {
            return self.reply_local(
                batch,
                req,
                Bytes::from_static(b"-ERR redsplit: this CONFIG SET mixes settings the proxy sets on every node with settings of the primary only; set them in separate calls\r\n"),
            );
        }
        if !all {
            return self.through_primary(req, shard, batch, None, Bytes::copy_from_slice);
        }
        let Ok(primary) = crate::route::writer(shard).cloned() else {
            return self.park(req);
        };
        self.flush(batch);
        let bytes = self.input.take(req);
        let nodes: Vec<Arc<Node>> = std::iter::once(primary.clone())
            .chain(shard.replica_nodes().cloned())
            .collect();
        let mut waits = Vec::new();
        for node in &nodes {
            let is_primary = node.id == primary.id;
            if self.ctx.registry.monitoring() {
                self.monitor_forwarded(&bytes, Some((node, is_primary)));
            }
            node.metrics.load().commands(is_primary, Kind::Other, 1);
            let conn = self.state.conn_for(node);
            waits.push((
                node.addr.to_string(),
                upstream::submit(&conn, bytes.clone(), 1, upstream::Want::NONE),
            ));
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            let total = waits.len();
            for (addr, wait) in waits {
                let reply = match wait.await {
                    Ok(Ok(r)) => r.bytes,
                    Ok(Err(e)) => ClientError::Upstream(&e).frame(),
                    Err(_) => Bytes::from_static(b"-ERR no reply\r\n"),
                };
                if !reply.starts_with(b"+OK") {
                    let text = String::from_utf8_lossy(&reply);
                    refused.push(format!(
                        "{addr}: {}",
                        text.trim_end().trim_start_matches('-')
                    ));
                }
            }
            let reply = if refused.is_empty() {
                Bytes::from_static(super::reply::OK)
            } else {
                Bytes::from(format!(
                    "-ERR redsplit: CONFIG SET refused by {} of {total} nodes ({}); the others took it\r\n",
                    refused.len(),
                    refused.join("; ")
                ))
            };
            let _ = tx.send(reply);
        });
        self.push(Wait::Task(rx), None, Then::Nothing);
        Step::Next
    }

    /// Sends `req` to the primary and answers with its reply.
    pub(super) fn forward_to_primary(
        &mut self,
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        self.through_primary(req, shard, batch, None, Bytes::copy_from_slice)
    }

    /// Sends `req` (or `bytes` instead) to the primary on the session's shared connection and answers
    /// with `rewrite` of the reply.
    fn through_primary(
        &mut self,
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
        bytes: Option<Bytes>,
        rewrite: impl FnOnce(&[u8]) -> Bytes + Send + 'static,
    ) -> Step {
        let Some(primary) = shard.primary.clone() else {
            return self.park(req);
        };
        self.flush(batch);
        let bytes = match bytes {
            Some(b) => {
                self.input.skip(req);
                b
            }
            None => self.input.take(req),
        };
        if self.ctx.registry.monitoring() {
            self.monitor_forwarded(&bytes, Some((&primary, true)));
        }
        primary.metrics.load().commands(true, Kind::Other, 1);
        let conn = self.state.conn_for(&primary);
        let wait = upstream::submit(&conn, bytes, 1, upstream::Want::NONE);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let reply = match wait.await {
                Ok(Ok(r)) => rewrite(&r.bytes),
                Ok(Err(e)) => ClientError::Upstream(&e).frame(),
                Err(_) => ClientError::NoPrimary.frame(),
            };
            let _ = tx.send(reply);
        });
        self.push(Wait::Task(rx), None, Then::Nothing);
        Step::Next
    }

    /// `INFO`'s `# Proxy` section: this proxy, its clients, and what it sees of the servers.
    fn proxy_section(&self, shard: &Shard) -> String {
        let ctx = &self.ctx;
        let snapshot = ctx.topo.snapshot();
        let (mut on_replicas, mut on_primary) = (0u64, 0u64);
        for n in ctx.topo.known_nodes() {
            let m = n.metrics.load();
            on_replicas += m.count(false, crate::metrics::Kind::Read);
            on_primary += m.count(true, crate::metrics::Kind::Read);
        }
        let share = if on_replicas + on_primary == 0 {
            0.0
        } else {
            on_replicas as f64 / (on_replicas + on_primary) as f64
        };
        let server = ctx.topo.server.load();
        let replicas = shard.replica_nodes().count();
        let eligible = shard
            .replica_nodes()
            .filter(|r| r.repl.is_eligible())
            .count();
        let primary = snapshot
            .primary()
            .map_or_else(|| "none".to_string(), |p| p.addr.to_string());
        format!(
            "# Proxy\r\n\
             proxy_name:redsplit\r\n\
             proxy_version:{version}\r\n\
             proxy_uptime_in_seconds:{uptime}\r\n\
             proxy_connected_clients:{clients}\r\n\
             proxy_pinned_sessions:{pinned}\r\n\
             proxy_topology_generation:{generation}\r\n\
             proxy_server:{server_name} {server_version}\r\n\
             proxy_primary:{primary}\r\n\
             proxy_replicas:{replicas}\r\n\
             proxy_eligible_replicas:{eligible}\r\n\
             proxy_reads_on_replicas:{on_replicas}\r\n\
             proxy_reads_on_primary:{on_primary}\r\n\
             proxy_reads_on_replicas_share:{share:.4}\r\n\
             proxy_failovers:{failovers}\r\n\
             proxy_writes_held_now:{held_now}\r\n\
             proxy_writes_held_total:{held}\r\n",
            version = env!("CARGO_PKG_VERSION"),
            uptime = ctx.registry.started.elapsed().as_secs(),
            clients = ctx.registry.len(),
            pinned = ctx.metrics.pinned_sessions.get(),
            generation = snapshot.generation.0,
            server_name = server.name,
            server_version = server.version,
            failovers = ctx.topo.failovers(),
            held_now = u8::from(ctx.topo.writes_held()),
            held = ctx.metrics.writes_held.get(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_encoding_settings_reach_every_node_and_persistence_does_not() {
        for name in [
            "maxmemory",
            "MAXMEMORY-POLICY",
            "maxmemory-samples",
            "hash-max-listpack-entries",
            "notify-keyspace-events",
            "slowlog-log-slower-than",
            "timeout",
        ] {
            assert!(everywhere(name.as_bytes()), "{name}");
        }
        for name in [
            "save",
            "appendonly",
            "dir",
            "dbfilename",
            "loglevel",
            "timeouts",
        ] {
            assert!(!everywhere(name.as_bytes()), "{name}");
        }
    }
}
