//! Where the topology comes from: seed addresses (`static`), sentinels and a master name (`sentinel`), or
//! servers the proxy starts itself (`embedded`). The `topology` key chooses, or else the options that are set;
//! each kind has options only it uses, and setting another kind's is a problem. The address map applies to
//! all three.

use super::options::{Raw, TopologyKind};
use super::value::{self, Ranged};
use crate::node::Addr;

/// Where the topology comes from, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Seed nodes; roles and replicas are discovered from them.
    Static {
        /// The primary, as configured.
        primary: Addr,
        /// Replicas, as configured.
        replicas: Vec<Addr>,
    },
    /// Sentinels.
    Sentinel {
        /// Their addresses.
        sentinels: Vec<Addr>,
        /// The monitored master's name.
        master_name: String,
    },
    /// A Redis Cluster: shards and their slots are learned from these nodes.
    Cluster {
        /// Seed nodes, any of the cluster's.
        seeds: Vec<Addr>,
    },
    /// Local servers and sentinels the proxy starts.
    Embedded {
        /// How many replicas.
        replicas: u32,
        /// How many sentinels.
        sentinels: u32,
    },
}

impl Source {
    /// The kind `raw` asks for: `topology` if set; else static if `primary` is set, sentinel if `sentinel`
    /// is, embedded if neither.
    pub(super) fn kind(raw: &Raw) -> TopologyKind {
        raw.topology.unwrap_or(if raw.primary.is_some() {
            TopologyKind::Static
        } else if !raw.sentinel.is_empty() {
            TopologyKind::Sentinel
        } else if !raw.cluster.is_empty() {
            TopologyKind::Cluster
        } else {
            TopologyKind::Embedded
        })
    }

    /// The source of `kind` that `raw` describes, if nothing about it is wrong. Every address and count is
    /// checked whichever kind is chosen, so a bad value is reported even in an option the kind does not use.
    pub(super) fn parse(
        raw: &Raw,
        kind: TopologyKind,
        problems: &mut Vec<String>,
    ) -> Option<Source> {
        let found = problems.len();
        let primary = raw
            .primary
            .as_deref()
            .and_then(|p| value::addr("primary", p, problems));
        let replicas = addrs("replica", &raw.replica, problems);
        let sentinels = addrs("sentinel", &raw.sentinel, problems);
        let cluster = addrs("cluster", &raw.cluster, problems);
        let embedded = embedded(raw, problems);
        unused_options(raw, kind, problems);
        let source = match kind {
            TopologyKind::Static if raw.primary.is_none() => {
                problems.push("topology \"static\" needs `primary`".into());
                None
            }
            TopologyKind::Static => seeds(primary, replicas, problems),
            TopologyKind::Sentinel => sentinel(raw, sentinels, problems),
            TopologyKind::Cluster => cluster_seeds(raw, cluster, problems),
            TopologyKind::Embedded => embedded,
        };
        source.filter(|_| problems.len() == found)
    }
}

/// The `address_map` entries, "announced=reachable", if every one of them is two node addresses.
pub(super) fn address_map(
    entries: &[String],
    problems: &mut Vec<String>,
) -> Option<Vec<(Addr, Addr)>> {
    let found = problems.len();
    let map = entries
        .iter()
        .filter_map(|entry| mapping(entry, problems))
        .collect();
    (problems.len() == found).then_some(map)
}

/// One address map entry; one problem at most, even if both of its sides are wrong.
fn mapping(entry: &str, problems: &mut Vec<String>) -> Option<(Addr, Addr)> {
    let Some((from, to)) = entry.split_once('=') else {
        problems.push(format!(
            "option `address_map`: `{entry}` is not announced=reachable"
        ));
        return None;
    };
    match (Addr::parse(from.trim()), Addr::parse(to.trim())) {
        (Ok(from), Ok(to)) => Some((from, to)),
        (Err(e), _) | (_, Err(e)) => {
            problems.push(format!("option `address_map`: {e}"));
            None
        }
    }
}

/// The addresses of option `name` that parse; each that does not is a problem.
fn addrs(name: &str, texts: &[String], problems: &mut Vec<String>) -> Vec<Addr> {
    texts
        .iter()
        .filter_map(|text| value::addr(name, text, problems))
        .collect()
}

