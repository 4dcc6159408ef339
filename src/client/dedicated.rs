//! The session's side of its dedicated connection: requests carried out as the [`Pinned`] state machine
//! routes them, and frames from the connection passed on or matched to their queue entries.

use bytes::Bytes;
use tracing::{debug, error};

use super::dispatch::Step;
use super::gate::Args;
use super::pinned::{Effect, Frame, Leave, Route, STAND_IN};
use super::queue::{Outcome, Sent, Then, Wait};
use super::reply::ClientError;
use super::session::Session;
use crate::command::Class;
use crate::metrics::Kind;
use crate::resp::{ReplyFrame, Request};
use crate::topology::Shard;
use crate::upstream;

impl Session {
    /// Handles one request while pinned to the dedicated connection. `writes`: it may change data.
    ///
    /// A command that may write is refused while the split-brain guard is closed, and waits for
    /// replicas' acknowledgements (`WAIT` right after it on this connection) when the session's user
    /// has them. Inside MULTI that applies to EXEC, once a command that may write was queued: a guarded
    /// EXEC is replaced by DISCARD (the transaction ends without running, as Redis's own guard ends it).
    pub(super) fn pinned_request(
        &mut self,
        class: Class,
        writes: bool,
        req: &Request,
        shard: &Shard,
    ) -> Step {
        // A session on a connection to a node that is no longer the primary must not go on there: its
        // writes would be acknowledged by a demoted (or cut-off) node and lost. Its state (transaction,
        // WATCH, subscriptions, tracking) cannot move with it: the client is told and closed.
        let primary = shard.primary.as_ref().map(|n| n.id);
        let awaiting = self.queue.has_pinned();
        let args = self.input.args(req, 0).kept();
        if self.pinned.as_ref().map(|p| p.conn.node.id) != primary {
            self.close_with(ClientError::PrimaryChanged.frame());
            return Step::Stop;
        }
        // Commands about the whole proxy (its clients, its view of the servers) are answered by the
        // proxy here too, never forwarded on this connection. Inside MULTI, INFO and ROLE are queued as
        // Redis queues them (EXEC answers the primary's own); the others cannot be: their replies would
        // come back inside EXEC's unfiltered (CONFIG GET) or be about upstream connections.
        if let Class::Local(l) = class {
            use crate::command::Local;
            let facade = l == Local::Role && self.ctx.sentinel_facade.is_some();
            if l.proxy_wide() || facade {
                let multi = self.pinned.as_ref().is_some_and(|p| p.multi);
                if !multi {
                    return self.local(l, req, 0, shard, &mut None);
                }
                if !matches!(l, Local::Info | Local::Role) {
                    let label = super::local::command_label(&args);
                    return self.refuse_in_multi(req, ClientError::InMulti(&label).frame());
                }
            }
        }
        // Tracking redirected to another client: to its connection's upstream id.
        let mut rewritten = None;
        if class == Class::Pin(crate::command::Pin::Tracking)
            && args.iter().any(|a| a.eq_ignore_ascii_case(b"REDIRECT"))
        {
            match self.redirect_tracking(&args) {
                Ok(bytes) => rewritten = Some(bytes),
                Err(e) if self.pinned.as_ref().is_some_and(|p| p.multi) => {
                    return self.refuse_in_multi(req, e)
                }
                Err(e) => return self.reply_local(&mut None, req, e),
            }
        }
        let Some(p) = self.pinned.as_mut() else {
            return Step::Stop;
        };
        let is_exec = class == Class::Local(crate::command::Local::WithoutMulti)
            && args
                .first()
                .is_some_and(|a| a.eq_ignore_ascii_case(b"EXEC"));
        let (multi, multi_writes, wrote) = (p.multi, p.multi_writes, p.wrote);
        // WAIT before any write on this connection: Redis would count the replicas that have this
        // connection's writes (none), not the session's writes on its shared connections. It is
        // answered as outside (see `Session::wait`).
        if class == Class::Local(crate::command::Local::Wait) && !multi && !wrote {
            return self.local(crate::command::Local::Wait, req, 0, shard, &mut None);
        }
        // Runs writes now: a write outside MULTI, or EXEC of a transaction that queued one.
        let writing = if multi {
            is_exec && multi_writes
        } else {
            writes
        };
        if writing {
            if let Err(closed) = self.ctx.durability.guard.check(shard) {
                self.ctx
                    .metrics
                    .writes_refused(crate::metrics::Refusal::MinReplicas);
                let error = ClientError::NoReplicas(closed).frame();
                if !multi {
                    return self.reply_local(&mut None, req, error);
                }
                let discard = p.discard_instead();
                self.input.skip(req);
                if let Some(p) = self.pinned.as_mut() {
                    p.send(discard);
                }
                self.push_pinned(1, Effect::Replace(error));
                return Step::Next;
            }
        }
        let Some(p) = self.pinned.as_mut() else {
            return Step::Stop;
        };
        match p.request(class, &args, req.argc, awaiting) {
            Route::Forward {
                replies,
                mut effect,
                closes,
            } => {
                if let Some(p) = self.pinned.as_mut() {
                    p.multi_writes |= multi && writes;
                    p.wrote |= writing;
                }
                // A MULTI the proxy answered already, in front of a cluster (see `cluster`).
                if class == Class::Pin(crate::command::Pin::Multi) && self.swallow_multi {
                    self.swallow_multi = false;
                    effect = super::pinned::Effect::Replace(bytes::Bytes::new());
                }
                self.forward(req, rewritten);
                // EXEC is no write itself: the session's user's acknowledgements, not the command's.
                let acks = self.ctx.durability.acks_for(self.state.user.as_deref());
                match acks.filter(|_| writing && replies == 1) {
                    // WAIT right behind it on this connection; the entry awaits both replies.
                    Some(acks) => {
                        if let Some(p) = self.pinned.as_mut() {
                            p.send(acks.request());
                        }
                        let inner = Box::new(effect);
                        self.push_pinned(2, Effect::Acked { inner, acks });
                    }
                    None if replies > 0 => self.push_pinned(replies, effect),
                    None => {}
                }
                if closes {
                    self.flow.closing = true;
                    return Step::Stop;
                }
                Step::Next
            }
            Route::RefuseInMulti(error) => self.refuse_in_multi(req, error),
            Route::Answer(reply) => self.reply_local(&mut None, req, reply),
            Route::Local(l) => self.local(l, req, 0, shard, &mut None),
            Route::Wait => Step::Wait,
            Route::Park => Step::Park,
        }
    }

