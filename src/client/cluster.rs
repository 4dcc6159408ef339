//! Routing in front of a Redis Cluster, for clients that speak to the proxy as to one non-cluster Redis:
//! each command goes to the shard that owns its keys' slot, and the proxy does what one Redis would
//! for commands that span shards or the whole key space.
//!
//! - One slot: the owning shard, where [`route::plan`] chooses as for a single primary (reads on its
//!   replicas within the lag limit, with the session's floors for that shard).
//! - Keys in several slots: `MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH` are split, one part per
//!   slot, queued one after the other; their replies are merged in order when the last one is delivered
//!   ([`merge`]). Any other command gets Redis Cluster's `CROSSSLOT` error.
//! - No key: the first shard. Whole key space: `DBSIZE`, `KEYS`, `FLUSHALL`, `FLUSHDB`, `SCRIPT
//!   LOAD|FLUSH`, `FUNCTION LOAD|FLUSH|DELETE|RESTORE` go to every shard and merge; so does `RANDOMKEY`
//!   (a key from any shard that has one); `SCAN` walks the shards in turn, its cursor naming the node (see `cursor`).
//! - A transaction takes the shard of its first keyed command (looked for among the requests already
//!   buffered after `MULTI`; a `MULTI` sent alone is answered here and put back in front of the command
//!   that follows, which then decides), `WATCH` the shard of its keys; a later command for another shard
//!   is refused.

pub(super) mod merge;

use std::sync::Arc;

use bytes::Bytes;

use super::dispatch::{Batch, Step};
use super::gate::Args;
use super::queue::Then;
use super::reply::{ClientError, OK};
use super::session::Session;
use crate::command::keys::{key_positions, Keys};
use crate::command::{Class, Table};
use crate::metrics::Kind;
use crate::resp::Request;
use crate::route::{self, Plan, Policy};
use crate::topology::{key_slot, Shard, Topology};
use crate::upstream::{self, Want};
use merge::How;

/// One part of a request sent to a shard: the shard, the part's request bytes, the positions of its keys
/// among the request's (for `MGET`'s merge), and whether its slot is being moved (reads of it then go to
/// the primary).
type ShardPart<'t> = (&'t Shard, Bytes, Vec<usize>, bool);

