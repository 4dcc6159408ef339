//! A session pinned to a dedicated primary connection: MULTI/EXEC, WATCH, pub/sub, MONITOR, tracking.
//!
//! ```text
//!   normal ──MULTI/WATCH/SUBSCRIBE/MONITOR/CLIENT TRACKING ON (after every earlier reply)──▶ pinned
//!   pinned ──nothing left (no MULTI, WATCH, subscription, tracking)──▶ [PING marker, if needed] ──▶ normal
//! ```
//!
//! While pinned, requests go to the dedicated connection in order. Each one that Redis answers with
//! exactly one reply gets a queue entry, matched to that reply; pushes (RESP3) pass straight through. In
//! RESP2 pub/sub mode and MONITOR the stream passes through untouched: Redis decides what answers what.
//! Whether the session is inside MULTI is decided as commands are sent (Redis decides it from their
//! order too), so commands pipelined behind MULTI are known to be queued. What a queued command changes
//! (database, credentials, protocol, tracking, subscriptions) applies only if EXEC runs it, element by
//! element of EXEC's reply.
//!
//! The connection goes back to the pool only in its greeted state; anything the proxy does not track
//! exactly (pub/sub, MONITOR, tracking, RESET, connection commands queued in MULTI) closes it instead.
//! Before leaving after commands whose replies no entry tracks, a `PING` marker is sent and its reply
//! awaited, so no late reply (or subscription) is left on the connection.
//!
//! [`Pinned`] is a state machine over the connection alone: it says what to do with each request
//! ([`Pinned::request`]) and each frame ([`Pinned::on_frame`]), and what a reply changes in the session
//! ([`Pinned::apply`]); the session carries that out.

mod effect;
mod replies;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::debug;

use super::reply::ClientError;
use crate::command::{Class, Local, Pin};
use crate::resp::encode_command;
use crate::topology::{Generation, ShardId};
use crate::upstream::{ConnKey, Dedicated};
use effect::effect_of;
pub use effect::fuzz_session_decisions;
pub(super) use effect::Effect;
use replies::{exec_results, is_marker_reply, pubsub_confirmation};

/// The dedicated connection and what the proxy knows of its state.
#[derive(Debug)]
pub(super) struct Pinned {
    pub conn: Dedicated,
    /// The shard of the primary it is connected to.
    pub shard: ShardId,
    /// Inside MULTI, as of the commands sent so far.
    pub multi: bool,
    /// A command that may write was queued in this MULTI: EXEC is guarded and acknowledged as a write.
    pub multi_writes: bool,
    /// A command that may write ran on this connection: a WAIT here covers it and every write the
    /// session made before (on its shared connections, earlier in the primary's replication stream).
    pub wrote: bool,
    /// The reply of a command whose entry also awaits the proxy's WAIT (see [`Effect::Acked`]), until
    /// that WAIT answers.
    pub ack_held: Option<Bytes>,
    /// What the commands Redis queued in this MULTI change, in queue order, for EXEC's replies.
    queued: Vec<Effect>,
    watch: bool,
    /// Channels plus patterns, and shard channels, subscribed (from the confirmations).
    subs: i64,
    ssubs: i64,
    /// RESP2 pub/sub mode.
    subscribed: bool,
    monitor: bool,
    tracking: bool,
    /// False once the connection's state may differ from a freshly greeted one in ways the proxy does not
    /// track: such a connection is closed, not reused.
    reusable: bool,
    /// Set by QUIT: the upstream will close.
    pub quitting: bool,
    /// Commands were forwarded whose replies no queue entry tracks (pub/sub, MONITOR).
    untracked: bool,
    /// The `PING` token awaited before unpinning.
    marker: Option<Vec<u8>>,
    markers: u64,
    /// Requests to write.
    out: Vec<Bytes>,
    /// Topology changes: the connection is dropped once its node is no longer the primary.
    pub topo_rx: watch::Receiver<Generation>,
}

/// What to do with a request while pinned.
#[derive(Debug)]
pub(super) enum Route {
    /// Forward it. `replies`: how many replies one queue entry awaits (0: none is tracked); `effect`
    /// applies when the reply arrives; `closes`: QUIT, nothing after it runs.
    Forward {
        replies: u32,
        effect: Effect,
        closes: bool,
    },
    /// Refused inside MULTI as Redis refuses a command while queueing: send [`STAND_IN`] instead, and
    /// answer this error for it (EXEC then answers -EXECABORT).
    RefuseInMulti(Bytes),
    /// Answer it now with this.
    Answer(Bytes),
    /// The session answers it itself (CLIENT ID, ...), from state the replies owed may change: only
    /// once none is owed.
    Local(Local),
    /// Not yet: earlier replies on the connection come first.
    Wait,
    /// Not yet: the session is leaving this connection (waiting for its marker's reply).
    Park,
}

