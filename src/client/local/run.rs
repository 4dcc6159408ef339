//! Carrying out what [`super::answer`] decided for a command the proxy handles itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{answer, Answer};
use crate::client::dispatch::{Batch, Step};
use crate::client::gate::Args;
use crate::client::queue::{Sent, Then, Wait};
use crate::client::reply::{OK, RESET};
use crate::client::session::Session;
use crate::command::Local;
use crate::resp::{request::KEPT_ARGS, Request};
use crate::route;
use crate::topology::Shard;
use crate::upstream;

impl Session {
    /// Commands the proxy answers or handles itself.
    pub(in crate::client) fn local(
        &mut self,
        l: Local,
        req: &Request,
        start: usize,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Step {
        let args = {
            let a = self.input.args(req, start);
            // UNSUBSCRIBE and friends confirm every name, past the kept arguments too; the commands
            // answered from the whole proxy read every argument (filters, sections, settings).
            if (l == Local::Unsubscribe || l.proxy_wide()) && req.argc > KEPT_ARGS {
                a.all()
            } else {
                a.kept()
            }
        };
        if let Some(step) = self.proxy_local(l, &args, req, shard, batch) {
            return step;
        }
        let who = self.who();
        let proxy_auth = self.ctx.auth.load().is_some();
        let answer = answer(l, &args, &mut self.state, &who, proxy_auth);
        if answer.after_earlier_replies() && self.barrier(batch) {
            return Step::Wait;
        }
        match answer {
            Answer::Reply(reply) => self.reply_local(batch, req, reply),
            Answer::Silence(mode) => {
                // No reply of its own; what was batched before keeps its replies.
                self.flush(batch);
                self.input.skip(req);
                self.state.reply_mode = mode;
                Step::Next
            }
            Answer::Quit => {
                self.reply_local(batch, req, Bytes::from_static(OK));
                // Nothing after QUIT runs.
                self.input.clear();
                self.flow.closing = true;
                Step::Stop
            }
            Answer::Reset => {
                self.state.reset(self.ctx.initial_user());
                self.reply_local(batch, req, Bytes::from_static(RESET))
            }
            Answer::Hello { key, name } => {
                self.state.set_key(key);
                if name.is_some() {
                    self.state.name = name;
                }
                let reply = self.hello_reply();
                self.reply_local(batch, req, reply)
            }
            Answer::Switch { key, frame, hello } => self.switch_key(req, shard, key, frame, hello),
            Answer::Wait { want, timeout } => self.wait(req, shard, want, timeout),
        }
    }

    /// The commands answered from what the whole proxy knows (its clients, its view of the servers),
    /// and ROLE; `None` for the others.
    fn proxy_local(
        &mut self,
        l: Local,
        args: &[Vec<u8>],
        req: &Request,
        shard: &Shard,
        batch: &mut Option<Batch>,
    ) -> Option<Step> {
        let reply = match l {
            Local::ClientInfo => self.client_info(),
            Local::ClientList => self.client_list(args),
            Local::ClientKill => {
                let (reply, myself) = self.client_kill(args);
                let step = self.reply_local(batch, req, reply);
                if myself {
                    // As Redis: the reply goes out, then the connection closes; nothing after it runs.
                    self.input.clear();
                    self.flow.closing = true;
                    return Some(Step::Stop);
                }
                return Some(step);
            }
            Local::ClientUnblock => return Some(self.client_unblock(args, req, batch)),
            Local::ClientPause => self.client_pause(args, true),
            Local::ClientUnpause => self.client_pause(args, false),
            Local::Monitor => self.start_monitor(),
            Local::Info => return Some(self.info(args, req, shard, batch)),
            Local::ConfigGet => return Some(self.config_get(req, shard, batch)),
            Local::ConfigSet => return Some(self.config_set(args, req, shard, batch)),
            Local::AclShow => return Some(self.acl_show(req, shard, batch)),
            Local::Sentinel | Local::Role => match self.ctx.sentinel_facade.clone() {
                Some(name) if l == Local::Sentinel => self.sentinel(args, &name),
                Some(_) => self.facade_role(),
                // Without the Sentinel face: what the primary says.
                None => return Some(self.forward_to_primary(req, shard, batch)),
            },
            _ => return None,
        };
        Some(self.reply_local(batch, req, reply))
    }

    /// Moves the session to `key` once the primary accepts it: `frame` (or the request itself) is sent on
    /// a connection greeted for `key`, and the switch happens only if it succeeds.
    fn switch_key(
        &mut self,
        req: &Request,
        shard: &Shard,
        key: upstream::ConnKey,
        frame: Option<Bytes>,
        hello: Option<Option<Bytes>>,
    ) -> Step {
        let Ok(p) = route::writer(shard).cloned() else {
            return self.park(req);
        };
        let bytes = match frame {
            Some(f) => {
                self.input.skip(req);
                f
            }
            None => self.input.take(req),
        };
        let conn = p.pool(&key).pick(&p);
        let rx = upstream::submit(&conn, bytes, 1, upstream::Want::NONE);
        self.state.sent(shard.id, p.id, true, 1);
        self.push(
            Wait::Upstream(rx),
            Some(Sent::once(shard.id, p, true)),
            Then::SwitchKey { key, hello },
        );
        self.flow.hold = true;
        Step::Next
    }

    /// `WAIT numreplicas timeout`: Redis's own WAIT, asked on the shared connection that carried this
    /// session's last write (see [`crate::client::state::State::wrote_on`]), so it counts the replicas
    /// that really acknowledged that write (and whatever other clients wrote there before, which can only
    /// lower the count). A WAIT blocks its connection, and other sessions share it: it is asked in
    /// slices of at most [`crate::client::tasks::WAIT_SLICE`], until enough replicas acknowledged or the
    /// client's timeout passes. Writes that went to a node that is no longer the primary are known to
    /// no replica of this one: 0.
    fn wait(
        &mut self,
        req: &Request,
        shard: &Shard,
        want: usize,
        timeout: Option<Duration>,
    ) -> Step {
        let Ok(p) = route::writer(shard).cloned() else {
            return self.park(req);
        };
        let conn = match &self.state.wrote_on {
            Some(c) if c.node.id == p.id => c.clone(),
            Some(_) => return self.reply_local(&mut None, req, Bytes::from_static(b":0\r\n")),
            None => self.state.conn_for(&p),
        };
        self.input.skip(req);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(crate::client::tasks::wait_for_acks(conn, want, timeout, tx));
        self.push(Wait::Task(rx), None, Then::Nothing);
        Step::Next
    }

    /// Answers an authentication attempt: `ok` on success; on failure WRONGPASS, later each time (100 ms,
    /// doubling, at most 5 s), holding the requests behind it, so guessing passwords is slow.
    pub(in crate::client) fn authenticated(
        &mut self,
        user: Option<Arc<crate::auth::ClientUser>>,
        batch: &mut Option<Batch>,
        req: &Request,
        ok: Bytes,
    ) -> Step {
        if let Some(u) = user {
            self.state.user = Some(u);
            self.state.auth_failures = 0;
            return self.reply_local(batch, req, ok);
        }
        self.ctx.metrics.auth_failures.inc();
        self.state.auth_failures += 1;
        let delay = (Duration::from_millis(100) * (1 << (self.state.auth_failures - 1).min(6)))
            .min(Duration::from_secs(5));
        self.flush(batch);
        self.input.skip(req);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Bytes::from_static(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ));
        });
        self.push(Wait::Task(rx), None, Then::Nothing);
        self.flow.hold = true;
        Step::Next
    }
}
