//! A session pinned to a dedicated primary connection: MULTI/EXEC, WATCH, pub/sub, MONITOR, tracking.
//!
//! ```text
//!   normal ──MULTI/WATCH/SUBSCRIBE/MONITOR/CLIENT TRACKING ON (after every earlier reply)──▶ pinned
//!   pinned ──EXEC/DISCARD/UNWATCH, last UNSUBSCRIBE, TRACKING OFF, RESET: nothing left──▶ normal
//! ```
//!
//! While pinned, requests go to the dedicated connection in order and each (but pub/sub confirmations
//! in RESP3, which are pushes) expects one reply, matched to its queue entry; pushes pass straight
//! through. In RESP2 pub/sub mode and MONITOR the stream is a pass-through: Redis decides what answers
//! what. The proxy watches the replies to know when the connection is back in its greeted state, so it
//! can be handed back to the pool (MULTI/WATCH) or closed (everything else).

use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use super::dispatch::Step;
use super::reply::ClientError;
use super::session::{Outcome, Sent, Session, Then, Wait};
use crate::backend::{self, Dedicated};
use crate::command::{Class, Local, Pin};
use crate::config::Credentials;
use crate::resp::{ReplyFrame, Request};

/// The dedicated connection and what the proxy knows of its state.
#[derive(Debug)]
pub(super) struct Pinned {
    pub conn: Dedicated,
    pub multi: bool,
    /// `SELECT` queued inside MULTI: applies if EXEC succeeds.
    queued_select: Option<u32>,
    watch: bool,
    /// Channels plus patterns, and shard channels, subscribed (from the confirmations).
    subs: i64,
    ssubs: i64,
    /// RESP2 pub/sub mode.
    subscribed: bool,
    monitor: bool,
    tracking: bool,
    /// False once the connection's state may differ from a freshly greeted one in ways the proxy does not
    /// track (pub/sub, MONITOR, tracking, RESET): such a connection is closed, not reused.
    reusable: bool,
    /// Set by QUIT: the upstream will close.
    quitting: bool,
    /// Requests to write.
    out: Vec<Bytes>,
}

/// What a forwarded command does to the pinned state, applied when its reply arrives.
#[derive(Debug)]
pub(super) enum Effect {
    None,
    Multi,
    /// EXEC or DISCARD.
    EndMulti,
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
    Reset,
    Quit,
}

impl Pinned {
    pub fn new(conn: Dedicated) -> Pinned {
        Pinned {
            conn,
            multi: false,
            queued_select: None,
            watch: false,
            subs: 0,
            ssubs: 0,
            subscribed: false,
            monitor: false,
            tracking: false,
            reusable: true,
            quitting: false,
            out: Vec::new(),
        }
    }

    /// Forgets all tracked state (after RESET). The connection is no longer fit for reuse.
    fn clear(&mut self) {
        self.multi = false;
        self.queued_select = None;
        self.watch = false;
        self.subs = 0;
        self.ssubs = 0;
        self.subscribed = false;
        self.monitor = false;
        self.tracking = false;
        self.reusable = false;
    }

