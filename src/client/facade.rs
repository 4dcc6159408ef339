//! The Sentinel face (`sentinel_facade = true`): the proxy answers what a Sentinel-aware client asks a
//! Sentinel, naming the proxy's own address as the master and as its one replica, so that an application
//! configured for Sentinel reaches redsplit without a code change (and redsplit does the routing):
//! `SENTINEL get-master-addr-by-name`, `masters`, `master`, `replicas`/`slaves`, `sentinels` (none), and
//! `ROLE` (a master, for the clients that check the address they were given).
//!
//! The master is known by the configured `master_name` (`mymaster` if none) in `SENTINEL masters`; the
//! commands naming a master answer for any name, since the proxy fronts one.

use bytes::{Bytes, BytesMut};

use super::reply::{ClientError, Encoder};
use super::session::Session;

/// The master name `SENTINEL masters` reports when none is configured.
pub const DEFAULT_NAME: &str = "mymaster";

impl Session {
    /// `SENTINEL ...` as a Sentinel answers it; `name`: the master's name.
    pub(super) fn sentinel(&self, args: &[Vec<u8>], name: &str) -> Bytes {
        let enc = Encoder {
            resp3: self.state.key.resp3,
        };
        let (ip, port) = self.own_address();
        let sub = args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .unwrap_or_default();
        let mut b = BytesMut::new();
        match (sub.as_str(), args.len()) {
            ("get-master-addr-by-name", 3) => {
                enc.array(&mut b, 2);
                enc.bulk(&mut b, ip.as_bytes());
                enc.bulk(&mut b, port.as_bytes());
            }
            ("masters", 2) => {
                enc.array(&mut b, 1);
                self.master_entry(&enc, &mut b, name, &ip, &port);
            }
            ("master", 3) => {
                let asked = String::from_utf8_lossy(&args[2]).into_owned();
                self.master_entry(&enc, &mut b, &asked, &ip, &port);
            }
            ("replicas" | "slaves", 3) => {
                enc.array(&mut b, 1);
                let fields = [
                    ("name", format!("{ip}:{port}")),
                    ("ip", ip.clone()),
                    ("port", port.clone()),
                    ("runid", String::new()),
                    ("flags", "slave".into()),
                    ("link-pending-commands", "0".into()),
                    ("link-refcount", "1".into()),
                    ("last-ping-sent", "0".into()),
                    ("last-ok-ping-reply", "0".into()),
                    ("last-ping-reply", "0".into()),
                    ("down-after-milliseconds", "5000".into()),
                    ("info-refresh", "0".into()),
                    ("role-reported", "slave".into()),
                    ("role-reported-time", "0".into()),
                    ("master-link-down-time", "0".into()),
                    ("master-link-status", "ok".into()),
                    ("master-host", ip.clone()),
                    ("master-port", port.clone()),
                    ("slave-priority", "100".into()),
                    ("slave-repl-offset", "0".into()),
                    ("replica-announced", "1".into()),
                ];
                pairs(&enc, &mut b, &fields);
            }
            ("sentinels", 3) => enc.array(&mut b, 0),
            ("myid", 2) => enc.bulk(&mut b, b"0000000000000000000000000000000000redsplit"),
            _ => {
                let label = format!(
                    "SENTINEL {}",
                    String::from_utf8_lossy(args.get(1).map_or(&b""[..], |a| a.as_slice()))
                );
                return ClientError::Unsupported(&label).frame();
            }
        }
        b.freeze()
    }

    /// `ROLE` of the proxy as a Sentinel-aware client expects of a master: `master`, the primary's
    /// offset, no replicas (the proxy routes reads itself).
    pub(super) fn facade_role(&self) -> Bytes {
        let enc = Encoder {
            resp3: self.state.key.resp3,
        };
        let offset = self
            .ctx
            .topo
            .snapshot()
            .primary()
            .map_or(0, |p| p.repl.offset());
        let mut b = BytesMut::new();
        enc.array(&mut b, 3);
        enc.bulk(&mut b, b"master");
        enc.int(&mut b, i64::try_from(offset).unwrap_or(i64::MAX));
        enc.array(&mut b, 0);
        b.freeze()
    }

    /// The address this client reached the proxy at, as ip and port.
    fn own_address(&self) -> (String, String) {
        match self.local {
            Some(a) => (a.ip().to_string(), a.port().to_string()),
            None => ("127.0.0.1".into(), "6380".into()),
        }
    }

    fn master_entry(&self, enc: &Encoder, b: &mut BytesMut, name: &str, ip: &str, port: &str) {
        let snapshot = self.ctx.topo.snapshot();
        let runid = snapshot
            .primary()
            .and_then(|p| p.identity())
            .map(|i| i.run_id.0)
            .unwrap_or_default();
        let fields = [
            ("name", name.to_string()),
            ("ip", ip.to_string()),
            ("port", port.to_string()),
            ("runid", runid),
            (
                "flags",
                if snapshot.primary().is_some() {
                    "master".into()
                } else {
                    "master,s_down".into()
                },
            ),
            ("link-pending-commands", "0".into()),
            ("link-refcount", "1".into()),
            ("last-ping-sent", "0".into()),
            ("last-ok-ping-reply", "0".into()),
            ("last-ping-reply", "0".into()),
            ("down-after-milliseconds", "5000".into()),
            ("info-refresh", "0".into()),
            ("role-reported", "master".into()),
            ("role-reported-time", "0".into()),
            ("config-epoch", snapshot.generation.0.to_string()),
            ("num-slaves", "1".into()),
            ("num-other-sentinels", "0".into()),
            ("quorum", "1".into()),
            ("failover-timeout", "60000".into()),
            ("parallel-syncs", "1".into()),
        ];
        pairs(enc, b, &fields);
    }
}

/// One Sentinel entry: a map in RESP3, a flat array of names and values in RESP2.
fn pairs(enc: &Encoder, b: &mut BytesMut, fields: &[(&str, String)]) {
    enc.map(b, fields.len());
    for (k, v) in fields {
        enc.bulk(b, k.as_bytes());
        enc.bulk(b, v.as_bytes());
    }
}
