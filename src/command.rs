//! Command classification: which commands may reach a replica, which the proxy answers itself, which need
//! a dedicated upstream connection.
//!
//! The table holds the Redis `COMMAND INFO` flags that matter for routing. A built-in copy for Redis 7.x
//! serves until the primary's own `COMMAND` reply replaces it, so module commands and newer versions are
//! classified by the server that runs them. The rule that keeps data safe: only a command flagged
//! `readonly` may reach a replica; a command the table does not know goes to the primary.

mod builtin;
pub mod keys;

use std::sync::Arc;

use crate::resp::Value as OwnedFrame;
use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

/// Flag bits, as plain constants so the generated table can combine them in a `const`.
pub mod flag {
    /// No flag.
    pub const NONE: u16 = 0;
    /// Never modifies data (`readonly` in `COMMAND INFO`).
    pub const READONLY: u16 = 1;
    /// May modify data.
    pub const WRITE: u16 = 1 << 1;
    /// Administrative.
    pub const ADMIN: u16 = 1 << 2;
    /// Pub/sub related.
    pub const PUBSUB: u16 = 1 << 3;
    /// May block the connection that sends it.
    pub const BLOCKING: u16 = 1 << 4;
    /// Not allowed inside scripts.
    pub const NOSCRIPT: u16 = 1 << 5;
    /// Key positions depend on arguments.
    pub const MOVABLEKEYS: u16 = 1 << 6;
    /// In the `@connection` ACL category: acts on the connection's own state.
    pub const CONNECTION: u16 = 1 << 7;
    /// Has subcommands with flags of their own (set when the table is built).
    pub const CONTAINER: u16 = 1 << 8;
}

/// The routing-relevant flags of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u16);

impl Flags {
    /// True if every bit of `bits` (see [`flag`]) is set.
    pub fn has(self, bits: u16) -> bool {
        self.0 & bits == bits
    }
}

/// What the table knows about one command or subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// Routing flags.
    pub flags: Flags,
    /// Redis arity: positive is exact, negative is a minimum.
    pub arity: i16,
    /// First key position, last key position (negative counts from the end), step (for a future cluster
    /// router).
    pub keys: (i16, i16, i16),
}

/// Command table keyed by upper-case name; subcommands as `CONTAINER|SUB`.
#[derive(Debug, Clone)]
pub struct Table {
    map: FxHashMap<Box<[u8]>, CommandInfo>,
    /// Where the table came from, for logs: `builtin` or the primary's address.
    pub source: String,
}

/// The live table, replaced whole when a primary's `COMMAND` reply arrives.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// Commands newer than the generated table, so they route right before a refresh. Read-only ones matter
/// most: without an entry they would all go to the primary.
const EXTRA: &[(&str, u16, i16, i16, i16, i16)] = {
    use flag::*;
    &[
        // Redis 7.2
        ("CLIENT|NO-TOUCH", NOSCRIPT | CONNECTION, 3, 0, 0, 0),
        ("CLIENT|SETINFO", NOSCRIPT | CONNECTION, 4, 0, 0, 0),
        ("WAITAOF", NOSCRIPT, 4, 0, 0, 0),
        // Redis 7.4 hash field expiry
        ("HEXPIRE", WRITE, -6, 1, 1, 1),
        ("HPEXPIRE", WRITE, -6, 1, 1, 1),
        ("HEXPIREAT", WRITE, -6, 1, 1, 1),
        ("HPEXPIREAT", WRITE, -6, 1, 1, 1),
        ("HPERSIST", WRITE, -5, 1, 1, 1),
        ("HTTL", READONLY, -5, 1, 1, 1),
        ("HPTTL", READONLY, -5, 1, 1, 1),
        ("HEXPIRETIME", READONLY, -5, 1, 1, 1),
        ("HPEXPIRETIME", READONLY, -5, 1, 1, 1),
    ]
};

/// Longest command name we look up; longer names are unknown (and so go to the primary).
const MAX_NAME: usize = 64;

impl Table {
    /// The built-in Redis 7.x table.
    pub fn builtin() -> Table {
        let map = builtin::BUILTIN
            .iter()
            .chain(EXTRA)
            .map(|&(name, flags, arity, first, last, step)| {
                let info = CommandInfo {
                    flags: Flags(flags),
                    arity,
                    keys: (first, last, step),
                };
                (name.as_bytes().into(), info)
            })
            .collect();
        Table::finish(map, "builtin".into())
    }