/// A request Redis rejects while queueing (GET without its key): it flags the transaction, so EXEC
/// answers -EXECABORT, as when Redis itself refuses a command inside MULTI.
pub(super) const STAND_IN: &[u8] = b"*1\r\n$3\r\nGET\r\n";

/// What a frame from the connection is.
#[derive(Debug)]
pub(super) enum Frame {
    /// The marker's reply: every reply sent before it is in (and it goes to no one).
    Marker,
    /// Passes to the client as it is (a push, or a stream: pub/sub, MONITOR), after `changes` apply.
    Pass(Vec<Change>),
    /// The reply to the front queue entry.
    Reply,
}

/// What a reply changes in the session beyond the connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// The connection's key changed (SELECT, AUTH, HELLO): the session's changes with it.
    Key(ConnKey),
    /// The client's name (CLIENT SETNAME run by EXEC).
    Name(Option<Bytes>),
    /// RESET ran: the session is a fresh connection.
    Reset,
}

/// Whether the session can leave its dedicated connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Leave {
    /// Not now.
    Stay,
    /// Now. `reusable`: the connection is in its greeted state and may go back to the pool.
    Now { reusable: bool },
}

impl Pinned {
    pub fn new(conn: Dedicated, shard: ShardId, topo_rx: watch::Receiver<Generation>) -> Pinned {
        Pinned {
            conn,
            shard,
            topo_rx,
            multi: false,
            multi_writes: false,
            wrote: false,
            ack_held: None,
            queued: Vec::new(),
            watch: false,
            subs: 0,
            ssubs: 0,
            subscribed: false,
            monitor: false,
            tracking: false,
            reusable: true,
            quitting: false,
            untracked: false,
            marker: None,
            markers: 0,
            out: Vec::new(),
        }
    }

    /// Pub/sub or MONITOR: replies may never end, so a client hang-up ends the session at once.
    pub fn streaming(&self) -> bool {
        self.monitor || self.subscribed || self.subs > 0 || self.ssubs > 0 || self.tracking
    }

    /// What to do with a request of `class` (kept arguments `args`, `argc` in all). `awaiting`: replies
    /// are owed on the connection.
    pub fn request(
        &mut self,
        class: Class,
        args: &[Vec<u8>],
        argc: usize,
        awaiting: bool,
    ) -> Route {
        if self.marker.is_some() {
            // Leaving: later requests wait for the marker's reply, then go the normal way.
            return Route::Park;
        }
        if self.passthrough() {
            let closes = matches!(class, Class::Local(Local::Quit));
            self.quitting |= closes;
            self.untracked = true;
            return Route::Forward {
                replies: 0,
                effect: Effect::None,
                closes,
            };
        }
        if self.multi {
            return self.queue_in_multi(class, args);
        }
        let forward = |replies, effect| Route::Forward {
            replies,
            effect,
            closes: false,
        };
        match class {
            Class::Local(
                l @ (Local::ClientId
                | Local::ClientGetName
                | Local::ClientSetName
                | Local::ClientInfo
                | Local::ClientReply
                | Local::ClientAck),
            ) => {
                if awaiting {
                    Route::Wait
                } else {
                    Route::Local(l)
                }
            }
            Class::Local(Local::Refuse) => {
                Route::Answer(ClientError::Unsupported(&super::local::command_label(args)).frame())
            }
            Class::Pin(Pin::Subscribe) | Class::Local(Local::Unsubscribe)
                if self.conn.key.resp3 =>
            {
                // Confirmations are pushes: nothing to match, but the connection is no longer plain.
                self.untracked = true;
                self.reusable = false;
                forward(0, Effect::None)
            }
            Class::Pin(Pin::Subscribe) | Class::Pin(Pin::Monitor) => {
                // RESP2 pub/sub and MONITOR turn the connection into a stream: everything before must be
                // answered first.
                if awaiting {
                    return Route::Wait;
                }
                self.reusable = false;
                self.untracked = true;
                match class {
                    Class::Pin(Pin::Monitor) => self.monitor = true,
                    _ => self.subscribed = true,
                }
                forward(0, Effect::None)
            }
            // Not subscribed (RESP2): one confirmation per name, or one for none.
            Class::Local(Local::Unsubscribe) => {
                forward(argc.saturating_sub(1).max(1) as u32, Effect::None)
            }
            Class::Pin(Pin::Multi) => {
                self.multi = true;
                self.multi_writes = false;
                forward(1, Effect::None)
            }
            Class::Local(Local::Reset) => forward(1, Effect::Reset),
            Class::Local(Local::Quit) => {
                self.quitting = true;
                Route::Forward {
                    replies: 1,
                    effect: Effect::Quit,
                    closes: true,
                }
            }
            _ => forward(1, effect_of(class, args, self.conn.key.resp3)),
        }
    }

