//! Routing each buffered request: batch it to a shared connection, answer it here, or hand it to the
//! dedicated connection.
//!
//! Consecutive requests bound for the same node travel as one job, cut from the input buffer without a
//! copy. Some requests need every earlier reply first (a *barrier*: SELECT, AUTH, HELLO, RESET, WAIT,
//! entering MULTI or pub/sub, blocking commands), because they move the session to another upstream
//! connection and Redis runs a client's commands in order; some also hold later requests until they are
//! answered (`hold`: the session's state depends on their outcome).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::sync::oneshot;

use super::pinned::Pinned;
use super::reply::{ClientError, Encoder, OK, PONG, RESET};
use super::session::{Entry, ReplyMode, Sent, Session, Then, Wait};
use crate::command::{classify, Class, Local};
use crate::metrics::Kind;
use crate::resp::Request;
use crate::route::ReadTarget;
use crate::topology::Topology;
use crate::upstream::Credentials;
use crate::upstream::{self, ConnKey, Node, Pool};

/// Requests at the start of the input buffer bound for one shared connection.
pub(super) struct Batch {
    node: Arc<Node>,
    primary: bool,
    /// Reads, writes, others in the batch.
    kinds: [u32; 3],
    /// Only reads: safe to run again elsewhere if this node fails them.
    reads_only: bool,
    len: usize,
    count: u32,
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
}