    /// Builds a table from a `COMMAND` reply (RESP2). Entries that do not parse are skipped; an empty
    /// result is an error, so a broken reply never replaces a working table.
    pub fn from_command_reply(reply: &OwnedFrame, source: String) -> Result<Table, TableError> {
        let OwnedFrame::Array(entries) = reply else {
            return Err(TableError::NotAnArray);
        };
        let mut map = FxHashMap::default();
        for entry in entries {
            add_entry(&mut map, entry, None);
        }
        if map.is_empty() {
            return Err(TableError::Empty);
        }
        Ok(Table::finish(map, source))
    }

    fn finish(mut map: FxHashMap<Box<[u8]>, CommandInfo>, source: String) -> Table {
        let containers: Vec<Box<[u8]>> = map
            .keys()
            .filter_map(|k| k.iter().position(|&b| b == b'|').map(|i| k[..i].into()))
            .collect();
        for c in containers {
            if let Some(info) = map.get_mut(&c) {
                info.flags.0 |= flag::CONTAINER;
            }
        }
        Table { map, source }
    }

    /// Number of commands and subcommands known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the table knows nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Looks up a command by name, in any case.
    pub fn get(&self, name: &[u8]) -> Option<&CommandInfo> {
        let mut key = [0u8; MAX_NAME];
        let key = upper_into(&mut key, &[name])?;
        self.map.get(key)
    }

    /// Looks up a command by its upper-case name.
    fn get_upper(&self, upper: &[u8]) -> Option<&CommandInfo> {
        self.map.get(upper)
    }

    /// Looks up `CONTAINER|SUB`, in any case.
    pub fn get_sub(&self, name: &[u8], sub: &[u8]) -> Option<&CommandInfo> {
        let mut key = [0u8; MAX_NAME];
        let key = upper_into(&mut key, &[name, b"|", sub])?;
        self.map.get(key)
    }
}

/// A `COMMAND` reply that cannot become a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The reply is not an array (an error, or a renamed command).
    #[error("COMMAND reply is not an array")]
    NotAnArray,
    /// No entry of the reply could be read.
    #[error("COMMAND reply holds no usable entry")]
    Empty,
}

fn add_entry(
    map: &mut FxHashMap<Box<[u8]>, CommandInfo>,
    entry: &OwnedFrame,
    parent: Option<&[u8]>,
) {
    let OwnedFrame::Array(fields) = entry else {
        return;
    };
    let name = match fields.first() {
        Some(OwnedFrame::BulkString(b)) => b.to_ascii_uppercase(),
        Some(OwnedFrame::SimpleString(s)) => s.to_ascii_uppercase(),
        _ => return,
    };
    let int = |i: usize| match fields.get(i) {
        Some(OwnedFrame::Integer(n)) => i16::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let mut bits = 0;
    if let Some(OwnedFrame::Array(flags)) = fields.get(2) {
        for f in flags {
            let (OwnedFrame::SimpleString(s) | OwnedFrame::BulkString(s)) = f else {
                continue;
            };
            bits |= match s.as_slice() {
                b"readonly" => flag::READONLY,
                b"write" => flag::WRITE,
                b"admin" => flag::ADMIN,
                b"pubsub" => flag::PUBSUB,
                b"blocking" => flag::BLOCKING,
                b"noscript" => flag::NOSCRIPT,
                b"movablekeys" => flag::MOVABLEKEYS,
                _ => 0,
            };
        }
    }
    if let Some(OwnedFrame::Array(cats)) = fields.get(6) {
        let connection = cats.iter().any(|c| {
            matches!(c, OwnedFrame::SimpleString(s) | OwnedFrame::BulkString(s) if s.as_slice() == b"@connection")
        });
        if connection {
            bits |= flag::CONNECTION;
        }
    }
    let info = CommandInfo {
        flags: Flags(bits),
        arity: int(1),
        keys: (int(3), int(4), int(5)),
    };
    // Redis 7 names subcommands `container|sub` already; older servers list none.
    let key: Vec<u8> = match parent {
        Some(p) if !name.contains(&b'|') => [p, b"|", &name].concat(),
        _ => name,
    };
    if let Some(OwnedFrame::Array(subs)) = fields.get(9) {
        for sub in subs {
            add_entry(map, sub, Some(&key));
        }
    }
    map.insert(key.into_boxed_slice(), info);
}

/// Upper-cases the concatenation of `parts` into `buf`; `None` if it does not fit.
fn upper_into<'a>(buf: &'a mut [u8; MAX_NAME], parts: &[&[u8]]) -> Option<&'a [u8]> {
    let mut n = 0;
    for part in parts {
        let dst = buf.get_mut(n..n + part.len())?;
        for (d, s) in dst.iter_mut().zip(part.iter()) {
            *d = s.to_ascii_uppercase();
        }
        n += part.len();
    }
    Some(&buf[..n])
}

