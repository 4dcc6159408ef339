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

use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, error};

use super::dispatch::Step;
use super::reply::ClientError;
use super::session::{Outcome, Sent, Session, Then, Wait};
use crate::command::{Class, Local, Pin};
use crate::resp::encode_command;
use crate::resp::{Limits, ReplyFrame, ReplyScanner, Request};
use crate::topology::Generation;
use crate::upstream::Credentials;
use crate::upstream::{self, Dedicated};
use tokio::sync::watch;

/// The dedicated connection and what the proxy knows of its state.
#[derive(Debug)]
pub(super) struct Pinned {
    pub conn: Dedicated,
    /// Inside MULTI, as of the commands sent so far.
    pub multi: bool,
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
    quitting: bool,
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

/// What a forwarded command does to the pinned state, applied when its reply arrives.
#[derive(Debug)]
pub(super) enum Effect {
    None,
    /// Queued inside MULTI: the inner effect applies if EXEC runs the command.
    Queued(Box<Effect>),
    /// EXEC (`exec`) or DISCARD inside MULTI.
    EndMulti {
        exec: bool,
    },
    Watch,
    Unwatch,
    Select(u32),
    Auth(Arc<Credentials>),
    Hello {
        resp3: bool,
        auth: Option<Arc<Credentials>>,
    },
    TrackingOn,
    TrackingOff,
    /// `CLIENT SETNAME` run by EXEC.
    SetName(Option<Bytes>),
    /// Some other connection state changed by a command queued in MULTI (CLIENT NO-EVICT, ...): the
    /// connection is not reused.
    Dirty,
    /// A command the proxy refused inside MULTI: the client gets this error instead of the reply to the
    /// stand-in Redis was sent (see `refuse_in_multi`).
    Replace(Bytes),
    Reset,
    Quit,
}

impl Pinned {
    pub fn new(conn: Dedicated, topo_rx: watch::Receiver<Generation>) -> Pinned {
        Pinned {
            conn,
            topo_rx,
            multi: false,
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

    /// Pub/sub or MONITOR: replies may never end, so a client hang-up ends the session at once.
    pub fn streaming(&self) -> bool {
        self.monitor || self.subscribed || self.subs > 0 || self.ssubs > 0 || self.tracking
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
}

/// What a forwarded command changes, if Redis runs it.
fn effect_of(class: Class, args: &[Vec<u8>], resp3: bool) -> Effect {
    let int = |i: usize| {
        args.get(i)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<i64>().ok())
    };
    match class {
        Class::Pin(Pin::Watch) => Effect::Watch,
        Class::Local(Local::Unwatch) => Effect::Unwatch,
        Class::Local(Local::Select) => match int(1) {
            Some(db) if (0..=i64::from(u32::MAX)).contains(&db) => Effect::Select(db as u32),
            _ => Effect::None,
        },
        Class::Local(Local::Auth) if args.len() == 2 || args.len() == 3 => {
            Effect::Auth(Arc::new(Credentials {
                username: (args.len() == 3).then(|| String::from_utf8_lossy(&args[1]).into_owned()),
                password: String::from_utf8_lossy(&args[args.len() - 1]).into_owned(),
            }))
        }
        // Parsed as the session parses it (`HELLO 3 SETNAME AUTH` names the client AUTH); a HELLO Redis
        // refuses changes nothing.
        Class::Local(Local::Hello) => match super::dispatch::parse_hello(args) {
            Ok(hello) => Effect::Hello {
                resp3: hello.proto.map_or(resp3, |p| p == 3),
                auth: hello.auth.map(|(user, password)| {
                    Arc::new(Credentials {
                        username: Some(String::from_utf8_lossy(&user).into_owned()),
                        password: String::from_utf8_lossy(&password).into_owned(),
                    })
                }),
            },
            Err(_) => Effect::None,
        },
        Class::Pin(Pin::Tracking) => Effect::TrackingOn,
        Class::Local(Local::TrackingOff) => Effect::TrackingOff,
        Class::Local(Local::ClientSetName) => Effect::SetName(
            args.get(2)
                .filter(|n| !n.is_empty())
                .map(|n| Bytes::copy_from_slice(n)),
        ),
        Class::Local(
            Local::ClientAck
            | Local::ClientReply
            | Local::ClientId
            | Local::ClientGetName
            | Local::ClientInfo,
        ) => Effect::Dirty,
        _ => Effect::None,
    }
}

impl Session {
    /// Handles one request while pinned.
    pub(super) fn pinned_request(&mut self, class: Class, req: &Request, args: &[Vec<u8>]) -> Step {
        let resp3 = self.key.resp3;
        // A session on a connection to a node that is no longer the primary must not go on there: its
        // writes would be acknowledged by a demoted (or cut-off) node and lost. Its state (transaction,
        // WATCH, subscriptions, tracking) cannot move with it: the client is told and closed.
        let primary = self.ctx.topo.snapshot().primary().map(|n| n.id);
        if self
            .pinned
            .as_ref()
            .is_some_and(|p| Some(p.conn.node.id) != primary)
        {
            self.close_with(ClientError::PrimaryChanged.frame());
            return Step::Stop;
        }
        let Some(p) = self.pinned.as_mut() else {
            return Step::Stop;
        };
        if p.marker.is_some() {
            // Leaving: later requests wait for the marker's reply, then go the normal way.
            return Step::Park;
        }
        if p.passthrough() {
            if matches!(class, Class::Local(Local::Quit)) {
                p.quitting = true;
                self.closing = true;
            }
            p.untracked = true;
            self.forward(req);
            return if self.closing { Step::Stop } else { Step::Next };
        }
        if p.multi {
            // Redis queues everything but these, answering +QUEUED (or an error).
            let effect = match class {
                Class::Local(Local::Quit) => {
                    p.quitting = true;
                    self.closing = true;
                    Effect::Quit
                }
                Class::Local(Local::Reset) => Effect::Reset,
                Class::Local(Local::WithoutMulti) => {
                    p.multi = false;
                    Effect::EndMulti {
                        exec: args[0].eq_ignore_ascii_case(b"EXEC"),
                    }
                }
                // Nested MULTI, WATCH inside MULTI: Redis answers with an error.
                Class::Pin(Pin::Multi | Pin::Watch) => Effect::None,
                // Their replies would arrive inside EXEC's, or as a stream after it: not followed here.
                Class::Local(Local::ClientReply)
                | Class::Pin(Pin::Subscribe | Pin::Monitor)
                | Class::Local(Local::Unsubscribe) => {
                    let label = super::dispatch::command_label(args);
                    return self.refuse_in_multi(req, ClientError::InMulti(&label).frame());
                }
                Class::Local(Local::Refuse) => {
                    let label = super::dispatch::command_label(args);
                    return self.refuse_in_multi(req, ClientError::Unsupported(&label).frame());
                }
                _ => {
                    let effect = effect_of(class, args, resp3);
                    if !matches!(effect, Effect::None) {
                        // Its effect on the connection is not followed exactly: never reuse it.
                        p.reusable = false;
                    }
                    Effect::Queued(Box::new(effect))
                }
            };
            self.forward(req);
            self.push_pinned(1, effect);
            return if self.closing { Step::Stop } else { Step::Next };
        }
        let effect = match class {
            Class::Local(
                l @ (Local::ClientId
                | Local::ClientGetName
                | Local::ClientSetName
                | Local::ClientInfo
                | Local::ClientReply
                | Local::ClientAck),
            ) => {
                // Answered here from state that replies still in flight (EXEC, SELECT) may change.
                if self.queue_has_pinned() {
                    return Step::Wait;
                }
                let topo = self.ctx.topo.snapshot();
                let mut none = None;
                return self.local(l, req, args, &topo, &mut none);
            }
            Class::Local(Local::Refuse) => {
                let label = super::dispatch::command_label(args);
                return self.reply_local_now(req, ClientError::Unsupported(&label).frame());
            }
            Class::Pin(Pin::Subscribe) | Class::Local(Local::Unsubscribe) if resp3 => {
                // Confirmations are pushes: nothing to match, but the connection is no longer plain.
                p.untracked = true;
                p.reusable = false;
                self.forward(req);
                return Step::Next;
            }
            Class::Pin(Pin::Subscribe) | Class::Pin(Pin::Monitor) => {
                // RESP2 pub/sub and MONITOR turn the connection into a stream: everything before must be
                // answered first.
                if self.queue_has_pinned() {
                    return Step::Wait;
                }
                if let Some(p) = self.pinned.as_mut() {
                    p.reusable = false;
                    p.untracked = true;
                    match class {
                        Class::Pin(Pin::Monitor) => p.monitor = true,
                        _ => p.subscribed = true,
                    }
                }
                self.forward(req);
                return Step::Next;
            }
            Class::Local(Local::Unsubscribe) => {
                // Not subscribed (RESP2): one confirmation per name, or one for none.
                let n = (req.argc - 1).max(1) as u32;
                self.forward(req);
                self.push_pinned(n, Effect::None);
                return Step::Next;
            }
            Class::Pin(Pin::Multi) => {
                p.multi = true;
                Effect::None
            }
            Class::Local(Local::Reset) => Effect::Reset,
            Class::Local(Local::Quit) => {
                p.quitting = true;
                self.closing = true;
                Effect::Quit
            }
            _ => effect_of(class, args, resp3),
        };
        self.forward(req);
        self.push_pinned(1, effect);
        if self.closing {
            Step::Stop
        } else {
            Step::Next
        }
    }

    /// Writes the requests forwarded during this dispatch turn.
    pub(super) async fn flush_pinned(&mut self) {
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        if p.out.is_empty() {
            return;
        }
        let bytes: Vec<u8> = p.out.drain(..).flat_map(|b| b.to_vec()).collect();
        if p.conn.send(&bytes).await.is_err() {
            // The read side reports the failure and ends the session.
            debug!("dedicated connection write failed");
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
            Err(e) => {
                if !p.quitting {
                    debug!(error = %e, "dedicated connection lost");
                }
                let quitting = p.quitting;
                self.pinned = None;
                self.ctx.metrics.pinned_sessions.dec();
                // Its transaction or subscriptions are gone with it: the client gets an error for each
                // command in flight, then the connection closes so the client notices.
                while let Some(entry) = self.queue.pop_front() {
                    self.inflight -= entry.count as usize;
                    if !entry.silent && !quitting {
                        self.out.push(ClientError::Upstream(&e).frames(entry.count));
                    }
                }
                self.close_now = true;
                return;
            }
        };
        if let Some(token) = &p.marker {
            if is_marker_reply(&bytes, token) {
                // Every reply sent before the marker is in: nothing untracked is left on the connection.
                p.marker = None;
                p.untracked = false;
                self.maybe_unpin();
                return;
            }
        }
        if p.passthrough() || info.is_push() {
            if bytes.starts_with(b"+RESET\r\n") {
                self.apply_effect(Effect::Reset, &bytes);
            } else {
                self.track_pubsub(&bytes);
            }
            self.out.push(bytes);
        } else {
            let Some(front) = self
                .queue
                .front_mut()
                .filter(|e| matches!(e.wait, Wait::Pinned))
            else {
                error!("reply on the dedicated connection with nothing awaiting it");
                self.close_now = true;
                return;
            };
            if front.count > 1 {
                front.count -= 1;
                self.inflight -= 1;
                if !front.silent {
                    self.out.push(bytes);
                }
                let node = p.conn.node.id;
                let epoch = self.ctx.topo.current_epoch();
                self.reads.replied(node, true, 1, epoch);
            } else {
                self.complete_front(Outcome::Bytes(bytes));
            }
        }
        self.maybe_unpin();
    }

    /// Applies a forwarded command's effect once its reply is known.
    pub(super) fn apply_effect(&mut self, effect: Effect, reply: &[u8]) {
        let ok = reply.starts_with(b"+OK\r\n");
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        match effect {
            Effect::None | Effect::Quit | Effect::Replace(_) => {}
            Effect::Queued(inner) => {
                // Only what Redis queued is run by EXEC (and answered in its reply).
                if reply.starts_with(b"+QUEUED") {
                    p.queued.push(*inner);
                }
            }
            Effect::EndMulti { exec } => {
                // EXEC and DISCARD inside MULTI also end WATCH.
                p.watch = false;
                let queued = std::mem::take(&mut p.queued);
                if exec {
                    if let Some(results) = exec_results(reply, queued.len()) {
                        for (effect, ran) in queued.into_iter().zip(results) {
                            if ran {
                                self.apply_effect(effect, b"+OK\r\n");
                            }
                        }
                    }
                }
            }
            Effect::Watch => p.watch |= ok,
            Effect::Unwatch => p.watch &= !ok,
            Effect::Select(db) => {
                if ok {
                    self.set_pinned_key(|k| k.db = db);
                }
            }
            Effect::Auth(c) => {
                if ok {
                    self.set_pinned_key(|k| k.auth = Some(c));
                }
            }
            Effect::Hello { resp3, auth } => {
                if reply.first() != Some(&b'-') {
                    self.set_pinned_key(|k| {
                        k.resp3 = resp3;
                        if auth.is_some() {
                            k.auth = auth;
                        }
                    });
                }
            }
            Effect::TrackingOn => {
                if ok {
                    p.tracking = true;
                    p.reusable = false;
                }
            }
            Effect::TrackingOff => p.tracking &= !ok,
            Effect::SetName(name) => {
                p.reusable = false;
                if ok {
                    self.name = name;
                }
            }
            Effect::Dirty => p.reusable = false,
            Effect::Reset => {
                if reply.starts_with(b"+RESET") {
                    // RESET also logs the connection out to the default user: it no longer matches any key.
                    p.clear();
                    self.reset();
                }
            }
        }
    }

    /// Leaves pinned mode once nothing needs the dedicated connection: at once if every reply is
    /// accounted for, else after a `PING` marker's reply.
    fn maybe_unpin(&mut self) {
        let has_pinned = self.queue_has_pinned();
        let id = self.id;
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        if !p.idle() || p.quitting || has_pinned || p.marker.is_some() {
            return;
        }
        if p.untracked {
            p.markers += 1;
            let token = format!("redsplit-unpin-{id}-{}", p.markers).into_bytes();
            let mut cmd = Vec::new();
            encode_command(&mut cmd, &[b"PING", &token]);
            p.out.push(Bytes::from(cmd));
            p.marker = Some(token);
            return;
        }
        if let Some(mut p) = self.pinned.take() {
            self.ctx.metrics.pinned_sessions.dec();
            if p.reusable {
                p.conn.mark_clean();
                let node = p.conn.node.clone();
                node.pool(&p.conn.key.clone()).give_back(p.conn);
            }
        }
    }

    fn queue_has_pinned(&self) -> bool {
        self.queue.iter().any(|e| matches!(e.wait, Wait::Pinned))
    }

    /// Changes the session key and the dedicated connection's alike (they are the same connection state).
    fn set_pinned_key(&mut self, change: impl FnOnce(&mut crate::upstream::ConnKey)) {
        let mut key = self.key.clone();
        change(&mut key);
        if let Some(p) = self.pinned.as_mut() {
            p.conn.key = key.clone();
        }
        self.set_key(key);
    }

    /// Follows subscription counts in confirmations (`subscribe ch 3`, `unsubscribe ch 0`).
    fn track_pubsub(&mut self, frame: &[u8]) {
        let Some(p) = self.pinned.as_mut() else {
            return;
        };
        let Some((kind, count)) = pubsub_confirmation(frame) else {
            return;
        };
        match kind {
            b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe" => p.subs = count,
            b"ssubscribe" | b"sunsubscribe" => p.ssubs = count,
            _ => return,
        }
        // RESP2 pub/sub mode is on while any subscription is (a SUBSCRIBE may follow the last UNSUBSCRIBE).
        p.subscribed = !p.conn.key.resp3 && (p.subs > 0 || p.ssubs > 0);
    }

    fn forward(&mut self, req: &Request) {
        let bytes = self.take_frame(req);
        let kind = self.cur_kind;
        if let Some(p) = self.pinned.as_mut() {
            p.conn.node.metrics.load().commands(true, kind, 1);
            if kind == crate::metrics::Kind::Read {
                self.ctx
                    .metrics
                    .read_on_primary(crate::metrics::ReadReason::Transaction);
            }
            p.out.push(bytes);
        }
    }

    /// Queues an entry for `count` replies from the dedicated connection.
    fn push_pinned(&mut self, count: u32, effect: Effect) {
        let node = self.pinned.as_ref().map(|p| p.conn.node.clone());
        if let Some(n) = &node {
            self.sent_to_primary(n.id, count);
        }
        let sent = node.map(|n| Sent::once(n, true));
        self.push(Wait::Pinned, sent, Then::Effect(effect));
        if let Some(e) = self.queue.back_mut() {
            self.inflight += count as usize - 1;
            e.count = count;
        }
    }

    /// Whether the session is inside MULTI on its dedicated connection.
    pub(super) fn in_multi(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| p.multi)
    }

    /// Refuses a command inside MULTI as Redis refuses one while queueing: the client gets the error, and
    /// the transaction is flagged so that EXEC answers -EXECABORT instead of running the rest. Redis is
    /// sent a stand-in it rejects while queueing (GET without its key); its error is replaced by ours.
    /// The request must start the input (nothing batched before it).
    pub(super) fn refuse_in_multi(&mut self, req: &Request, frame: Bytes) -> Step {
        let _ = self.take_frame(req);
        if let Some(p) = self.pinned.as_mut() {
            p.out.push(Bytes::from_static(b"*1\r\n$3\r\nGET\r\n"));
        }
        self.push_pinned(1, Effect::Replace(frame));
        Step::Next
    }

    fn reply_local_now(&mut self, req: &Request, frame: Bytes) -> Step {
        let mut none = None;
        self.reply_local(&mut none, req, frame)
    }
}

/// For the fuzz targets: runs every request in `data` through classification and the session's
/// state decisions (the read-only check, HELLO's checks, the effect on a dedicated connection), then reads
/// `data` as EXEC's reply. Returns how many requests were seen; must never panic.
pub fn fuzz_session_decisions(table: &crate::command::Table, data: &[u8]) -> usize {
    let mut scanner = crate::resp::RequestScanner::new(Limits::default());
    let mut at = 0;
    let mut seen = 0;
    while let Ok(Some(req)) = scanner.scan(&data[at..]) {
        let buf = &data[at..];
        let (class, _) = crate::command::classify(table, req.argc, |i| scanner.arg(&req, buf, i));
        let _ = crate::command::may_modify(table, req.argc, |i| scanner.arg(&req, buf, i));
        let args: Vec<Vec<u8>> = (0..req.argc.min(crate::resp::request::KEPT_ARGS))
            .map_while(|i| scanner.arg(&req, buf, i).map(<[u8]>::to_vec))
            .collect();
        if !args.is_empty() {
            let _ = super::dispatch::parse_hello(&args);
            let _ = effect_of(class, &args, seen % 2 == 0);
        }
        at += req.len;
        seen += 1;
    }
    let _ = exec_results(data, seen);
    seen
}

/// Which elements of EXEC's reply are not errors, if it is an array of `n` (a committed transaction).
fn exec_results(reply: &[u8], n: usize) -> Option<Vec<bool>> {
    let header_end = memchr::memchr(b'\r', reply)?;
    if reply.first() != Some(&b'*')
        || std::str::from_utf8(&reply[1..header_end])
            .ok()?
            .parse::<usize>()
            .ok()?
            != n
    {
        return None;
    }
    let mut at = header_end + 2;
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        let mut scanner = ReplyScanner::new(Limits::default());
        let frame = scanner.scan(reply.get(at..)?).ok()??;
        results.push(!frame.is_error());
        at += frame.len;
    }
    Some(results)
}

/// True if `frame` is the reply to `PING token`: a bulk string, or `pong token` in RESP2 pub/sub mode.
fn is_marker_reply(frame: &[u8], token: &[u8]) -> bool {
    let bulk_token = [format!("${}\r\n", token.len()).as_bytes(), token, b"\r\n"].concat();
    frame == bulk_token.as_slice()
        || frame
            == [b"*2\r\n$4\r\npong\r\n".as_slice(), &bulk_token]
                .concat()
                .as_slice()
}

/// `(kind, count)` of a pub/sub confirmation: a 3-element array or push whose first element is the kind
/// and last an integer.
fn pubsub_confirmation(frame: &[u8]) -> Option<(&[u8], i64)> {
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    let (kind, rest) = bulk(rest)?;
    let rest = match rest.first()? {
        b'$' => bulk(rest)
            .map(|(_, r)| r)
            .or_else(|| rest.strip_prefix(b"$-1\r\n"))?,
        b'_' => rest.strip_prefix(b"_\r\n")?,
        _ => return None,
    };
    let n = rest.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    Some((kind, std::str::from_utf8(n).ok()?.parse().ok()?))
}

/// A bulk string at the start of `b`, and what follows it.
fn bulk(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let b = b.strip_prefix(b"$")?;
    let nl = memchr::memchr(b'\r', b)?;
    let len: usize = std::str::from_utf8(&b[..nl]).ok()?.parse().ok()?;
    let body = b.get(nl + 2..nl + 2 + len)?;
    let rest = b.get(nl + 2 + len..)?.strip_prefix(b"\r\n")?;
    Some((body, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn hello_effects_follow_redis_parsing() {
        let hello = Class::Local(Local::Hello);
        // A client named AUTH: no credentials.
        assert!(matches!(
            effect_of(hello, &args(&["HELLO", "3", "SETNAME", "AUTH"]), false),
            Effect::Hello {
                resp3: true,
                auth: None
            }
        ));
        match effect_of(
            hello,
            &args(&["HELLO", "2", "AUTH", "u", "p", "SETNAME", "n"]),
            true,
        ) {
            Effect::Hello {
                resp3: false,
                auth: Some(c),
            } => assert_eq!(
                (c.username.as_deref(), c.password.as_str()),
                (Some("u"), "p")
            ),
            other => panic!("{other:?}"),
        }
        // Refused by Redis: nothing changes.
        assert!(matches!(
            effect_of(hello, &args(&["HELLO", "4", "AUTH", "u", "p"]), false),
            Effect::None
        ));
        assert!(matches!(
            effect_of(hello, &args(&["HELLO", "3", "AUTH", "u"]), false),
            Effect::None
        ));
    }

    #[test]
    fn confirmations_give_kind_and_count() {
        assert_eq!(
            pubsub_confirmation(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:2\r\n"),
            Some((&b"subscribe"[..], 2))
        );
        assert_eq!(
            pubsub_confirmation(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"),
            Some((&b"unsubscribe"[..], 0))
        );
        assert_eq!(
            pubsub_confirmation(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"),
            Some((&b"unsubscribe"[..], 0))
        );
        assert_eq!(
            pubsub_confirmation(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            None
        );
    }
}