/// Reports each option of another kind that is set: the operator may believe it in use.
fn unused_options(raw: &Raw, kind: TopologyKind, problems: &mut Vec<String>) {
    use TopologyKind::{Cluster, Sentinel, Static};
    let kind_name = match kind {
        TopologyKind::Static => "static",
        TopologyKind::Sentinel => "sentinel",
        TopologyKind::Cluster => "cluster",
        TopologyKind::Embedded => "embedded",
    };
    for (name, set, owner) in [
        ("primary", raw.primary.is_some(), Static),
        ("replica", !raw.replica.is_empty(), Static),
        ("sentinel", !raw.sentinel.is_empty(), Sentinel),
        ("master_name", raw.master_name.is_some(), Sentinel),
        ("cluster", !raw.cluster.is_empty(), Cluster),
    ] {
        if set && owner != kind {
            problems.push(format!("topology \"{kind_name}\" does not use `{name}`"));
        }
    }
}

/// The static source. `primary` is `None` if it was given but is not an address (already reported).
fn seeds(primary: Option<Addr>, replicas: Vec<Addr>, problems: &mut Vec<String>) -> Option<Source> {
    if let Some(p) = primary.as_ref().filter(|p| replicas.contains(p)) {
        problems.push(format!("option `replica`: {p} is also the primary"));
    }
    if has_duplicates(&replicas) {
        problems.push("option `replica`: an address is listed twice".into());
    }
    primary.map(|primary| Source::Static { primary, replicas })
}

/// The sentinel source: at least one sentinel, none twice, and the name of the master they monitor.
fn sentinel(raw: &Raw, sentinels: Vec<Addr>, problems: &mut Vec<String>) -> Option<Source> {
    if raw.sentinel.is_empty() {
        problems.push("topology \"sentinel\" needs at least one `sentinel`".into());
    }
    if has_duplicates(&sentinels) {
        problems.push("option `sentinel`: an address is listed twice".into());
    }
    let Some(master_name) = raw.master_name.clone() else {
        problems.push("topology \"sentinel\" needs `master_name`".into());
        return None;
    };
    Some(Source::Sentinel {
        sentinels,
        master_name,
    })
}

/// The cluster source: at least one seed, none twice.
fn cluster_seeds(raw: &Raw, seeds: Vec<Addr>, problems: &mut Vec<String>) -> Option<Source> {
    if raw.cluster.is_empty() {
        problems.push("topology \"cluster\" needs at least one `cluster` seed".into());
        return None;
    }
    if has_duplicates(&seeds) {
        problems.push("option `cluster`: an address is listed twice".into());
    }
    Some(Source::Cluster { seeds })
}

/// The embedded source. Its counts are checked whichever kind is chosen: they have defaults, so whether the
/// operator set them cannot be told.
fn embedded(raw: &Raw, problems: &mut Vec<String>) -> Option<Source> {
    let (replicas, sentinels) = (raw.embedded_replicas, raw.embedded_sentinels);
    let replicas_ok = Ranged::new("embedded_replicas", replicas.into(), 0..=16, problems);
    let sentinels_ok = Ranged::new("embedded_sentinels", sentinels.into(), 0..=9, problems);
    let (Some(_), Some(_)) = (replicas_ok, sentinels_ok) else {
        return None;
    };
    Some(Source::Embedded {
        replicas,
        sentinels,
    })
}

