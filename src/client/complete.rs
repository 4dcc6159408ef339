//! What happens when a reply arrives: the front entry of the queue is delivered, sent again, or held
//! (see `route::retry` for when a batch may go again), and frames from the dedicated connection are
//! passed on or matched to their entries.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::pinned::{Change, Effect};
use super::queue::{Later, Outcome, Then, Wait};
use super::reply::ClientError;
use super::session::Session;
use crate::metrics::{BackendError, Kind};
use crate::route::{self, retry, ReadTarget};
use crate::topology::{Shard, ShardId};
use crate::upstream::{self, Node};

/// What became of an entry that could not be delivered as it was.
enum Resend {
    /// Sent again; keep waiting.
    Sent,
    /// Waiting for a node to send it to.
    Held,
    /// No more tries: deliver the failure.
    GiveUp,
    /// No more tries: only the primary may serve the read, and it has been silent this long.
    Silent(std::time::Duration),
}

/// Failures of one read batch on nodes it reached before its failure is delivered: one retry. A read
/// that is merely slow would time out again, and every retry runs it once more.
const MAX_READ_FAILURES: u8 = 2;

impl Session {
    /// Completes every entry at the front whose reply is already there; true if there was one.
    pub(super) fn drain_ready(&mut self) -> bool {
        let mut any = false;
        while let Some(outcome) = self.queue.ready() {
            self.complete_front(outcome);
            any = true;
        }
        any
    }

    /// Handles the reply of the front entry and pops it; or sends it again if it failed in a way that allows
    /// that (reads that failed anywhere, writes that never ran), or holds it for a primary.
    pub(super) fn complete_front(&mut self, outcome: Outcome) {
        // Cluster redirects are followed before anything else looks at the replies (see `redirect`).
        let outcome = match outcome {
            Outcome::Upstream(Ok(r)) => match self.follow_redirects(r) {
                Ok(()) => return,
                Err(outcome) => outcome,
            },
            other => other,
        };
        let Some(entry) = self.queue.front() else {
            return;
        };
        let count = entry.count;
        let in_flight = matches!(entry.wait, Wait::Upstream(_));
        let Some(sent) = &entry.sent else {
            return self.deliver_front(outcome);
        };
        // A write on the primary, on a shared connection: what another node's promotion does to it.
        let write = sent.primary && !sent.reads_only && sent.bytes.is_some();
        if write {
            if let Some(node) = sent.node.clone() {
                match &outcome {
                    // The topology changed while it was in flight.
                    Outcome::Wake if in_flight => return self.primary_changed(&node, count),
                    // Answered after another node replaced its node: it ran on a former primary. (A
                    // batch refused whole, READONLY, ran nowhere: it goes on below, to the new one.)
                    Outcome::Upstream(Ok(r))
                        if !r.from_primary && !retry::refused_whole(r, count) =>
                    {
                        let e = ClientError::FormerPrimary(&node.addr).frames(count);
                        return self.deliver_front(Outcome::Bytes(e));
                    }
                    Outcome::TimedOut => {
                        // Not counted toward taking the node out of rotation: a write may run long
                        // (a script, a pause) on a node that is fine.
                        node.metrics.load().error(BackendError::Timeout);
                        self.ctx.topo.request_refresh();
                        let ms = self.ctx.write_timeout.as_millis() as u64;
                        let e = ClientError::WriteTimedOut(&node.addr, ms).frames(count);
                        return self.deliver_front(Outcome::Bytes(e));
                    }
                    _ => {}
                }
            }
        }
        if let Some(node) = &sent.node {
            match &outcome {
                Outcome::Upstream(Ok(_)) => node.record_success(),
                Outcome::Upstream(Err(_)) => node.record_failure(),
                Outcome::TimedOut => {
                    node.record_failure();
                    node.metrics.load().error(BackendError::Timeout);
                }
                Outcome::Bytes(_) | Outcome::Wake | Outcome::Hedge => {}
            }
        }
        if matches!(outcome, Outcome::Hedge) {
            return self.hedge_front();
        }
        let attempt = match &outcome {
            // A read checked for freshness that ran on older data: never delivered.
            Outcome::Upstream(Ok(r))
                if sent
                    .check
                    .is_some_and(|need| r.offsets.before.is_none_or(|b| b < need)) =>
            {
                self.ctx.metrics.reads_behind.inc();
                retry::Attempt::Behind
            }
            // A read on the primary answered after another node replaced it (a frozen primary thawed
            // after the switch): its data may be older than what the session saw since on the new
            // side. Sent again, never delivered.
            Outcome::Upstream(Ok(r)) if sent.primary && sent.reads_only && !r.from_primary => {
                self.ctx.metrics.reads_behind.inc();
                retry::Attempt::Behind
            }
            Outcome::Upstream(Ok(r)) => retry::Attempt::Replied(r),
            Outcome::Upstream(Err(e)) => retry::Attempt::Failed(e),
            Outcome::TimedOut => retry::Attempt::TimedOut,
            Outcome::Wake => retry::Attempt::Woken,
            Outcome::Bytes(_) | Outcome::Hedge => return self.deliver_front(outcome),
        };
        let batch = retry::Batch {
            reads_only: sent.reads_only,
            scripted: sent.scripted,
            count,
            resendable: sent.bytes.is_some(),
        };
        let retry::Next::Again { reached, refused } = retry::choose(attempt, batch) else {
            // A read not to be run again (a read-only script) that timed out says so.
            let outcome = match outcome {
                Outcome::TimedOut if sent.reads_only => {
                    Outcome::Bytes(ClientError::ReadTimedOut.frames(count))
                }
                other => other,
            };
            return self.deliver_front(outcome);
        };
        let refusal = match (&outcome, refused) {
            (Outcome::Upstream(Ok(r)), true) => Some(r.bytes.clone()),
            _ => None,
        };
        let behind = matches!(attempt, retry::Attempt::Behind);
        let outcome = match self.resend_front(reached, refusal, behind) {
            Resend::Sent | Resend::Held => return,
            Resend::Silent(silent) => {
                Outcome::Bytes(ClientError::PrimarySilent(silent).frames(count))
            }
            // A read that ran on data older than it must see is never delivered, even when it cannot
            // go anywhere else (a later write of the session already ran, or no node qualifies).
            Resend::GiveUp if behind => Outcome::Bytes(ClientError::NotFresh.frames(count)),
            Resend::GiveUp => match outcome {
                Outcome::Wake => {
                    let refused = self
                        .queue
                        .front()
                        .and_then(|e| e.sent.as_ref()?.refused_by.as_ref().map(|(_, b)| b.clone()));
                    let held = self.ctx.write_hold.as_millis() as u64;
                    Outcome::Bytes(
                        refused.unwrap_or_else(|| ClientError::NoPrimaryAfter(held).frames(count)),
                    )
                }
                Outcome::TimedOut => Outcome::Bytes(ClientError::ReadTimedOut.frames(count)),
                other => other,
            },
        };
        self.deliver_front(outcome);
    }