    /// Forwards the request at the start of the input on the dedicated connection, or `instead` of it.
    fn forward(&mut self, req: &Request, instead: Option<Bytes>) {
        let bytes = match instead {
            Some(b) => {
                self.input.skip(req);
                b
            }
            None => self.input.take(req),
        };
        let kind = self.cur_kind;
        if self.ctx.registry.monitoring() {
            if let Some(p) = &self.pinned {
                let node = p.conn.node.clone();
                self.monitor_forwarded(&bytes, Some((&node, true)));
            }
        }
        if let Some(p) = self.pinned.as_mut() {
            p.conn.node.metrics.load().commands(true, kind, 1);
            if kind == Kind::Read {
                self.ctx
                    .metrics
                    .read_on_primary(crate::metrics::ReadReason::Transaction);
            }
            p.send(bytes);
        }
    }

    /// Queues an entry for `count` replies from the dedicated connection.
    fn push_pinned(&mut self, count: u32, effect: Effect) {
        let node = self.pinned.as_ref().map(|p| p.conn.node.clone());
        let shard = self.pinned.as_ref().map(|p| p.shard).unwrap_or_default();
        if let Some(n) = &node {
            self.state.sent(shard, n.id, true, count);
        }
        let sent = node.map(|n| Sent::once(shard, n, true));
        self.push(Wait::Pinned, sent, Then::Effect(effect));
        self.queue.set_back_count(count);
    }

