//! Every client connection of this proxy, shared by the worker threads: what `CLIENT LIST` and `CLIENT
//! INFO` show of each, how `CLIENT KILL` and `CLIENT UNBLOCK` reach one, `CLIENT PAUSE` at the proxy, and
//! MONITOR's feed.
//!
//! The hot path pays atomics only: a session takes the registry's lock when it connects and when it
//! leaves, and its own entry's lock only when something `CLIENT LIST` shows changes (its name, database,
//! protocol, user, library), never per command. Whether anyone monitors, and whether clients are paused,
//! are one atomic load each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::ClientUser;
use crate::upstream::Node;

/// Lines MONITOR's feed holds for a monitor that has not read them; past it that monitor misses lines.
const FEED_CAPACITY: usize = 16 * 1024;

/// The proxy's client connections.
#[derive(Debug)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<Handle>>>,
    monitors: AtomicUsize,
    feed: broadcast::Sender<Bytes>,
    /// Paused until this many milliseconds after `started`, plus one (0: never paused).
    paused_until: AtomicU64,
    /// The pause holds every command, not only those that may write.
    pause_all: AtomicBool,
    /// When the proxy started (uptime, and the clock of the pause).
    pub started: Instant,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            clients: Mutex::new(BTreeMap::new()),
            monitors: AtomicUsize::new(0),
            feed: broadcast::channel(FEED_CAPACITY).0,
            paused_until: AtomicU64::new(0),
            pause_all: AtomicBool::new(false),
            started: Instant::now(),
        }
    }
}

/// Flag bits of a client, as `CLIENT LIST` shows them.
pub mod flag {
    /// `b`: blocked in a command.
    pub const BLOCKED: u32 = 1;
    /// `P`: subscribed (pub/sub).
    pub const PUBSUB: u32 = 1 << 1;
    /// `x`: inside MULTI.
    pub const MULTI: u32 = 1 << 2;
    /// `O`: MONITOR.
    pub const MONITOR: u32 = 1 << 3;
    /// `t`: client-side caching tracking on.
    pub const TRACKING: u32 = 1 << 4;
    /// `e`: CLIENT NO-EVICT on.
    pub const NO_EVICT: u32 = 1 << 5;
    /// `T`: CLIENT NO-TOUCH on.
    pub const NO_TOUCH: u32 = 1 << 6;
    /// `d`: WATCH or a dedicated connection's state.
    pub const DIRTY_CAS: u32 = 1 << 7;
}

/// What `CLIENT LIST` shows of a client that the client itself changes.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// Selected database.
    pub db: u32,
    /// RESP3.
    pub resp3: bool,
    /// Who it authenticated as.
    pub user: Option<Arc<ClientUser>>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Bytes>,
}

/// One client connection, as the other sessions see it.
#[derive(Debug)]
pub struct Handle {
    /// The proxy's id of the connection (`CLIENT ID`).
    pub id: u64,
    /// The client's address.
    pub addr: SocketAddr,
    /// The proxy's address the client connected to.
    pub laddr: Option<SocketAddr>,
    /// The socket's file descriptor (-1 if unknown).
    pub fd: i32,
    created: Instant,
    /// Milliseconds after `created` of the client's last command.
    last: AtomicU64,
    flags: AtomicU32,
    shown: Mutex<Shown>,
    kill: CancellationToken,
    /// The node and upstream client id of the connection a blocking command of this client waits on.
    blocked_on: Mutex<Option<(Arc<Node>, u64)>>,
    /// The node and upstream client id of this client's own connection (pub/sub, transactions), if
    /// known: where another client's tracking invalidations can be redirected.
    pinned_on: Mutex<Option<(Arc<Node>, u64)>>,
}

