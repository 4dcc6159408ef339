//! Routing each buffered request: the gate decides whether it may run, [`route::plan`] where it goes,
//! and this module carries the plan out: batch it to a shared connection, answer it here, hand it to the
//! dedicated connection, or hold it.
//!
//! Consecutive requests bound for the same node travel as one job, cut from the input buffer without a
//! copy. Some requests need every earlier reply first (a *barrier*: SELECT, AUTH, HELLO, RESET, WAIT,
//! entering MULTI or pub/sub, blocking commands), because they move the session to another upstream
//! connection and Redis runs a client's commands in order; some also hold later requests until they are
//! answered (`hold`: the session's state depends on their outcome). A request with nowhere to go yet (no
//! primary, or writes held for a failover) is *parked*: it stays first in the input, and nothing after
//! it is dispatched, until it can go or `write_hold_ms` has passed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::cluster::Routed;
use super::cursor::{self, Cursor};
use super::gate::{self, Args, Gate};
use super::pinned::Pinned;
use super::queue::{Entry, Sent, Then, Wait};
use super::reply::ClientError;
use super::session::Session;
use crate::command::{classify, Class, Table};
use crate::metrics::Kind;
use crate::resp::Request;
use crate::route::{self, Plan, Policy};
use crate::topology::{Shard, ShardId, Topology};
use crate::upstream::Want;
use crate::upstream::{self, Node};

/// Requests at the start of the input buffer bound for one shared connection.
pub(super) struct Batch {
    shard: ShardId,
    node: Arc<Node>,
    primary: bool,
    /// Reads, writes, others in the batch.
    kinds: [u32; 3],
    /// Only reads: safe to run again elsewhere if this node fails them.
    reads_only: bool,
    /// Holds a read-only script or function ([`crate::command::runs_script`]): never hedged, nor sent
    /// elsewhere after a timeout.
    scripted: bool,
    /// The offsets measured around it.
    want: Want,
    /// The offset its reads must be shown to have seen before they are delivered.
    check: Option<u64>,
    /// Positions (in the batch) of the commands whose replies wait for replicas' acknowledgements
    /// (`want.acks`), ascending.
    acked: Vec<u32>,
    len: usize,
    count: u32,
}

impl Batch {
    /// A batch of one command of the kind being dispatched (`kinds`), to `node`.
    pub(super) fn one(
        shard: ShardId,
        node: Arc<Node>,
        primary: bool,
        read: bool,
        kinds: [u32; 3],
    ) -> Batch {
        Batch {
            shard,
            node,
            primary,
            kinds,
            reads_only: read,
            scripted: false,
            want: Want::NONE,
            check: None,
            acked: Vec::new(),
            len: 0,
            count: 1,
        }
    }

    /// The same, waiting for `acks` replicas to acknowledge it (a write on a primary).
    pub(super) fn with_acks(mut self, acks: Option<crate::upstream::Acks>) -> Batch {
        if acks.is_some() {
            self.want.acks = acks;
            self.acked = vec![0];
        }
        self
    }

    /// The same, with these offsets measured around it and checked.
    pub(super) fn with_offsets(self, want: Want, check: Option<u64>) -> Batch {
        Batch {
            want,
            check,
            ..self
        }
    }

    /// True if `other` (one command) can travel in this batch: same node, and the same offsets measured
    /// and checked around it. Acknowledgements need not match: the batch's WAIT covers every command
    /// in it, and only those that asked wait for it.
    fn takes(&self, other: &Batch) -> bool {
        self.node.id == other.node.id
            && self.want.before == other.want.before
            && self.want.after == other.want.after
            && self.check == other.check
    }
}

/// Whether to go on with the next request.
pub(super) enum Step {
    Next,
    /// Stop: the session is closing.
    Stop,
    /// Stop until every earlier reply is out (a barrier); the request stays buffered.
    Wait,
    /// Stop until something other than the queue emptying happens (a frame on the dedicated
    /// connection); the request stays buffered.
    Park,
    /// Stop: the request has nowhere to go yet; it stays buffered (see [`Session::park`]).
    Hold,
}