impl Session {
    /// Dispatches buffered requests until the buffer is empty or something must wait. Returns true if it
    /// stopped at a barrier or hold, to be called again once the queue is empty.
    pub(super) async fn dispatch(&mut self) -> bool {
        if self.inbuf.is_empty() {
            // Nothing to route (most turns of the loop: a reply arrived or went out).
            if self.hold && self.queue.is_empty() {
                self.hold = false;
            }
            self.flush_pinned().await;
            return false;
        }
        let table = self.ctx.table.load_full();
        let topo = self.ctx.topo.snapshot();
        let mut batch: Option<Batch> = None;
        let mut waiting = false;
        loop {
            if self.hold {
                if self.queue.is_empty() && batch.is_none() {
                    self.hold = false;
                } else {
                    waiting = true;
                    break;
                }
            }
            let pending = batch.as_ref().map_or(0, |b| b.count as usize);
            if self.closing && self.inbuf.is_empty()
                || self.inflight + pending >= self.ctx.max_inflight
            {
                break;
            }
            let start = batch.as_ref().map_or(0, |b| b.len);
            if start >= self.inbuf.len() {
                break;
            }
            // Until a client authenticates, its requests are held to Redis's limits for unauthenticated
            // clients: a stranger cannot make the proxy buffer a large request.
            let limited = self.user.is_none() && self.ctx.auth.load().is_some();
            if limited != self.scan_limited {
                self.scan_limited = limited;
                self.scanner.set_limits(if limited {
                    crate::resp::Limits {
                        max_bulk_bytes: UNAUTHENTICATED_BULK_BYTES,
                        max_array_len: UNAUTHENTICATED_ARGS,
                        ..self.ctx.limits
                    }
                } else {
                    self.ctx.limits
                });
            }
            let req = match self.scanner.scan(&self.inbuf[start..]) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    if self.inbuf.len() - start >= self.ctx.max_request_bytes {
                        self.flush(&mut batch);
                        self.fatal(
                            ClientError::RequestTooLarge(self.ctx.max_request_bytes).frame(),
                        );
                    }
                    break;
                }
                Err(e) => {
                    self.flush(&mut batch);
                    self.fatal(ClientError::Protocol(&e).frame());
                    break;
                }
            };
            if req.argc == 0 {
                // `*0`, `*-1` and blank inline lines: Redis ignores them without a reply.
                self.flush(&mut batch);
                self.inbuf.advance(req.len);
                continue;
            }
            let (class, kind) = {
                let src = &self.inbuf[start..];
                let scanner = &self.scanner;
                classify(&table, req.argc, |i| scanner.arg(&req, src, i))
            };
            self.cur_kind = kind.into();
            let gated = self.gate(class, &req, start, &table, &mut batch);
            let step = if let Some(step) = gated {
                step
            } else if self.pinned.is_some() {
                self.flush(&mut batch);
                let args = self.kept_args(&req, 0);
                self.pinned_request(class, &req, &args)
            } else {
                self.route(class, &req, &topo, &mut batch).await
            };
            match step {
                Step::Next => {}
                Step::Stop | Step::Park => break,
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

    async fn route(
        &mut self,
        class: Class,
        req: &Request,
        topo: &Arc<Topology>,
        batch: &mut Option<Batch>,
    ) -> Step {
        // During a manual switchover writes wait as if there were no primary; reads do not.
        let read_primary = topo.primary().cloned();
        let primary = if self.ctx.topo.writes_held() {
            None
        } else {
            topo.primary().cloned()
        };
        match class {
            Class::Read => match self
                .reads
                .route(topo, self.ctx.consistency, self.ctx.fallback)
            {
                ReadTarget::Replica(n) => self.add(batch, n, false, true, req),
                ReadTarget::Primary(reason) => match read_primary {
                    Some(p) => {
                        self.ctx.metrics.read_on_primary(reason.into());
                        self.add(batch, p, true, true, req)
                    }
                    None => self.hold_new(batch, req, true),
                },
                ReadTarget::Refuse(reason) => {
                    self.reply_local(batch, req, ClientError::NoReplica(reason).frame())
                }
            },
            Class::Primary => match primary {
                Some(p) => self.add(batch, p, true, false, req),
                // Failover under way: the command waits for the next primary (write_hold_ms).
                None => self.hold_new(batch, req, false),
            },
            Class::Broadcast => {
                let Some(p) = primary else {
                    return self.reply_local(batch, req, ClientError::NoPrimary.frame());
                };
                self.flush(batch);
                let bytes = self.take_frame(req);
                // Same connection as this session's later reads, so an EVALSHA_RO sent next finds the script.
                for r in topo.replica_nodes() {
                    let conn = self.conn_for(r);
                    r.metrics.load().commands(false, Kind::Other, 1);
                    drop(upstream::submit(&conn, bytes.clone(), 1));
                }
                self.sent_to_primary(p.id, 1);
                self.submit(p, true, false, bytes, 1, [0, 0, 1]);
                Step::Next
            }
            Class::Blocking => {
                if self.barrier(batch) {
                    return Step::Wait;
                }
                let Some(p) = primary else {
                    return self.reply_local(batch, req, ClientError::NoPrimary.frame());
                };
                let bytes = self.take_frame(req);
                let (tx, rx) = oneshot::channel();
                tokio::spawn(blocking_call(p.pool(&self.key), p.clone(), bytes, tx));
                self.sent_to_primary(p.id, 1);
                self.push(Wait::Task(rx), Some(Sent::once(p, true)), Then::Nothing);
                self.hold = true;
                Step::Next
            }
            Class::Pin(_) => {
                if self.barrier(batch) {
                    return Step::Wait;
                }
                let Some(p) = primary else {
                    return self.reply_local(batch, req, ClientError::NoPrimary.frame());
                };
                match p.pool(&self.key).dedicated(&p).await {
                    // The request stays buffered and is forwarded by the pinned path on the next turn.
                    Ok(conn) => {
                        self.pinned = Some(Pinned::new(conn, self.ctx.topo.subscribe()));
                        self.ctx.metrics.pinned_sessions.inc();
                        Step::Next
                    }
                    Err(e) => self.reply_local(batch, req, ClientError::Pin(&e).frame()),
                }
            }
            Class::Local(local) => {
                let args = self.kept_args(req, batch.as_ref().map_or(0, |b| b.len));
                self.local(local, req, &args, topo, batch)
            }
        }
    }

    /// Commands the proxy answers or handles itself.
    pub(super) fn local(
        &mut self,
        local: Local,
        req: &Request,
        args: &[Vec<u8>],
        topo: &Arc<Topology>,
        batch: &mut Option<Batch>,
    ) -> Step {
        let enc = Encoder {
            resp3: self.key.resp3,
        };
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let mut b = bytes::BytesMut::new();
        let reply: Bytes = match local {
            Local::Ping => match args.len() {
                1 => Bytes::from_static(PONG),
                2 => {
                    enc.bulk(&mut b, &args[1]);
                    b.freeze()
                }
                _ => ClientError::Arity(&name).frame(),
            },
            Local::Echo => match args.len() {
                2 => {
                    enc.bulk(&mut b, &args[1]);
                    b.freeze()
                }
                _ => ClientError::Arity(&name).frame(),
            },
            Local::Quit => {
                self.reply_local(batch, req, Bytes::from_static(OK));
                // Nothing after QUIT runs.
                self.inbuf.clear();
                self.closing = true;
                return Step::Stop;
            }
            Local::Reset => {
                if self.barrier(batch) {
                    return Step::Wait;
                }
                self.reset();
                Bytes::from_static(RESET)
            }
            Local::Select => {
                if args.len() != 2 {
                    ClientError::Arity(&name).frame()
                } else {
                    match std::str::from_utf8(&args[1])
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        None => ClientError::BadDb.frame(),
                        Some(db) if db < 0 || db > i64::from(u32::MAX) => {
                            Bytes::from_static(b"-ERR DB index is out of range\r\n")
                        }
                        Some(db) if db as u32 == self.key.db => Bytes::from_static(OK),
                        Some(db) => {
                            let key = ConnKey {
                                db: db as u32,
                                ..self.key.clone()
                            };
                            return self.switch_key(batch, req, topo, key, None);
                        }
                    }
                }
            }
            Local::Auth => {
                if args.len() != 2 && args.len() != 3 {
                    ClientError::Arity(&name).frame()
                } else {
                    let creds = Credentials {
                        username: (args.len() == 3)
                            .then(|| String::from_utf8_lossy(&args[1]).into_owned()),
                        password: String::from_utf8_lossy(&args[args.len() - 1]).into_owned(),
                    };
                    let key = ConnKey {
                        auth: Some(Arc::new(creds)),
                        ..self.key.clone()
                    };
                    return self.switch_key(batch, req, topo, key, None);
                }
            }
            Local::Hello => return self.hello(req, args, topo, batch),
            Local::ClientId => {
                enc.int(&mut b, self.id as i64);
                b.freeze()
            }
            Local::ClientSetName => match args.get(2) {
                Some(n) if args.len() == 3 => {
                    if n.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                        ClientError::BadName.frame()
                    } else {
                        self.name = (!n.is_empty()).then(|| Bytes::copy_from_slice(n));
                        Bytes::from_static(OK)
                    }
                }
                _ => ClientError::Arity("client|setname").frame(),
            },
            Local::ClientGetName => {
                match &self.name {
                    Some(n) => enc.bulk(&mut b, n),
                    None => enc.null(&mut b),
                }
                b.freeze()
            }
            Local::ClientInfo => {
                enc.bulk(&mut b, self.client_info().as_bytes());
                b.freeze()
            }
            Local::ClientReply => {
                let mode = args.get(2).map(|a| a.to_ascii_uppercase());
                match mode.as_deref() {
                    Some(b"ON") if args.len() == 3 => {
                        self.reply_mode = ReplyMode::On;
                        Bytes::from_static(OK)
                    }
                    Some(m @ (b"OFF" | b"SKIP")) if args.len() == 3 => {
                        // These commands have no reply of their own.
                        self.flush(batch);
                        self.inbuf.advance(req.len);
                        self.reply_mode = if m == b"OFF" {
                            ReplyMode::Off
                        } else {
                            ReplyMode::Skip
                        };
                        return Step::Next;
                    }
                    _ => ClientError::Syntax.frame(),
                }
            }
            Local::ClientAck | Local::TrackingOff | Local::Unwatch => Bytes::from_static(OK),
            Local::WithoutMulti => ClientError::WithoutMulti(&name.to_ascii_uppercase()).frame(),
            Local::Unsubscribe => {
                // Not subscribed to anything: one confirmation per name, or one with a null name.
                let kind = name.as_bytes();
                // Past the kept arguments, read every name from the request itself.
                let all = if req.argc > args.len() {
                    self.all_args(req, batch.as_ref().map_or(0, |b| b.len))
                } else {
                    args.to_vec()
                };
                let names: Vec<Option<&[u8]>> = if all.len() > 1 {
                    all[1..].iter().map(|a| Some(&a[..])).collect()
                } else {
                    vec![None]
                };
                for n in names {
                    enc.push(&mut b, 3);
                    enc.bulk(&mut b, kind);
                    match n {
                        Some(n) => enc.bulk(&mut b, n),
                        None => enc.null(&mut b),
                    }
                    enc.int(&mut b, 0);
                }
                b.freeze()
            }
            Local::Wait => return self.wait(req, args, topo, batch),
            Local::Refuse => ClientError::Unsupported(&command_label(args)).frame(),
        };
        self.reply_local(batch, req, reply)
    }

    /// Authentication and authorization before routing; `Some` if the request was answered here.
    fn gate(
        &mut self,
        class: Class,
        req: &Request,
        start: usize,
        table: &crate::command::Table,
        batch: &mut Option<Batch>,
    ) -> Option<Step> {
        let name = self
            .scanner
            .arg(req, &self.inbuf[start..], 0)
            .unwrap_or_default();
        if name.eq_ignore_ascii_case(b"CONFIG") {
            // The upstream credentials (and Redis's own secrets) never reach a client through the proxy.
            // Every parameter is checked, not just the kept ones; arguments that cannot all be read
            // count as secret.
            let get = self
                .scanner
                .arg(req, &self.inbuf[start..], 1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"GET"));
            if get {
                let args = if req.argc > crate::resp::request::KEPT_ARGS {
                    self.all_args(req, start)
                } else {
                    self.kept_args(req, start)
                };
                if args.len() < req.argc
                    || args
                        .iter()
                        .skip(2)
                        .any(|p| SECRETS.iter().any(|s| glob_match(p, s.as_bytes())))
                {
                    let e = Bytes::from_static(
                        b"-NOPERM redsplit: CONFIG GET of secret parameters is not allowed\r\n",
                    );
                    return Some(self.reply_local(batch, req, e));
                }
            }
        } else if name.eq_ignore_ascii_case(b"ACL") {
            // ACL LIST and ACL GETUSER show every user's password hash, the proxy's upstream user's too.
            let sub = self.scanner.arg(req, &self.inbuf[start..], 1);
            if sub.is_some_and(|s| {
                s.eq_ignore_ascii_case(b"LIST") || s.eq_ignore_ascii_case(b"GETUSER")
            }) {
                let e = Bytes::from_static(
                    b"-NOPERM redsplit: ACL LIST and ACL GETUSER show password hashes and are not allowed through the proxy\r\n",
                );
                return Some(self.reply_local(batch, req, e));
            }
        }
        // A session made while auth was off keeps its open user if a reload turns auth on.
        let auth = self.ctx.auth.load_full()?;
        if matches!(class, Class::Local(Local::Auth | Local::Hello)) && self.in_multi() {
            // Checked by the proxy, so not something Redis could queue and run at EXEC.
            self.flush(batch);
            let label = command_label(&self.kept_args(req, 0));
            return Some(self.refuse_in_multi(req, ClientError::InMulti(&label).frame()));
        }
        match class {
            Class::Local(Local::Auth) => {
                let args = self.kept_args(req, start);
                if args.len() != 2 && args.len() != 3 {
                    return Some(self.reply_local(batch, req, ClientError::Arity("auth").frame()));
                }
                let user = (args.len() == 3).then(|| args[1].as_slice());
                let verified = auth.check(user, &args[args.len() - 1]);
                return Some(self.authenticated(verified, batch, req, Bytes::from_static(OK)));
            }
            Class::Local(Local::Hello) => {
                // As Redis: a HELLO that fails its checks authenticates nobody.
                let hello = match parse_hello(&self.kept_args(req, start)) {
                    Ok(h) => h,
                    Err(e) => return Some(self.reply_local(batch, req, e)),
                };
                if let Some((user, password)) = &hello.auth {
                    match auth.check(Some(user), password) {
                        Some(u) => {
                            self.user = Some(u);
                            self.auth_failures = 0;
                        }
                        None => return Some(self.authenticated(None, batch, req, Bytes::new())),
                    }
                } else if self.user.is_none() {
                    let e = Bytes::from_static(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n");
                    return Some(self.reply_local(batch, req, e));
                }
                return None;
            }
            Class::Local(Local::Quit | Local::Reset) => return None,
            _ => {}
        }
        let Some(user) = self.user.clone() else {
            let e = Bytes::from_static(b"-NOAUTH Authentication required.\r\n");
            return Some(self.reply_local(batch, req, e));
        };
        if user.readonly {
            let src = &self.inbuf[start..];
            let scanner = &self.scanner;
            if crate::command::may_modify(table, req.argc, |i| scanner.arg(req, src, i)) {
                let cmd = String::from_utf8_lossy(name).to_ascii_lowercase();
                let e = format!(
                    "-NOPERM User {} has no permissions to run the '{cmd}' command\r\n",
                    user.name
                );
                return Some(self.reply_local(batch, req, Bytes::from(e)));
            }
        }
        None
    }

    /// Answers an authentication attempt: `ok` on success; on failure WRONGPASS, later each time (100 ms,
    /// doubling, at most 5 s), holding the requests behind it, so guessing passwords is slow.
    fn authenticated(
        &mut self,
        user: Option<Arc<crate::auth::ClientUser>>,
        batch: &mut Option<Batch>,
        req: &Request,
        ok: Bytes,
    ) -> Step {
        if let Some(u) = user {
            self.user = Some(u);
            self.auth_failures = 0;
            return self.reply_local(batch, req, ok);
        }
        self.ctx.metrics.auth_failures.inc();
        self.auth_failures += 1;
        let delay = (Duration::from_millis(100) * (1 << (self.auth_failures - 1).min(6)))
            .min(Duration::from_secs(5));
        self.flush(batch);
        self.inbuf.advance(req.len);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Bytes::from_static(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ));
        });
        self.push(Wait::Task(rx), None, Then::Nothing);
        self.hold = true;
        Step::Next
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn hello(
        &mut self,
        req: &Request,
        args: &[Vec<u8>],
        topo: &Arc<Topology>,
        batch: &mut Option<Batch>,
    ) -> Step {
        let hello = match parse_hello(args) {
            Ok(h) => h,
            Err(e) => return self.reply_local(batch, req, e),
        };
        let Some(proto) = hello.proto else {
            let reply = self.hello_reply();
            return self.reply_local(batch, req, reply);
        };
        let name = hello.name;
        let mut auth = hello.auth.map(|(user, password)| Credentials {
            username: Some(String::from_utf8_lossy(&user).into_owned()),
            password: String::from_utf8_lossy(&password).into_owned(),
        });
        if self.ctx.auth.load().is_some() {
            // Checked by the proxy (gate): the upstream identity stays the proxy's own.
            auth = None;
        }
        if self.barrier(batch) {
            return Step::Wait;
        }
        let key = ConnKey {
            resp3: proto == 3,
            auth: auth.clone().map(Arc::new).or_else(|| self.key.auth.clone()),
            ..self.key.clone()
        };
        match auth {
            // Credentials are checked by the primary: AUTH on a connection greeted with them.
            Some(c) => {
                let mut cmd = Vec::new();
                let user = c.username.as_deref().unwrap_or("default");
                crate::resp::encode_command(
                    &mut cmd,
                    &[b"AUTH", user.as_bytes(), c.password.as_bytes()],
                );
                self.inbuf.advance(req.len);
                self.switch_key_with(Bytes::from(cmd), topo, key, Some(name))
            }
            None => {
                self.set_key(key);
                if name.is_some() {
                    self.name = name;
                }
                let reply = self.hello_reply();
                self.reply_local(batch, req, reply)
            }
        }
    }

    /// `WAIT numreplicas timeout`: on shared connections Redis's own WAIT would count other clients' writes
    /// and block them all, so the proxy answers from the replicas' offsets: it takes the primary's offset
    /// after this session's writes, then counts the replicas that reach it.
    fn wait(
        &mut self,
        req: &Request,
        args: &[Vec<u8>],
        topo: &Arc<Topology>,
        batch: &mut Option<Batch>,
    ) -> Step {
        if args.len() != 3 {
            return self.reply_local(batch, req, ClientError::Arity("wait").frame());
        }
        let int = |a: &[u8]| {
            std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
        };
        let (Some(want), Some(timeout)) = (int(&args[1]), int(&args[2])) else {
            return self.reply_local(batch, req, ClientError::BadDb.frame());
        };
        if timeout < 0 {
            return self.reply_local(
                batch,
                req,
                Bytes::from_static(b"-ERR timeout is negative\r\n"),
            );
        }
        if self.barrier(batch) {
            return Step::Wait;
        }
        let Some(p) = topo.primary().cloned() else {
            return self.reply_local(batch, req, ClientError::NoPrimary.frame());
        };
        self.inbuf.advance(req.len);
        // ROLE on this session's own primary connection runs after its writes, so its offset covers them.
        let conn = self.conn_for(&p);
        let mut role = Vec::new();
        crate::resp::encode_command(&mut role, &[b"ROLE"]);
        let role_rx = upstream::submit(&conn, Bytes::from(role), 1);
        let (tx, rx) = oneshot::channel();
        let topo_handle = self.ctx.topo.clone();
        let timeout = (timeout > 0).then(|| Duration::from_millis(timeout as u64));
        tokio::spawn(wait_for_replicas(
            topo_handle,
            role_rx,
            want.max(0) as usize,
            timeout,
            tx,
        ));
        self.push(Wait::Task(rx), None, Then::Nothing);
        Step::Next
    }

    /// Moves the session to `key` once the primary accepts it: the request itself is sent on a connection
    /// greeted for `key`, and the switch happens only if it succeeds.
    fn switch_key(
        &mut self,
        batch: &mut Option<Batch>,
        req: &Request,
        topo: &Arc<Topology>,
        key: ConnKey,
        hello: Option<Option<Bytes>>,
    ) -> Step {
        if self.barrier(batch) {
            return Step::Wait;
        }
        let bytes = self.take_frame(req);
        self.switch_key_with(bytes, topo, key, hello)
    }

    fn switch_key_with(
        &mut self,
        bytes: Bytes,
        topo: &Arc<Topology>,
        key: ConnKey,
        hello: Option<Option<Bytes>>,
    ) -> Step {
        let Some(p) = topo.primary().cloned() else {
            self.push(
                Wait::Ready(ClientError::NoPrimary.frame()),
                None,
                Then::Nothing,
            );
            return Step::Next;
        };
        let conn = p.pool(&key).pick(&p);
        let rx = upstream::submit(&conn, bytes, 1);
        self.sent_to_primary(p.id, 1);
        self.push(
            Wait::Upstream(rx),
            Some(Sent::once(p, true)),
            Then::SwitchKey { key, hello },
        );
        self.hold = true;
        Step::Next
    }

    /// Back to a fresh connection's state (RESET). With proxy-side auth that means unauthenticated.
    pub(super) fn reset(&mut self) {
        self.user = self.initial_user();
        self.set_key(ConnKey::default());
        self.name = None;
        self.reply_mode = ReplyMode::On;
        self.reads.clear();
    }

    /// Adds a request to the batch for `node`, starting a new batch if it goes elsewhere.
    fn add(
        &mut self,
        batch: &mut Option<Batch>,
        node: Arc<Node>,
        primary: bool,
        read: bool,
        req: &Request,
    ) -> Step {
        // Commands for a new primary wait until the old one has answered this session's commands: a
        // failover must not let a later write overtake an earlier one.
        if primary
            && self.reads.unreplied_primary() > 0
            && self.last_primary != node.id
            && !self.queue.is_empty()
        {
            self.flush(batch);
            return Step::Wait;
        }
        if primary {
            self.sent_to_primary(node.id, 1);
        } else {
            self.reads.sent(node.id, false, 1);
        }
        if req.inline {
            self.flush(batch);
            let bytes = self.take_frame(req);
            let mut kinds = [0; 3];
            kinds[self.cur_kind as usize] = 1;
            self.submit(node, primary, read, bytes, 1, kinds);
            return Step::Next;
        }
        match batch {
            Some(b) if b.node.id == node.id && self.reply_mode == ReplyMode::On => {
                b.len += req.len;
                b.count += 1;
                b.kinds[self.cur_kind as usize] += 1;
                b.reads_only &= read;
            }
            _ => {
                self.flush(batch);
                let mut kinds = [0; 3];
                kinds[self.cur_kind as usize] = 1;
                *batch = Some(Batch {
                    node,
                    primary,
                    kinds,
                    reads_only: read,
                    len: req.len,
                    count: 1,
                });
            }
        }
        // `CLIENT REPLY OFF/SKIP` silence whole entries, so each command gets its own.
        if self.reply_mode != ReplyMode::On {
            self.flush(batch);
        }
        Step::Next
    }

    /// Sends the batch, if any.
    fn flush(&mut self, batch: &mut Option<Batch>) {
        if let Some(b) = batch.take() {
            let bytes = self.inbuf.split_to(b.len).freeze();
            self.submit(b.node, b.primary, b.reads_only, bytes, b.count, b.kinds);
        }
    }

    fn submit(
        &mut self,
        node: Arc<Node>,
        primary: bool,
        reads_only: bool,
        bytes: Bytes,
        count: u32,
        kinds: [u32; 3],
    ) {
        let m = node.metrics.load();
        for (kind, n) in [Kind::Read, Kind::Write, Kind::Other]
            .into_iter()
            .zip(kinds)
        {
            if n > 0 {
                m.commands(primary, kind, u64::from(n));
            }
        }
        let conn = self.conn_for(&node);
        let rx = upstream::submit(&conn, bytes.clone(), count);
        let silent = self.take_silent();
        let deadline = reads_only.then(|| Instant::now() + self.ctx.read_timeout);
        if primary {
            self.last_primary = node.id;
        }
        let sent = Sent {
            node: Some(node),
            primary,
            bytes: Some(bytes),
            reads_only,
            attempts: 1,
            failures: 0,
            held_since: None,
            deadline,
            refused_by: None,
        };
        self.queue.push_back(Entry {
            wait: Wait::Upstream(rx),
            count,
            silent,
            sent: Some(sent),
            then: Then::Nothing,
            started: Some(Instant::now()),
            kinds,
        });
        self.inflight += count as usize;
    }

    /// Queues a request with nowhere to go yet (no primary): it is sent once there is one, and nothing
    /// after it is dispatched before.
    fn hold_new(&mut self, batch: &mut Option<Batch>, req: &Request, reads_only: bool) -> Step {
        self.flush(batch);
        let bytes = self.take_frame(req);
        let silent = self.take_silent();
        let sent = Sent {
            node: None,
            primary: true,
            bytes: Some(bytes),
            reads_only,
            attempts: 0,
            failures: 0,
            held_since: Some(Instant::now()),
            deadline: None,
            refused_by: None,
        };
        let mut kinds = [0; 3];
        kinds[self.cur_kind as usize] = 1;
        self.queue.push_back(Entry {
            wait: Wait::Held,
            count: 1,
            silent,
            sent: Some(sent),
            then: Then::Nothing,
            started: Some(Instant::now()),
            kinds,
        });
        self.ctx.metrics.writes_held.inc();
        self.inflight += 1;
        self.hold = true;
        Step::Next
    }

    /// Counts commands sent to the primary `node` (for read-your-writes, and so that commands for a new
    /// primary wait until this one has answered).
    pub(super) fn sent_to_primary(&mut self, node: u64, count: u32) {
        self.reads.sent(node, true, count);
        self.last_primary = node;
    }

    /// Queues a one-command entry. One sent upstream is timed for the latency histogram and counted
    /// on its node.
    pub(super) fn push(&mut self, wait: Wait, sent: Option<Sent>, then: Then) {
        let silent = self.take_silent();
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
        self.queue.push_back(Entry {
            wait,
            count: 1,
            silent,
            sent,
            then,
            started: upstream.then(Instant::now),
            kinds,
        });
        self.inflight += 1;
    }

    /// Answers a request locally, in order with everything before it.
    pub(super) fn reply_local(
        &mut self,
        batch: &mut Option<Batch>,
        req: &Request,
        reply: Bytes,
    ) -> Step {
        self.flush(batch);
        self.inbuf.advance(req.len);
        self.push(Wait::Ready(reply), None, Then::Nothing);
        Step::Next
    }

    /// True if earlier requests are still unanswered: the caller stops, leaving the request buffered.
    fn barrier(&mut self, batch: &mut Option<Batch>) -> bool {
        if batch.is_some() || !self.queue.is_empty() {
            self.flush(batch);
            return true;
        }
        false
    }

    /// Removes the request from the input and returns the bytes to forward.
    pub(super) fn take_frame(&mut self, req: &Request) -> Bytes {
        if req.inline {
            let bytes = Bytes::copy_from_slice(self.scanner.frame(req, &[]));
            self.inbuf.advance(req.len);
            bytes
        } else {
            self.inbuf.split_to(req.len).freeze()
        }
    }

    /// Copies of the kept arguments of the request starting at `start` in the input, for commands handled
    /// here.
    pub(super) fn kept_args(&self, req: &Request, start: usize) -> Vec<Vec<u8>> {
        let src = &self.inbuf[start..];
        (0..req.argc.min(crate::resp::request::KEPT_ARGS))
            .map_while(|i| self.scanner.arg(req, src, i).map(<[u8]>::to_vec))
            .collect()
    }

    /// Every argument of the request starting at `start` in the input (for the rare command that needs
    /// more than the kept ones).
    fn all_args(&self, req: &Request, start: usize) -> Vec<Vec<u8>> {
        let frame = self.scanner.frame(req, &self.inbuf[start..]);
        crate::resp::value::request_args(frame).unwrap_or_default()
    }

    /// Whether the next entry's reply is dropped (`CLIENT REPLY`).
    fn take_silent(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// Reports a fatal client error: the error is the last reply, then the connection closes.
    fn fatal(&mut self, frame: Bytes) {
        self.ctx.metrics.protocol_errors.inc();
        self.close_with(frame);
    }

    /// Answers `frame` after the replies owed, reads nothing more, then closes.
    pub(super) fn close_with(&mut self, frame: Bytes) {
        self.inbuf.clear();
        self.reply_mode = ReplyMode::On;
        self.push(Wait::Ready(frame), None, Then::Nothing);
        self.closing = true;
    }

    /// `CLIENT INFO` for this session, in Redis's format (fields the proxy knows).
    fn client_info(&self) -> String {
        let name = self
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        let laddr = self.local.map(|a| a.to_string()).unwrap_or_default();
        let multi = self
            .pinned
            .as_ref()
            .map_or(-1, |p| if p.multi { 0 } else { -1 });
        format!(
            "id={} addr={} laddr={} fd=-1 name={} db={} multi={} resp={} lib-name=redsplit\n",
            self.id,
            self.peer,
            laddr,
            name,
            self.key.db,
            multi,
            if self.key.resp3 { 3 } else { 2 },
        )
    }
}

