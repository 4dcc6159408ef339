//! Parsers of single values the options share: a number within bounds, a listener address, a node address,
//! a secret. Each reports a bad value as a problem worded the same for every option (`option `name`: ...`)
//! and returns `None` then, so the caller keeps going and collects every problem.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::node::Addr;

/// A whole-number option's value, within the option's bounds: [`Ranged::new`] is the only way to make one,
/// so a value outside them cannot reach the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ranged(u64);

impl Ranged {
    /// Option `name`'s `value`, if it lies within `bounds`; otherwise a problem, and `None`.
    pub(super) fn new(
        name: &str,
        value: u64,
        bounds: RangeInclusive<u64>,
        problems: &mut Vec<String>,
    ) -> Option<Ranged> {
        if bounds.contains(&value) {
            Some(Ranged(value))
        } else {
            let (lo, hi) = bounds.into_inner();
            problems.push(format!("option `{name}`: {value} is outside {lo}..={hi}"));
            None
        }
    }

    /// The value as a count or a size in memory. Every option's bounds fit a 64-bit `usize`; a narrower
    /// target gets the largest it has, which no limit will reach.
    pub(super) fn count(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The value read as milliseconds, the unit of every `_ms` option.
    pub(super) fn millis(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// `None` for 0, which turns off the options that allow it (a timeout or limit of 0: none).
    pub(super) fn nonzero(self) -> Option<Ranged> {
        (self.0 > 0).then_some(self)
    }
}

/// Option `name`'s listener address: ip:port, or host:port for a host name that resolves (`localhost`),
/// bound at its first address.
pub(super) fn socket_addr(
    name: &str,
    text: &str,
    problems: &mut Vec<String>,
) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let resolved = Addr::parse(text).ok().and_then(|a| {
        use std::net::ToSocketAddrs;
        let mut all: Vec<SocketAddr> = (a.host(), a.port()).to_socket_addrs().ok()?.collect();
        // IPv4 first: `localhost` is 127.0.0.1 where both exist.
        all.sort_by_key(|a| !a.is_ipv4());
        all.into_iter().next()
    });
    if resolved.is_none() {
        problems.push(format!(
            "option `{name}`: `{text}` is not ip:port, nor host:port with a host that resolves"
        ));
    }
    resolved
}

/// Option `name`'s node address, host:port.
pub(super) fn addr(name: &str, text: &str, problems: &mut Vec<String>) -> Option<Addr> {
    match Addr::parse(text) {
        Ok(addr) => Some(addr),
        Err(e) => {
            problems.push(format!("option `{name}`: {e}"));
            None
        }
    }
}

/// A secret given as `env:NAME` (an environment variable) or `file:PATH` (a file, trailing newline
/// dropped), or literally.
pub fn resolve_secret(value: &str) -> Result<String, String> {
    if let Some(var) = value.strip_prefix("env:") {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| format!("cannot read {path}: {e}"))
    } else {
        Ok(value.to_string())
    }
}

/// Option `name`'s secret, resolved as [`resolve_secret`] says. The problem names the variable or file,
/// never the value.
pub(super) fn secret(name: &str, value: &str, problems: &mut Vec<String>) -> Option<String> {
    match resolve_secret(value) {
        Ok(secret) => Some(secret),
        Err(e) => {
            problems.push(format!("option `{name}`: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_either_bound_is_accepted() {
        let mut problems = Vec::new();
        assert_eq!(
            Ranged::new("n", 10, 10..=20, &mut problems).map(Ranged::count),
            Some(10)
        );
        assert_eq!(
            Ranged::new("n", 20, 10..=20, &mut problems).map(Ranged::count),
            Some(20)
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_value_outside_its_bounds_is_refused_with_the_bounds_named() {
        let mut problems = Vec::new();
        assert_eq!(Ranged::new("probe_ms", 9, 10..=20, &mut problems), None);
        assert_eq!(Ranged::new("probe_ms", 21, 10..=20, &mut problems), None);
        assert_eq!(
            problems,
            [
                "option `probe_ms`: 9 is outside 10..=20",
                "option `probe_ms`: 21 is outside 10..=20"
            ]
        );
    }

    #[test]
    fn zero_turns_an_option_off() {
        let mut problems = Vec::new();
        let off = Ranged::new("idle_ms", 0, 0..=100, &mut problems).expect("in bounds");
        let on = Ranged::new("idle_ms", 5, 0..=100, &mut problems).expect("in bounds");
        assert_eq!(off.nonzero(), None);
        assert_eq!(
            on.nonzero().map(Ranged::millis),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn a_listener_takes_an_ip_address_or_a_host_name_that_resolves() {
        let mut problems = Vec::new();
        assert!(socket_addr("listen", "127.0.0.1:6380", &mut problems).is_some());
        assert!(socket_addr("listen", "localhost:6380", &mut problems).is_some());
        assert!(socket_addr("listen", "10.0.0.300:6380", &mut problems).is_none());
        assert_eq!(
            problems,
            ["option `listen`: `10.0.0.300:6380` is not ip:port, nor host:port with a host that resolves"]
        );
    }

    #[test]
    fn a_secret_that_cannot_be_read_names_its_source_but_not_a_value() {
        let mut problems = Vec::new();
        assert_eq!(
            secret("requirepass", "plain", &mut problems).as_deref(),
            Some("plain")
        );
        assert_eq!(
            secret(
                "requirepass",
                "env:REDSPLIT_NO_SUCH_VARIABLE",
                &mut problems
            ),
            None
        );
        assert_eq!(
            problems,
            ["option `requirepass`: environment variable REDSPLIT_NO_SUCH_VARIABLE is not set"]
        );
    }
}