/// A short argument (a subcommand name) upper-cased on the stack, so classifying allocates nothing.
struct Upper {
    buf: [u8; 16],
    len: usize,
}

impl Upper {
    /// `None` if longer than any subcommand the classifier looks for.
    fn of(a: &[u8]) -> Option<Upper> {
        let mut u = Upper {
            buf: [0; 16],
            len: a.len(),
        };
        let dst = u.buf.get_mut(..a.len())?;
        for (d, s) in dst.iter_mut().zip(a) {
            *d = s.to_ascii_uppercase();
        }
        Some(u)
    }
}

impl std::ops::Deref for Upper {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// How the proxy must treat one command in a session that is not pinned to a dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Flagged read-only and not blocking in this call: may be served by a replica.
    Read,
    /// Must run on the primary, over a shared connection: writes, unknown commands, admin commands.
    Primary,
    /// Blocks the connection it runs on (`BLPOP`, `XREAD ... BLOCK`): primary, on a dedicated connection,
    /// after every earlier command of the session has replied.
    Blocking,
    /// Needs the session pinned to a dedicated primary connection.
    Pin(Pin),
    /// Runs on the primary and on every replica (`SCRIPT LOAD`, `SCRIPT FLUSH`: Redis 7 does not replicate
    /// the script cache). The client gets the primary's reply.
    Broadcast,
    /// Answered or handled by the proxy.
    Local(Local),
    /// Runs while a script or function keeps a node busy (`SCRIPT KILL`, `FUNCTION KILL`, `SHUTDOWN`):
    /// at once, on a connection of its own, to the node running the script. Never held, never queued
    /// behind the script on a shared connection.
    Interrupt(Interrupt),
}

/// What an interrupting command stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// `SCRIPT KILL`, `FUNCTION KILL`: the script or function running on whichever node is busy.
    Kill,
    /// `SHUTDOWN` (`SHUTDOWN NOSAVE` stops a primary busy with a script that wrote): the primary.
    Shutdown,
}

/// Why a session pins a dedicated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// `MULTI`
    Multi,
    /// `WATCH`
    Watch,
    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`
    Subscribe,
    /// `MONITOR`
    Monitor,
    /// `CLIENT TRACKING ON`
    Tracking,
}

/// Commands the proxy handles itself, because they concern the client's own connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `PING [message]`
    Ping,
    /// `ECHO message`
    Echo,
    /// `SELECT db`
    Select,
    /// `AUTH [user] password`
    Auth,
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`
    Hello,
    /// `QUIT`
    Quit,
    /// `RESET`
    Reset,
    /// `CLIENT ID`
    ClientId,
    /// `CLIENT SETNAME name`
    ClientSetName,
    /// `CLIENT GETNAME`
    ClientGetName,
    /// `CLIENT INFO`
    ClientInfo,
    /// `CLIENT REPLY ON|OFF|SKIP`
    ClientReply,
    /// `CLIENT NO-EVICT`, `CLIENT NO-TOUCH`, `CLIENT SETINFO`: acknowledged for this client only, never
    /// applied to a shared upstream connection.
    ClientAck,
    /// `CLIENT TRACKING OFF` outside tracking.
    TrackingOff,
    /// `EXEC` or `DISCARD` outside `MULTI`.
    WithoutMulti,
    /// `UNWATCH` outside `WATCH`.
    Unwatch,
    /// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE` outside pub/sub.
    Unsubscribe,
    /// `WAIT numreplicas timeout`, answered from the replicas' offsets.
    Wait,
    /// Refused with an error: replication commands (`SYNC`, `PSYNC`, `REPLCONF`) and `WAITAOF`.
    Refuse,
    /// `CONFIG GET pattern...`: the primary's reply, secret values left out.
    ConfigGet,
    /// `CONFIG SET name value...`: to every node for settings that must be equal everywhere, else to the
    /// primary.
    ConfigSet,
    /// `ACL LIST`, `ACL GETUSER`: the primary's reply, password hashes left out.
    AclShow,
    /// `INFO [section...]`: the primary's sections, and the proxy's own.
    Info,
    /// `MONITOR`: every command of every client of this proxy, as the proxy forwards it.
    Monitor,
    /// `CLIENT LIST [TYPE type] [ID id...]`: the proxy's clients.
    ClientList,
    /// `CLIENT KILL ...`: the proxy's clients, by any filter.
    ClientKill,
    /// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: a client of this proxy blocked in a command.
    ClientUnblock,
    /// `CLIENT PAUSE timeout [WRITE|ALL]`: this proxy's clients wait.
    ClientPause,
    /// `CLIENT UNPAUSE`
    ClientUnpause,
    /// `SENTINEL ...`: answered as a Sentinel would (with `sentinel_facade`), naming the proxy.
    Sentinel,
    /// `ROLE`: the proxy as a Sentinel (with `sentinel_facade`), else the primary's.
    Role,
}