/// Where a command goes in front of a cluster.
pub(super) enum Routed<'t> {
    /// To this shard, planned as for a single primary.
    Shard(&'t Shard),
    /// To this shard, whose slot is being moved: a read goes to its primary, which redirects it if the
    /// key moved already (a replica would answer nil).
    Moving(&'t Shard),
    /// Carried out already (answered, split, fanned out, or waiting).
    Done(Step),
}

/// One part of a command split over shards: its place in the merge.
pub(super) struct Part {
    /// How the parts combine.
    pub how: How,
    /// For `MGET`: where its values go in the reply.
    pub positions: Vec<usize>,
    /// The first part (a new merge starts).
    pub first: bool,
    /// The last part (the merged reply goes out).
    pub last: bool,
}

/// Commands split per slot when their keys span slots, and how their replies merge.
fn splittable(name: &[u8]) -> Option<How> {
    match name {
        b"MGET" => Some(How::Place { len: 0 }),
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Some(How::Sum),
        b"MSET" => Some(How::Ok),
        _ => None,
    }
}

/// Commands about the whole key space, sent to every shard, and how their replies merge.
fn every_shard(name: &[u8], sub: Option<&[u8]>) -> Option<How> {
    match (name, sub) {
        (b"DBSIZE", _) => Some(How::Sum),
        (b"RANDOMKEY", _) => Some(How::AnyNotNull),
        (b"KEYS", _) => Some(How::Concat),
        (b"FLUSHALL" | b"FLUSHDB", _) => Some(How::Ok),
        (b"SCRIPT", Some(b"LOAD")) => Some(How::First),
        (b"SCRIPT", Some(b"FLUSH")) => Some(How::Ok),
        (b"FUNCTION", Some(b"LOAD")) => Some(How::First),
        (b"FUNCTION", Some(b"FLUSH" | b"DELETE" | b"RESTORE")) => Some(How::Ok),
        _ => None,
    }
}

impl Session {
    /// Routes one request in front of a cluster (see the module documentation).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cluster_route<'t>(
        &mut self,
        class: Class,
        req: &Request,
        start: usize,
        table: &Table,
        topo: &'t Arc<Topology>,
        policy: &Policy,
        batch: &mut Option<Batch>,
    ) -> Routed<'t> {
        let all: Option<Vec<Vec<u8>>> =
            (req.argc > crate::resp::request::KEPT_ARGS).then(|| self.input.args(req, start).all());
        // Upper-cased on the stack: this runs for every command. Longer names match nothing here.
        let (mut name, mut sub) = ([0u8; 16], [0u8; 16]);
        let (name, sub, keys, other_db) = {
            let args = self.input.args(req, start);
            let arg = |i: usize| -> Option<&[u8]> {
                match &all {
                    Some(a) => a.get(i).map(Vec::as_slice),
                    None => args.arg(i),
                }
            };
            let name = upper(&mut name, arg(0));
            let sub = upper(&mut sub, arg(1));
            let keys: Vec<(usize, u16)> = match key_positions(table, req.argc, arg) {
                Keys::At(at) => at
                    .into_iter()
                    .filter_map(|i| arg(i).map(|k| (i, key_slot(k))))
                    .collect(),
                Keys::None | Keys::Unknown => Vec::new(),
            };
            // SELECT of a database other than 0 (a non-number gets the usual error from SELECT itself).
            let db = arg(1)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|a| a.parse::<i64>().ok());
            (name, sub, keys, db.is_some_and(|d| d != 0))
        };
        let first = first_shard(topo);
        match name {
            b"SELECT" if other_db => {
                return Routed::Done(self.reply_local(
                    batch,
                    req,
                    ClientError::ClusterSelect.frame(),
                ));
            }
            b"MULTI" => {
                let next = start + req.len;
                if self.input.peek(next, 1).is_empty() {
                    // Sent alone (a client that waits for +OK): answered now; the shard is chosen by
                    // the command that follows (see `deferred_multi`).
                    self.deferred_multi = true;
                    return Routed::Done(self.reply_local(batch, req, Bytes::from_static(OK)));
                }
                return Routed::Shard(self.transaction_shard(req, start, table, topo));
            }
            // WAIT counts the replicas of one primary that have this session's writes: that of the one
            // shard the session sent commands to. With writes on several shards, a count from one of
            // them would claim more than is true.
            b"WAIT" => {
                let mut shards = self.state.last_primary.iter().map(|(s, _)| *s);
                return match (shards.next(), shards.next()) {
                    (None, _) => Routed::Shard(first),
                    (Some(id), None) => Routed::Shard(topo.shard_by_id(id).unwrap_or(first)),
                    (Some(_), Some(_)) => Routed::Done(self.reply_local(
                        batch,
                        req,
                        ClientError::Unsupported(
                            "WAIT after commands to several cluster shards (connect once per shard)",
                        )
                        .frame(),
                    )),
                };
            }
            _ => {}
        }
        if let Some(how) = every_shard(name, Some(sub).filter(|s| !s.is_empty())) {
            let bytes = self.input.args(req, start).all();
            let bytes = encode(&bytes.iter().map(Vec::as_slice).collect::<Vec<_>>());
            // Every shard, also one failing over: leaving it out would answer for part of the data.
            let parts = topo
                .shards
                .iter()
                .map(|s| (s, bytes.clone(), Vec::new(), false))
                .collect();
            return Routed::Done(self.send_parts(class, how, parts, req, policy, batch));
        }
        let Some(&(_, slot)) = keys.first() else {
            return Routed::Shard(first);
        };
        if keys.iter().all(|&(_, s)| s == slot) {
            return match topo.shard_for_slot(slot) {
                Some(shard) if topo.slot_moving(slot) => Routed::Moving(shard),
                Some(shard) => Routed::Shard(shard),
                None => Routed::Done(self.reply_local(
                    batch,
                    req,
                    ClientError::SlotUnserved(slot).frame(),
                )),
            };
        }
        let Some(how) = splittable(name) else {
            return Routed::Done(self.reply_local(batch, req, ClientError::CrossSlot.frame()));
        };
        let args = all.unwrap_or_else(|| self.input.args(req, start).all());
        match split(&args, &keys, how, topo) {
            Ok(parts) => Routed::Done(self.send_parts(
                class,
                merge_how(name, keys.len()),
                parts,
                req,
                policy,
                batch,
            )),
            Err(slot) => {
                Routed::Done(self.reply_local(batch, req, ClientError::SlotUnserved(slot).frame()))
            }
        }
    }

    /// A request after a `MULTI` answered here ([`Session::deferred_multi`]): `EXEC` and `DISCARD` of an
    /// empty transaction are answered as Redis answers them; any other command has a `MULTI` put before
    /// it in the input, which then goes to the shard of this command's keys like a pipelined one (its
    /// reply dropped: the client had it). `None`: go on with the request as usual.
    pub(super) fn deferred_multi_request(
        &mut self,
        req: &Request,
        start: usize,
        batch: &mut Option<Batch>,
    ) -> Option<Step> {
        let mut buf = [0u8; 16];
        let name = upper(&mut buf, self.input.args(req, start).arg(0));
        let reply: &'static [u8] = match name {
            b"EXEC" => b"*0\r\n",
            b"DISCARD" => OK,
            b"MULTI" => b"-ERR MULTI calls can not be nested\r\n",
            b"WATCH" => b"-ERR WATCH inside MULTI is not allowed\r\n",
            b"RESET" | b"QUIT" => {
                self.deferred_multi = false;
                return None;
            }
            _ => {
                self.deferred_multi = false;
                self.swallow_multi = true;
                self.input.insert(start, b"*1\r\n$5\r\nMULTI\r\n");
                return Some(Step::Next);
            }
        };
        if matches!(name, b"EXEC" | b"DISCARD") {
            self.deferred_multi = false;
        }
        Some(self.reply_local(batch, req, Bytes::from_static(reply)))
    }

    /// The shard a transaction starting with `MULTI` (`req`) runs on: that of the first keyed command
    /// already buffered after it, else the first shard (a later command for another shard is refused).
    fn transaction_shard<'t>(
        &self,
        req: &Request,
        start: usize,
        table: &Table,
        topo: &'t Topology,
    ) -> &'t Shard {
        let first = first_shard(topo);
        for args in self.input.peek(start + req.len, 64) {
            let arg = |i: usize| args.get(i).map(Vec::as_slice);
            if arg(0).is_some_and(|n| n.eq_ignore_ascii_case(b"EXEC")) {
                break;
            }
            if let Keys::At(at) = key_positions(table, args.len(), arg) {
                if let Some(key) = at.first().and_then(|&i| arg(i)) {
                    return topo.shard_for_slot(key_slot(key)).unwrap_or(first);
                }
            }
        }
        first
    }

    /// True if `req`, on a session pinned to shard `pinned`, has keys another shard owns.
    pub(super) fn other_shard(
        &self,
        req: &Request,
        start: usize,
        table: &Table,
        topo: &Topology,
        pinned: crate::topology::ShardId,
    ) -> bool {
        let args = self.input.args(req, start).all();
        let arg = |i: usize| args.get(i).map(Vec::as_slice);
        let Keys::At(at) = key_positions(table, args.len(), arg) else {
            return false;
        };
        at.iter().filter_map(|&i| arg(i)).any(|k| {
            topo.shard_for_slot(key_slot(k))
                .is_some_and(|s| s.id != pinned)
        })
    }

    /// Sends one part per shard of `parts` (`(shard, request bytes, positions)`), each planned on its
    /// shard as `class`, queued in order, merged by `how` when delivered. Nothing is sent unless every
    /// part has a node to go to: with one shard's primary missing, the whole request waits (parked).
    fn send_parts(
        &mut self,
        class: Class,
        how: How,
        parts: Vec<ShardPart<'_>>,
        req: &Request,
        policy: &Policy,
        batch: &mut Option<Batch>,
    ) -> Step {
        if parts.is_empty() {
            return self.reply_local(batch, req, ClientError::NoPrimary.frame());
        }
        let mut plans = Vec::with_capacity(parts.len());
        for (shard, _, _, moving) in &parts {
            let moved = Policy {
                consistency: route::Consistency::Primary,
                ..*policy
            };
            let policy = if *moving { &moved } else { policy };
            let writes = self.cur_writes;
            let plan = route::plan(
                class,
                writes,
                self.state.reads.shard(shard.id),
                shard,
                policy,
            );
            match plan {
                Plan::Forward { .. } | Plan::Broadcast { .. } => plans.push(plan),
                Plan::Hold => {
                    self.flush(batch);
                    return self.park(req);
                }
                Plan::Silent(silent) => {
                    return self.reply_local(batch, req, ClientError::PrimarySilent(silent).frame())
                }
                Plan::Refuse(reason) => {
                    return self.reply_local(batch, req, ClientError::NoReplica(reason).frame())
                }
                Plan::Guarded(closed) => {
                    self.ctx
                        .metrics
                        .writes_refused(crate::metrics::Refusal::MinReplicas);
                    return self.reply_local(batch, req, ClientError::NoReplicas(closed).frame());
                }
                _ => {
                    return self.reply_local(
                        batch,
                        req,
                        ClientError::Unsupported("this command across shards").frame(),
                    )
                }
            }
        }
        // The rules `add` keeps for one command: a new primary waits for the old one's replies, and a
        // command that may write waits for reads still to be checked (the batch so far included).
        self.flush(batch);
        let must_wait = plans
            .iter()
            .zip(&parts)
            .any(|(p, (shard, _, _, _))| match p {
                Plan::Forward {
                    node,
                    primary: true,
                    ..
                } => self.state.primary_changed(shard.id, node.id),
                _ => false,
            })
            || (class != Class::Read && self.queue.checked_in_flight());
        if must_wait && !self.queue.is_empty() {
            return Step::Wait;
        }
        self.input.skip(req);
        self.ctx.metrics.cluster_splits.inc();
        let n = parts.len();
        for (i, ((shard, bytes, positions, _), plan)) in parts.into_iter().zip(plans).enumerate() {
            let mut kinds = [0; 3];
            kinds[self.cur_kind as usize] = 1;
            match plan {
                Plan::Forward {
                    node,
                    primary,
                    reason,
                    want,
                    check,
                } => {
                    self.count_route(reason, primary, class == Class::Read, &node);
                    self.state.sent(shard.id, node.id, primary, 1);
                    let one = Batch::one(shard.id, node, primary, class == Class::Read, kinds)
                        .with_offsets(want, check);
                    // A write's part waits for its shard's replicas as a whole command would.
                    let acks = if primary { self.cur_acks } else { None };
                    self.submit(one.with_acks(acks), bytes);
                }
                Plan::Broadcast { primary, replicas } => {
                    for r in &replicas {
                        let conn = self.state.conn_for(r);
                        r.metrics.load().commands(false, Kind::Other, 1);
                        drop(upstream::submit(&conn, bytes.clone(), 1, Want::NONE));
                    }
                    self.state.sent(shard.id, primary.id, true, 1);
                    let one = Batch::one(shard.id, primary, true, false, [0, 0, 1]);
                    self.submit(one.with_acks(self.cur_acks), bytes);
                }
                _ => {}
            }
            if let Some(e) = self.queue.back_mut() {
                e.then = Then::Merge(Part {
                    how: how.clone(),
                    positions,
                    first: i == 0,
                    last: i + 1 == n,
                });
            }
        }
        Step::Next
    }

    /// Delivers one part of a split command: kept until the last part, which gives the merged reply.
    /// `None` while parts are still to come.
    pub(super) fn merge_part(&mut self, part: Part, reply: Bytes, silent: bool) -> Option<Bytes> {
        let (mut merging, silenced) = match self.merging.take() {
            Some(m) if !part.first => m,
            _ => (merge::Merging::new(part.how), false),
        };
        merging.add(reply, part.positions);
        let silenced = silenced || silent;
        if !part.last {
            self.merging = Some((merging, silenced));
            return None;
        }
        (!silenced).then(|| merging.finish())
    }

    /// The tag of the node where a cluster-wide SCAN goes on once `node`'s shard is done: the primary of
    /// the next shard in number order. `Ok(None)`: it was the last; `Err`: that primary cannot be named.
    pub(super) fn next_scan_shard(&self, node: &upstream::Node) -> Result<Option<u16>, ()> {
        let topo = self.ctx.topo.load();
        let Some(here) = topo.shard_of(node.id).map(|s| s.id) else {
            return Err(());
        };
        let next = topo
            .shards
            .iter()
            .filter(|s| s.id > here)
            .min_by_key(|s| s.id);
        match next {
            None => Ok(None),
            Some(s) => s
                .primary
                .as_ref()
                .and_then(|p| p.identity())
                .map(|i| Some(super::cursor::tag(&i)))
                .ok_or(()),
        }
    }
}

