//! Configuration reload without dropping clients: lag limits, seeds, users (through `Proxy::reload`),
//! and SIGHUP to the binary, where a file that does not load keeps the running configuration.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redsplit::config::{Config, Consistency, Flags};

use crate::harness::*;

fn config(flags: Flags) -> Config {
    Config::load(None, flags).expect("valid config")
}

#[tokio::test]
async fn lag_limits_change_on_reload() {
    let cluster = Cluster::builder()
        .replicas(1)
        .delay_replica(0, Duration::from_millis(600))
        .start()
        .await;
    let with_limit = |ms| Flags {
        consistency: Some(Consistency::Eventual),
        max_lag_ms: Some(ms),
        ..cluster.flags()
    };
    let proxy = proxy_with(with_limit(300)).await;
    eventually!("topology", proxy.topo.snapshot().replicas().len() == 1);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_ticker(cluster.primary(), stop.clone()).await;
    let node = proxy.topo.snapshot().replicas()[0].node.clone();
    eventually!(
        "lag measured",
        (500..10_000).contains(&node.repl.lag_ms.load(Ordering::Relaxed))
    );
    assert!(!node.repl.is_eligible(), "600 ms behind, limit 300 ms");

    let out = proxy.reload(&config(with_limit(2000)));
    assert_eq!(out.applied, ["max_lag_ms/max_lag_bytes"]);
    assert!(out.restart_needed.is_empty(), "{:?}", out.restart_needed);
    eventually!("eligible under 2000 ms", node.repl.is_eligible());
    let mut c = client(&proxy).await;
    let before = calls(&cluster.replicas()[0], "get").await;
    for _ in 0..20 {
        let _: Option<String> = q(&mut c, &["GET", "tick"]).await;
    }
    assert_eq!(calls(&cluster.replicas()[0], "get").await - before, 20);

    proxy.reload(&config(with_limit(300)));
    eventually!("out of rotation again", !node.repl.is_eligible());
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
}

#[tokio::test]
async fn new_seeds_take_over_while_clients_stay_connected() {
    let (first, proxy) = Cluster::builder().replicas(1).proxy().await;
    let second = Cluster::builder().start().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "before", "1"]).await;

    let out = proxy.reload(&config(second.flags()));
    assert_eq!(out.applied, ["topology source"]);
    eventually!(
        "the new primary is published",
        proxy
            .topo
            .snapshot()
            .primary()
            .is_some_and(|p| p.addr == second.primary().addr())
    );
    assert!(proxy.topo.snapshot().replicas().is_empty());
    // The same client connection writes on, now to the new primary.
    let _: () = q(&mut c, &["SET", "after", "2"]).await;
    let mut old = direct(first.primary()).await;
    let mut new = direct(second.primary()).await;
    assert_eq!(q::<i64>(&mut old, &["EXISTS", "before", "after"]).await, 1);
    assert_eq!(q::<i64>(&mut new, &["EXISTS", "after"]).await, 1);
    assert_eq!(
        q::<Option<String>>(&mut c, &["GET", "after"])
            .await
            .as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn users_change_on_reload_and_authenticated_clients_go_on() {
    let cluster = Cluster::builder().start().await;
    let with_auth = |pass: Option<&str>| Flags {
        requirepass: pass.map(str::to_string),
        ..cluster.flags()
    };
    let proxy = proxy_with(with_auth(Some("one"))).await;
    let mut one = Raw::connect(&proxy).await;
    one.send(&resp(&["AUTH", "one"])).await;
    one.expect(b"+OK\r\n").await;

    let out = proxy.reload(&config(with_auth(Some("two"))));
    assert_eq!(out.applied, ["requirepass/user/readonly_user/admin_user"]);
    // Authenticated before the reload: goes on.
    one.send(&resp(&["SET", "k", "v"])).await;
    one.expect(b"+OK\r\n").await;
    // New authentications check the new password.
    let mut two = Raw::connect(&proxy).await;
    two.send(&resp(&["AUTH", "one"])).await;
    assert!(two.frame().await.starts_with(b"-WRONGPASS"));
    two.send(&resp(&["AUTH", "two"])).await;
    two.expect(b"+OK\r\n").await;

    // Auth off: new clients need none.
    proxy.reload(&config(with_auth(None)));
    let mut open = Raw::connect(&proxy).await;
    open.send(&resp(&["GET", "k"])).await;
    open.expect(b"$1\r\nv\r\n").await;
    // Auth on again: a connection made while it was off stays allowed, as with Redis's CONFIG SET
    // requirepass; a new one must authenticate.
    proxy.reload(&config(with_auth(Some("three"))));
    open.send(&resp(&["GET", "k"])).await;
    open.expect(b"$1\r\nv\r\n").await;
    let mut late = Raw::connect(&proxy).await;
    late.send(&resp(&["GET", "k"])).await;
    late.expect(b"-NOAUTH Authentication required.\r\n").await;
    one.send(&resp(&["GET", "k"])).await;
    one.expect(b"$1\r\nv\r\n").await;
}

#[tokio::test]
async fn options_that_need_a_restart_are_reported_and_keep_their_values() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let out = proxy.reload(&config(Flags {
        listen: Some("127.0.0.1:1".into()),
        max_clients: Some(7),
        ..cluster.flags()
    }));
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(out.restart_needed, ["listen", "max_clients"]);
    let mut c = client(&proxy).await;
    assert_eq!(q::<String>(&mut c, &["PING"]).await, "PONG");
}

