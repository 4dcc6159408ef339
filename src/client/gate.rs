//! What a client may run, before it is routed: proxy-side authentication (`AUTH`, `HELLO ... AUTH`,
//! `-NOAUTH` before), read-only users, and the secrets no client sees through the proxy (`CONFIG GET` of
//! credentials, `ACL LIST` and `ACL GETUSER`).

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

/// Server parameters holding secrets, refused to `CONFIG GET` through the proxy.
const SECRETS: &[&str] = &[
    "requirepass",
    "masterauth",
    "masteruser",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

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
    if let Some(refused) = secrets(args) {
        return Gate::Answer(refused);
    }
    // A session made while auth was off keeps its open user if a reload turns auth on.
    let Some(auth) = auth else {
        return Gate::Pass;
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
    if user.readonly && crate::command::may_modify(table, args.argc(), |i| args.arg(i)) {
        let cmd = String::from_utf8_lossy(args.arg(0).unwrap_or_default()).to_ascii_lowercase();
        return Gate::Answer(Bytes::from(format!(
            "-NOPERM User {} has no permissions to run the '{cmd}' command\r\n",
            user.name
        )));
    }
    Gate::Pass
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

/// The refusal of a request that would show a secret: the upstream credentials (and Redis's own secrets)
/// never reach a client through the proxy.
fn secrets(args: &dyn Args) -> Option<Bytes> {
    let name = args.arg(0)?;
    let sub = |s: &[u8]| args.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(s));
    if name.eq_ignore_ascii_case(b"CONFIG") && sub(b"GET") {
        // Every parameter is checked, not just the kept ones; arguments that cannot all be read count
        // as secret.
        let all = if args.argc() > crate::resp::request::KEPT_ARGS {
            args.all()
        } else {
            args.kept()
        };
        let secret = all.len() < args.argc()
            || all
                .iter()
                .skip(2)
                .any(|p| SECRETS.iter().any(|s| glob_match(p, s.as_bytes())));
        return secret.then(|| {
            Bytes::from_static(
                b"-NOPERM redsplit: CONFIG GET of secret parameters is not allowed\r\n",
            )
        });
    }
    // ACL LIST and ACL GETUSER show every user's password hash, the proxy's upstream user's too.
    if name.eq_ignore_ascii_case(b"ACL") && (sub(b"LIST") || sub(b"GETUSER")) {
        return Some(Bytes::from_static(
            b"-NOPERM redsplit: ACL LIST and ACL GETUSER show password hashes and are not allowed through the proxy\r\n",
        ));
    }
    None
}

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
