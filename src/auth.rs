//! Proxy-side client authentication, independent of the credentials the proxy uses upstream.
//!
//! With `requirepass` or `user` set, a client must authenticate to the proxy (`AUTH [user] password`, or
//! `HELLO protover AUTH user password`) before anything but AUTH, HELLO, QUIT and RESET. A read-only
//! user may run only commands that cannot modify anything (see [`crate::command::may_modify`]).

use std::sync::Arc;

/// What a user may run, as predixy's read / write / admin authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Only commands that cannot modify anything (`readonly_user`).
    Read,
    /// Everything but the commands that stop, move or reshape nodes (`user`, `requirepass`, and every
    /// client while authentication is off).
    Write,
    /// Everything, the guarded commands too (`admin_user`).
    Admin,
}

/// A user clients authenticate as, to the proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientUser {
    /// Name (`default` for requirepass).
    pub name: String,
    /// Password.
    pub password: String,
    /// What the user may run.
    pub authority: Authority,
}

impl ClientUser {
    /// May run only read-only commands.
    pub fn readonly(&self) -> bool {
        self.authority == Authority::Read
    }

    /// May run the commands that stop, move or reshape nodes.
    pub fn admin(&self) -> bool {
        self.authority == Authority::Admin
    }
}

impl std::fmt::Debug for ClientUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientUser")
            .field("name", &self.name)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// The users clients may authenticate as.
#[derive(Debug)]
pub struct Auth {
    users: Vec<Arc<ClientUser>>,
}

impl Auth {
    /// Proxy-side auth, or `None` if neither `requirepass` nor users are configured.
    pub fn new(requirepass: Option<String>, users: Vec<ClientUser>) -> Option<Arc<Auth>> {
        let default = requirepass.map(|password| ClientUser {
            name: "default".into(),
            password,
            authority: Authority::Write,
        });
        let users: Vec<Arc<ClientUser>> = default.into_iter().chain(users).map(Arc::new).collect();
        (!users.is_empty()).then(|| Arc::new(Auth { users }))
    }

    /// The user `name` (the default user if `None`) if `password` is theirs. Every user's password is
    /// compared, in constant time, so neither the answer's timing nor its path tells which part failed.
    pub fn check(&self, name: Option<&[u8]>, password: &[u8]) -> Option<Arc<ClientUser>> {
        let name = name.unwrap_or(b"default");
        let mut found = None;
        for u in &self.users {
            let ok =
                constant_time_eq(u.password.as_bytes(), password) & (u.name.as_bytes() == name);
            if ok {
                found = Some(u.clone());
            }
        }
        found
    }
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, readonly: bool) -> ClientUser {
        ClientUser {
            name: name.into(),
            password: password.into(),
            authority: if readonly {
                Authority::Read
            } else {
                Authority::Write
            },
        }
    }

    #[test]
    fn requirepass_is_the_default_users_password() {
        let auth = Auth::new(Some("pw".into()), vec![user("ro", "r", true)]).expect("auth on");
        assert_eq!(
            auth.check(None, b"pw").map(|u| u.name.clone()).as_deref(),
            Some("default")
        );
        assert!(auth.check(Some(b"default"), b"pw").is_some());
        assert!(auth.check(None, b"pW").is_none());
        assert!(auth.check(Some(b"ro"), b"r").is_some_and(|u| u.readonly()));
        assert!(auth.check(Some(b"ro"), b"pw").is_none());
        assert!(auth.check(Some(b"nobody"), b"r").is_none());
    }

    #[test]
    fn no_password_no_auth() {
        assert!(Auth::new(None, vec![]).is_none());
    }

    #[test]
    fn constant_time_eq_compares_whole_inputs() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