#[tokio::test]
async fn moving_into_cluster_mode_is_reported_as_needing_a_restart_and_changes_nothing() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let out = proxy.reload(&config(Flags {
        primary: None,
        replica: None,
        topology: Some(redsplit::config::TopologyKind::Cluster),
        cluster: Some(vec!["127.0.0.1:1".into()]),
        ..cluster.flags()
    }));
    assert!(out.applied.is_empty(), "{:?}", out.applied);
    assert_eq!(out.restart_needed, ["topology source (cluster)"]);
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    assert!(!proxy.topo.snapshot().is_cluster());
}

/// The binary with a config file; see [`Running`].
async fn start_with_file(file: &std::path::Path) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redsplit"));
    cmd.arg("--config").arg(file).args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    Running::spawn(cmd).await
}

async fn auth(addr: std::net::SocketAddr, password: &str) -> Vec<u8> {
    let mut raw = Raw::connect_to(addr).await;
    raw.send(&resp(&["AUTH", password])).await;
    raw.frame().await
}

#[tokio::test]
async fn sighup_with_an_invalid_file_keeps_the_running_config_and_logs_every_problem() {
    let cluster = Cluster::builder().start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("redsplit.toml");
    let write = |text: String| {
        let mut f = std::fs::File::create(&file).expect("create config");
        f.write_all(text.as_bytes()).expect("write config");
    };
    let primary = cluster.primary().addr().to_string();
    write(format!(
        "primary = \"{primary}\"\nrequirepass = \"one\"\nlog_level = \"info\"\n"
    ));
    let running = start_with_file(&file).await;
    let mut kept = Raw::connect_to(running.addr).await;
    kept.send(&resp(&["AUTH", "one"])).await;
    kept.expect(b"+OK\r\n").await;

    // Two problems: both are logged, and nothing changes.
    write(format!(
        "primary = \"{primary}\"\nrequirepass = \"two\"\nmax_lag_ms = \"soon\"\nbogus = 1\n"
    ));
    running.hup();
    eventually!(
        "the reload is refused",
        running.logged("the running configuration stays") == 1
    );
    assert_eq!(running.logged("configuration not reloaded"), 2);
    assert_eq!(auth(running.addr, "one").await, b"+OK\r\n");
    kept.send(&resp(&["PING"])).await;
    kept.expect(b"+PONG\r\n").await;

    // A valid file applies; the connected client goes on.
    write(format!(
        "primary = \"{primary}\"\nrequirepass = \"two\"\nlog_level = \"info\"\n"
    ));
    running.hup();
    eventually!(
        "the new password is in force",
        auth(running.addr, "two").await == b"+OK\r\n"
    );
    assert!(auth(running.addr, "one").await.starts_with(b"-WRONGPASS"));
    kept.send(&resp(&["PING"])).await;
    kept.expect(b"+PONG\r\n").await;
}
