//! Commands the proxy answers or handles itself, because they concern the client's own connection: PING,
//! ECHO, QUIT, RESET, SELECT, AUTH, HELLO, the CLIENT subcommands about this connection, WAIT, and the
//! transaction and subscription commands outside a transaction or subscription.
//!
//! [`answer`] decides from the arguments and the connection's state alone; the session carries the
//! answer out (`run`; some wait for every earlier reply first, see [`Answer::after_earlier_replies`]).

mod run;

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::reply::{ClientError, Encoder, OK, PONG};
use super::state::{ReplyMode, State};
use crate::command::Local;
use crate::resp::encode_command;
use crate::upstream::{ConnKey, Credentials};

/// What the session does for a command it handles itself.
#[derive(Debug)]
pub(super) enum Answer {
    /// Reply with this, in order.
    Reply(Bytes),
    /// No reply of its own: the reply mode changes (`CLIENT REPLY OFF|SKIP`).
    Silence(ReplyMode),
    /// `+OK`, then nothing after it runs (QUIT).
    Quit,
    /// Back to a fresh connection's state, `+RESET`.
    Reset,
    /// Run a command on the primary, on a connection greeted for `key`, and move the session to `key` if
    /// it succeeds (SELECT, AUTH: the primary checks the credentials). `frame`: what to send (`None`: the
    /// request itself). `hello`: answer with HELLO's reply instead, naming the client if given.
    Switch {
        key: ConnKey,
        frame: Option<Bytes>,
        hello: Option<Option<Bytes>>,
    },
    /// HELLO without credentials to check: the protocol changes here; answer with HELLO's reply.
    Hello { key: ConnKey, name: Option<Bytes> },
    /// WAIT: count the replicas that reach the primary's offset after this session's writes.
    Wait {
        want: usize,
        timeout: Option<Duration>,
    },
}

impl Answer {
    /// True if it must wait for every earlier reply: it changes the connection's state, which the earlier
    /// commands ran under, or (WAIT) it is about them.
    pub fn after_earlier_replies(&self) -> bool {
        matches!(
            self,
            Answer::Reset | Answer::Switch { .. } | Answer::Hello { .. } | Answer::Wait { .. }
        )
    }
}

/// Who the client is, for `CLIENT ID` and HELLO's reply.
pub(super) struct Who {
    pub id: u64,
    /// The server and version HELLO reports.
    pub server: std::sync::Arc<crate::topology::ServerVersion>,
}

/// The answer to `local` with arguments `args` (the kept ones; every one for the commands that list
/// names). `proxy_auth`: clients authenticate to the proxy, so HELLO's credentials were checked here.
pub(super) fn answer(
    local: Local,
    args: &[Vec<u8>],
    state: &mut State,
    who: &Who,
    proxy_auth: bool,
) -> Answer {
    let enc = Encoder {
        resp3: state.key.resp3,
    };
    let name = args
        .first()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .unwrap_or_default();
    let mut b = BytesMut::new();
    let reply = match local {
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
        Local::Quit => return Answer::Quit,
        Local::Reset => return Answer::Reset,
        Local::Select => return select(args, state, &name),
        Local::Auth => return auth(args, state, &name),
        Local::Hello => return hello(args, state, who, proxy_auth),
        Local::ClientId => {
            enc.int(&mut b, who.id as i64);
            b.freeze()
        }
        Local::ClientSetName => match args.get(2) {
            Some(n) if args.len() == 3 => {
                if n.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    ClientError::BadName.frame()
                } else {
                    state.name = (!n.is_empty()).then(|| Bytes::copy_from_slice(n));
                    Bytes::from_static(OK)
                }
            }
            _ => ClientError::Arity("client|setname").frame(),
        },
        Local::ClientGetName => {
            match &state.name {
                Some(n) => enc.bulk(&mut b, n),
                None => enc.null(&mut b),
            }
            b.freeze()
        }
        Local::ClientReply => return client_reply(args, state),
        Local::ClientAck => client_ack(args, state),
        Local::TrackingOff | Local::Unwatch => Bytes::from_static(OK),
        Local::WithoutMulti => ClientError::WithoutMulti(&name.to_ascii_uppercase()).frame(),
        Local::Unsubscribe => unsubscribed(&enc, args, name.as_bytes()),
        Local::Wait => return wait(args),
        Local::Refuse => ClientError::Unsupported(&command_label(args)).frame(),
        // Answered by the session from what the whole proxy knows (see `run.rs`), never from here.
        Local::ClientInfo
        | Local::ConfigGet
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
        | Local::Role => ClientError::Unsupported(&command_label(args)).frame(),
    };
    Answer::Reply(reply)
}