    /// A request inside MULTI: Redis queues everything but these, answering +QUEUED (or an error).
    fn queue_in_multi(&mut self, class: Class, args: &[Vec<u8>]) -> Route {
        let forward = |effect| Route::Forward {
            replies: 1,
            effect,
            closes: false,
        };
        match class {
            Class::Local(Local::Quit) => {
                self.quitting = true;
                Route::Forward {
                    replies: 1,
                    effect: Effect::Quit,
                    closes: true,
                }
            }
            Class::Local(Local::Reset) => forward(Effect::Reset),
            Class::Local(Local::WithoutMulti) => {
                self.multi = false;
                forward(Effect::EndMulti {
                    exec: args
                        .first()
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"EXEC")),
                })
            }
            // Nested MULTI, WATCH inside MULTI: Redis answers with an error.
            Class::Pin(Pin::Multi | Pin::Watch) => forward(Effect::None),
            // Their replies would arrive inside EXEC's, or as a stream after it: not followed here.
            Class::Local(Local::ClientReply)
            | Class::Pin(Pin::Subscribe | Pin::Monitor)
            | Class::Local(Local::Unsubscribe) => {
                let label = super::local::command_label(args);
                Route::RefuseInMulti(ClientError::InMulti(&label).frame())
            }
            Class::Local(Local::Refuse) => {
                let label = super::local::command_label(args);
                Route::RefuseInMulti(ClientError::Unsupported(&label).frame())
            }
            _ => {
                let effect = effect_of(class, args, self.conn.key.resp3);
                if !matches!(effect, Effect::None) {
                    // Its effect on the connection is not followed exactly: never reuse it.
                    self.reusable = false;
                }
                forward(Effect::Queued(Box::new(effect)))
            }
        }
    }

    /// EXEC refused by the proxy (the split-brain guard): `DISCARD` is to be sent instead, which ends
    /// the transaction and WATCH as EXEC would, without running anything. Returns its bytes.
    pub fn discard_instead(&mut self) -> Bytes {
        self.multi = false;
        self.multi_writes = false;
        self.watch = false;
        self.queued.clear();
        Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n")
    }

    /// Queues request bytes to write.
    pub fn send(&mut self, bytes: Bytes) {
        self.out.push(bytes);
    }

    /// Writes the requests queued since the last flush, in one write.
    pub async fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let bytes: Vec<u8> = self.out.drain(..).flat_map(|b| b.to_vec()).collect();
        if self.conn.send(&bytes).await.is_err() {
            // The read side reports the failure and ends the session.
            debug!("dedicated connection write failed");
        }
    }

    /// What a frame read from the connection is. `push`: a RESP3 push.
    pub fn on_frame(&mut self, frame: &[u8], push: bool) -> Frame {
        if let Some(token) = &self.marker {
            if is_marker_reply(frame, token) {
                // Every reply sent before the marker is in: nothing untracked is left on the connection.
                self.marker = None;
                self.untracked = false;
                return Frame::Marker;
            }
        }
        if self.passthrough() || push {
            if frame.starts_with(b"+RESET\r\n") {
                return Frame::Pass(self.apply(Effect::Reset, frame));
            }
            self.track_pubsub(frame);
            return Frame::Pass(Vec::new());
        }
        Frame::Reply
    }

    /// Applies a forwarded command's effect once its reply is known; returns what changes in the session.
    pub fn apply(&mut self, effect: Effect, reply: &[u8]) -> Vec<Change> {
        let mut changes = Vec::new();
        self.apply_into(effect, reply, &mut changes);
        changes
    }

    fn apply_into(&mut self, effect: Effect, reply: &[u8], changes: &mut Vec<Change>) {
        let ok = reply.starts_with(b"+OK\r\n");
        match effect {
            Effect::None | Effect::Quit | Effect::Replace(_) => {}
            Effect::Acked { inner, .. } => self.apply_into(*inner, reply, changes),
            Effect::Queued(inner) => {
                // Only what Redis queued is run by EXEC (and answered in its reply).
                if reply.starts_with(b"+QUEUED") {
                    self.queued.push(*inner);
                }
            }
            Effect::EndMulti { exec } => {
                // EXEC and DISCARD inside MULTI also end WATCH.
                self.watch = false;
                let queued = std::mem::take(&mut self.queued);
                if exec {
                    if let Some(results) = exec_results(reply, queued.len()) {
                        for (effect, ran) in queued.into_iter().zip(results) {
                            if ran {
                                self.apply_into(effect, b"+OK\r\n", changes);
                            }
                        }
                    }
                }
            }
            Effect::Watch => self.watch |= ok,
            Effect::Unwatch => self.watch &= !ok,
            Effect::Select(db) if ok => self.change_key(changes, |k| k.db = db),
            Effect::Auth(c) if ok => self.change_key(changes, |k| k.auth = Some(c)),
            Effect::Select(_) | Effect::Auth(_) => {}
            Effect::Hello { resp3, auth } => {
                if reply.first() != Some(&b'-') {
                    self.change_key(changes, |k| {
                        k.resp3 = resp3;
                        if auth.is_some() {
                            k.auth = auth;
                        }
                    });
                }
            }
            Effect::TrackingOn => {
                if ok {
                    self.tracking = true;
                    self.reusable = false;
                }
            }
            Effect::TrackingOff => self.tracking &= !ok,
            Effect::SetName(name) => {
                self.reusable = false;
                if ok {
                    changes.push(Change::Name(name));
                }
            }
            Effect::Dirty => self.reusable = false,
            Effect::Reset => {
                if reply.starts_with(b"+RESET") {
                    // RESET also logs the connection out to the default user: it no longer matches any key
                    // (it is never reused), and later changes start from a fresh connection's state.
                    self.clear();
                    self.conn.key = ConnKey::default();
                    changes.push(Change::Reset);
                }
            }
        }
    }

    /// Changes the connection's key; the session's is the same connection state and changes with it.
    fn change_key(&mut self, changes: &mut Vec<Change>, change: impl FnOnce(&mut ConnKey)) {
        change(&mut self.conn.key);
        changes.push(Change::Key(self.conn.key.clone()));
    }

    /// Whether the session can leave the connection now: nothing holds it here (no MULTI, WATCH,
    /// subscription, tracking), no reply is owed (`awaiting`), and no untracked reply can still come.
    /// With untracked replies possible, a `PING` marker (token from `id`) is sent and awaited first.
    pub fn leave(&mut self, awaiting: bool, id: u64) -> Leave {
        if !self.idle() || self.quitting || awaiting || self.marker.is_some() {
            return Leave::Stay;
        }
        if self.untracked {
            self.markers += 1;
            let token = format!("redsplit-unpin-{id}-{}", self.markers).into_bytes();
            let mut cmd = Vec::new();
            encode_command(&mut cmd, &[b"PING", &token]);
            self.out.push(Bytes::from(cmd));
            self.marker = Some(token);
            return Leave::Stay;
        }
        Leave::Now {
            reusable: self.reusable,
        }
    }

    /// Forgets all tracked state (after RESET). The connection is no longer fit for reuse.
    fn clear(&mut self) {
        self.multi = false;
        self.queued.clear();
        self.watch = false;
        self.subs = 0;
        self.ssubs = 0;
        self.subscribed = false;
        self.monitor = false;
        self.tracking = false;
        self.reusable = false;
    }

    /// Every frame passes through untouched: MONITOR, RESP2 pub/sub, and in RESP2 the replies of commands
    /// forwarded in pub/sub mode until the marker confirms they are all in.
    fn passthrough(&self) -> bool {
        self.monitor || self.subscribed || (!self.conn.key.resp3 && self.untracked)
    }

    /// Nothing holds the session here any more.
    fn idle(&self) -> bool {
        !self.multi
            && !self.watch
            && self.subs == 0
            && self.ssubs == 0
            && !self.subscribed
            && !self.monitor
            && !self.tracking
    }

    /// Follows subscription counts in confirmations (`subscribe ch 3`, `unsubscribe ch 0`).
    fn track_pubsub(&mut self, frame: &[u8]) {
        let Some((kind, count)) = pubsub_confirmation(frame) else {
            return;
        };
        match kind {
            b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" => self.subs = count,
            b"ssubscribe" | b"sunsubscribe" => self.ssubs = count,
            _ => return,
        }
        // RESP2 pub/sub mode is on while any subscription is (a SUBSCRIBE may follow the last UNSUBSCRIBE).
        self.subscribed = !self.conn.key.resp3 && (self.subs > 0 || self.ssubs > 0);
    }
}