impl Local {
    /// True for the commands answered from what the whole proxy knows (its clients, its topology),
    /// never from one upstream connection: a session on a dedicated connection answers them too.
    pub fn proxy_wide(self) -> bool {
        matches!(
            self,
            Local::ConfigGet
                | Local::ConfigSet
                | Local::AclShow
                | Local::Info
                | Local::Monitor
                | Local::ClientList
                | Local::ClientKill
                | Local::ClientUnblock
                | Local::ClientPause
                | Local::ClientUnpause
                | Local::Sentinel
        )
    }
}

/// What the command does to data, for metrics and read-your-writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Flagged read-only.
    Read,
    /// Flagged write, or unknown (an unknown command may write).
    Write,
    /// Neither (admin, connection, pub/sub...).
    Other,
}

impl From<Kind> for crate::metrics::Kind {
    fn from(k: Kind) -> crate::metrics::Kind {
        match k {
            Kind::Read => crate::metrics::Kind::Read,
            Kind::Write => crate::metrics::Kind::Write,
            Kind::Other => crate::metrics::Kind::Other,
        }
    }
}

/// True for the read-only scripts and functions (`EVAL_RO`, `EVALSHA_RO`, `FCALL_RO`): reads that may run
/// for as long as their script does. A second copy sent elsewhere (a hedge, a retry after a timeout)
/// would keep another node busy too, perhaps the primary, which then answers every write `-BUSY`.
pub fn runs_script(name: &[u8]) -> bool {
    [&b"EVAL_RO"[..], b"EVALSHA_RO", b"FCALL_RO"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s))
}

/// True if a command of `kind` named `name` may change data: flagged `write` (or unknown), or a script or
/// function that is not read-only (`EVAL`, `EVALSHA`, `FCALL`: Redis flags them by what the script
/// does, which only running it tells). What the split-brain guard refuses and what write
/// acknowledgements (`min_write_acks`) wait for.
pub fn writes_data(kind: Kind, name: &[u8]) -> bool {
    kind == Kind::Write
        || (kind == Kind::Other
            && [&b"EVAL"[..], b"EVALSHA", b"FCALL"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s)))
}

