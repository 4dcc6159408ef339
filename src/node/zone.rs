//! Zones (datacenters, sites, availability zones): where a node runs, as configured (`node_zones`: an
//! address or a network) or as the server itself reports it (Valkey 8's `availability_zone`), and where
//! it stands relative to the proxy's own zone (`zone`).

use std::net::IpAddr;

use super::Addr;

/// A node's availability zone (datacenter, site), when known.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(pub String);

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a node is relative to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Locality {
    /// The proxy has no zone, or the node's zone is not known.
    Unknown = 0,
    /// In the proxy's zone.
    Local = 1,
    /// In another zone.
    Remote = 2,
}

impl Locality {
    /// From its `repr`.
    pub fn from_u8(v: u8) -> Locality {
        match v {
            1 => Locality::Local,
            2 => Locality::Remote,
            _ => Locality::Unknown,
        }
    }

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Locality::Unknown => "unknown",
            Locality::Local => "local",
            Locality::Remote => "remote",
        }
    }
}

/// Which nodes one `node_zones` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// One node, `host:port` as the proxy reaches it.
    Addr(Addr),
    /// Every node on one host (name or IP), any port.
    Host(String),
    /// Every node whose host is an IP address in this network.
    Net(ipnet::IpNet),
}

/// One `node_zones` entry: `ADDR=ZONE`, `HOST=ZONE` or `CIDR=ZONE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRule {
    pattern: Pattern,
    zone: Zone,
}

impl ZoneRule {
    /// Parses `ADDR=ZONE` (`10.0.1.7:6379=us-east-1a`), `HOST=ZONE` (`redis-b1=us-west`) or
    /// `CIDR=ZONE` (`10.0.2.0/24=eu-west`).
    pub fn parse(s: &str) -> Result<ZoneRule, String> {
        let (what, zone) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("`{s}` is not ADDR=ZONE or CIDR=ZONE"))?;
        let (what, zone) = (what.trim(), zone.trim());
        if zone.is_empty() {
            return Err(format!("`{s}` names no zone"));
        }
        let pattern = if what.contains('/') {
            Pattern::Net(
                what.parse()
                    .map_err(|_| format!("`{what}` in `{s}` is not a network (CIDR)"))?,
            )
        } else if let Ok(ip) = what
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Pattern::Net(ipnet::IpNet::from(ip))
        } else if what.contains(':') {
            Pattern::Addr(Addr::parse(what)?)
        } else if !what.is_empty() {
            Pattern::Host(what.to_ascii_lowercase())
        } else {
            return Err(format!("`{s}` names no node"));
        };
        Ok(ZoneRule {
            pattern,
            zone: Zone(zone.to_string()),
        })
    }

    fn matches(&self, addr: &Addr) -> bool {
        match &self.pattern {
            Pattern::Addr(a) => a == addr,
            Pattern::Host(h) => addr.host().eq_ignore_ascii_case(h),
            Pattern::Net(net) => addr
                .host()
                .parse::<IpAddr>()
                .is_ok_and(|ip| net.contains(&ip)),
        }
    }

    /// How specific the rule is: an address beats a host, a host beats a network, a longer prefix
    /// beats a shorter one.
    fn rank(&self) -> (u8, u8) {
        match &self.pattern {
            Pattern::Addr(_) => (2, 0),
            Pattern::Host(_) => (1, 0),
            Pattern::Net(n) => (0, n.prefix_len()),
        }
    }
}

/// The proxy's zone and the configured zones of nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zones {
    /// The proxy's own zone (`zone`); without one, reads ignore zones.
    pub own: Option<Zone>,
    /// `node_zones`.
    pub rules: Vec<ZoneRule>,
}

impl Zones {
    /// The zone configured for `addr`: the most specific matching rule's.
    pub fn configured(&self, addr: &Addr) -> Option<Zone> {
        self.rules
            .iter()
            .filter(|r| r.matches(addr))
            .max_by_key(|r| r.rank())
            .map(|r| r.zone.clone())
    }

    /// Where a node in `zone` stands relative to the proxy.
    pub fn locality(&self, zone: Option<&Zone>) -> Locality {
        match (&self.own, zone) {
            (Some(own), Some(z)) if own == z => Locality::Local,
            (Some(_), Some(_)) => Locality::Remote,
            _ => Locality::Unknown,
        }
    }
}

/// The zone a server reports for itself in `INFO server` (Valkey 8.1's `availability_zone`, set by its
/// `availability-zone` option); `None` if it reports none or an empty one.
pub fn reported(info: &str) -> Option<Zone> {
    super::info_field(info, "availability_zone")
        .map(str::trim)
        .filter(|z| !z.is_empty())
        .map(|z| Zone(z.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        Addr::parse(s).expect("addr")
    }

    fn zones(own: &str, rules: &[&str]) -> Zones {
        Zones {
            own: Some(Zone(own.into())),
            rules: rules
                .iter()
                .map(|r| ZoneRule::parse(r).expect("rule"))
                .collect(),
        }
    }

    #[test]
    fn the_most_specific_rule_names_a_node_s_zone() {
        let z = zones(
            "a",
            &[
                "10.0.0.0/8=wide",
                "10.0.1.0/24=b",
                "10.0.1.7:6379=c",
                "redis-x=d",
                "127.0.0.1=e",
            ],
        );
        let zone = |s: &str| z.configured(&addr(s)).map(|z| z.0);
        assert_eq!(zone("10.0.1.7:6379").as_deref(), Some("c"));
        assert_eq!(zone("10.0.1.7:6380").as_deref(), Some("b"));
        assert_eq!(zone("10.9.9.9:6379").as_deref(), Some("wide"));
        assert_eq!(zone("REDIS-X:6379").as_deref(), Some("d"));
        assert_eq!(zone("127.0.0.1:7000").as_deref(), Some("e"));
        assert_eq!(zone("192.168.0.1:6379"), None);
    }

    #[test]
    fn bad_rules_are_refused_with_the_entry_named() {
        for bad in [
            "10.0.0.0/33=a",
            "no-zone-here",
            "10.0.0.1:6379=",
            "=a",
            "h:0=a",
        ] {
            let e = ZoneRule::parse(bad).expect_err(bad);
            assert!(e.contains('`'), "{bad}: {e}");
        }
    }

    #[test]
    fn locality_needs_both_zones() {
        let z = zones("a", &[]);
        assert_eq!(z.locality(Some(&Zone("a".into()))), Locality::Local);
        assert_eq!(z.locality(Some(&Zone("b".into()))), Locality::Remote);
        assert_eq!(z.locality(None), Locality::Unknown);
        assert_eq!(
            Zones::default().locality(Some(&Zone("a".into()))),
            Locality::Unknown
        );
    }

    #[test]
    fn a_valkey_server_s_own_zone_is_read_from_info() {
        assert_eq!(
            reported("# Server\r\nrun_id:x\r\navailability_zone:us-east-1a\r\n"),
            Some(Zone("us-east-1a".into()))
        );
        assert_eq!(reported("availability_zone:\r\n"), None);
        assert_eq!(reported("run_id:x\r\n"), None);
    }
}
