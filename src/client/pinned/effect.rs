//! What a command forwarded on the dedicated connection changes, if Redis runs it.

use std::sync::Arc;

use bytes::Bytes;

use super::replies::exec_results;
use crate::command::{Class, Local, Pin};
use crate::resp::Limits;
use crate::upstream::Credentials;

/// What a forwarded command does to the pinned state, applied when its reply arrives.
#[derive(Debug)]
pub(in crate::client) enum Effect {
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
    /// stand-in Redis was sent (see [`super::STAND_IN`]).
    Replace(Bytes),
    Reset,
    Quit,
    /// A command that may write (EXEC of a transaction that queued one), followed on the connection by
    /// the proxy's `WAIT`: its entry awaits both replies; the client gets the command's reply if enough
    /// replicas acknowledged it, else an error saying it was not acknowledged. `inner` applies to the
    /// command's reply.
    Acked {
        inner: Box<Effect>,
        acks: crate::upstream::Acks,
    },
}

/// What a forwarded command changes, if Redis runs it.
pub(in crate::client) fn effect_of(class: Class, args: &[Vec<u8>], resp3: bool) -> Effect {
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
        Class::Local(Local::Hello) => match crate::client::local::parse_hello(args) {
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
            let _ = crate::client::local::parse_hello(&args);
            let _ = effect_of(class, &args, seen % 2 == 0);
        }
        at += req.len;
        seen += 1;
    }
    let _ = exec_results(data, seen);
    seen
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
}
