//! Durability options: write acknowledgements by replicas (`min_write_acks`, `write_ack_timeout_ms`,
//! and per proxy user `user_min_write_acks`, `user_write_ack_timeout_ms`) and the split-brain guard
//! (`min_replicas`, `min_replicas_max_lag_ms`).

use std::time::Duration;

use super::options::Raw;
use super::value::Ranged;
use crate::client::Durability;
use crate::route::Guard;
use crate::upstream::Acks;

/// The durability options of `raw`, if every value is within bounds, every per-user entry names a user
/// clients can authenticate as (`users`, and `default`), and the timeouts fit the ones around them:
/// acknowledgements are waited for well within `write_timeout_ms` (past it the client would be told the
/// write may not have run), and the guard's lag limit spans at least two probes (`probe_interval_ms`),
/// or a replica would count as lagging between every two of them.
pub(super) fn parse(raw: &Raw, users: &[String], problems: &mut Vec<String>) -> Option<Durability> {
    let found = problems.len();
    let acks = Ranged::new(
        "min_write_acks",
        u64::from(raw.min_write_acks),
        0..=64,
        problems,
    );
    let timeout = Ranged::new(
        "write_ack_timeout_ms",
        raw.write_ack_timeout_ms,
        1..=600_000,
        problems,
    );
    let min_replicas = Ranged::new(
        "min_replicas",
        u64::from(raw.min_replicas),
        0..=64,
        problems,
    );
    let max_lag = Ranged::new(
        "min_replicas_max_lag_ms",
        raw.min_replicas_max_lag_ms,
        1..=86_400_000,
        problems,
    );
    let user_acks = per_user(
        "user_min_write_acks",
        &raw.user_min_write_acks,
        users,
        0..=64,
        problems,
    );
    let user_timeouts = per_user(
        "user_write_ack_timeout_ms",
        &raw.user_write_ack_timeout_ms,
        users,
        1..=600_000,
        problems,
    );
    let (Some(acks), Some(timeout), Some(min_replicas), Some(max_lag)) =
        (acks, timeout, min_replicas, max_lag)
    else {
        return None;
    };
    let timeout_ms = timeout.millis().as_millis() as u64;
    let make = |n: u64, t: u64| {
        (n > 0).then_some(Acks {
            replicas: n as u32,
            timeout_ms: t,
        })
    };
    let mut names: Vec<&String> = user_acks
        .iter()
        .chain(&user_timeouts)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names.dedup();
    let user_acks: Vec<(String, Option<Acks>)> = names
        .into_iter()
        .map(|name| {
            let find =
                |list: &[(String, u64)]| list.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            let n = find(&user_acks).unwrap_or(acks.count() as u64);
            let t = find(&user_timeouts).unwrap_or(timeout_ms);
            (name.clone(), make(n, t))
        })
        .collect();
    let write_timeout = raw.write_timeout_ms;
    let longest = user_acks
        .iter()
        .filter_map(|(_, a)| a.map(|a| a.timeout_ms))
        .chain((acks.count() > 0).then_some(timeout_ms))
        .max();
    if let Some(longest) = longest.filter(|&t| t >= write_timeout) {
        problems.push(format!(
            "option `write_ack_timeout_ms` ({longest}, or a user's) must be below `write_timeout_ms` \
             ({write_timeout}): a write still waiting for acknowledgements would be reported as timed out"
        ));
    }
    let max_lag = max_lag.millis();
    if min_replicas.count() > 0 && max_lag < Duration::from_millis(raw.probe_interval_ms * 2) {
        problems.push(format!(
            "option `min_replicas_max_lag_ms` ({}) must be at least twice `probe_interval_ms` ({}): the \
             proxy measures replicas' lag once per probe",
            max_lag.as_millis(),
            raw.probe_interval_ms
        ));
    }
    (problems.len() == found).then(|| Durability {
        acks: make(acks.count() as u64, timeout_ms),
        user_acks,
        guard: Guard {
            min_replicas: min_replicas.count() as u32,
            max_lag,
        },
    })
}

