//! Proxy-side authentication, separate from the credentials the proxy uses upstream.

use std::time::{Duration, Instant};

use redsplit::config::Flags;

use crate::harness::*;

/// Servers protected by `backendpw`; the proxy uses it upstream, clients authenticate with their own.
async fn setup() -> (Cluster, redsplit::Proxy) {
    Cluster::builder()
        .replicas(1)
        .password("backendpw")
        .flags(|f| {
            f.requirepass = Some("clientpw".into());
            f.user = Some(vec!["alice:alicepw".into()]);
            f.readonly_user = Some(vec!["reader:readerpw".into()]);
        })
        .proxy()
        .await
}

/// A client authenticated with `requirepass`.
async fn authenticated(proxy: &redsplit::Proxy) -> Raw {
    let mut raw = Raw::connect(proxy).await;
    raw.send(&resp(&["AUTH", "clientpw"])).await;
    raw.expect(b"+OK\r\n").await;
    raw
}

#[tokio::test]
async fn nothing_but_auth_hello_and_quit_works_before_authenticating() {
    let (_cluster, proxy) = setup().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["GET", "k"])).await;
    raw.expect(b"-NOAUTH Authentication required.\r\n").await;
    raw.send(&resp(&["PING"])).await;
    raw.expect(b"-NOAUTH Authentication required.\r\n").await;
    raw.send(&resp(&["HELLO", "3"])).await;
    assert!(raw
        .frame()
        .await
        .starts_with(b"-NOAUTH HELLO must be called"));
    // The upstream password is not a client password.
    raw.send(&resp(&["AUTH", "backendpw"])).await;
    raw.expect(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        .await;
    raw.send(&resp(&["AUTH", "clientpw"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["SET", "k", "v"])).await;
    raw.expect(b"+OK\r\n").await;
    // RESET logs out.
    raw.send(&resp(&["RESET"])).await;
    raw.expect(b"+RESET\r\n").await;
    raw.send(&resp(&["GET", "k"])).await;
    raw.expect(b"-NOAUTH Authentication required.\r\n").await;
    raw.send(&resp(&["QUIT"])).await;
    raw.expect(b"+OK\r\n").await;
}

#[tokio::test]
async fn named_users_authenticate_with_auth_and_hello() {
    let (_cluster, proxy) = setup().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&[
        "HELLO", "3", "AUTH", "alice", "alicepw", "SETNAME", "a1",
    ]))
    .await;
    assert!(raw.frame().await.starts_with(b"%7\r\n"));
    raw.send(&resp(&["SET", "who", "alice"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["CLIENT", "GETNAME"])).await;
    raw.expect(b"$2\r\na1\r\n").await;
    let mut other = Raw::connect(&proxy).await;
    other.send(&resp(&["AUTH", "alice", "wrong"])).await;
    other
        .expect(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        .await;
    other.send(&resp(&["AUTH", "alice", "alicepw"])).await;
    other.expect(b"+OK\r\n").await;
}

#[tokio::test]
async fn a_read_only_user_reads_and_is_refused_anything_that_can_modify() {
    let (cluster, proxy) = setup().await;
    let mut writer = Raw::connect(&proxy).await;
    writer.send(&resp(&["AUTH", "clientpw"])).await;
    writer.expect(b"+OK\r\n").await;
    writer.send(&resp(&["SET", "k", "v"])).await;
    writer.expect(b"+OK\r\n").await;
    let mut r = Raw::connect(&proxy).await;
    r.send(&resp(&["AUTH", "reader", "readerpw"])).await;
    r.expect(b"+OK\r\n").await;
    r.send(&resp(&["GET", "k"])).await;
    assert!(r.frame().await.starts_with(b"$"));
    for (cmd, name) in [
        (&["SET", "k", "x"][..], "set"),
        (&["EVAL", "return 1", "0"], "eval"),
        (&["PUBLISH", "c", "m"], "publish"),
        (&["FLUSHALL"], "flushall"),
        (&["CONFIG", "SET", "maxmemory", "1"], "config"),
    ] {
        r.send(&resp(cmd)).await;
        let want =
            format!("-NOPERM User reader has no permissions to run the '{name}' command\r\n");
        r.expect(want.as_bytes()).await;
    }
    r.send(&resp(&["MULTI"])).await;
    r.expect(b"+OK\r\n").await;
    r.send(&resp(&["SET", "k", "x"])).await;
    assert!(r.frame().await.starts_with(b"-NOPERM"));
    r.send(&resp(&["DISCARD"])).await;
    r.expect(b"+OK\r\n").await;
    let mut d = direct(cluster.primary()).await;
    let _: () = q(&mut d, &["AUTH", "backendpw"]).await;
    assert_eq!(
        q::<String>(&mut d, &["GET", "k"]).await,
        "v",
        "nothing was modified"
    );
}

#[tokio::test]
async fn failed_authentications_are_slowed_and_counted() {
    let (_cluster, proxy) = setup().await;
    let mut raw = Raw::connect(&proxy).await;
    let started = Instant::now();
    let mut out = Vec::new();
    for _ in 0..3 {
        out.extend(resp(&["AUTH", "guess"]));
    }
    raw.send(&out).await;
    for _ in 0..3 {
        raw.expect(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            .await;
    }
    // 100 + 200 + 400 ms at least.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let m = http(proxy.admin, "GET", "/metrics").await.1;
    assert!(m.contains("redsplit_auth_failures_total 3"), "{m}");
}

#[tokio::test]
async fn upstream_secrets_are_left_out_of_config_get_whatever_the_pattern() {
    let (_cluster, proxy) = setup().await;
    let mut raw = authenticated(&proxy).await;
    for pattern in ["requirepass", "*", "*pass*", "master*", "re[q]uirepass"] {
        raw.send(&resp(&["CONFIG", "GET", pattern])).await;
        let reply = String::from_utf8_lossy(&raw.frame().await).into_owned();
        assert!(reply.starts_with('*'), "{pattern}: {reply}");
        for secret in ["backendpw", "requirepass", "masterauth"] {
            assert!(!reply.contains(secret), "{pattern}: {secret} in {reply}");
        }
    }
    raw.send(&resp(&["CONFIG", "GET", "*"])).await;
    let all = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(all.contains("maxmemory-policy"), "{all}");
    raw.send(&resp(&["CONFIG", "GET", "maxmemory"])).await;
    let reply = raw.frame().await;
    assert!(
        reply.starts_with(b"*2\r\n$9\r\nmaxmemory\r\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    raw.send(&resp(&["CLIENT", "INFO"])).await;
    assert!(!String::from_utf8_lossy(&raw.frame().await).contains("backendpw"));
}

#[tokio::test]
async fn sentinels_get_their_own_credentials_and_never_the_data_nodes() {
    // With the sentinel's password, the primary and replica are found through it.
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .sentinels(1)
        .password("nodepw")
        .sentinel_password("sentinelpw")
        .proxy()
        .await;
    assert_eq!(primary_addr(&proxy), Some(cluster.primary().addr()));
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    // The data nodes' password alone does not open the sentinel: no primary is learned (the proxy
    // starts once it has a topology or, as here, after waiting three connect timeouts for one).
    let without = proxy_with(Flags {
        sentinel_password: None,
        connect_timeout_ms: Some(200),
        ..cluster.flags()
    })
    .await;
    assert!(without.topo.snapshot().primary().is_none());
}

// Found by the second review.

#[tokio::test]
async fn config_get_of_a_secret_past_the_sixteenth_argument_is_left_out() {
    let (_cluster, proxy) = setup().await;
    let mut raw = authenticated(&proxy).await;
    // Fourteen harmless parameters, then the secret one: 17 arguments in all.
    let mut cmd = vec!["CONFIG", "GET"];
    cmd.extend(std::iter::repeat_n("maxmemory", 14));
    cmd.push("requirepass");
    raw.send(&resp(&cmd)).await;
    let reply = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(
        !reply.contains("backendpw"),
        "the upstream password reached the client: {reply}"
    );
}

#[tokio::test]
async fn acl_list_through_the_proxy_does_not_reveal_the_upstream_password_hash() {
    // sha256("backendpw"), as Redis stores it.
    const HASH: &str = "58847cfb74838cddd93ed031d3ed03a7bd0441d932c11101cb4eee0648c5e92a";
    let (_cluster, proxy) = setup().await;
    let mut raw = authenticated(&proxy).await;
    raw.send(&resp(&["ACL", "LIST"])).await;
    let reply = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(
        !reply.contains(HASH),
        "the SHA-256 of the upstream password reached the client: {reply}"
    );
    assert!(reply.contains("user default on"), "{reply}");
    raw.send(&resp(&["ACL", "GETUSER", "default"])).await;
    let reply = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(!reply.contains(HASH), "{reply}");
    assert!(reply.contains("passwords"), "{reply}");
}