/// `arg` upper-cased into `buf`; empty if there is none or it is longer than `buf`.
fn upper<'b>(buf: &'b mut [u8; 16], arg: Option<&[u8]>) -> &'b [u8] {
    match arg {
        Some(a) if a.len() <= buf.len() => {
            let out = &mut buf[..a.len()];
            out.copy_from_slice(a);
            out.make_ascii_uppercase();
            out
        }
        _ => &[],
    }
}

/// The shard a cluster-wide SCAN starts on, and keyless commands go to: the lowest numbered.
pub(super) fn first_shard(topo: &Topology) -> &Shard {
    topo.shards
        .iter()
        .min_by_key(|s| s.id)
        .unwrap_or_else(|| topo.shard())
}

/// The merge of a split command `name` with `keys` keys.
fn merge_how(name: &[u8], keys: usize) -> How {
    match splittable(name) {
        Some(How::Place { .. }) => How::Place { len: keys },
        Some(how) => how,
        None => How::First,
    }
}

/// One request per slot of `keys` (`(argument position, slot)`), each with its keys (and, for `MSET`,
/// their values) in their original order, with their positions among the keys. `Err(slot)`: no shard
/// owns that slot.
fn split<'t>(
    args: &[Vec<u8>],
    keys: &[(usize, u16)],
    how: How,
    topo: &'t Topology,
) -> Result<Vec<ShardPart<'t>>, u16> {
    let pairs = matches!(how, How::Ok);
    let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
    for (n, &(_, slot)) in keys.iter().enumerate() {
        match slots.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, of)) => of.push(n),
            None => slots.push((slot, vec![n])),
        }
    }
    let mut out = Vec::with_capacity(slots.len());
    for (slot, of) in slots {
        let shard = topo.shard_for_slot(slot).ok_or(slot)?;
        let mut part: Vec<&[u8]> = vec![args.first().map_or(&b""[..], Vec::as_slice)];
        for &n in &of {
            let at = keys.get(n).map_or(0, |k| k.0);
            part.extend(args.get(at).map(Vec::as_slice));
            if pairs {
                part.extend(args.get(at + 1).map(Vec::as_slice));
            }
        }
        out.push((shard, encode(&part), of, topo.slot_moving(slot)));
    }
    Ok(out)
}