/// Entries `name=value` of option `option`, each naming one of `users` once, each value within
/// `bounds`.
fn per_user(
    option: &str,
    entries: &[String],
    users: &[String],
    bounds: std::ops::RangeInclusive<u64>,
    problems: &mut Vec<String>,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for entry in entries {
        let Some((name, value)) = entry.split_once('=') else {
            problems.push(format!("option `{option}`: `{entry}` is not name=value"));
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if !users.iter().any(|u| u == name) {
            problems.push(format!(
                "option `{option}`: no proxy user is named `{name}` (user, readonly_user, admin_user, or \
                 default with requirepass)"
            ));
            continue;
        }
        if out.iter().any(|(n, _)| n == name) {
            problems.push(format!("option `{option}`: `{name}` is given twice"));
            continue;
        }
        let Ok(v) = value.parse::<u64>() else {
            problems.push(format!(
                "option `{option}`: `{value}` is not a whole number"
            ));
            continue;
        };
        if let Some(r) = Ranged::new(option, v, bounds.clone(), problems) {
            out.push((name.to_string(), r.count() as u64));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{File, Flags};

    fn parse_flags(flags: Flags, users: &[&str]) -> Result<Durability, Vec<String>> {
        let raw = File::default().merge(flags);
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let mut problems = Vec::new();
        match parse(&raw, &users, &mut problems) {
            Some(d) if problems.is_empty() => Ok(d),
            _ => Err(problems),
        }
    }

    #[test]
    fn everything_is_off_by_default() {
        let d = parse_flags(Flags::default(), &[]).expect("defaults are valid");
        assert_eq!(d.acks, None);
        assert!(!d.guard.is_on());
        assert_eq!(d.guard.max_lag, Duration::from_secs(10));
    }

    #[test]
    fn users_get_their_own_acknowledgements_or_none() {
        let d = parse_flags(
            Flags {
                min_write_acks: Some(1),
                write_ack_timeout_ms: Some(200),
                user_min_write_acks: Some(vec!["bulk=0".into(), "pay=2".into()]),
                user_write_ack_timeout_ms: Some(vec!["pay=900".into()]),
                ..Flags::default()
            },
            &["bulk", "pay", "app"],
        )
        .expect("valid");
        let acks = |n, t| {
            Some(Acks {
                replicas: n,
                timeout_ms: t,
            })
        };
        assert_eq!(d.acks, acks(1, 200));
        assert_eq!(
            d.user_acks,
            vec![
                ("bulk".to_string(), None),
                ("pay".to_string(), acks(2, 900))
            ]
        );
        let user = |name: &str| crate::auth::ClientUser {
            name: name.into(),
            password: String::new(),
            authority: crate::auth::Authority::Write,
        };
        assert_eq!(d.acks_for(Some(&user("app"))), acks(1, 200));
        assert_eq!(d.acks_for(Some(&user("pay"))), acks(2, 900));
        assert_eq!(d.acks_for(Some(&user("bulk"))), None);
        assert_eq!(d.acks_for(None), acks(1, 200));
    }

    #[test]
    fn unknown_users_bad_entries_and_timeouts_past_write_timeout_are_problems() {
        let problems = parse_flags(
            Flags {
                min_write_acks: Some(1),
                write_ack_timeout_ms: Some(20_000),
                user_min_write_acks: Some(vec!["ghost=1".into(), "app".into()]),
                min_replicas: Some(1),
                min_replicas_max_lag_ms: Some(50),
                ..Flags::default()
            },
            &["app"],
        )
        .expect_err("invalid");
        let all = problems.join("\n");
        assert!(all.contains("`ghost`"), "{all}");
        assert!(all.contains("not name=value"), "{all}");
        assert!(all.contains("below `write_timeout_ms`"), "{all}");
        assert!(all.contains("twice `probe_interval_ms`"), "{all}");
    }
}