/// Classifies one command. `arg(i)` gives argument `i` (0 is the name) if the scanner kept it.
pub fn classify<'a>(
    table: &Table,
    argc: usize,
    arg: impl Fn(usize) -> Option<&'a [u8]>,
) -> (Class, Kind) {
    let Some(name) = arg(0) else {
        return (Class::Primary, Kind::Write);
    };
    let mut up = [0u8; MAX_NAME];
    let Some(upper) = upper_into(&mut up, &[name]) else {
        return (Class::Primary, Kind::Write);
    };
    let sub = |i: usize| Upper::of(arg(i)?);
    let info = match table.get_upper(upper) {
        // Containers (CLIENT, SCRIPT, OBJECT, ...) have their own flags per subcommand.
        Some(c) if argc >= 2 && c.flags.has(flag::CONTAINER) => {
            arg(1).and_then(|s| table.get_sub(upper, s)).or(Some(c))
        }
        other => other,
    };
    let kind = match info {
        None => Kind::Write,
        Some(i) if i.flags.has(flag::READONLY) => Kind::Read,
        Some(i) if i.flags.has(flag::WRITE) => Kind::Write,
        Some(_) => Kind::Other,
    };
    let class = match upper {
        b"PING" => Class::Local(Local::Ping),
        b"ECHO" => Class::Local(Local::Echo),
        b"SELECT" => Class::Local(Local::Select),
        b"AUTH" => Class::Local(Local::Auth),
        b"HELLO" => Class::Local(Local::Hello),
        b"QUIT" => Class::Local(Local::Quit),
        b"RESET" => Class::Local(Local::Reset),
        b"MULTI" => Class::Pin(Pin::Multi),
        b"WATCH" => Class::Pin(Pin::Watch),
        b"EXEC" | b"DISCARD" => Class::Local(Local::WithoutMulti),
        b"UNWATCH" => Class::Local(Local::Unwatch),
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" => Class::Pin(Pin::Subscribe),
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" => Class::Local(Local::Unsubscribe),
        b"MONITOR" => Class::Local(Local::Monitor),
        b"INFO" => Class::Local(Local::Info),
        b"SENTINEL" => Class::Local(Local::Sentinel),
        b"ROLE" => Class::Local(Local::Role),
        b"CONFIG" => match sub(1).as_deref() {
            Some(b"GET") => Class::Local(Local::ConfigGet),
            Some(b"SET") => Class::Local(Local::ConfigSet),
            _ => Class::Primary,
        },
        b"ACL" => match sub(1).as_deref() {
            Some(b"LIST" | b"GETUSER") => Class::Local(Local::AclShow),
            _ => Class::Primary,
        },
        b"WAIT" => Class::Local(Local::Wait),
        b"WAITAOF" | b"SYNC" | b"PSYNC" | b"REPLCONF" => Class::Local(Local::Refuse),
        b"CLIENT" => match sub(1).as_deref() {
            Some(b"ID") => Class::Local(Local::ClientId),
            Some(b"SETNAME") => Class::Local(Local::ClientSetName),
            Some(b"GETNAME") => Class::Local(Local::ClientGetName),
            Some(b"INFO") => Class::Local(Local::ClientInfo),
            Some(b"REPLY") => Class::Local(Local::ClientReply),
            Some(b"NO-EVICT" | b"NO-TOUCH" | b"SETINFO") => Class::Local(Local::ClientAck),
            // Client ids are the proxy's, not the server's: forwarding one could redirect, kill or
            // unblock an unrelated upstream connection, possibly one shared by other clients.
            Some(b"LIST") => Class::Local(Local::ClientList),
            Some(b"KILL") => Class::Local(Local::ClientKill),
            Some(b"UNBLOCK") => Class::Local(Local::ClientUnblock),
            Some(b"PAUSE") => Class::Local(Local::ClientPause),
            Some(b"UNPAUSE") => Class::Local(Local::ClientUnpause),
            // With REDIRECT too: the session's own connection, where the proxy's id of the target becomes
            // the upstream id of the target's connection.
            Some(b"TRACKING") => match sub(2).as_deref() {
                Some(b"ON") => Class::Pin(Pin::Tracking),
                _ => Class::Local(Local::TrackingOff),
            },
            _ => Class::Primary,
        },
        b"SCRIPT" => match sub(1).as_deref() {
            Some(b"LOAD" | b"FLUSH") => Class::Broadcast,
            Some(b"KILL") => Class::Interrupt(Interrupt::Kill),
            _ => Class::Primary,
        },
        b"FUNCTION" if sub(1).as_deref() == Some(b"KILL") => Class::Interrupt(Interrupt::Kill),
        b"SHUTDOWN" => Class::Interrupt(Interrupt::Shutdown),
        b"XREAD" | b"XREADGROUP" => {
            if stream_read_blocks(argc, &arg) {
                Class::Blocking
            } else if kind == Kind::Read {
                Class::Read
            } else {
                Class::Primary
            }
        }
        _ => match info {
            Some(i) if i.flags.has(flag::BLOCKING) => Class::Blocking,
            Some(i) if i.flags.has(flag::READONLY) => Class::Read,
            _ => Class::Primary,
        },
    };
    (class, kind)
}

