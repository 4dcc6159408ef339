//! The `CLIENT` subcommands about the proxy's own client connections, answered from the registry
//! ([`super::registry`]) in Redis's formats: `LIST` (with `TYPE` and `ID`), `INFO`, `KILL` with every
//! filter, `UNBLOCK`, `PAUSE` and `UNPAUSE`. Ids are the proxy's, never an upstream connection's.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::dispatch::{Batch, Step};
use super::queue::{Then, Wait};
use super::registry::{flag, flag_letters, Handle, Shown};
use super::reply::{ClientError, Encoder, OK};
use super::session::Session;
use crate::command::{Class, Local, Table};
use crate::resp::Request;
use crate::upstream::{self, ConnKey};

/// `CLIENT LIST`'s and `CLIENT INFO`'s line for one client, in Redis 7.2's format (with a newline).
/// Fields the proxy does not keep per client (buffer sizes, memory) are 0, as for an idle client.
pub(super) fn describe(h: &Handle, shown: &Shown, flags: u32) -> String {
    let text = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let user = shown
        .user
        .as_ref()
        .map_or_else(|| "default".to_string(), |u| u.name.clone());
    let sub = i32::from(flags & flag::PUBSUB != 0);
    format!(
        "id={id} addr={addr} laddr={laddr} fd={fd} name={name} age={age} idle={idle} flags={flags} \
         db={db} sub={sub} psub=0 ssub=0 multi={multi} watch=0 qbuf=0 qbuf-free=0 argv-mem=0 \
         multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=NULL user={user} \
         redir=-1 resp={resp} lib-name={lib} lib-ver={ver}\n",
        id = h.id,
        addr = h.addr,
        laddr = h.laddr.map(|a| a.to_string()).unwrap_or_default(),
        fd = h.fd,
        name = text(&shown.name),
        age = h.age(),
        idle = h.idle(),
        flags = flag_letters(flags),
        db = shown.db,
        multi = if flags & flag::MULTI != 0 { 0 } else { -1 },
        resp = if shown.resp3 { 3 } else { 2 },
        lib = text(&shown.lib_name),
        ver = text(&shown.lib_ver),
    )
}

/// The `TYPE` of a client, as `CLIENT LIST TYPE` and `CLIENT KILL TYPE` name it. The proxy's clients
/// are never masters or replicas; MONITOR clients are `normal`, as in Redis.
fn client_type(flags: u32) -> &'static str {
    if flags & flag::PUBSUB != 0 {
        "pubsub"
    } else {
        "normal"
    }
}

/// A `TYPE` argument, if Redis knows it (`slave` is `replica`).
fn parse_type(a: &[u8]) -> Option<&'static str> {
    match a.to_ascii_lowercase().as_slice() {
        b"normal" => Some("normal"),
        b"pubsub" => Some("pubsub"),
        b"master" => Some("master"),
        b"replica" | b"slave" => Some("replica"),
        _ => None,
    }
}

fn int(a: &[u8]) -> Option<i64> {
    std::str::from_utf8(a).ok()?.parse().ok()
}

fn unknown_type(a: &[u8]) -> Bytes {
    Bytes::from(format!(
        "-ERR Unknown client type '{}'\r\n",
        String::from_utf8_lossy(a)
    ))
}

/// What `CLIENT KILL`'s filters select.
#[derive(Debug, Default)]
struct Filter {
    id: Option<u64>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    kind: Option<&'static str>,
    skipme: bool,
    maxage: Option<u64>,
}