fn has_duplicates(addrs: &[Addr]) -> bool {
    let mut sorted = addrs.to_vec();
    sorted.sort();
    sorted.windows(2).any(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{File, Flags};

    fn parse(flags: Flags) -> (Option<Source>, Vec<String>) {
        let raw = File::default().merge(flags);
        let mut problems = Vec::new();
        let source = Source::parse(&raw, Source::kind(&raw), &mut problems);
        (source, problems)
    }

    fn addr(text: &str) -> Addr {
        Addr::parse(text).expect("address")
    }

    #[test]
    fn the_kind_follows_the_options_set_unless_topology_names_it() {
        let kind = |flags: Flags| Source::kind(&File::default().merge(flags));
        let primary = || Some("p:1".to_string());
        let sentinel = || Some(vec!["s:1".to_string()]);
        assert_eq!(kind(Flags::default()), TopologyKind::Embedded);
        let flags = Flags {
            primary: primary(),
            sentinel: sentinel(),
            ..Flags::default()
        };
        assert_eq!(kind(flags), TopologyKind::Static);
        let flags = Flags {
            sentinel: sentinel(),
            ..Flags::default()
        };
        assert_eq!(kind(flags), TopologyKind::Sentinel);
        let flags = Flags {
            topology: Some(TopologyKind::Embedded),
            primary: primary(),
            ..Flags::default()
        };
        assert_eq!(kind(flags), TopologyKind::Embedded);
    }

    #[test]
    fn another_kinds_options_are_reported_as_unused() {
        let (source, problems) = parse(Flags {
            topology: Some(TopologyKind::Sentinel),
            sentinel: Some(vec!["s:1".into()]),
            master_name: Some("m".into()),
            primary: Some("p:1".into()),
            ..Flags::default()
        });
        assert_eq!(source, None);
        assert_eq!(problems, ["topology \"sentinel\" does not use `primary`"]);
    }

    #[test]
    fn a_replica_that_is_also_the_primary_is_refused() {
        let (source, problems) = parse(Flags {
            primary: Some("p:1".into()),
            replica: Some(vec!["p:1".into()]),
            ..Flags::default()
        });
        assert_eq!(source, None);
        assert_eq!(problems, ["option `replica`: p:1 is also the primary"]);
    }

    #[test]
    fn one_bad_seed_leaves_no_source_but_the_others_are_still_checked() {
        let (source, problems) = parse(Flags {
            primary: Some("p:1".into()),
            replica: Some(vec!["r".into(), "r:1".into(), "r:1".into()]),
            ..Flags::default()
        });
        assert_eq!(source, None);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn an_embedded_count_out_of_bounds_is_reported_whatever_the_kind() {
        let (source, problems) = parse(Flags {
            primary: Some("p:1".into()),
            embedded_sentinels: Some(10),
            ..Flags::default()
        });
        assert_eq!(source, None);
        assert_eq!(
            problems,
            ["option `embedded_sentinels`: 10 is outside 0..=9"]
        );
    }

    #[test]
    fn a_valid_sentinel_source_keeps_its_addresses_in_order() {
        let (source, problems) = parse(Flags {
            sentinel: Some(vec!["b:2".into(), "a:1".into()]),
            master_name: Some("mymaster".into()),
            ..Flags::default()
        });
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            source,
            Some(Source::Sentinel {
                sentinels: vec![addr("b:2"), addr("a:1")],
                master_name: "mymaster".into(),
            })
        );
    }

    #[test]
    fn cluster_seeds_select_the_cluster_kind_and_another_kinds_options_are_refused() {
        let (source, problems) = parse(Flags {
            cluster: Some(vec!["c:1".into(), "c:2".into()]),
            ..Flags::default()
        });
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            source,
            Some(Source::Cluster {
                seeds: vec![addr("c:1"), addr("c:2")]
            })
        );
        let (source, problems) = parse(Flags {
            topology: Some(TopologyKind::Cluster),
            sentinel: Some(vec!["s:1".into()]),
            ..Flags::default()
        });
        assert_eq!(source, None);
        assert_eq!(
            problems,
            [
                "topology \"cluster\" does not use `sentinel`",
                "topology \"cluster\" needs at least one `cluster` seed"
            ]
        );
    }

    #[test]
    fn an_address_map_entry_is_two_addresses_and_reported_once() {
        let mut problems = Vec::new();
        let entries = ["a:1 = b:2".to_string()];
        assert_eq!(
            address_map(&entries, &mut problems),
            Some(vec![(addr("a:1"), addr("b:2"))])
        );
        let entries = ["a:1".to_string(), "x=y".to_string()];
        assert_eq!(address_map(&entries, &mut problems), None);
        assert_eq!(
            problems,
            [
                "option `address_map`: `a:1` is not announced=reachable",
                "option `address_map`: `x` is not host:port",
            ]
        );
    }
}