/// True if a command may change data or server state. Read-only users may run only commands for which
/// this is false: those flagged `readonly`, and commands about the connection itself, transactions,
/// subscriptions and server information. (Redis 7.0 does not report `may_replicate`, so EVAL, FCALL
/// and PUBLISH cannot be told apart by flags: everything not listed here counts as modifying.)
pub fn may_modify<'a>(table: &Table, argc: usize, arg: impl Fn(usize) -> Option<&'a [u8]>) -> bool {
    const HARMLESS: &[&[u8]] = &[
        b"PING",
        b"ECHO",
        b"HELLO",
        b"AUTH",
        b"SELECT",
        b"QUIT",
        b"RESET",
        b"MULTI",
        b"EXEC",
        b"DISCARD",
        b"WATCH",
        b"UNWATCH",
        b"SUBSCRIBE",
        b"PSUBSCRIBE",
        b"SSUBSCRIBE",
        b"UNSUBSCRIBE",
        b"PUNSUBSCRIBE",
        b"SUNSUBSCRIBE",
        b"INFO",
        b"TIME",
        b"ROLE",
        b"LASTSAVE",
        b"COMMAND",
    ];
    const HARMLESS_CLIENT: &[&[u8]] = &[
        b"ID",
        b"GETNAME",
        b"SETNAME",
        b"INFO",
        b"REPLY",
        b"NO-EVICT",
        b"NO-TOUCH",
        b"SETINFO",
    ];
    let Some(name) = arg(0) else { return true };
    if HARMLESS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return false;
    }
    if name.eq_ignore_ascii_case(b"CLIENT") {
        return !arg(1).is_some_and(|s| HARMLESS_CLIENT.iter().any(|h| s.eq_ignore_ascii_case(h)));
    }
    let info = match table.get(name) {
        Some(c) if argc >= 2 && c.flags.has(flag::CONTAINER) => {
            arg(1).and_then(|s| table.get_sub(name, s)).or(Some(c))
        }
        other => other,
    };
    !info.is_some_and(|i| i.flags.has(flag::READONLY))
}

/// Whether a command stops, moves or reshapes a node: only a proxy admin user may run it. Returns the
/// name to say in the refusal (`SHUTDOWN`, `CONFIG SET replicaof-...`). Decided from names, not from the
/// table's `admin` flag, which also marks harmless commands (`CONFIG GET`, `SLOWLOG GET`).
pub fn guarded<'a>(argc: usize, arg: impl Fn(usize) -> Option<&'a [u8]>) -> Option<String> {
    /// Whole commands: stop a node, make it a replica or a primary, crash or freeze it, or take its
    /// replication stream.
    const COMMANDS: &[&str] = &[
        "SHUTDOWN",
        "REPLICAOF",
        "SLAVEOF",
        "FAILOVER",
        "DEBUG",
        "SYNC",
        "PSYNC",
    ];
    /// `CLUSTER` subcommands that change slots, membership or roles.
    const CLUSTER: &[&str] = &[
        "ADDSLOTS",
        "ADDSLOTSRANGE",
        "DELSLOTS",
        "DELSLOTSRANGE",
        "FLUSHSLOTS",
        "SETSLOT",
        "MEET",
        "FORGET",
        "REPLICATE",
        "FAILOVER",
        "RESET",
        "BUMPEPOCH",
        "SET-CONFIG-EPOCH",
    ];
    let name = arg(0)?;
    let upper = |a: &[u8]| String::from_utf8_lossy(a).to_ascii_uppercase();
    if let Some(c) = COMMANDS
        .iter()
        .find(|c| name.eq_ignore_ascii_case(c.as_bytes()))
    {
        return Some((*c).to_string());
    }
    let sub = arg(1).map(upper);
    if name.eq_ignore_ascii_case(b"CLUSTER") {
        let sub = sub?;
        return CLUSTER
            .contains(&sub.as_str())
            .then(|| format!("CLUSTER {sub}"));
    }
    if name.eq_ignore_ascii_case(b"CONFIG") && sub.as_deref() == Some("SET") {
        // Every parameter named (every other argument from the third); one that cannot be read counts.
        let mut i = 2;
        while i < argc {
            match arg(i) {
                Some(p) if !replication_setting(p) => {}
                Some(p) => return Some(format!("CONFIG SET {}", String::from_utf8_lossy(p))),
                None => return Some("CONFIG SET".into()),
            }
            i += 2;
        }
    }
    None
}

/// A server setting about replication (or the node's address): set through the proxy it could detach a
/// replica, make a node follow another, or take a node away from the proxy.
pub fn replication_setting(name: &[u8]) -> bool {
    const PREFIXES: &[&str] = &[
        "repl-",
        "replica",
        "slave",
        "master",
        "primary",
        "min-replicas",
        "min-slaves",
    ];
    const NAMES: &[&str] = &[
        "port",
        "bind",
        "tls-port",
        "tls-replication",
        "cluster-enabled",
    ];
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name.as_str())
}

