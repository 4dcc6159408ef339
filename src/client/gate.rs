//! What a client may run, before it is routed: proxy-side authentication (`AUTH`, `HELLO ... AUTH`,
//! `-NOAUTH` before), read-only users, and the commands only admin users may run (those that stop, move
//! or reshape a node). Secrets are kept from clients by rewriting the replies that hold them
//! (`super::rewrite`), not here.

use std::sync::Arc;

use bytes::Bytes;

use super::local::{command_label, parse_hello};
use super::reply::{ClientError, OK};
use super::state::State;
use crate::auth::{Auth, ClientUser};
use crate::command::{Class, Local, Table};

/// A request's arguments, read from the input on demand.
pub(super) trait Args {
    /// Argument `i` (0 is the name), if the scanner kept it.
    fn arg(&self, i: usize) -> Option<&[u8]>;
    /// How many arguments it has.
    fn argc(&self) -> usize;
    /// Copies of the kept arguments.
    fn kept(&self) -> Vec<Vec<u8>>;
    /// Every argument (for the rare command that needs more than the kept ones).
    fn all(&self) -> Vec<Vec<u8>>;
}

/// What the gate decided.
#[derive(Debug)]
pub(super) enum Gate {
    /// Go on and route it.
    Pass,
    /// Answer this, in order, and run nothing.
    Answer(Bytes),
    /// Inside MULTI, refused as Redis refuses a command while queueing (EXEC then aborts).
    RefuseInMulti(Bytes),
    /// An authentication attempt: the user on success (answer `ok`); `None`: it failed (answer
    /// `-WRONGPASS`, later each time).
    Auth {
        user: Option<Arc<ClientUser>>,
        ok: Bytes,
    },
}

/// Decides whether the request may go on. `auth`: proxy-side authentication, if on; `in_multi`: the
/// session is inside MULTI on its dedicated connection.
pub(super) fn check(
    class: Class,
    args: &dyn Args,
    state: &mut State,
    auth: Option<&Auth>,
    in_multi: bool,
    table: &Table,
) -> Gate {
    // A session made while auth was off keeps its open user if a reload turns auth on.
    let Some(auth) = auth else {
        return guard(args, state);
    };
    if matches!(class, Class::Local(Local::Auth | Local::Hello)) && in_multi {
        // Checked by the proxy, so not something Redis could queue and run at EXEC.
        let label = command_label(&args.kept());
        return Gate::RefuseInMulti(ClientError::InMulti(&label).frame());
    }
    match class {
        Class::Local(Local::Auth) => {
            let a = args.kept();
            if a.len() != 2 && a.len() != 3 {
                return Gate::Answer(ClientError::Arity("auth").frame());
            }
            let user = (a.len() == 3).then(|| a[1].as_slice());
            return Gate::Auth {
                user: auth.check(user, &a[a.len() - 1]),
                ok: Bytes::from_static(OK),
            };
        }
        Class::Local(Local::Hello) => return hello(args, state, auth),
        Class::Local(Local::Quit | Local::Reset) => return Gate::Pass,
        _ => {}
    }
    let Some(user) = state.user.clone() else {
        return Gate::Answer(Bytes::from_static(b"-NOAUTH Authentication required.\r\n"));
    };
    if user.readonly() && crate::command::may_modify(table, args.argc(), |i| args.arg(i)) {
        let cmd = String::from_utf8_lossy(args.arg(0).unwrap_or_default()).to_ascii_lowercase();
        return Gate::Answer(Bytes::from(format!(
            "-NOPERM User {} has no permissions to run the '{cmd}' command\r\n",
            user.name
        )));
    }
    guard(args, state)
}

/// Commands that stop, move or reshape a node (see [`crate::command::guarded`]) run only for an admin
/// user (`admin_user`): any other client gets -NOPERM, also while client authentication is off.
fn guard(args: &dyn Args, state: &State) -> Gate {
    // CONFIG SET names every setting: each one is judged, past the kept arguments too.
    let all = (args.argc() > crate::resp::request::KEPT_ARGS
        && args
            .arg(0)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"CONFIG")))
    .then(|| args.all());
    let what = match &all {
        Some(all) => crate::command::guarded(all.len(), |i| all.get(i).map(Vec::as_slice)),
        None => crate::command::guarded(args.argc(), |i| args.arg(i)),
    };
    let Some(what) = what else {
        return Gate::Pass;
    };
    if state.user.as_ref().is_some_and(|u| u.admin()) {
        return Gate::Pass;
    }
    Gate::Answer(ClientError::Guarded(&what).frame())
}

/// HELLO with proxy-side auth: its credentials are the proxy's to check. As Redis, a HELLO that fails
/// its own checks authenticates nobody; one without credentials needs the client authenticated already.
fn hello(args: &dyn Args, state: &mut State, auth: &Auth) -> Gate {
    let hello = match parse_hello(&args.kept()) {
        Ok(h) => h,
        Err(e) => return Gate::Answer(e),
    };
    if let Some((user, password)) = &hello.auth {
        match auth.check(Some(user), password) {
            Some(u) => {
                state.user = Some(u);
                state.auth_failures = 0;
            }
            None => {
                return Gate::Auth {
                    user: None,
                    ok: Bytes::new(),
                }
            }
        }
    } else if state.user.is_none() {
        return Gate::Answer(Bytes::from_static(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"));
    }
    Gate::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authority;

    struct Words(Vec<Vec<u8>>);

    impl Args for Words {
        fn arg(&self, i: usize) -> Option<&[u8]> {
            self.0.get(i).map(Vec::as_slice)
        }
        fn argc(&self) -> usize {
            self.0.len()
        }
        fn kept(&self) -> Vec<Vec<u8>> {
            self.0.clone()
        }
        fn all(&self) -> Vec<Vec<u8>> {
            self.0.clone()
        }
    }

    fn words(cmd: &str) -> Words {
        Words(cmd.split(' ').map(|w| w.as_bytes().to_vec()).collect())
    }

    fn user(authority: Authority) -> State {
        State::new(Some(Arc::new(ClientUser {
            name: "u".into(),
            password: String::new(),
            authority,
        })))
    }

    #[test]
    fn only_admin_users_may_stop_move_or_reshape_nodes() {
        let table = Table::builtin();
        let run = |cmd: &str, state: &mut State| {
            let (class, _) = crate::command::classify(&table, cmd.split(' ').count(), |i| {
                cmd.split(' ').nth(i).map(str::as_bytes)
            });
            check(class, &words(cmd), state, None, false, &table)
        };
        for authority in [Authority::Write, Authority::Read] {
            let gate = run("SHUTDOWN NOSAVE", &mut user(authority));
            assert!(
                matches!(&gate, Gate::Answer(e) if e.starts_with(b"-NOPERM redsplit: SHUTDOWN")),
                "{authority:?}: {gate:?}"
            );
        }
        assert!(matches!(
            run("SHUTDOWN NOSAVE", &mut user(Authority::Admin)),
            Gate::Pass
        ));
        assert!(matches!(
            run("CONFIG SET maxmemory 1", &mut user(Authority::Write)),
            Gate::Pass
        ));
        let many = format!("CONFIG SET{} replicaof x", " maxmemory 1".repeat(9));
        assert!(matches!(
            run(&many, &mut user(Authority::Write)),
            Gate::Answer(_)
        ));
    }
}