    /// The shard the front entry's commands are for, in `topo`: the first one if it is gone (a cluster
    /// shard whose every node left) or the entry was sent nowhere.
    fn front_shard<'t>(&self, topo: &'t crate::topology::Topology) -> &'t Shard {
        self.queue
            .front()
            .and_then(|e| e.sent.as_ref())
            .and_then(|s| topo.shard_by_id(s.shard))
            .unwrap_or_else(|| topo.shard())
    }

    /// The topology changed while the front entry, a write, was in flight on `node`. A reply already in
    /// says what became of it; if `node` is still the primary it keeps waiting; if another node replaced
    /// it, the client learns now that the write may have run on a former primary.
    fn primary_changed(&mut self, node: &Arc<Node>, count: u32) {
        let Some(Wait::Upstream(rx)) = self.queue.front_mut().map(|e| &mut e.wait) else {
            return;
        };
        match rx.try_recv() {
            Ok(r) => return self.complete_front(Outcome::Upstream(r)),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                let e = upstream::Error::Lost {
                    addr: node.addr.clone(),
                };
                return self.complete_front(Outcome::Upstream(Err(e)));
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        if !node.is_primary() {
            let e = ClientError::FormerPrimary(&node.addr).frames(count);
            self.deliver_front(Outcome::Bytes(e));
        }
    }

    /// The front entry's deadline passed. A node that sent anything on the connection since is working
    /// through what was queued ahead of it (a pipeline of large replies), not stalled: the entry gets a
    /// whole timeout from then. Otherwise it timed out.
    pub(super) fn front_overdue(&mut self, now: Instant) {
        let Some(sent) = self.queue.front().and_then(|e| e.sent.as_ref()) else {
            return;
        };
        let timeout = self.ctx.timeout(sent.reads_only);
        let last = sent.node.as_ref().and_then(|n| self.state.progress(n.id));
        if let Some(extended) = last.map(|l| l + timeout).filter(|&d| d > now) {
            if let Some(sent) = self.queue.front_mut().and_then(|e| e.sent.as_mut()) {
                sent.deadline = Some(extended);
            }
            return;
        }
        self.complete_front(Outcome::TimedOut);
    }

    /// Pops the front entry and gives the client its replies (unless silenced).
    fn deliver_front(&mut self, outcome: Outcome) {
        let epoch = self.ctx.topo.current_epoch();
        let Some(entry) = self.queue.pop() else {
            return;
        };
        let count = entry.count;
        if let Some(sent) = &entry.sent {
            if let (Some(node), false) = (&sent.node, matches!(entry.wait, Wait::Held)) {
                let after = match &outcome {
                    Outcome::Upstream(Ok(r)) => r.offsets.after,
                    _ => None,
                };
                self.state.reads.shard(sent.shard).replied(
                    node.id,
                    sent.primary,
                    count,
                    epoch,
                    after,
                );
                // An acknowledged write: every read that begins from now on must see it (`global`).
                if let (true, true, Some(o)) = (sent.primary, entry.kinds[1] > 0, after) {
                    match self.ctx.topo.load().shard_by_id(sent.shard) {
                        Some(shard) => shard.state.ack(o),
                        None => self.ctx.topo.shard_state().ack(o),
                    }
                }
            }
        }
        if let Some(started) = entry.started {
            let took = started.elapsed();
            if entry.sent.as_ref().is_some_and(|s| s.reads_only) {
                self.ctx.read_took(took);
            }
            let seconds = took.as_secs_f64();
            for (kind, n) in [Kind::Read, Kind::Write, Kind::Other]
                .into_iter()
                .zip(entry.kinds)
            {
                for _ in 0..n {
                    self.ctx.metrics.duration(kind, seconds);
                }
            }
        }
        let bytes = match outcome {
            Outcome::Bytes(b) => b,
            Outcome::Upstream(Ok(r)) => acknowledged(&self.ctx.metrics, entry.sent.as_ref(), r),
            Outcome::Upstream(Err(e)) => ClientError::Upstream(&e).frames(count),
            Outcome::TimedOut | Outcome::Wake | Outcome::Hedge => {
                ClientError::NoPrimaryAfter(0).frames(count)
            }
        };
        let served_by = entry.sent.as_ref().and_then(|s| s.node.clone());
        let bytes = match entry.then {
            // Tagged with the node that served it, which may not be the one first chosen.
            Then::Cursor => match served_by.and_then(|n| n.identity()) {
                Some(id) => super::cursor::tag_reply(bytes, super::cursor::tag(&id)),
                None => ClientError::CursorNode.frame(),
            },
            Then::ClusterCursor => {
                let next = served_by.as_ref().map(|n| self.next_scan_shard(n));
                match (served_by.and_then(|n| n.identity()), next) {
                    (Some(id), Some(Ok(next))) => {
                        super::cursor::tag_reply_then(bytes, super::cursor::tag(&id), next)
                    }
                    _ => ClientError::CursorNode.frame(),
                }
            }
            Then::Merge(part) => match self.merge_part(part, bytes, entry.silent) {
                Some(merged) => merged,
                None => return,
            },
            then => self.then(then, bytes),
        };
        if !entry.silent {
            self.out.push(bytes);
        }
    }

    /// Applies what an entry's reply changes in the session; returns the bytes the client gets.
    fn then(&mut self, then: Then, bytes: Bytes) -> Bytes {
        match then {
            Then::Nothing => bytes,
            Then::SwitchKey { .. } if bytes.first() == Some(&b'-') => bytes,
            Then::SwitchKey { key, hello } => {
                self.state.set_key(key);
                match hello {
                    None => bytes,
                    Some(name) => {
                        if name.is_some() {
                            self.state.name = name;
                        }
                        self.hello_reply()
                    }
                }
            }
            Then::Effect(Effect::Replace(frame)) => frame,
            Then::Effect(Effect::Acked { inner, acks }) => {
                // The command's reply, then the proxy's WAIT's.
                let mut scanner = crate::resp::ReplyScanner::new(crate::resp::Limits::default());
                let first = match scanner.scan(&bytes) {
                    Ok(Some(f)) => f.len,
                    _ => bytes.len(),
                };
                let reply = bytes.slice(..first);
                let acked = upstream::offsets::wait_count(&bytes[first..]);
                self.apply_effect(*inner, &reply);
                // An error, or EXEC's nil (WATCH failed), ran no write.
                let wrote = !matches!(reply.first(), Some(b'-' | b'!' | b'_'))
                    && !reply.starts_with(b"*-1")
                    && !reply.starts_with(b"$-1");
                if !wrote || acked >= acks.replicas {
                    return reply;
                }
                self.ctx
                    .metrics
                    .writes_unacknowledged(crate::metrics::NoAck::Timeout, 1);
                ClientError::NoAck {
                    acked: Some(acked),
                    need: acks.replicas,
                    timeout_ms: acks.timeout_ms,
                }
                .frame()
            }
            Then::Effect(effect) => {
                self.apply_effect(effect, &bytes);
                bytes
            }
            Then::Cursor | Then::ClusterCursor | Then::Merge(_) => bytes,
        }
    }

    /// Applies a forwarded command's effect on the dedicated connection, and what it changes in the
    /// session.
    fn apply_effect(&mut self, effect: Effect, reply: &[u8]) {
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        for change in p.apply(effect, reply) {
            self.apply_change(change);
        }
    }

    pub(super) fn apply_change(&mut self, change: Change) {
        match change {
            Change::Key(key) => self.state.set_key(key),
            Change::Name(name) => self.state.name = name,
            Change::Reset => self.state.reset(self.ctx.initial_user()),
        }
    }

    /// Sends the front entry again: reads to any node the router allows but the one that failed them,
    /// writes to the current primary. With nowhere to send, the entry is held until the topology changes
    /// or a moment passes, for at most `write_hold_ms` from its first failure. `refusal`: the node's
    /// replies if it refused the whole batch for its role; `behind`: it ran the reads on data too old.
    fn resend_front(&mut self, reached: bool, refusal: Option<Bytes>, behind: bool) -> Resend {
        let now = Instant::now();
        let topo = self.ctx.topo.snapshot();
        let shard = self.front_shard(&topo);
        let Some(entry) = self.queue.front_mut() else {
            return Resend::GiveUp;
        };
        let count = entry.count;
        let was_held = matches!(entry.wait, Wait::Held);
        let Some(sent) = entry.sent.as_mut() else {
            return Resend::GiveUp;
        };
        let failed = if was_held { None } else { sent.node.clone() };
        if let (Some(node), Some(replies)) = (&failed, refusal) {
            sent.refused_by = Some((node.id, replies));
        }
        let reads_only = sent.reads_only;
        if let Some(node) = &failed {
            // The failed attempt is over for consistency bookkeeping.
            self.state
                .reads
                .shard(shard.id)
                .abandoned(node.id, sent.primary, count);
        }
        let since = *sent.held_since.get_or_insert(now);
        sent.failures += u8::from(reached);
        let spent = now.duration_since(since) > self.ctx.write_hold
            || (reads_only && sent.failures >= MAX_READ_FAILURES);
        entry.wait = Wait::Held;
        // Sending it again after later commands of this session may have written would let it see (or,
        // for a write, overtake) them: deliver the failure instead. While a later write's reply is still
        // out, wait for it: a demoted primary refuses every batch in flight, and those did not write.
        let later = if spent {
            Later::Written
        } else {
            self.queue.later_writes()
        };
        let target = match later {
            Later::Written => return Resend::GiveUp,
            // Only a write waits for the later write's verdict; a read's failure is delivered now, as
            // its own error (waiting would turn it into a late hold error).
            Later::Unknown if reads_only => return Resend::GiveUp,
            // A later read that must stay where it is could not run after this one again.
            Later::None if reads_only && self.queue.later_reads_bound() => return Resend::GiveUp,
            Later::Unknown => None,
            Later::None => {
                match self.resend_target(shard, reads_only, failed.as_ref().map(|n| n.id)) {
                    Ok(target) => target,
                    // Only a primary silent past a read's patience may serve it: the read fails now.
                    Err(silent) => return Resend::Silent(silent),
                }
            }
        };
        let Some(entry) = self.queue.front_mut() else {
            return Resend::GiveUp;
        };
        let Some(sent) = entry.sent.as_mut() else {
            return Resend::GiveUp;
        };
        // The node that just failed gets another try only after a pause (as a held entry), so a dead
        // primary is not hammered while the failover runs.
        let target = target.filter(|(n, _, _)| {
            failed.as_ref().is_none_or(|f| f.id != n.id)
                && sent.refused_by.as_ref().is_none_or(|(id, _)| *id != n.id)
        });
        let Some((node, primary, check)) = target else {
            self.flow.hold = true;
            if !was_held {
                self.ctx.metrics.writes_held.inc();
            }
            return Resend::Held;
        };
        if was_held {
            self.ctx
                .metrics
                .write_hold_seconds
                .observe(now.duration_since(since).as_secs_f64());
        }
        if reads_only && !was_held && !behind {
            self.ctx.metrics.read_retries.inc();
        }
        self.send_front(shard.id, &node, primary, check, now)
    }

    /// Sends the front entry's batch (again) to `node`, measured and checked as a fresh read would be.
    fn send_front(
        &mut self,
        shard: ShardId,
        node: &Arc<Node>,
        primary: bool,
        check: Option<u64>,
        now: Instant,
    ) -> Resend {
        let Some(entry) = self.queue.front_mut() else {
            return Resend::GiveUp;
        };
        let count = entry.count;
        let Some(sent) = entry.sent.as_mut() else {
            return Resend::GiveUp;
        };
        let Some(bytes) = sent.bytes.clone() else {
            return Resend::GiveUp;
        };
        sent.deadline = Some(now + self.ctx.timeout(sent.reads_only));
        sent.node = Some(node.clone());
        sent.primary = primary;
        sent.check = check;
        sent.want.before = check.is_some();
        let want = sent.want;
        let conn = self.state.conn_for(node);
        let rx = upstream::submit(&conn, bytes, count, want);
        if let Some(entry) = self.queue.front_mut() {
            entry.wait = Wait::Upstream(rx);
            // The node runs them: its command counters say so (where reads were served).
            count_commands(node, primary, entry.kinds);
        }
        self.carry_later_reads(&conn, node, primary, check, now);
        self.state.sent(shard, node.id, primary, count);
        Resend::Sent
    }

    /// Sends every later read already sent (answered or not, not delivered yet) again to `node`, after
    /// the front entry just sent there, with the same check. The front read runs later than they did,
    /// on another node or the same: on the primary, say, after a replica stopped answering. What it sees
    /// may be newer than what they saw, and it is delivered first: kept, their replies could take the
    /// session back in time. Run after it on the same connection, they see at least what it saw.
    /// Callers make sure no later command may have written ([`Later::None`]) and that every later read
    /// sent may go elsewhere ([`super::queue::Queue::later_reads_bound`]).
    fn carry_later_reads(
        &mut self,
        conn: &upstream::Shared,
        node: &Arc<Node>,
        primary: bool,
        check: Option<u64>,
        now: Instant,
    ) {
        let deadline = now + self.ctx.timeout(true);
        let hedge_at = (!primary).then(|| now + self.ctx.hedge_delay());
        for entry in self.queue.later_reads_sent() {
            let Some(sent) = entry.sent.as_mut() else {
                continue;
            };
            let Some(bytes) = sent.bytes.clone() else {
                continue;
            };
            // Its reply, in or not, is dropped: for the bookkeeping it was over without one.
            if let Some(old) = &sent.node {
                self.state
                    .reads
                    .shard(sent.shard)
                    .abandoned(old.id, sent.primary, entry.count);
            }
            sent.node = Some(node.clone());
            sent.primary = primary;
            sent.check = check;
            sent.want.before = check.is_some();
            sent.deadline = Some(deadline);
            sent.hedge_at = hedge_at;
            entry.wait = Wait::Upstream(upstream::submit(conn, bytes, entry.count, sent.want));
            count_commands(node, primary, entry.kinds);
            self.state.sent(sent.shard, node.id, primary, entry.count);
        }
    }

    /// The front entry, a read on a replica, is still unanswered past its hedge delay: the replica may be
    /// frozen. It goes to another node the router allows, once; its first reply, should it still come,
    /// is dropped; later reads already sent go with it (see [`Session::carry_later_reads`]). It keeps
    /// waiting where it is if it has nowhere else to go, if a later command of this session may have
    /// written (running the read again after it would let it see that write), or if a later read may not
    /// leave its node.
    pub(super) fn hedge_front(&mut self) {
        let topo = self.ctx.topo.snapshot();
        let shard = self.front_shard(&topo);
        let Some(sent) = self.queue.front_mut().and_then(|e| e.sent.as_mut()) else {
            return;
        };
        sent.hedge_at = None;
        let Some(slow) = sent.node.clone().filter(|_| sent.reads_only) else {
            return;
        };
        // A replica that sent anything on the connection within the delay is answering what is queued
        // ahead of this read, in order: not frozen. Look again a delay after its last bytes.
        let delay = self.ctx.hedge_delay();
        let now = Instant::now();
        if let Some(again) = self
            .state
            .progress(slow.id)
            .map(|l| l + delay)
            .filter(|&t| t > now)
        {
            if let Some(sent) = self.queue.front_mut().and_then(|e| e.sent.as_mut()) {
                sent.hedge_at = Some(again);
            }
            return;
        }
        // A read runs at most twice: the hedge is its second run.
        if sent.failures + 1 >= MAX_READ_FAILURES {
            return;
        }
        if self.queue.later_writes() != Later::None || self.queue.later_reads_bound() {
            return;
        }
        let Some((node, primary, check)) = self
            .resend_target(shard, true, Some(slow.id))
            .ok()
            .flatten()
            .filter(|(n, _, _)| n.id != slow.id)
        else {
            return;
        };
        let Some(entry) = self.queue.front_mut() else {
            return;
        };
        if let Some(sent) = entry.sent.as_mut() {
            sent.failures += 1;
        }
        slow.record_failure();
        self.state
            .reads
            .shard(shard.id)
            .abandoned(slow.id, false, entry.count);
        self.ctx.metrics.reads_hedged.inc();
        self.send_front(shard.id, &node, primary, check, Instant::now());
    }

    /// Where a batch goes again: reads wherever the router allows but the node `avoid` that failed them,
    /// writes to the node writes go to now. `Ok(None)`: nowhere yet (the batch is held); `Err`: a read
    /// only a primary silent past its patience may serve (silent this long), which fails now.
    fn resend_target(
        &mut self,
        shard: &Shard,
        reads_only: bool,
        avoid: Option<u64>,
    ) -> Result<Option<Target>, std::time::Duration> {
        if !reads_only {
            return Ok(route::writer(shard).ok().map(|p| (p.clone(), true, None)));
        }
        let policy = self.ctx.policy();
        let reads = self.state.reads.shard(shard.id);
        Ok(match reads.route_avoiding(shard, &policy, avoid) {
            ReadTarget::Replica { node, check, .. } => Some((node, false, check)),
            ReadTarget::Primary(_) => match &shard.primary {
                Some(p) => match route::primary_silent(p, &policy) {
                    Some(silent) => return Err(silent),
                    None => Some((p.clone(), true, None)),
                },
                None => None,
            },
            ReadTarget::Refuse(_) => None,
        })
    }
}