/// `SELECT db`.
fn select(args: &[Vec<u8>], state: &State, name: &str) -> Answer {
    if args.len() != 2 {
        return Answer::Reply(ClientError::Arity(name).frame());
    }
    let db = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    Answer::Reply(match db {
        None => ClientError::BadDb.frame(),
        Some(db) if db < 0 || db > i64::from(u32::MAX) => {
            Bytes::from_static(b"-ERR DB index is out of range\r\n")
        }
        Some(db) if db as u32 == state.key.db => Bytes::from_static(OK),
        Some(db) => {
            return Answer::Switch {
                key: ConnKey {
                    db: db as u32,
                    ..state.key.clone()
                },
                frame: None,
                hello: None,
            }
        }
    })
}

/// `AUTH [user] password`, checked by the primary (with proxy-side auth on, the gate answers it).
fn auth(args: &[Vec<u8>], state: &State, name: &str) -> Answer {
    if args.len() != 2 && args.len() != 3 {
        return Answer::Reply(ClientError::Arity(name).frame());
    }
    let creds = Credentials {
        username: (args.len() == 3).then(|| String::from_utf8_lossy(&args[1]).into_owned()),
        password: String::from_utf8_lossy(&args[args.len() - 1]).into_owned(),
    };
    Answer::Switch {
        key: ConnKey {
            auth: Some(std::sync::Arc::new(creds)),
            ..state.key.clone()
        },
        frame: None,
        hello: None,
    }
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn hello(args: &[Vec<u8>], state: &State, who: &Who, proxy_auth: bool) -> Answer {
    let hello = match parse_hello(args) {
        Ok(h) => h,
        Err(e) => return Answer::Reply(e),
    };
    let Some(proto) = hello.proto else {
        return Answer::Reply(hello_reply(state.key.resp3, who));
    };
    let mut creds = hello.auth.map(|(user, password)| Credentials {
        username: Some(String::from_utf8_lossy(&user).into_owned()),
        password: String::from_utf8_lossy(&password).into_owned(),
    });
    if proxy_auth {
        // Checked by the proxy (the gate): the upstream identity stays the proxy's own.
        creds = None;
    }
    let key = ConnKey {
        resp3: proto == 3,
        auth: creds
            .clone()
            .map(std::sync::Arc::new)
            .or_else(|| state.key.auth.clone()),
        ..state.key.clone()
    };
    match creds {
        // Credentials are checked by the primary: AUTH on a connection greeted with them.
        Some(c) => {
            let mut cmd = Vec::new();
            let user = c.username.as_deref().unwrap_or("default");
            encode_command(&mut cmd, &[b"AUTH", user.as_bytes(), c.password.as_bytes()]);
            Answer::Switch {
                key,
                frame: Some(Bytes::from(cmd)),
                hello: Some(hello.name),
            }
        }
        None => Answer::Hello {
            key,
            name: hello.name,
        },
    }
}

/// `CLIENT REPLY ON|OFF|SKIP`.
fn client_reply(args: &[Vec<u8>], state: &mut State) -> Answer {
    let mode = args.get(2).map(|a| a.to_ascii_uppercase());
    match mode.as_deref() {
        Some(b"ON") if args.len() == 3 => {
            state.reply_mode = ReplyMode::On;
            Answer::Reply(Bytes::from_static(OK))
        }
        // These have no reply of their own.
        Some(b"OFF") if args.len() == 3 => Answer::Silence(ReplyMode::Off),
        Some(b"SKIP") if args.len() == 3 => Answer::Silence(ReplyMode::Skip),
        _ => Answer::Reply(ClientError::Syntax.frame()),
    }
}

/// `UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE` while not subscribed to anything: one confirmation
/// per name, or one with a null name.
fn unsubscribed(enc: &Encoder, args: &[Vec<u8>], kind: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    let names: Vec<Option<&[u8]>> = if args.len() > 1 {
        args[1..].iter().map(|a| Some(&a[..])).collect()
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

/// `WAIT numreplicas timeout`, checked as Redis checks it.
fn wait(args: &[Vec<u8>]) -> Answer {
    if args.len() != 3 {
        return Answer::Reply(ClientError::Arity("wait").frame());
    }
    let int = |a: &[u8]| {
        std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
    };
    let (Some(want), Some(timeout)) = (int(&args[1]), int(&args[2])) else {
        return Answer::Reply(ClientError::BadDb.frame());
    };
    if timeout < 0 {
        return Answer::Reply(Bytes::from_static(b"-ERR timeout is negative\r\n"));
    }
    Answer::Wait {
        want: want.max(0) as usize,
        timeout: (timeout > 0).then(|| Duration::from_millis(timeout as u64)),
    }
}

/// HELLO's reply for this client, in protocol `resp3` or 2.
pub(super) fn hello_reply(resp3: bool, who: &Who) -> Bytes {
    Encoder { resp3 }.hello(who.id, &who.server.name, &who.server.version)
}

/// `CLIENT SETINFO LIB-NAME|LIB-VER value`, `CLIENT NO-EVICT ON|OFF`, `CLIENT NO-TOUCH ON|OFF`: kept for
/// this client (CLIENT LIST shows them), never applied to a shared upstream connection.
fn client_ack(args: &[Vec<u8>], state: &mut State) -> Bytes {
    let word = |i: usize| args.get(i).map(|a| a.to_ascii_uppercase());
    let (Some(sub), Some(opt), 3..=4) = (word(1), word(2), args.len()) else {
        return ClientError::Syntax.frame();
    };
    let on = match opt.as_slice() {
        b"ON" => Some(true),
        b"OFF" => Some(false),
        _ => None,
    };
    match (sub.as_slice(), args.len()) {
        (b"SETINFO", 4) => {
            let value = &args[3];
            if value.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                return Bytes::from(format!(
                    "-ERR {} cannot contain spaces, newlines or special characters.\r\n",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            let value = (!value.is_empty()).then(|| Bytes::copy_from_slice(value));
            match opt.as_slice() {
                b"LIB-NAME" => state.lib_name = value,
                b"LIB-VER" => state.lib_ver = value,
                _ => {
                    return Bytes::from(format!(
                        "-ERR Unrecognized option '{}'\r\n",
                        String::from_utf8_lossy(&args[2])
                    ))
                }
            }
        }
        (b"NO-EVICT", 3) if on.is_some() => state.no_evict = on == Some(true),
        (b"NO-TOUCH", 3) if on.is_some() => state.no_touch = on == Some(true),
        _ => return ClientError::Syntax.frame(),
    }
    Bytes::from_static(OK)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn who() -> Who {
        Who {
            id: 7,
            server: std::sync::Arc::new(crate::topology::ServerVersion::default()),
        }
    }

    #[test]
    fn select_of_another_database_switches_only_through_the_primary() {
        let mut s = State::new(None);
        let a = answer(
            Local::Select,
            &args(&["SELECT", "3"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(&a, Answer::Switch { key, frame: None, hello: None } if key.db == 3));
        assert!(a.after_earlier_replies());
        let same = answer(
            Local::Select,
            &args(&["SELECT", "0"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(same, Answer::Reply(r) if r == OK));
        let bad = answer(
            Local::Select,
            &args(&["SELECT", "x"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(bad, Answer::Reply(r) if r.starts_with(b"-ERR value is not an integer")));
    }

    #[test]
    fn hello_with_credentials_is_checked_by_the_primary_unless_the_proxy_checks_them() {
        let mut s = State::new(None);
        let a = args(&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "n"]);
        match answer(Local::Hello, &a, &mut s, &who(), false) {
            Answer::Switch {
                key,
                frame: Some(f),
                hello: Some(Some(name)),
            } => {
                assert!(key.resp3);
                assert_eq!(
                    f,
                    Bytes::from_static(b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n")
                );
                assert_eq!(name, "n");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            answer(Local::Hello, &a, &mut s, &who(), true),
            Answer::Hello { key, .. } if key.resp3 && key.auth.is_none()
        ));
    }

    #[test]
    fn client_reply_off_has_no_reply_and_setname_names_the_client() {
        let mut s = State::new(None);
        let off = answer(
            Local::ClientReply,
            &args(&["CLIENT", "REPLY", "OFF"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(off, Answer::Silence(ReplyMode::Off)));
        let set = answer(
            Local::ClientSetName,
            &args(&["CLIENT", "SETNAME", "app"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(set, Answer::Reply(r) if r == OK));
        assert_eq!(s.name.as_deref(), Some(&b"app"[..]));
        let lib = answer(
            Local::ClientAck,
            &args(&["CLIENT", "SETINFO", "lib-name", "redis-py"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(lib, Answer::Reply(r) if r == OK));
        assert_eq!(s.lib_name.as_deref(), Some(&b"redis-py"[..]));
        let bad = answer(
            Local::ClientAck,
            &args(&["CLIENT", "NO-EVICT", "maybe"]),
            &mut s,
            &who(),
            false,
        );
        assert!(matches!(bad, Answer::Reply(r) if r.starts_with(b"-ERR syntax")));
    }
}
