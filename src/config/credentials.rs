//! Credentials: those the proxy presents upstream (to data nodes, and to sentinels, which have their own
//! ACL), and those clients must present to the proxy (the default user's `requirepass` and named users).
//! Every password may be a secret reference (`env:NAME`, `file:PATH`), resolved here; a problem never shows
//! a password.

use super::options::Raw;
use super::value;
use crate::auth::{Authority, ClientUser};
use crate::upstream::Credentials;

/// The credentials the proxy presents upstream; `None` for a side that needs none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upstream {
    /// `backend_username`, `backend_password`: for data nodes.
    pub backend: Option<Credentials>,
    /// `sentinel_username`, `sentinel_password`: for sentinels.
    pub sentinel: Option<Credentials>,
}

impl Upstream {
    /// Both sides' credentials, if every password resolves and no username lacks its password.
    pub(super) fn parse(raw: &Raw, problems: &mut Vec<String>) -> Option<Upstream> {
        let backend = credentials(
            "backend",
            &raw.backend_username,
            &raw.backend_password,
            problems,
        );
        let sentinel = credentials(
            "sentinel",
            &raw.sentinel_username,
            &raw.sentinel_password,
            problems,
        );
        Some(Upstream {
            backend: backend?,
            sentinel: sentinel?,
        })
    }
}

/// Who clients may authenticate as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientAuth {
    /// `requirepass`: the default user's password; `None`: no proxy-side auth unless users are named.
    pub requirepass: Option<String>,
    /// `user`, `readonly_user` and `admin_user` entries, in that order, each name once and none named
    /// `default` if `requirepass` is set.
    pub users: Vec<ClientUser>,
}

impl ClientAuth {
    /// The client users of `raw`, if every entry is name:password with a password that resolves, no name
    /// is defined twice, and `default` is defined at most once (`requirepass` is its password).
    pub(super) fn parse(raw: &Raw, problems: &mut Vec<String>) -> Option<ClientAuth> {
        let found = problems.len();
        let requirepass = raw
            .requirepass
            .as_deref()
            .and_then(|p| value::secret("requirepass", p, problems));
        let entries = (raw.user.iter().map(|e| ("user", Authority::Write, e)))
            .chain(
                raw.readonly_user
                    .iter()
                    .map(|e| ("readonly_user", Authority::Read, e)),
            )
            .chain(
                raw.admin_user
                    .iter()
                    .map(|e| ("admin_user", Authority::Admin, e)),
            );
        let users: Vec<ClientUser> = entries
            .filter_map(|(option, authority, entry)| user(option, entry, authority, problems))
            .collect();
        let mut names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            problems.push(
                "options `user`/`readonly_user`/`admin_user`: a user is defined twice".into(),
            );
        }
        if requirepass.is_some() && names.contains(&"default") {
            problems.push("`requirepass` is the default user's password: do not define a user named default too".into());
        }
        (problems.len() == found).then_some(ClientAuth { requirepass, users })
    }
}

/// The credentials of options `{side}_username` and `{side}_password`: `Some(None)` if neither is set,
/// `None` (and a problem) if the username lacks its password or the password does not resolve.
fn credentials(
    side: &str,
    username: &Option<String>,
    password: &Option<String>,
    problems: &mut Vec<String>,
) -> Option<Option<Credentials>> {
    let Some(password) = password else {
        if username.is_some() {
            problems.push(format!("option `{side}_username` needs `{side}_password`"));
            return None;
        }
        return Some(None);
    };
    let password = value::secret(&format!("{side}_password"), password, problems)?;
    Some(Some(Credentials {
        username: username.clone(),
        password,
    }))
}

/// One entry of option `option` (`user`, `readonly_user` or `admin_user`), name:password.
fn user(
    option: &str,
    entry: &str,
    authority: Authority,
    problems: &mut Vec<String>,
) -> Option<ClientUser> {
    let Some((name, password)) = entry.split_once(':').filter(|(name, _)| !name.is_empty()) else {
        // The entry is not shown: it may be a password given without its name.
        problems.push(format!(
            "option `{option}`: an entry is not name:password (not shown: it may hold a password)"
        ));
        return None;
    };
    let password = value::secret(option, password, problems)?;
    Some(ClientUser {
        name: name.to_string(),
        password,
        authority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{File, Flags};

    fn raw(flags: Flags) -> Raw {
        File::default().merge(flags)
    }

    #[test]
    fn no_credentials_are_needed_when_none_are_given() {
        let mut problems = Vec::new();
        let upstream = Upstream::parse(&raw(Flags::default()), &mut problems);
        assert_eq!(
            upstream,
            Some(Upstream {
                backend: None,
                sentinel: None
            })
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_username_without_its_password_is_refused_on_either_side() {
        let mut problems = Vec::new();
        let flags = Flags {
            sentinel_username: Some("watcher".into()),
            backend_username: Some("app".into()),
            backend_password: Some("pw".into()),
            ..Flags::default()
        };
        assert_eq!(Upstream::parse(&raw(flags), &mut problems), None);
        assert_eq!(
            problems,
            ["option `sentinel_username` needs `sentinel_password`"]
        );
    }

    #[test]
    fn a_password_without_a_username_is_the_default_users() {
        let flags = Flags {
            backend_password: Some("pw".into()),
            ..Flags::default()
        };
        let upstream = Upstream::parse(&raw(flags), &mut Vec::new()).expect("valid");
        assert_eq!(
            upstream.backend,
            Some(Credentials {
                username: None,
                password: "pw".into()
            })
        );
    }

    #[test]
    fn a_name_is_defined_once_across_users_and_readonly_users() {
        let mut problems = Vec::new();
        let flags = Flags {
            user: Some(vec!["alice:a".into()]),
            readonly_user: Some(vec!["alice:b".into()]),
            ..Flags::default()
        };
        assert_eq!(ClientAuth::parse(&raw(flags), &mut problems), None);
        assert_eq!(
            problems,
            ["options `user`/`readonly_user`/`admin_user`: a user is defined twice"]
        );
    }

    #[test]
    fn requirepass_excludes_a_user_named_default() {
        let mut problems = Vec::new();
        let flags = Flags {
            requirepass: Some("x".into()),
            user: Some(vec!["default:y".into()]),
            ..Flags::default()
        };
        assert_eq!(ClientAuth::parse(&raw(flags), &mut problems), None);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn users_keep_their_order_then_readonly_then_admin_users() {
        let flags = Flags {
            readonly_user: Some(vec!["carol:c".into()]),
            admin_user: Some(vec!["root:r".into()]),
            user: Some(vec!["bob:b".into(), "alice:a".into()]),
            ..Flags::default()
        };
        let auth = ClientAuth::parse(&raw(flags), &mut Vec::new()).expect("valid");
        let users: Vec<(&str, Authority)> = auth
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.authority))
            .collect();
        assert_eq!(
            users,
            [
                ("bob", Authority::Write),
                ("alice", Authority::Write),
                ("carol", Authority::Read),
                ("root", Authority::Admin)
            ]
        );
    }
}