fn encode(args: &[&[u8]]) -> Bytes {
    let mut out = Vec::new();
    crate::resp::encode_command(&mut out, args);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Addr;
    use crate::topology::cluster::Described;
    use crate::topology::Topo;

    fn topo() -> Arc<Topology> {
        let t = Topo::new(crate::upstream::test_settings());
        let a = |s: &str| Addr::parse(s).expect("addr");
        t.publish_cluster(&[
            Described {
                primary: Some(a("a:1")),
                replicas: vec![],
                slots: vec![(0, 8191)],
                moving: vec![],
            },
            Described {
                primary: Some(a("b:1")),
                replicas: vec![],
                slots: vec![(8192, 16383)],
                moving: vec![],
            },
        ])
    }

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn an_mset_over_two_slots_splits_into_one_request_per_slot_with_its_values() {
        let t = topo();
        // foo: 12182 (b), bar: 5061 (a), {foo}x: same slot as foo.
        let a = args(&["MSET", "foo", "1", "bar", "2", "{foo}x", "3"]);
        let keys: Vec<(usize, u16)> = [1, 3, 5].iter().map(|&i| (i, key_slot(&a[i]))).collect();
        let parts = split(&a, &keys, How::Ok, &t).expect("owned");
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0].1,
            Bytes::from_static(
                b"*5\r\n$4\r\nMSET\r\n$3\r\nfoo\r\n$1\r\n1\r\n$6\r\n{foo}x\r\n$1\r\n3\r\n"
            )
        );
        assert_eq!(parts[0].2, [0, 2]);
        assert_eq!(
            parts[0].0.primary.as_ref().map(|p| p.addr.to_string()),
            Some("b:1".into())
        );
        assert_eq!(
            parts[1].1,
            Bytes::from_static(b"*3\r\n$4\r\nMSET\r\n$3\r\nbar\r\n$1\r\n2\r\n")
        );
        assert_eq!(parts[1].2, [1]);
    }

    #[test]
    fn only_the_listed_multi_key_commands_are_split() {
        assert!(splittable(b"MGET").is_some());
        assert!(splittable(b"DEL").is_some());
        assert!(splittable(b"RENAME").is_none());
        assert!(splittable(b"SUNIONSTORE").is_none());
        assert_eq!(merge_how(b"MGET", 3), How::Place { len: 3 });
    }
}
