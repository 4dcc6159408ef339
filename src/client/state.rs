//! What a client's connection has set, as Redis keeps it per connection: database, protocol and
//! credentials (the upstream connection key), name, reply mode, the user it authenticated as, and what
//! it has written and read (for read-your-writes).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::auth::ClientUser;
use crate::route::Reads;
use crate::topology::ShardId;
use crate::upstream::{ConnKey, Node, Shared};

/// Whether replies are sent (`CLIENT REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyMode {
    On,
    Off,
    /// Drop the next command's reply only.
    Skip,
}

/// One client connection's state.
pub(super) struct State {
    /// State every upstream connection of this session must have.
    pub key: ConnKey,
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    pub reply_mode: ReplyMode,
    /// Who the client authenticated as to the proxy (`None` until then, with proxy-side auth on).
    pub user: Option<Arc<ClientUser>>,
    /// Failed authentications in a row: each one answers slower.
    pub auth_failures: u32,
    /// `CLIENT SETINFO LIB-NAME` and `LIB-VER`.
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    /// `CLIENT NO-EVICT ON`, `CLIENT NO-TOUCH ON`.
    pub no_evict: bool,
    pub no_touch: bool,
    /// What the session wrote and read, per shard.
    pub reads: Reads,
    /// The primary this session last sent to, per shard: commands for a new primary of a shard wait
    /// until the old one has answered everything, so a failover never reorders a session's writes.
    pub last_primary: Vec<(ShardId, u64)>,
    /// The shared connection that carried this session's last command that may have written on a
    /// primary: the session's WAIT is asked there, after those writes (Redis's WAIT counts the replicas
    /// that acknowledged every write its connection made).
    pub wrote_on: Option<Shared>,
    /// Shared connection per node for `key`: a session keeps one, so its commands to a node stay in
    /// order.
    conns: Vec<Shared>,
}

impl State {
    /// A new connection's state; `user`: who it is before authenticating (see `Context::initial_user`).
    pub fn new(user: Option<Arc<ClientUser>>) -> State {
        State {
            key: ConnKey::default(),
            name: None,
            reply_mode: ReplyMode::On,
            user,
            auth_failures: 0,
            lib_name: None,
            lib_ver: None,
            no_evict: false,
            no_touch: false,
            reads: Reads::default(),
            last_primary: Vec::new(),
            wrote_on: None,
            conns: Vec::new(),
        }
    }

    /// Back to a fresh connection's state (RESET).
    pub fn reset(&mut self, user: Option<Arc<ClientUser>>) {
        self.user = user;
        self.set_key(ConnKey::default());
        self.name = None;
        self.reply_mode = ReplyMode::On;
        self.no_evict = false;
        self.no_touch = false;
        self.reads.clear();
    }

    /// Moves the session to another connection key; the cached connections belong to the old one.
    pub fn set_key(&mut self, key: ConnKey) {
        if key != self.key {
            self.key = key;
            self.conns.clear();
        }
    }

    /// This session's shared connection to `node`.
    pub fn conn_for(&mut self, node: &Arc<Node>) -> Shared {
        if let Some(c) = self.conns.iter().find(|c| c.node.id == node.id) {
            return c.clone();
        }
        let c = node.pool(&self.key).pick(node);
        self.conns.push(c.clone());
        c
    }

    /// When `node` last sent bytes on this session's shared connection to it.
    pub fn progress(&self, node: u64) -> Option<Instant> {
        self.conns
            .iter()
            .find(|c| c.node.id == node)
            .and_then(|c| c.progress.last())
    }

    /// Whether the next entry's reply is dropped (`CLIENT REPLY`).
    pub fn take_silent(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// Counts `count` commands sent to `node` of `shard`: to the primary (for read-your-writes, and so
    /// that commands for a new primary wait until this one has answered), or reads to a replica.
    pub fn sent(&mut self, shard: ShardId, node: u64, primary: bool, count: u32) {
        self.reads.shard(shard).sent(node, primary, count);
        if primary {
            match self.last_primary.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, last)) => *last = node,
                None => self.last_primary.push((shard, node)),
            }
        }
    }

    /// True if commands for primary `node` must wait: this session's commands to another primary are
    /// not all answered yet.
    pub fn primary_changed(&mut self, shard: ShardId, node: u64) -> bool {
        let last = self
            .last_primary
            .iter()
            .find(|(s, _)| *s == shard)
            .map_or(0, |(_, n)| *n);
        self.reads.shard(shard).unreplied_primary() > 0 && last != node
    }
}