/// Server parameters holding secrets, refused to `CONFIG GET` through the proxy.
/// Largest bulk string and most arguments in a request before the client authenticates (Redis 7's own
/// limits for unauthenticated clients). `HELLO 3 AUTH user password SETNAME name` has 7 arguments.
const UNAUTHENTICATED_BULK_BYTES: usize = 16 * 1024;
const UNAUTHENTICATED_ARGS: usize = 10;

/// HELLO's arguments once they pass Redis's checks (which come before any authentication).
pub(super) struct Hello {
    /// `None`: a bare HELLO.
    pub proto: Option<i64>,
    /// User and password.
    pub auth: Option<(Vec<u8>, Vec<u8>)>,
    pub name: Option<Bytes>,
}

/// Checks HELLO's arguments as Redis does; `Err` is the error reply.
pub(super) fn parse_hello(args: &[Vec<u8>]) -> Result<Hello, Bytes> {
    let mut hello = Hello {
        proto: None,
        auth: None,
        name: None,
    };
    let Some(version) = args.get(1) else {
        return Ok(hello);
    };
    hello.proto = match std::str::from_utf8(version)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(p @ (2 | 3)) => Some(p),
        Some(_) => return Err(ClientError::NoProto.frame()),
        None => {
            return Err(Bytes::from_static(
                b"-ERR Protocol version is not an integer or out of range\r\n",
            ))
        }
    };
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        if opt == b"AUTH" && i + 2 < args.len() {
            hello.auth = Some((args[i + 1].clone(), args[i + 2].clone()));
            i += 3;
        } else if opt == b"SETNAME" && i + 1 < args.len() {
            hello.name = Some(Bytes::copy_from_slice(&args[i + 1]));
            i += 2;
        } else {
            return Err(Bytes::from(format!(
                "-ERR Syntax error in HELLO option '{}'\r\n",
                String::from_utf8_lossy(&args[i])
            )));
        }
    }
    Ok(hello)
}