impl Filter {
    /// The filters of `CLIENT KILL <filter> <value> ...`; `Err` is the error reply.
    fn parse(args: &[Vec<u8>]) -> Result<Filter, Bytes> {
        let mut f = Filter {
            skipme: true,
            ..Filter::default()
        };
        let mut pairs = args[2..].chunks(2);
        for pair in &mut pairs {
            let [name, value] = pair else {
                return Err(ClientError::Syntax.frame());
            };
            let text = || String::from_utf8_lossy(value).into_owned();
            match name.to_ascii_uppercase().as_slice() {
                b"ID" => match int(value) {
                    Some(id) if id > 0 => f.id = Some(id as u64),
                    _ => {
                        return Err(Bytes::from_static(
                            b"-ERR client-id should be greater than 0\r\n",
                        ))
                    }
                },
                b"ADDR" => f.addr = Some(text()),
                b"LADDR" => f.laddr = Some(text()),
                b"USER" => f.user = Some(text()),
                b"TYPE" => match parse_type(value) {
                    Some(t) => f.kind = Some(t),
                    None => return Err(unknown_type(value)),
                },
                b"SKIPME" => match value.to_ascii_lowercase().as_slice() {
                    b"yes" => f.skipme = true,
                    b"no" => f.skipme = false,
                    _ => return Err(ClientError::Syntax.frame()),
                },
                b"MAXAGE" => match int(value) {
                    Some(age) if age >= 0 => f.maxage = Some(age as u64),
                    _ => return Err(ClientError::Syntax.frame()),
                },
                _ => return Err(ClientError::Syntax.frame()),
            }
        }
        Ok(f)
    }

    fn selects(&self, h: &Handle, me: u64) -> bool {
        let flags = h.flags();
        (!self.skipme || h.id != me)
            && self.id.is_none_or(|id| id == h.id)
            && self.addr.as_ref().is_none_or(|a| *a == h.addr.to_string())
            && self
                .laddr
                .as_ref()
                .is_none_or(|a| h.laddr.is_some_and(|l| *a == l.to_string()))
            && self.user.as_ref().is_none_or(|u| {
                let shown = h.shown();
                shown.user.as_ref().map_or("default", |x| x.name.as_str()) == u
            })
            && self.kind.is_none_or(|k| k == client_type(flags))
            && self.maxage.is_none_or(|age| h.age() >= age)
    }
}

impl Session {
    /// Shows this connection's current state in the registry. Called every turn: it compares first, and
    /// only what changed is copied and takes a lock.
    pub(super) fn publish(&mut self) {
        let s = &self.state;
        let same_user = match (&s.user, &self.shown.user) {
            (None, None) => true,
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        };
        let changed = !same_user
            || s.key.db != self.shown.db
            || s.key.resp3 != self.shown.resp3
            || s.name != self.shown.name
            || s.lib_name != self.shown.lib_name
            || s.lib_ver != self.shown.lib_ver;
        if changed {
            let shown = Shown {
                name: s.name.clone(),
                db: s.key.db,
                resp3: s.key.resp3,
                user: s.user.clone(),
                lib_name: s.lib_name.clone(),
                lib_ver: s.lib_ver.clone(),
            };
            self.handle.show(shown.clone());
            self.shown = shown;
        }
        let mut bits = 0;
        if let Some(p) = &self.pinned {
            if p.multi {
                bits |= flag::MULTI;
            }
            if p.streaming() {
                bits |= flag::PUBSUB;
            }
        }
        if self.monitor.is_some() {
            bits |= flag::MONITOR;
        }
        // Blocking commands (and WAIT-like tasks behind a hold) hold the session: the queue is looked
        // through only then, never on a pipelining client's every turn.
        if self.flow.hold && self.queue.has_task() {
            bits |= flag::BLOCKED;
        }
        if self.state.no_evict {
            bits |= flag::NO_EVICT;
        }
        if self.state.no_touch {
            bits |= flag::NO_TOUCH;
        }
        self.handle.set_flags(bits);
        let pinned = self.pinned.as_ref().and_then(|p| p.conn.upstream_id);
        if pinned != self.shown_pinned {
            self.shown_pinned = pinned;
            let on = self
                .pinned
                .as_ref()
                .and_then(|p| Some((p.conn.node.clone(), p.conn.upstream_id?)));
            self.handle.set_pinned_on(on);
        }
    }