    /// Refuses a command inside MULTI as Redis refuses one while queueing: the client gets the error, and
    /// the transaction is flagged so that EXEC answers -EXECABORT instead of running the rest. The
    /// request must start the input (nothing batched before it).
    pub(super) fn refuse_in_multi(&mut self, req: &Request, error: Bytes) -> Step {
        self.input.skip(req);
        if let Some(p) = self.pinned.as_mut() {
            p.send(Bytes::from_static(STAND_IN));
        }
        self.push_pinned(1, Effect::Replace(error));
        Step::Next
    }

    /// Writes the requests forwarded on the dedicated connection during this turn.
    pub(super) async fn flush_pinned(&mut self) {
        if let Some(p) = self.pinned.as_mut() {
            p.flush().await;
        }
    }

    /// Handles a frame from the dedicated connection.
    pub(super) fn on_pinned_frame(&mut self, r: Result<(Bytes, ReplyFrame), upstream::Error>) {
        self.drain_ready();
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        let (bytes, info) = match r {
            Ok(f) => f,
            Err(e) => return self.pinned_lost(&e),
        };
        match p.on_frame(&bytes, info.is_push()) {
            Frame::Marker => {}
            Frame::Pass(changes) => {
                for change in changes {
                    self.apply_change(change);
                }
                self.out.push(bytes);
            }
            Frame::Reply => {
                let Some(front) = self
                    .queue
                    .front()
                    .filter(|e| matches!(e.wait, Wait::Pinned))
                else {
                    error!("reply on the dedicated connection with nothing awaiting it");
                    self.flow.close_now = true;
                    return;
                };
                if front.count > 1 && matches!(front.then, Then::Effect(Effect::Acked { .. })) {
                    // The command's reply: held until the WAIT behind it answers.
                    p.ack_held = Some(bytes);
                    self.queue.answered_one();
                } else if front.count > 1 {
                    let silent = front.silent;
                    let node = p.conn.node.id;
                    self.queue.answered_one();
                    if !silent {
                        self.out.push(bytes);
                    }
                    let epoch = self.ctx.topo.current_epoch();
                    let shard = p.shard;
                    self.state
                        .reads
                        .shard(shard)
                        .replied(node, true, 1, epoch, None);
                } else if let Some(held) = p.ack_held.take() {
                    // The WAIT's reply: the entry gets both, judged in `then`.
                    let mut both = bytes::BytesMut::from(&held[..]);
                    both.extend_from_slice(&bytes);
                    self.complete_front(Outcome::Bytes(both.freeze()));
                } else {
                    self.complete_front(Outcome::Bytes(bytes));
                }
            }
        }
        self.maybe_unpin();
    }

    /// The dedicated connection broke: its transaction or subscriptions are gone with it. The client
    /// gets an error for each command in flight, then the connection closes so the client notices.
    fn pinned_lost(&mut self, e: &upstream::Error) {
        let quitting = self.pinned.as_ref().is_some_and(|p| p.quitting);
        if !quitting {
            debug!(error = %e, "dedicated connection lost");
        }
        self.pinned = None;
        self.ctx.metrics.pinned_sessions.dec();
        while let Some(entry) = self.queue.pop() {
            // An entry awaiting the proxy's WAIT too stands for one command.
            let count = match entry.then {
                Then::Effect(Effect::Acked { .. }) => 1,
                _ => entry.count,
            };
            if !entry.silent && !quitting {
                self.out.push(ClientError::Upstream(e).frames(count));
            }
        }
        self.flow.close_now = true;
    }

    /// Leaves pinned mode once nothing needs the dedicated connection: at once if every reply is
    /// accounted for, else after a `PING` marker's reply. A connection in its greeted state goes back to
    /// the pool.
    fn maybe_unpin(&mut self) {
        let awaiting = self.queue.has_pinned();
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        let Leave::Now { reusable } = p.leave(awaiting, self.id) else {
            return;
        };
        if let Some(mut p) = self.pinned.take() {
            self.ctx.metrics.pinned_sessions.dec();
            if reusable {
                p.conn.mark_clean();
                let node = p.conn.node.clone();
                node.pool(&p.conn.key.clone()).give_back(p.conn);
            }
        }
    }
}