const SECRETS: &[&str] = &[
    "requirepass",
    "masterauth",
    "masteruser",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// Redis's glob (`*`, `?`, `[abc]`, `[a-z]`, `[^a]`, `\x`), case-insensitive as CONFIG GET matches.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    let lower = |c: u8| c.to_ascii_lowercase();
    while t < text.len() {
        let mut matched = None;
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some(p);
                    mark = t;
                    p += 1;
                    continue;
                }
                b'?' => matched = Some(p + 1),
                b'[' => {
                    let mut i = p + 1;
                    let negate = pattern.get(i) == Some(&b'^');
                    if negate {
                        i += 1;
                    }
                    let mut hit = false;
                    while i < pattern.len() && pattern[i] != b']' {
                        if pattern[i] == b'\\' && i + 1 < pattern.len() {
                            i += 1;
                            hit |= lower(pattern[i]) == lower(text[t]);
                        } else if i + 2 < pattern.len()
                            && pattern[i + 1] == b'-'
                            && pattern[i + 2] != b']'
                        {
                            let (a, b) = (lower(pattern[i]), lower(pattern[i + 2]));
                            let (lo, hi) = (a.min(b), a.max(b));
                            hit |= (lo..=hi).contains(&lower(text[t]));
                            i += 2;
                        } else {
                            hit |= lower(pattern[i]) == lower(text[t]);
                        }
                        i += 1;
                    }
                    if hit != negate {
                        matched = Some((i + 1).min(pattern.len()));
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if lower(pattern[p + 1]) == lower(text[t]) {
                        matched = Some(p + 2);
                    }
                }
                c => {
                    if lower(c) == lower(text[t]) {
                        matched = Some(p + 1);
                    }
                }
            }
        }
        match matched {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some(s) => {
                    p = s + 1;
                    mark += 1;
                    t = mark;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `NAME` or, for containers, `NAME SUB`, for error messages.
pub(super) fn command_label(args: &[Vec<u8>]) -> String {
    let word = |i: usize| {
        args.get(i)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
    };
    match (word(0), word(1)) {
        (Some(c), Some(s)) if c == "CLIENT" => format!("{c} {s}"),
        (Some(c), _) => c,
        _ => String::new(),
    }
}

/// Runs a blocking command on a dedicated connection, which goes back to the pool afterwards.
async fn blocking_call(
    pool: Arc<Pool>,
    node: Arc<Node>,
    bytes: Bytes,
    mut tx: oneshot::Sender<Bytes>,
) {
    let mut conn = match pool.dedicated(&node).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(ClientError::Pin(&e).frame());
            return;
        }
    };
    let reply = tokio::select! {
        r = conn.exchange(&bytes) => r,
        // The client went away: dropping the connection makes Redis unblock without serving (and so
        // losing) an element nobody will read.
        _ = tx.closed() => return,
    };
    match reply {
        Ok(reply) => {
            let _ = tx.send(reply);
            conn.mark_clean();
            pool.give_back(conn);
        }
        Err(e) => {
            let _ = tx.send(ClientError::Upstream(&e).frame());
        }
    }
}