impl Session {
    /// Dispatches buffered requests until the buffer is empty or something must wait. Returns true if it
    /// stopped at a barrier or hold, to be called again once the queue is empty.
    pub(super) async fn dispatch(&mut self) -> bool {
        self.flow.paused = false;
        if self.input.is_empty() {
            // Nothing to route (most turns of the loop: a reply arrived or went out).
            if self.flow.hold && self.queue.is_empty() {
                self.flow.hold = false;
            }
            self.flush_pinned().await;
            return false;
        }
        let table = self.ctx.table.load_full();
        let topo = self.ctx.topo.snapshot();
        let policy = self.ctx.policy();
        let mut batch: Option<Batch> = None;
        let mut waiting = false;
        loop {
            if self.flow.hold {
                if self.queue.is_empty() && batch.is_none() {
                    self.flow.hold = false;
                } else {
                    waiting = true;
                    break;
                }
            }
            let pending = batch.as_ref().map_or(0, |b| b.count as usize);
            if self.flow.closing && self.input.is_empty()
                || self.queue.inflight() + pending >= self.ctx.max_inflight
            {
                break;
            }
            let start = batch.as_ref().map_or(0, |b| b.len);
            if start >= self.input.len() {
                break;
            }
            let Some(req) = self.scan(start, &mut batch) else {
                break;
            };
            if req.argc == 0 {
                // `*0`, `*-1` and blank inline lines: Redis ignores them without a reply.
                self.flush(&mut batch);
                self.input.skip(&req);
                continue;
            }
            let (class, writes) = {
                let args = self.input.args(&req, start);
                let (class, kind) = classify(&table, req.argc, |i| args.arg(i));
                self.cur_kind = kind.into();
                let writes = crate::command::writes_data(kind, args.arg(0).unwrap_or_default());
                (class, writes)
            };
            match self
                .request(
                    class,
                    writes,
                    &req,
                    start,
                    &table,
                    (&topo, &policy),
                    &mut batch,
                )
                .await
            {
                Step::Next => self.unpark(),
                Step::Stop | Step::Park | Step::Hold => break,
                Step::Wait => {
                    waiting = true;
                    break;
                }
            }
        }
        self.flush(&mut batch);
        self.flush_pinned().await;
        waiting
    }

    /// The next complete request, `start` bytes into the input; `None` if there is none yet, or the
    /// input is bad (the client is then answered with the error and closed).
    fn scan(&mut self, start: usize, batch: &mut Option<Batch>) -> Option<Request> {
        // Until a client authenticates, its requests are held to Redis's limits for unauthenticated
        // clients.
        let limited = self.state.user.is_none() && self.ctx.auth.load().is_some();
        self.input.limit(limited, self.ctx.limits);
        match self.input.scan(start) {
            Ok(Some(r)) => Some(r),
            Ok(None) => {
                if self.input.len() - start >= self.ctx.max_request_bytes {
                    self.flush(batch);
                    self.fatal(ClientError::RequestTooLarge(self.ctx.max_request_bytes).frame());
                }
                None
            }
            Err(e) => {
                self.flush(batch);
                self.fatal(ClientError::Protocol(&e).frame());
                None
            }
        }
    }

