//! Where a command's keys are, for routing by hash slot in front of a Redis Cluster: the table's first,
//! last and step positions, and for commands whose keys move (`movablekeys`: scripts, `ZUNIONSTORE`,
//! `XREAD`, ...) the rule each one follows.

use super::{flag, Table};

/// Where a command's keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// It has none (PING, PUBLISH, DBSIZE, ...).
    None,
    /// The arguments at these positions (1 is the first after the name), in order.
    At(Vec<usize>),
    /// They cannot be found (a movable-keys command the proxy does not know, or a malformed one): the
    /// command is not routed by key.
    Unknown,
}

/// The key positions of a command of `argc` arguments; `arg(i)` gives argument `i` (0 is the name).
pub fn key_positions<'a>(
    table: &Table,
    argc: usize,
    arg: impl Fn(usize) -> Option<&'a [u8]>,
) -> Keys {
    let Some(name) = arg(0) else {
        return Keys::Unknown;
    };
    let mut buf = [0u8; super::MAX_NAME];
    let Some(upper) = super::upper_into(&mut buf, &[name]) else {
        return Keys::Unknown;
    };
    let number = |i: usize| -> Option<usize> { std::str::from_utf8(arg(i)?).ok()?.parse().ok() };
    // `numkeys` at `at`, the keys right after it; `before`: keys ahead of numkeys (a destination).
    let counted = |at: usize, before: &[usize]| -> Keys {
        // `numkeys` comes from the client: any number at all, checked against the arguments there are.
        match number(at).and_then(|n| at.checked_add(n)) {
            Some(last) if last < argc => {
                Keys::At(before.iter().copied().chain(at + 1..=last).collect())
            }
            _ => Keys::Unknown,
        }
    };
    match upper {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            match number(2) {
                Some(0) => Keys::None,
                _ => counted(2, &[]),
            }
        }
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => counted(2, &[1]),
        b"ZUNION" | b"ZINTER" | b"ZDIFF" | b"ZINTERCARD" | b"SINTERCARD" | b"LMPOP" | b"ZMPOP" => {
            counted(1, &[])
        }
        b"BLMPOP" | b"BZMPOP" => counted(2, &[]),
        b"XREAD" | b"XREADGROUP" => {
            let streams =
                (1..argc).find(|&i| arg(i).is_some_and(|a| a.eq_ignore_ascii_case(b"STREAMS")));
            match streams {
                Some(s) if (argc - s - 1).is_multiple_of(2) && argc - s > 1 => {
                    let n = (argc - s - 1) / 2;
                    Keys::At((s + 1..=s + n).collect())
                }
                _ => Keys::Unknown,
            }
        }
        // Patterns (BY, GET) may name other keys; Redis Cluster refuses them unless they hash to the
        // key's slot, and so does the node.
        b"SORT" | b"SORT_RO" if argc > 1 => Keys::At(vec![1]),
        b"GEORADIUS" | b"GEORADIUSBYMEMBER" | b"GEOSEARCHSTORE" | b"MIGRATE" => Keys::Unknown,
        _ => table_positions(table, upper, argc, &arg),
    }
}

/// Positions from the table's first/last/step.
fn table_positions<'a>(
    table: &Table,
    upper: &[u8],
    argc: usize,
    arg: &impl Fn(usize) -> Option<&'a [u8]>,
) -> Keys {
    let info = match table.get_upper(upper) {
        Some(c) if c.flags.has(flag::CONTAINER) && argc >= 2 => {
            arg(1).and_then(|s| table.get_sub(upper, s)).copied()
        }
        other => other.copied(),
    };
    let Some(info) = info else {
        return Keys::Unknown;
    };
    let (first, last, step) = info.keys;
    if first <= 0 {
        return if info.flags.has(flag::MOVABLEKEYS) {
            Keys::Unknown
        } else {
            Keys::None
        };
    }
    let first = first as usize;
    if first >= argc {
        return Keys::None;
    }
    let last = if last < 0 {
        argc as i64 + i64::from(last)
    } else {
        i64::from(last)
    };
    let last = usize::try_from(last).unwrap_or(0).min(argc - 1);
    let step = usize::try_from(step).unwrap_or(1).max(1);
    Keys::At((first..=last).step_by(step).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(args: &[&str]) -> Keys {
        let table = Table::builtin();
        key_positions(&table, args.len(), |i| args.get(i).map(|a| a.as_bytes()))
    }

    #[test]
    fn keys_come_from_the_table_positions() {
        assert_eq!(keys(&["GET", "a"]), Keys::At(vec![1]));
        assert_eq!(keys(&["MGET", "a", "b", "c"]), Keys::At(vec![1, 2, 3]));
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), Keys::At(vec![1, 3]));
        assert_eq!(keys(&["PING"]), Keys::None);
        assert_eq!(keys(&["DBSIZE"]), Keys::None);
        assert_eq!(keys(&["RENAME", "a", "b"]), Keys::At(vec![1, 2]));
    }

    #[test]
    fn movable_keys_follow_each_commands_rule() {
        assert_eq!(
            keys(&["EVAL", "s", "2", "a", "b", "x"]),
            Keys::At(vec![3, 4])
        );
        assert_eq!(keys(&["EVAL", "s", "0"]), Keys::None);
        assert_eq!(keys(&["EVAL", "s", "5", "a"]), Keys::Unknown);
        assert_eq!(
            keys(&["ZUNIONSTORE", "d", "2", "a", "b"]),
            Keys::At(vec![1, 3, 4])
        );
        assert_eq!(
            keys(&["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"]),
            Keys::At(vec![4, 5])
        );
        assert_eq!(keys(&["XREAD", "STREAMS", "a"]), Keys::Unknown);
        assert_eq!(
            keys(&["EVAL", "s", "18446744073709551615", "a"]),
            Keys::Unknown,
            "a numkeys past the arguments, however large"
        );
    }
}