/// Counts replicas at or past the primary offset that `role` reports, until `want` or the timeout.
async fn wait_for_replicas(
    topo: Arc<crate::topology::Topo>,
    role: oneshot::Receiver<Result<upstream::Reply, upstream::Error>>,
    want: usize,
    timeout: Option<Duration>,
    mut tx: oneshot::Sender<Bytes>,
) {
    let target = match role.await {
        Ok(Ok(r)) => match crate::resp::value::decode_one(&r.bytes) {
            Some(frame) => match crate::topology::probe::Role::parse(&frame) {
                Some(crate::topology::probe::Role::Master { offset }) => offset,
                _ => {
                    let _ = tx.send(Bytes::from_static(
                        b"-ERR redsplit: WAIT needs a primary\r\n",
                    ));
                    return;
                }
            },
            _ => {
                let _ = tx.send(r.bytes);
                return;
            }
        },
        Ok(Err(e)) => {
            let _ = tx.send(ClientError::Upstream(&e).frame());
            return;
        }
        Err(_) => return,
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let acked = loop {
        let snapshot = topo.snapshot();
        let acked = snapshot
            .replica_nodes()
            .filter(|r| r.repl.offset() >= target)
            .count();
        if acked >= want || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break acked;
        }
        tokio::select! {
            _ = tick.tick() => {}
            // The client went away.
            _ = tx.closed() => return,
        }
    };
    let _ = tx.send(Bytes::from(format!(":{acked}\r\n")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_config_names_match_every_glob_that_names_them() {
        let secret = |p: &str| {
            SECRETS
                .iter()
                .any(|s| glob_match(p.as_bytes(), s.as_bytes()))
        };
        for p in [
            "requirepass",
            "*",
            "*pass*",
            "re?uirepass",
            "re[q]uirepass",
            "RE[a-z]UIREPASS",
            "master*",
            "[^x]equirepass",
            "tls-*",
        ] {
            assert!(secret(p), "{p}");
        }
        for p in [
            "maxmemory",
            "requirepas",
            "re[x]uirepass",
            "[^r]equirepass",
            "appendonly",
        ] {
            assert!(!secret(p), "{p}");
        }
    }
}