    /// Gates, plans and carries out one request. `writes`: it may change data.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &mut self,
        class: Class,
        writes: bool,
        req: &Request,
        start: usize,
        table: &Table,
        (topo, policy): (&Arc<Topology>, &Policy),
        batch: &mut Option<Batch>,
    ) -> Step {
        let in_multi = self.pinned.as_ref().is_some_and(|p| p.multi);
        if self.ctx.registry.paused(true) && self.pause_holds(class, req, start, table) {
            self.flush(batch);
            self.flow.paused = true;
            return Step::Hold;
        }
        let auth = self.ctx.auth.load();
        let verdict = gate::check(
            class,
            &self.input.args(req, start),
            &mut self.state,
            (*auth).as_deref(),
            in_multi,
            table,
        );
        drop(auth);
        match verdict {
            Gate::Pass => {}
            Gate::Answer(reply) => return self.reply_local(batch, req, reply),
            Gate::RefuseInMulti(error) => {
                self.flush(batch);
                return self.refuse_in_multi(req, error);
            }
            Gate::Auth { user, ok } => return self.authenticated(user, batch, req, ok),
        }
        self.cur_writes = writes;
        self.cur_acks = if writes {
            self.ctx.durability.acks_for(self.state.user.as_deref())
        } else {
            None
        };
        if self.deferred_multi && self.pinned.is_none() {
            if let Some(step) = self.deferred_multi_request(req, start, batch) {
                return step;
            }
        }
        if let Some(pinned) = self.pinned.as_ref().map(|p| p.shard) {
            self.flush(batch);
            let shard = topo.shard_by_id(pinned).unwrap_or_else(|| topo.shard());
            if topo.is_cluster() && self.other_shard(req, start, table, topo, pinned) {
                let e = ClientError::OtherShard.frame();
                return if in_multi {
                    self.refuse_in_multi(req, e)
                } else {
                    self.reply_local(batch, req, e)
                };
            }
            return self.pinned_request(class, writes, req, shard);
        }
        let mut moving = false;
        let shard = if topo.is_cluster() {
            match self
                .cluster_route(class, req, start, table, topo, policy, batch)
                .await
            {
                Routed::Shard(shard) => shard,
                Routed::Moving(shard) => {
                    moving = true;
                    shard
                }
                Routed::Done(step) => return step,
            }
        } else {
            topo.shard()
        };
        // A read of a slot being moved goes to the primary (see `cluster`).
        let moved = Policy {
            consistency: route::Consistency::Primary,
            ..*policy
        };
        let policy = if moving { &moved } else { policy };
        if class == Class::Read {
            if let Some(step) = self
                .scan_family(req, start, topo, shard, policy, batch)
                .await
            {
                return step;
            }
        }
        let mut plan = route::plan(
            class,
            writes,
            self.state.reads.shard(shard.id),
            shard,
            policy,
        );
        if let Plan::Forward {
            primary: true,
            ref mut want,
            ..
        } = plan
        {
            want.acks = self.cur_acks;
        }
        self.carry_out(plan, class, req, start, shard, batch).await
    }

    /// SCAN, SSCAN, HSCAN, ZSCAN: a new iteration goes where any read would, and each reply carries the
    /// node that served it in its cursor; a cursor continues on that node alone (see [`cursor`]). `None`:
    /// not one of them, or not a cursor (the node answers its error).
    async fn scan_family(
        &mut self,
        req: &Request,
        start: usize,
        topo: &Arc<Topology>,
        shard: &Shard,
        policy: &Policy,
        batch: &mut Option<Batch>,
    ) -> Option<Step> {
        let (at, parsed) = {
            let args = self.input.args(req, start);
            let at = cursor::cursor_arg(args.arg(0)?)?;
            (at, cursor::parse(args.arg(at)?))
        };
        // In front of a cluster, SCAN walks every shard in turn (xSCAN has a key: its shard).
        let then = if topo.is_cluster() && at == 1 {
            Then::ClusterCursor
        } else {
            Then::Cursor
        };
        let plan = match parsed {
            Cursor::Invalid => return None,
            Cursor::Start => route::plan(
                Class::Read,
                false,
                self.state.reads.shard(shard.id),
                shard,
                policy,
            ),
            // Only the primary can make sense of a cursor no proxy tagged (one from a transaction).
            Cursor::Untagged => match &shard.primary {
                Some(p) => Plan::Forward {
                    node: p.clone(),
                    primary: true,
                    reason: Some(route::PrimaryReason::Policy),
                    want: Want {
                        before: false,
                        after: matches!(
                            policy.consistency,
                            route::Consistency::Session | route::Consistency::Global
                        ),
                        acks: None,
                    },
                    check: None,
                },
                None => Plan::Hold,
            },
            Cursor::Continue { tag, cursor } => {
                return Some(self.scan_on(tag, cursor, at, req, start, topo, batch, then));
            }
        };
        if !matches!(plan, Plan::Forward { .. }) {
            return Some(
                self.carry_out(plan, Class::Read, req, start, shard, batch)
                    .await,
            );
        }
        // An entry of its own, whose reply's cursor is tagged with the node that serves it.
        self.flush(batch);
        let step = self
            .carry_out(plan, Class::Read, req, start, shard, batch)
            .await;
        self.flush(batch);
        if matches!(step, Step::Next) {
            if let Some(e) = self.queue.back_mut() {
                e.then = then;
            }
        }
        Some(step)
    }

    /// Continues a SCAN-family iteration on the node tagged `tag` with its own `cursor` (argument `at`).
    /// It cannot go anywhere else: a node gone or out of rotation gets the client an error telling it to
    /// start again, and a failure is delivered, never sent to another node.
    #[allow(clippy::too_many_arguments)]
    fn scan_on(
        &mut self,
        tag: u16,
        own: u64,
        at: usize,
        req: &Request,
        start: usize,
        topo: &Arc<Topology>,
        batch: &mut Option<Batch>,
        then: Then,
    ) -> Step {
        let node = cursor::node_of(topo, tag).filter(|n| {
            topo.shard_of(n.id).is_some_and(|shard| {
                shard.is_primary(n.id) || (n.repl.is_eligible() && shard.replica(n.id).is_some())
            })
        });
        let (Some(node), Some(shard)) = (node.clone(), node.and_then(|n| topo.shard_of(n.id)))
        else {
            return self.reply_local(batch, req, ClientError::CursorNode.frame());
        };
        let bytes = cursor::with_cursor(&self.input.args(req, start).all(), at, own);
        self.flush(batch);
        self.input.skip(req);
        let primary = shard.is_primary(node.id);
        self.state.sent(shard.id, node.id, primary, 1);
        let mut kinds = [0; 3];
        kinds[self.cur_kind as usize] = 1;
        self.submit(Batch::one(shard.id, node, primary, true, kinds), bytes);
        if let Some(e) = self.queue.back_mut() {
            e.then = then;
            if let Some(sent) = e.sent.as_mut() {
                // Never sent again elsewhere, nor given up on by the read timeout.
                sent.bytes = None;
                sent.deadline = None;
            }
        }
        Step::Next
    }

    /// Counts where a forwarded command went, for the read metrics: a read sent to the primary (with
    /// its reason), or a read on a replica (by the replica's zone).
    pub(super) fn count_route(
        &self,
        reason: Option<route::PrimaryReason>,
        primary: bool,
        read: bool,
        node: &Node,
    ) {
        if let Some(reason) = reason {
            self.ctx.metrics.read_on_primary(reason.into());
        } else if !primary && read {
            self.ctx
                .metrics
                .replica_read(upstream::label(node.locality()));
        }
    }

    /// Carries out a routing plan for `req`.
    async fn carry_out(
        &mut self,
        plan: Plan,
        class: Class,
        req: &Request,
        start: usize,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        match plan {
            Plan::Forward {
                node,
                primary,
                reason,
                want,
                check,
            } => {
                self.count_route(reason, primary, class == Class::Read, &node);
                let mut kinds = [0; 3];
                kinds[self.cur_kind as usize] = 1;
                let scripted = class == Class::Read
                    && self
                        .input
                        .args(req, start)
                        .arg(0)
                        .is_some_and(crate::command::runs_script);
                let one = Batch {
                    want,
                    check,
                    scripted,
                    acked: if want.acks.is_some() {
                        vec![0]
                    } else {
                        Vec::new()
                    },
                    len: req.len,
                    ..Batch::one(shard.id, node, primary, class == Class::Read, kinds)
                };
                self.add(batch, one, req)
            }
            Plan::Hold => {
                self.flush(batch);
                self.park(req)
            }
            Plan::Silent(silent) => {
                self.reply_local(batch, req, ClientError::PrimarySilent(silent).frame())
            }
            Plan::Refuse(reason) => {
                self.reply_local(batch, req, ClientError::NoReplica(reason).frame())
            }
            Plan::Guarded(closed) => {
                self.ctx
                    .metrics
                    .writes_refused(crate::metrics::Refusal::MinReplicas);
                self.reply_local(batch, req, ClientError::NoReplicas(closed).frame())
            }
            Plan::Broadcast { primary, replicas } => {
                self.flush(batch);
                let bytes = self.input.take(req);
                // Same connection as this session's later reads, so an EVALSHA_RO sent next finds the script.
                for r in &replicas {
                    let conn = self.state.conn_for(r);
                    r.metrics.load().commands(false, Kind::Other, 1);
                    drop(upstream::submit(&conn, bytes.clone(), 1, Want::NONE));
                }
                self.state.sent(shard.id, primary.id, true, 1);
                let batch = Batch::one(shard.id, primary, true, false, [0, 0, 1]);
                self.submit(batch, bytes);
                Step::Next
            }
            Plan::Block(p) => {
                if self.barrier(batch) {
                    return Step::Wait;
                }
                let bytes = self.input.take(req);
                let (tx, rx) = oneshot::channel();
                if self.ctx.registry.monitoring() {
                    self.monitor_forwarded(&bytes, Some((&p, true)));
                }
                tokio::spawn(super::tasks::blocking_call(
                    p.pool(&self.state.key),
                    p.clone(),
                    (bytes, self.cur_acks),
                    self.handle.clone(),
                    tx,
                ));
                self.state.sent(shard.id, p.id, true, 1);
                self.push(
                    Wait::Task(rx),
                    Some(Sent::once(shard.id, p, true)),
                    Then::Nothing,
                );
                self.flow.hold = true;
                Step::Next
            }
            Plan::Pin(p) => {
                if self.barrier(batch) {
                    return Step::Wait;
                }
                match p.pool(&self.state.key).dedicated(&p).await {
                    // The request stays buffered and is forwarded by the pinned path on the next turn.
                    Ok(mut conn) => {
                        // A subscriber may be named by another client's CLIENT TRACKING REDIRECT.
                        if class == Class::Pin(crate::command::Pin::Subscribe) {
                            conn.learn_id().await;
                        }
                        self.pinned = Some(Pinned::new(conn, shard.id, self.ctx.topo.subscribe()));
                        self.ctx.metrics.pinned_sessions.inc();
                        Step::Next
                    }
                    Err(e) => self.reply_local(batch, req, ClientError::Pin(&e).frame()),
                }
            }
            Plan::Local(l) => self.local(l, req, start, shard, batch),
            Plan::Interrupt(nodes) => self.interrupt(nodes, req, batch),
        }
    }

    /// Leaves a request with nowhere to go yet first in the input: it goes once a primary takes writes
    /// (the topology changes, or a moment passes and dispatch looks again), or fails after `write_hold_ms`
    /// without having run.
    pub(super) fn park(&mut self, req: &Request) -> Step {
        let now = Instant::now();
        let since = match self.flow.parked_since {
            Some(since) => since,
            None => {
                self.ctx.metrics.writes_held.inc();
                self.flow.parked_since = Some(now);
                now
            }
        };
        self.mark_topology_seen();
        if now.duration_since(since) > self.ctx.write_hold {
            self.flow.parked_since = None;
            let held = self.ctx.write_hold.as_millis() as u64;
            return self.reply_local(&mut None, req, ClientError::NoPrimaryAfter(held).frame());
        }
        Step::Hold
    }

    /// The parked request went: its hold is over.
    fn unpark(&mut self) {
        if let Some(since) = self.flow.parked_since.take() {
            self.ctx
                .metrics
                .write_hold_seconds
                .observe(since.elapsed().as_secs_f64());
        }
    }

    /// Adds a request to the batch for `node`, starting a new batch if it goes elsewhere.
    pub(super) fn add(&mut self, batch: &mut Option<Batch>, one: Batch, req: &Request) -> Step {
        // Commands for a new primary wait until the old one has answered this session's commands: a
        // failover must not let a later write overtake an earlier one.
        if one.primary
            && self.state.primary_changed(one.shard, one.node.id)
            && !self.queue.is_empty()
        {
            self.flush(batch);
            return Step::Wait;
        }
        // A command that may write waits for this session's reads still to be checked (on a replica
        // not known to have what the session wrote): one found behind must go again elsewhere, which
        // it may not once a later write ran (it would see the write), and would fail instead.
        if !one.reads_only
            && (batch.as_ref().is_some_and(|b| b.check.is_some()) || self.queue.checked_in_flight())
        {
            self.flush(batch);
            return Step::Wait;
        }
        self.state.sent(one.shard, one.node.id, one.primary, 1);
        if req.inline {
            self.flush(batch);
            let bytes = self.input.take(req);
            self.submit(one, bytes);
            return Step::Next;
        }
        let on = self.state.reply_mode == super::state::ReplyMode::On;
        match batch {
            Some(b) if on && b.takes(&one) => {
                if one.want.acks.is_some() {
                    b.acked.push(b.count);
                    b.want.acks = b.want.acks.max(one.want.acks);
                }
                b.len += req.len;
                b.count += 1;
                b.kinds[self.cur_kind as usize] += 1;
                b.reads_only &= one.reads_only;
                b.scripted |= one.scripted;
            }
            _ => {
                self.flush(batch);
                *batch = Some(one);
            }
        }
        // `CLIENT REPLY OFF/SKIP` silence whole entries, so each command gets its own.
        if !on {
            self.flush(batch);
        }
        Step::Next
    }

    /// Sends the batch, if any.
    pub(super) fn flush(&mut self, batch: &mut Option<Batch>) {
        if let Some(b) = batch.take() {
            let bytes = self.input.split(b.len);
            self.submit(b, bytes);
        }
    }

    /// Sends a batch (`bytes`) over this session's shared connection to its node and queues its entry.
    pub(super) fn submit(&mut self, b: Batch, bytes: Bytes) {
        let Batch {
            shard,
            node,
            primary,
            kinds,
            reads_only,
            scripted,
            want,
            check,
            count,
            acked,
            ..
        } = b;
        if self.ctx.registry.monitoring() {
            self.monitor_forwarded(&bytes, Some((&node, primary)));
        }
        let m = node.metrics.load();
        for (kind, n) in [Kind::Read, Kind::Write, Kind::Other]
            .into_iter()
            .zip(kinds)
        {
            if n > 0 {
                m.commands(primary, kind, u64::from(n));
            }
        }
        let conn = self.state.conn_for(&node);
        let rx = upstream::submit(&conn, bytes.clone(), count, want);
        if primary && !reads_only {
            self.state.wrote_on = Some(conn);
        }
        let silent = self.state.take_silent();
        let mut sent = Sent::batch(shard, node, primary, bytes, reads_only);
        sent.want = want;
        sent.check = check;
        sent.scripted = scripted;
        sent.acked = acked;
        let now = Instant::now();
        sent.deadline = Some(now + self.ctx.timeout(reads_only));
        sent.hedge_at = (reads_only && !primary && !scripted).then(|| now + self.ctx.hedge_delay());
        self.queue.push(Entry {
            wait: Wait::Upstream(rx),
            count,
            silent,
            sent: Some(sent),
            then: Then::Nothing,
            started: Some(Instant::now()),
            kinds,
        });
    }

    /// Queues a one-command entry. One sent upstream is timed for the latency histogram and counted
    /// on its node.
    pub(super) fn push(&mut self, wait: Wait, sent: Option<Sent>, then: Then) {
        let silent = self.state.take_silent();
        let upstream = !matches!(wait, Wait::Ready(_));
        let mut kinds = [0; 3];
        if upstream {
            kinds[self.cur_kind as usize] = 1;
            if let Some(Sent {
                node: Some(n),
                primary,
                ..
            }) = &sent
            {
                if !matches!(wait, Wait::Pinned) {
                    n.metrics.load().commands(*primary, self.cur_kind, 1);
                }
            }
        }
        self.queue.push(Entry {
            wait,
            count: 1,
            silent,
            sent,
            then,
            started: upstream.then(Instant::now),
            kinds,
        });
    }

    /// Answers a request locally, in order with everything before it.
    pub(super) fn reply_local(
        &mut self,
        batch: &mut Option<Batch>,
        req: &Request,
        reply: Bytes,
    ) -> Step {
        self.flush(batch);
        self.input.skip(req);
        self.push(Wait::Ready(reply), None, Then::Nothing);
        Step::Next
    }

    /// True if earlier requests are still unanswered: the caller stops, leaving the request buffered.
    pub(super) fn barrier(&mut self, batch: &mut Option<Batch>) -> bool {
        if batch.is_some() || !self.queue.is_empty() {
            self.flush(batch);
            return true;
        }
        false
    }

    /// Reports a fatal client error: the error is the last reply, then the connection closes.
    fn fatal(&mut self, frame: Bytes) {
        self.ctx.metrics.protocol_errors.inc();
        self.close_with(frame);
    }

    /// Answers `frame` after the replies owed, reads nothing more, then closes.
    pub(super) fn close_with(&mut self, frame: Bytes) {
        self.input.clear();
        self.state.reply_mode = super::state::ReplyMode::On;
        self.push(Wait::Ready(frame), None, Then::Nothing);
        self.flow.closing = true;
    }
}