    /// Every frame passes through untouched (RESP2 pub/sub, MONITOR).
    fn passthrough(&self) -> bool {
        self.monitor || self.subscribed
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

impl Session {
    /// Handles one request while pinned.
    pub(super) fn pinned_request(&mut self, class: Class, req: &Request, args: &[Vec<u8>]) -> Step {
        let resp3 = self.key.resp3;
        let Some(p) = self.pinned.as_mut() else {
            return Step::Stop;
        };
        if p.passthrough() {
            if matches!(class, Class::Local(Local::Quit)) {
                p.quitting = true;
                self.closing = true;
            }
            self.forward(req);
            return if self.closing { Step::Stop } else { Step::Next };
        }
        let multi = p.multi;
        let int = |i: usize| {
            args.get(i)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|s| s.parse::<i64>().ok())
        };
        let effect = match class {
            Class::Local(
                l @ (Local::ClientId
                | Local::ClientGetName
                | Local::ClientSetName
                | Local::ClientInfo
                | Local::ClientReply
                | Local::ClientAck),
            ) if !multi => {
                let topo = self.ctx.topo.snapshot();
                return self.local_pinned(l, req, args, &topo);
            }
            Class::Local(Local::Refuse) => {
                let label = super::dispatch::command_label(args);
                return self.reply_local_now(req, ClientError::Unsupported(&label).frame());
            }
            Class::Pin(Pin::Subscribe) | Class::Local(Local::Unsubscribe) if resp3 => {
                // Confirmations are pushes: nothing to match.
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
            Class::Pin(Pin::Multi) => Effect::Multi,
            Class::Local(Local::WithoutMulti) => Effect::EndMulti,
            Class::Pin(Pin::Watch) => Effect::Watch,
            Class::Local(Local::Unwatch) => Effect::Unwatch,
            Class::Local(Local::Select) => match int(1) {
                Some(db) if (0..=i64::from(u32::MAX)).contains(&db) => Effect::Select(db as u32),
                _ => Effect::None,
            },
            Class::Local(Local::Auth) if args.len() == 2 || args.len() == 3 => {
                Effect::Auth(Arc::new(Credentials {
                    username: (args.len() == 3)
                        .then(|| String::from_utf8_lossy(&args[1]).into_owned()),
                    password: String::from_utf8_lossy(&args[args.len() - 1]).into_owned(),
                }))
            }
            Class::Local(Local::Hello) => {
                let resp3 = match int(1) {
                    Some(3) => true,
                    Some(2) => false,
                    _ => resp3,
                };
                let auth = args
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(b"AUTH"))
                    .and_then(|i| {
                        Some(Arc::new(Credentials {
                            username: Some(String::from_utf8_lossy(args.get(i + 1)?).into_owned()),
                            password: String::from_utf8_lossy(args.get(i + 2)?).into_owned(),
                        }))
                    });
                Effect::Hello { resp3, auth }
            }
            Class::Pin(Pin::Tracking) => Effect::TrackingOn,
            Class::Local(Local::TrackingOff) => Effect::TrackingOff,
            Class::Local(Local::Reset) => Effect::Reset,
            Class::Local(Local::Quit) => {
                if let Some(p) = self.pinned.as_mut() {
                    p.quitting = true;
                }
                self.closing = true;
                Effect::Quit
            }
            _ => Effect::None,
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
    pub(super) fn on_pinned_frame(&mut self, r: Result<(Bytes, ReplyFrame), backend::Error>) {
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
                debug!("reply on the dedicated connection with nothing awaiting it");
                self.close_now = true;
                return;
            };
            if front.count > 1 {
                front.count -= 1;
                self.inflight -= 1;
                if !front.silent {
                    self.out.push(bytes);
                }
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
            Effect::None => {}
            Effect::Multi => p.multi |= ok,
            Effect::EndMulti => {
                let committed = reply.first() == Some(&b'*');
                p.multi = false;
                p.watch = false;
                if let Some(db) = p.queued_select.take().filter(|_| committed) {
                    self.set_pinned_key(|k| k.db = db);
                }
            }
            Effect::Watch => p.watch |= ok,
            Effect::Unwatch => p.watch = false,
            Effect::Select(db) => {
                if ok {
                    self.set_pinned_key(|k| k.db = db);
                } else if reply.starts_with(b"+QUEUED") {
                    p.queued_select = Some(db);
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
            Effect::Reset => {
                if reply.starts_with(b"+RESET") {
                    // RESET also logs the connection out to the default user: it no longer matches any key.
                    p.clear();
                    self.reset();
                }
            }
            Effect::Quit => {}
        }
    }

    /// Returns the dedicated connection once nothing needs it.
    fn maybe_unpin(&mut self) {
        let done = self
            .pinned
            .as_ref()
            .is_some_and(|p| p.idle() && !p.quitting)
            && !self.queue_has_pinned();
        if !done {
            return;
        }
        if let Some(mut p) = self.pinned.take() {
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
    fn set_pinned_key(&mut self, change: impl FnOnce(&mut crate::backend::ConnKey)) {
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
        if p.subs == 0 && p.ssubs == 0 {
            p.subscribed = false;
        }
    }

    fn forward(&mut self, req: &Request) {
        let bytes = self.take_frame(req);
        if let Some(p) = self.pinned.as_mut() {
            p.out.push(bytes);
        }
    }

    fn push_pinned(&mut self, count: u32, effect: Effect) {
        let node = self.pinned.as_ref().map(|p| p.conn.node.clone());
        if let Some(n) = &node {
            self.reads.sent(n.id, true, count);
        }
        let sent = node.map(|n| Sent::once(n, true));
        self.push(Wait::Pinned, sent, Then::Effect(effect));
        if let Some(e) = self.queue.back_mut() {
            self.inflight += count as usize - 1;
            e.count = count;
        }
    }

    /// A connection-local command while pinned: answered in order with the forwarded ones.
    fn local_pinned(
        &mut self,
        l: Local,
        req: &Request,
        args: &[Vec<u8>],
        topo: &Arc<crate::topology::Topology>,
    ) -> Step {
        let mut none = None;
        self.local(l, req, args, topo, &mut none)
    }

    fn reply_local_now(&mut self, req: &Request, frame: Bytes) -> Step {
        let mut none = None;
        self.reply_local(&mut none, req, frame)
    }
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
