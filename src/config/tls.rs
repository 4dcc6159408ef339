//! TLS options: the client listener (`tls_listen` and its certificate), and upstream TLS (one CA bundle,
//! server name and client certificate, used for data nodes with `backend_tls` and for sentinels with
//! `sentinel_tls`). Files are options that go together; each set without its partner is a problem. The
//! files are loaded here once, so that `--check` finds a bad one, and again when the proxy starts.

use std::net::SocketAddr;

use super::options::{Raw, TopologyKind};
use super::value;
use crate::tls::{ClientFiles, ServerFiles};

/// The TLS listener of `raw` and its files: `Some(None)` if none is configured, `None` if something about
/// it is wrong (a file option without `tls_listen`, or the reverse, or a file that does not load).
pub(super) fn listener(
    raw: &Raw,
    problems: &mut Vec<String>,
) -> Option<Option<(SocketAddr, ServerFiles)>> {
    let found = problems.len();
    let Some(listen) = &raw.tls_listen else {
        for (name, set) in [
            ("tls_cert_file", raw.tls_cert_file.is_some()),
            ("tls_key_file", raw.tls_key_file.is_some()),
            ("tls_client_ca_file", raw.tls_client_ca_file.is_some()),
        ] {
            if set {
                problems.push(format!("option `{name}` needs `tls_listen`"));
            }
        }
        return (problems.len() == found).then_some(None);
    };
    let (Some(cert), Some(key)) = (&raw.tls_cert_file, &raw.tls_key_file) else {
        problems.push("option `tls_listen` needs `tls_cert_file` and `tls_key_file`".into());
        return None;
    };
    let addr = value::socket_addr("tls_listen", listen, problems);
    let files = ServerFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: raw.tls_client_ca_file.clone(),
    };
    for p in crate::tls::check_server(&files) {
        problems.push(format!("TLS listener: {p}"));
    }
    let served = (addr?, files);
    (problems.len() == found).then_some(Some(served))
}

/// Upstream TLS, per side: the same files for both, or `None` for a side that connects in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UpstreamTls {
    /// Data nodes (`backend_tls`).
    pub backend: Option<ClientFiles>,
    /// Sentinels (`sentinel_tls`).
    pub sentinel: Option<ClientFiles>,
}

impl UpstreamTls {
    /// The upstream TLS of `raw` for a topology of `kind`, if its files go together and load and each side
    /// that asks for TLS can have it (embedded servers cannot; only a sentinel topology has sentinels).
    pub(super) fn parse(
        raw: &Raw,
        kind: TopologyKind,
        problems: &mut Vec<String>,
    ) -> Option<UpstreamTls> {
        let found = problems.len();
        let files = if raw.backend_tls || raw.sentinel_tls {
            client_files(raw, problems)
        } else {
            unused_files(raw, problems);
            None
        };
        if raw.backend_tls && kind == TopologyKind::Embedded {
            problems.push("option `backend_tls`: the embedded servers do not speak TLS".into());
        }
        if raw.sentinel_tls && kind != TopologyKind::Sentinel {
            problems.push("option `sentinel_tls` needs topology \"sentinel\"".into());
        }
        (problems.len() == found).then(|| UpstreamTls {
            backend: files.clone().filter(|_| raw.backend_tls),
            sentinel: files.filter(|_| raw.sentinel_tls),
        })
    }
}

/// The upstream files when a side asks for TLS: the CA bundle, and a client certificate and key together
/// or neither.
fn client_files(raw: &Raw, problems: &mut Vec<String>) -> Option<ClientFiles> {
    let found = problems.len();
    let Some(ca) = &raw.backend_tls_ca_file else {
        problems.push("options `backend_tls` and `sentinel_tls` need `backend_tls_ca_file`".into());
        return None;
    };
    let identity = match (&raw.backend_tls_cert_file, &raw.backend_tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        // The CA bundle is still loaded, to report its problems too.
        _ => {
            problems.push(
                "options `backend_tls_cert_file` and `backend_tls_key_file` go together".into(),
            );
            None
        }
    };
    let files = ClientFiles {
        ca: ca.clone(),
        server_name: raw.backend_tls_server_name.clone(),
        identity,
    };
    for p in crate::tls::check_client(&files) {
        problems.push(format!("upstream TLS: {p}"));
    }
    (problems.len() == found).then_some(files)
}

/// Reports each upstream TLS option set while neither side asks for TLS.
fn unused_files(raw: &Raw, problems: &mut Vec<String>) {
    for (name, set) in [
        ("backend_tls_ca_file", raw.backend_tls_ca_file.is_some()),
        (
            "backend_tls_server_name",
            raw.backend_tls_server_name.is_some(),
        ),
        ("backend_tls_cert_file", raw.backend_tls_cert_file.is_some()),
        ("backend_tls_key_file", raw.backend_tls_key_file.is_some()),
    ] {
        if set {
            problems.push(format!(
                "option `{name}` needs `backend_tls` or `sentinel_tls`"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{File, Flags};

    fn raw(flags: Flags) -> Raw {
        File::default().merge(flags)
    }

    #[test]
    fn no_tls_options_mean_no_tls_on_either_side() {
        let mut problems = Vec::new();
        let raw = raw(Flags::default());
        assert_eq!(listener(&raw, &mut problems), Some(None));
        assert_eq!(
            UpstreamTls::parse(&raw, TopologyKind::Static, &mut problems),
            Some(UpstreamTls {
                backend: None,
                sentinel: None
            })
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_tls_listener_needs_both_its_certificate_and_its_key() {
        let mut problems = Vec::new();
        let flags = Flags {
            tls_listen: Some("127.0.0.1:0".into()),
            tls_cert_file: Some("proxy.crt".into()),
            ..Flags::default()
        };
        assert_eq!(listener(&raw(flags), &mut problems), None);
        assert_eq!(
            problems,
            ["option `tls_listen` needs `tls_cert_file` and `tls_key_file`"]
        );
    }

    #[test]
    fn sentinel_tls_is_refused_for_a_topology_without_sentinels() {
        let mut problems = Vec::new();
        let flags = Flags {
            sentinel_tls: Some(true),
            ..Flags::default()
        };
        assert_eq!(
            UpstreamTls::parse(&raw(flags), TopologyKind::Static, &mut problems),
            None
        );
        assert_eq!(
            problems,
            [
                "options `backend_tls` and `sentinel_tls` need `backend_tls_ca_file`",
                "option `sentinel_tls` needs topology \"sentinel\"",
            ]
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_reported_with_the_ca_bundles_problems() {
        let mut problems = Vec::new();
        let flags = Flags {
            backend_tls: Some(true),
            backend_tls_ca_file: Some("/nonexistent/ca.pem".into()),
            backend_tls_cert_file: Some("/nonexistent/client.crt".into()),
            ..Flags::default()
        };
        assert_eq!(
            UpstreamTls::parse(&raw(flags), TopologyKind::Static, &mut problems),
            None
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("go together"), "{problems:?}");
        assert!(problems[1].starts_with("upstream TLS: "), "{problems:?}");
    }
}