/// Counts commands of `kinds` (reads, writes, others) sent to `node`.
fn count_commands(node: &Node, primary: bool, kinds: [u32; 3]) {
    let m = node.metrics.load();
    for (kind, n) in [Kind::Read, Kind::Write, Kind::Other]
        .into_iter()
        .zip(kinds)
    {
        if n > 0 {
            m.commands(primary, kind, u64::from(n));
        }
    }
}

/// A node to send a batch to again: the node, whether it is the primary, and the offset its reads must be
/// shown to have seen.
type Target = (Arc<Node>, bool, Option<u64>);

/// The replies the client gets for a batch answered by `r`: as they are, unless the batch's writes
/// waited for replicas' acknowledgements and fewer acknowledged them than it needs. Then each write's
/// reply (not the reads', nor a write's own error) becomes an error saying it ran on the primary but was
/// not acknowledged, so the application treats it as unknown.
pub(super) fn acknowledged(
    metrics: &crate::metrics::Metrics,
    sent: Option<&super::queue::Sent>,
    r: upstream::Reply,
) -> Bytes {
    let Some((sent, acks)) = sent.and_then(|s| Some((s, s.want.acks?))) else {
        return r.bytes;
    };
    if sent.acked.is_empty() || r.acked.is_some_and(|n| n >= acks.replicas) {
        return r.bytes;
    }
    let reason = match r.acked {
        Some(_) => crate::metrics::NoAck::Timeout,
        None => crate::metrics::NoAck::Lost,
    };
    let error = ClientError::NoAck {
        acked: r.acked,
        need: acks.replicas,
        timeout_ms: acks.timeout_ms,
    }
    .frame();
    // Frames that do not scan are the node's garbage, which the connection would have refused.
    match super::reply::replace_replies(&r.bytes, &sent.acked, &error) {
        Some((bytes, n)) => {
            metrics.writes_unacknowledged(reason, n);
            bytes
        }
        None => error,
    }
}