    /// `CLIENT TRACKING ON ... REDIRECT id` on this session's dedicated connection: the proxy's id becomes
    /// the upstream id of the target client's own connection on the same node (a client subscribed to
    /// `__redis__:invalidate` through the proxy). `Err`: the error to answer.
    pub(super) fn redirect_tracking(&self, args: &[Vec<u8>]) -> Result<Bytes, Bytes> {
        let at = args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"REDIRECT"))
            .ok_or_else(|| ClientError::Syntax.frame())?;
        let target = args
            .get(at + 1)
            .and_then(|a| int(a))
            .ok_or_else(|| ClientError::BadDb.frame())?;
        let missing =
            || Bytes::from_static(b"-ERR The client ID you want redirect to does not exist\r\n");
        let handle = u64::try_from(target)
            .ok()
            .and_then(|id| self.ctx.registry.get(id))
            .ok_or_else(missing)?;
        let here = self.pinned.as_ref().map(|p| p.conn.node.id);
        let Some((node, upstream)) = handle.pinned_on().filter(|(n, _)| Some(n.id) == here) else {
            return Err(Bytes::from_static(
                b"-ERR redsplit: CLIENT TRACKING REDIRECT needs the target client subscribed (to __redis__:invalidate) through this proxy, on the primary\r\n",
            ));
        };
        drop(node);
        let id = upstream.to_string();
        let mut rewritten: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        rewritten[at + 1] = id.as_bytes();
        let mut out = Vec::new();
        crate::resp::encode_command(&mut out, &rewritten);
        Ok(Bytes::from(out))
    }

    /// True if `CLIENT PAUSE` holds this request now (it is called only while a pause runs).
    pub(super) fn pause_holds(
        &self,
        class: Class,
        req: &Request,
        start: usize,
        table: &Table,
    ) -> bool {
        if matches!(
            class,
            Class::Local(Local::ClientUnpause | Local::ClientPause | Local::Quit | Local::Reset)
        ) {
            return false;
        }
        let args = self.input.args(req, start);
        let writes =
            crate::command::may_modify(table, req.argc, |i| super::gate::Args::arg(&args, i));
        self.ctx.registry.paused(writes)
    }

    /// `CLIENT INFO`: this connection's line.
    pub(super) fn client_info(&mut self) -> Bytes {
        self.publish();
        let line = describe(&self.handle, &self.shown, self.handle.flags());
        self.verbatim(line.as_bytes())
    }

    /// `CLIENT LIST [TYPE type] [ID id ...]`.
    pub(super) fn client_list(&mut self, args: &[Vec<u8>]) -> Bytes {
        self.publish();
        let mut kind = None;
        let mut ids: Option<Vec<u64>> = None;
        match args.get(2).map(|a| a.to_ascii_uppercase()).as_deref() {
            None => {}
            Some(b"TYPE") if args.len() == 4 => match parse_type(&args[3]) {
                Some(t) => kind = Some(t),
                None => return unknown_type(&args[3]),
            },
            Some(b"ID") if args.len() >= 4 => {
                let mut v = Vec::new();
                for a in &args[3..] {
                    match int(a) {
                        Some(id) if id > 0 => v.push(id as u64),
                        _ => return Bytes::from_static(b"-ERR Invalid client ID\r\n"),
                    }
                }
                ids = Some(v);
            }
            Some(_) => return ClientError::Syntax.frame(),
        }
        let mut text = String::new();
        for h in self.ctx.registry.all() {
            let flags = h.flags();
            if kind.is_some_and(|k| k != client_type(flags))
                || ids.as_ref().is_some_and(|ids| !ids.contains(&h.id))
            {
                continue;
            }
            text.push_str(&describe(&h, &h.shown(), flags));
        }
        self.verbatim(text.as_bytes())
    }

    /// `CLIENT KILL addr:port` or `CLIENT KILL <filter> <value> ...`. Returns the reply and whether this
    /// connection killed itself (it closes after the reply, as in Redis).
    pub(super) fn client_kill(&mut self, args: &[Vec<u8>]) -> (Bytes, bool) {
        self.publish();
        let me = self.id;
        if args.len() == 3 {
            // The old form: one address, +OK or an error.
            let addr = String::from_utf8_lossy(&args[2]).into_owned();
            let Some(h) = self
                .ctx
                .registry
                .all()
                .into_iter()
                .find(|h| h.addr.to_string() == addr)
            else {
                return (Bytes::from_static(b"-ERR No such client\r\n"), false);
            };
            if h.id != me {
                h.kill();
            }
            return (Bytes::from_static(OK), h.id == me);
        }
        if args.len() < 4 {
            return (ClientError::Syntax.frame(), false);
        }
        let filter = match Filter::parse(args) {
            Ok(f) => f,
            Err(e) => return (e, false),
        };
        let mut killed = 0;
        let mut myself = false;
        for h in self.ctx.registry.all() {
            if filter.selects(&h, me) {
                killed += 1;
                if h.id == me {
                    myself = true;
                } else {
                    h.kill();
                }
            }
        }
        (Bytes::from(format!(":{killed}\r\n")), myself)
    }

    /// `CLIENT PAUSE timeout [WRITE|ALL]` and `CLIENT UNPAUSE`: this proxy's clients wait, the nodes do
    /// not.
    pub(super) fn client_pause(&mut self, args: &[Vec<u8>], pause: bool) -> Bytes {
        if !pause {
            if args.len() != 2 {
                return ClientError::Arity("client|unpause").frame();
            }
            self.ctx.registry.unpause();
            return Bytes::from_static(OK);
        }
        let all = match args.get(3).map(|a| a.to_ascii_uppercase()).as_deref() {
            None => true,
            Some(b"ALL") if args.len() == 4 => true,
            Some(b"WRITE") if args.len() == 4 => false,
            _ => return ClientError::Syntax.frame(),
        };
        let Some(ms) = args.get(2).and_then(|a| int(a)).filter(|ms| *ms >= 0) else {
            return Bytes::from_static(b"-ERR timeout is not an integer or out of range\r\n");
        };
        self.ctx
            .registry
            .pause(Duration::from_millis(ms as u64), all);
        Bytes::from_static(OK)
    }

    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: asks the node the client's blocking command waits on to
    /// unblock that upstream connection, which then answers the client as Redis would; `:0` if the client
    /// is not blocked.
    pub(super) fn client_unblock(
        &mut self,
        args: &[Vec<u8>],
        req: &Request,
        batch: &mut Option<Batch>,
    ) -> Step {
        let mode: &[u8] = match args.get(3).map(|a| a.to_ascii_uppercase()).as_deref() {
            None => b"TIMEOUT",
            Some(b"TIMEOUT") if args.len() == 4 => b"TIMEOUT",
            Some(b"ERROR") if args.len() == 4 => b"ERROR",
            _ => return self.reply_local(batch, req, ClientError::Syntax.frame()),
        };
        let Some(id) = args.get(2).and_then(|a| int(a)) else {
            return self.reply_local(batch, req, ClientError::BadDb.frame());
        };
        let target = u64::try_from(id)
            .ok()
            .and_then(|id| self.ctx.registry.get(id))
            .and_then(|h| h.blocked_on());
        let Some((node, upstream_id)) = target else {
            return self.reply_local(batch, req, Bytes::from_static(b":0\r\n"));
        };
        self.flush(batch);
        self.input.skip(req);
        let mut cmd = Vec::new();
        let uid = upstream_id.to_string();
        crate::resp::encode_command(&mut cmd, &[b"CLIENT", b"UNBLOCK", uid.as_bytes(), mode]);
        let conn = node.pool(&ConnKey::default()).pick(&node);
        let rx = upstream::submit(&conn, Bytes::from(cmd), 1, upstream::Want::NONE);
        let (tx, task) = oneshot::channel();
        tokio::spawn(async move {
            let reply = match rx.await {
                Ok(Ok(r)) => r.bytes,
                Ok(Err(e)) => ClientError::Upstream(&e).frame(),
                Err(_) => Bytes::from_static(b":0\r\n"),
            };
            let _ = tx.send(reply);
        });
        self.push(Wait::Task(task), None, Then::Nothing);
        Step::Next
    }

    /// Text as a bulk string, or in RESP3 a verbatim string, as Redis answers `CLIENT LIST` and `INFO`.
    pub(super) fn verbatim(&self, text: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(text.len() + 16);
        Encoder {
            resp3: self.state.key.resp3,
        }
        .verbatim(&mut b, text);
        b.freeze()
    }
}