impl Handle {
    /// Fired once the client is to be disconnected (`CLIENT KILL`).
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.kill.cancelled()
    }

    /// True once the client is to be disconnected.
    pub fn is_killed(&self) -> bool {
        self.kill.is_cancelled()
    }

    /// Disconnects the client: its session ends at its next turn.
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// Notes that the client sent something now.
    pub fn touch(&self) {
        let ms = self.created.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Sets the flag bits (see [`flag`]).
    pub fn set_flags(&self, bits: u32) {
        if self.flags.load(Ordering::Relaxed) != bits {
            self.flags.store(bits, Ordering::Relaxed);
        }
    }

    /// The flag bits (see [`flag`]).
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Replaces what `CLIENT LIST` shows.
    pub fn show(&self, shown: Shown) {
        if let Ok(mut s) = self.shown.lock() {
            *s = shown;
        }
    }

    /// What `CLIENT LIST` shows now.
    pub fn shown(&self) -> Shown {
        self.shown.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Seconds since the client connected.
    pub fn age(&self) -> u64 {
        self.created.elapsed().as_secs()
    }

    /// Seconds since the client's last command.
    pub fn idle(&self) -> u64 {
        let now = self.created.elapsed().as_millis() as u64;
        now.saturating_sub(self.last.load(Ordering::Relaxed)) / 1000
    }

    /// Notes (or, with `None`, forgets) the upstream connection a blocking command of this client waits
    /// on, for `CLIENT UNBLOCK`.
    pub fn set_blocked_on(&self, on: Option<(Arc<Node>, u64)>) {
        if let Ok(mut b) = self.blocked_on.lock() {
            *b = on;
        }
    }

    /// Notes (or forgets) this client's own upstream connection.
    pub fn set_pinned_on(&self, on: Option<(Arc<Node>, u64)>) {
        if let Ok(mut p) = self.pinned_on.lock() {
            *p = on;
        }
    }

    /// This client's own upstream connection (node, upstream client id), if known.
    pub fn pinned_on(&self) -> Option<(Arc<Node>, u64)> {
        self.pinned_on.lock().ok().and_then(|p| p.clone())
    }

    /// The upstream connection a blocking command of this client waits on, if any.
    pub fn blocked_on(&self) -> Option<(Arc<Node>, u64)> {
        self.blocked_on.lock().ok().and_then(|b| b.clone())
    }
}

impl Registry {
    /// Enters a new connection.
    pub fn register(
        &self,
        id: u64,
        addr: SocketAddr,
        laddr: Option<SocketAddr>,
        fd: i32,
    ) -> Arc<Handle> {
        let handle = Arc::new(Handle {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            last: AtomicU64::new(0),
            flags: AtomicU32::new(0),
            shown: Mutex::new(Shown::default()),
            kill: CancellationToken::new(),
            blocked_on: Mutex::new(None),
            pinned_on: Mutex::new(None),
        });
        if let Ok(mut c) = self.clients.lock() {
            c.insert(id, handle.clone());
        }
        handle
    }

    /// Removes a connection that ended.
    pub fn remove(&self, id: u64) {
        if let Ok(mut c) = self.clients.lock() {
            c.remove(&id);
        }
    }

    /// Every connection, by id.
    pub fn all(&self) -> Vec<Arc<Handle>> {
        self.clients
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The connection `id`, if open.
    pub fn get(&self, id: u64) -> Option<Arc<Handle>> {
        self.clients.lock().ok()?.get(&id).cloned()
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// True if no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True while a client runs MONITOR: only then do sessions describe what they forward.
    #[inline]
    pub fn monitoring(&self) -> bool {
        self.monitors.load(Ordering::Relaxed) > 0
    }

    /// A new monitor's feed. Call [`Registry::unmonitor`] when it ends.
    pub fn monitor(&self) -> broadcast::Receiver<Bytes> {
        self.monitors.fetch_add(1, Ordering::Relaxed);
        self.feed.subscribe()
    }

    /// A monitor ended.
    pub fn unmonitor(&self) {
        self.monitors.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sends one MONITOR line to every monitor.
    pub fn publish(&self, line: Bytes) {
        let _ = self.feed.send(line);
    }

    /// Pauses clients for `timeout`: every command with `all`, else those that may write. A pause never
    /// shortens one already running, as in Redis; a pause of every command outranks one of writes.
    pub fn pause(&self, timeout: Duration, all: bool) {
        let now = self.now();
        let until = now.saturating_add(timeout.as_millis() as u64);
        let current = self.paused_until.load(Ordering::Relaxed);
        let running = current > now;
        if all || !running || !self.pause_all.load(Ordering::Relaxed) {
            self.pause_all.store(all, Ordering::Relaxed);
        }
        if !running || until > current {
            self.paused_until.store(until, Ordering::Relaxed);
        }
    }

    /// Milliseconds since start, plus one (so that 0 is before any time).
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Ends a pause.
    pub fn unpause(&self) {
        self.paused_until.store(0, Ordering::Relaxed);
    }

    /// Whether a command must wait now: `writes` says it may write.
    #[inline]
    pub fn paused(&self, writes: bool) -> bool {
        let until = self.paused_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if self.now() >= until {
            return false;
        }
        writes || self.pause_all.load(Ordering::Relaxed)
    }
}

/// `CLIENT LIST`'s flag letters for `bits`, `N` for none.
pub fn flag_letters(bits: u32) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (flag::MONITOR, 'O'),
        (flag::PUBSUB, 'P'),
        (flag::BLOCKED, 'b'),
        (flag::DIRTY_CAS, 'd'),
        (flag::TRACKING, 't'),
        (flag::MULTI, 'x'),
        (flag::NO_EVICT, 'e'),
        (flag::NO_TOUCH, 'T'),
    ] {
        if bits & bit != 0 {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push('N');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_of_writes_holds_writes_only_until_it_ends_or_is_lifted() {
        let r = Registry::default();
        assert!(!r.paused(true));
        r.pause(Duration::from_secs(60), false);
        assert!(r.paused(true));
        assert!(!r.paused(false));
        r.pause(Duration::from_secs(1), true);
        assert!(
            r.paused(false),
            "a pause of everything outranks one of writes"
        );
        r.unpause();
        assert!(!r.paused(true));
        r.pause(Duration::ZERO, true);
        assert!(!r.paused(true), "a pause that is over holds nothing");
    }

    #[test]
    fn clients_are_listed_by_id_until_they_leave() {
        let r = Registry::default();
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        r.register(2, addr, None, -1);
        r.register(1, addr, None, -1);
        assert_eq!(r.all().iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2]);
        r.remove(1);
        assert_eq!(r.len(), 1);
        assert!(r.get(1).is_none());
        assert_eq!(flag_letters(0), "N");
        assert_eq!(flag_letters(flag::MULTI | flag::BLOCKED), "bx");
    }
}