/// `XREAD`/`XREADGROUP` block only with a `BLOCK` option, which precedes `STREAMS`. If neither word is among
/// the kept arguments, assume it blocks: a dedicated connection is always safe.
fn stream_read_blocks<'a>(argc: usize, arg: &impl Fn(usize) -> Option<&'a [u8]>) -> bool {
    for i in 1..argc {
        match arg(i) {
            Some(a) if a.eq_ignore_ascii_case(b"BLOCK") => return true,
            Some(a) if a.eq_ignore_ascii_case(b"STREAMS") => return false,
            Some(_) => {}
            None => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(cmd: &str) -> (Class, Kind) {
        let table = Table::builtin();
        let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
        classify(&table, args.len(), |i| args.get(i).copied())
    }

    #[test]
    fn commands_that_stop_a_busy_script_interrupt_and_other_script_commands_do_not() {
        for cmd in ["SCRIPT KILL", "script kill", "FUNCTION KILL"] {
            assert_eq!(class_of(cmd).0, Class::Interrupt(Interrupt::Kill), "{cmd}");
        }
        for cmd in ["SHUTDOWN", "SHUTDOWN NOSAVE", "shutdown nosave now"] {
            assert_eq!(
                class_of(cmd).0,
                Class::Interrupt(Interrupt::Shutdown),
                "{cmd}"
            );
        }
        assert_eq!(class_of("SCRIPT EXISTS abc").0, Class::Primary);
        assert_eq!(class_of("FUNCTION STATS").0, Class::Primary);
        assert_eq!(class_of("FUNCTION LOAD x").0, Class::Primary);
    }

    #[test]
    fn scripts_that_may_write_go_to_the_primary() {
        assert_eq!(class_of("EVAL s 0").0, Class::Primary);
        assert_eq!(class_of("evalsha abc 0").0, Class::Primary);
        assert_eq!(class_of("FCALL f 0").0, Class::Primary);
    }

    #[test]
    fn read_only_scripts_and_sorts_may_go_to_replicas() {
        for cmd in [
            "EVAL_RO s 0",
            "EVALSHA_RO abc 0",
            "FCALL_RO f 0",
            "SORT_RO k",
            "GEORADIUS_RO k 0 0 1 km",
        ] {
            assert_eq!(class_of(cmd), (Class::Read, Kind::Read), "{cmd}");
        }
    }

    #[test]
    fn commands_that_can_store_go_to_the_primary() {
        for cmd in [
            "SORT k",
            "SORT k STORE d",
            "GEORADIUS k 0 0 1 km STORE d",
            "GEORADIUSBYMEMBER k m 1 km",
        ] {
            assert_eq!(class_of(cmd), (Class::Primary, Kind::Write), "{cmd}");
        }
    }

    #[test]
    fn publish_goes_to_the_primary() {
        assert_eq!(class_of("PUBLISH ch msg").0, Class::Primary);
        assert_eq!(class_of("SPUBLISH ch msg").0, Class::Primary);
    }

    #[test]
    fn xread_without_block_is_a_read_and_xreadgroup_a_write() {
        assert_eq!(
            class_of("XREAD COUNT 2 STREAMS s 0"),
            (Class::Read, Kind::Read)
        );
        assert_eq!(class_of("xread block 0 streams s $").0, Class::Blocking);
        assert_eq!(
            class_of("XREADGROUP GROUP g c STREAMS s >"),
            (Class::Primary, Kind::Write)
        );
        assert_eq!(
            class_of("XREADGROUP GROUP g c BLOCK 10 STREAMS s >").0,
            Class::Blocking
        );
    }

    #[test]
    fn unknown_commands_go_to_the_primary() {
        assert_eq!(class_of("FOO.BAR x"), (Class::Primary, Kind::Write));
        assert_eq!(class_of(&"X".repeat(100)), (Class::Primary, Kind::Write));
    }

    #[test]
    fn reads_are_recognised_in_any_case() {
        assert_eq!(class_of("get k"), (Class::Read, Kind::Read));
        assert_eq!(class_of("Mget a b"), (Class::Read, Kind::Read));
        assert_eq!(class_of("set k v"), (Class::Primary, Kind::Write));
    }

    #[test]
    fn subcommands_have_their_own_flags() {
        assert_eq!(class_of("OBJECT ENCODING k"), (Class::Read, Kind::Read));
        assert_eq!(class_of("XINFO STREAM s"), (Class::Read, Kind::Read));
        assert_eq!(class_of("CONFIG SET x y").0, Class::Local(Local::ConfigSet));
        assert_eq!(class_of("CONFIG RESETSTAT").0, Class::Primary);
        assert_eq!(class_of("SCRIPT LOAD x").0, Class::Broadcast);
        assert_eq!(class_of("SCRIPT EXISTS x").0, Class::Primary);
    }

    #[test]
    fn blocking_commands_are_recognised() {
        for cmd in [
            "BLPOP q 0",
            "BRPOP q 1",
            "BLMOVE a b LEFT RIGHT 0",
            "BZPOPMIN z 0",
            "BLMPOP 0 1 q LEFT",
        ] {
            assert_eq!(class_of(cmd).0, Class::Blocking, "{cmd}");
        }
        assert_eq!(class_of("WAIT 1 0").0, Class::Local(Local::Wait));
    }

    #[test]
    fn connection_state_is_handled_by_the_proxy() {
        assert_eq!(
            class_of("CLIENT SETNAME x").0,
            Class::Local(Local::ClientSetName)
        );
        assert_eq!(class_of("client tracking on").0, Class::Pin(Pin::Tracking));
        assert_eq!(class_of("CLIENT LIST").0, Class::Local(Local::ClientList));
        assert_eq!(class_of("MULTI").0, Class::Pin(Pin::Multi));
        assert_eq!(class_of("SSUBSCRIBE a").0, Class::Pin(Pin::Subscribe));
        assert_eq!(class_of("PSYNC ? -1").0, Class::Local(Local::Refuse));
        assert_eq!(
            class_of("CLIENT KILL ID 5").0,
            Class::Local(Local::ClientKill)
        );
        assert_eq!(class_of("config get *").0, Class::Local(Local::ConfigGet));
        assert_eq!(class_of("MONITOR").0, Class::Local(Local::Monitor));
        assert_eq!(
            class_of("CLIENT TRACKING ON REDIRECT 5").0,
            Class::Pin(Pin::Tracking)
        );
    }

    #[test]
    fn read_only_users_may_not_run_anything_that_can_modify() {
        let table = Table::builtin();
        let check = |cmd: &str| {
            let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
            may_modify(&table, args.len(), |i| args.get(i).copied())
        };
        for cmd in [
            "SET k v",
            "EVAL s 0",
            "PUBLISH c m",
            "CONFIG SET a b",
            "CONFIG GET a",
            "FLUSHALL",
            "NOSUCH x",
        ] {
            assert!(check(cmd), "{cmd}");
        }
        for cmd in [
            "GET k",
            "EVAL_RO s 0",
            "INFO",
            "SCAN 0",
            "CLIENT ID",
            "ping",
            "OBJECT ENCODING k",
            "MULTI",
        ] {
            assert!(!check(cmd), "{cmd}");
        }
    }

    #[test]
    fn commands_that_stop_move_or_reshape_nodes_are_guarded() {
        let check = |cmd: &str| {
            let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
            guarded(args.len(), |i| args.get(i).copied())
        };
        for cmd in [
            "SHUTDOWN NOSAVE",
            "shutdown",
            "REPLICAOF 127.0.0.1 1",
            "slaveof no one",
            "FAILOVER",
            "DEBUG SLEEP 1",
            "CLUSTER SETSLOT 1 NODE x",
            "CONFIG SET replica-read-only no",
            "CONFIG SET maxmemory 1 masterauth x",
            "config set REPL-BACKLOG-SIZE 1",
            "CONFIG SET port 7000",
        ] {
            assert!(check(cmd).is_some(), "{cmd}");
        }
        for cmd in [
            "CONFIG SET maxmemory 10mb",
            "CONFIG GET replica-read-only",
            "CLUSTER INFO",
            "GET shutdown",
            "INFO",
        ] {
            assert_eq!(check(cmd), None, "{cmd}");
        }
        assert_eq!(
            check("CONFIG SET maxmemory 1 replica-priority 0").as_deref(),
            Some("CONFIG SET replica-priority")
        );
    }

    #[test]
    fn command_reply_builds_a_table_with_subcommands() {
        let input = b"*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*1\r\n+@read\r\n*0\r\n*0\r\n*0\r\n\
*10\r\n$6\r\nobject\r\n:-2\r\n*0\r\n:0\r\n:0\r\n:0\r\n*0\r\n*0\r\n*0\r\n*1\r\n*10\r\n$11\r\nobject|freq\r\n:3\r\n*1\r\n+readonly\r\n:2\r\n:2\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n";
        let frame = crate::resp::value::decode_one(input).expect("a complete value");
        let table = Table::from_command_reply(&frame, "test".into()).expect("table");
        assert_eq!(table.len(), 3);
        assert!(table
            .get(b"OBJECT")
            .expect("container")
            .flags
            .has(flag::CONTAINER));
        assert!(table.get(b"GET").expect("get").flags.has(flag::READONLY));
        assert!(table
            .get_sub(b"object", b"FREQ")
            .expect("sub")
            .flags
            .has(flag::READONLY));
    }
}
