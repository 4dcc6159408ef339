//! What Redis tools and client libraries see through the proxy: the whole configuration (secrets left
//! out, shared settings on every node), the proxy's own clients (`CLIENT LIST`, `KILL`, `UNBLOCK`,
//! `PAUSE`), `INFO` and `MONITOR` about the proxy, the real server's name and version, the commands
//! only admin users may run, the admin token, and the Sentinel face (checked with redis-py's own
//! `Sentinel` class).

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use crate::harness::*;

/// Runs a Python script (redis-py) with `args`; `None`, saying so, if there is no python3 at all.
/// A python3 without redis-py fails the test: CI installs it (scripts/test).
fn python(script: &str, args: &[String]) -> Option<String> {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: python3 is not installed (scripts/test installs it with redis-py)");
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed (is redis-py installed? pip install redis):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `CONFIG GET name` of a server, directly.
async fn config_of(s: &Server, name: &str) -> String {
    let mut d = direct(s).await;
    if let Some(p) = &s.password() {
        let _: () = q(&mut d, &["AUTH", p]).await;
    }
    let got: HashMap<String, String> = q(&mut d, &["CONFIG", "GET", name]).await;
    got.get(name).cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_fixture_snapshots_config_get_star_sets_values_and_restores_them_everywhere() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .password("nodepw")
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    // The fixture: snapshot everything, as test suites do.
    let snapshot: HashMap<String, String> = q(&mut c, &["CONFIG", "GET", "*"]).await;
    assert!(snapshot.len() > 100, "{} settings", snapshot.len());
    for secret in ["requirepass", "masterauth"] {
        assert!(
            !snapshot.contains_key(secret),
            "{secret} reached the client"
        );
    }
    assert!(!snapshot.values().any(|v| v.contains("nodepw")));
    // A test sets memory settings: they reach the replica too, where reads run.
    let _: () = q(&mut c, &["CONFIG", "SET", "maxmemory", "104857600"]).await;
    let _: () = q(
        &mut c,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    )
    .await;
    for s in [cluster.primary(), &cluster.replicas()[0]] {
        assert_eq!(config_of(s, "maxmemory").await, "104857600");
        assert_eq!(config_of(s, "maxmemory-policy").await, "allkeys-lru");
    }
    // The fixture restores what it snapshotted.
    for name in ["maxmemory", "maxmemory-policy"] {
        let _: () = q(&mut c, &["CONFIG", "SET", name, &snapshot[name]]).await;
    }
    for s in [cluster.primary(), &cluster.replicas()[0]] {
        assert_eq!(config_of(s, "maxmemory").await, snapshot["maxmemory"]);
    }
    let _: () = q(&mut c, &["SET", "after", "restore"]).await;
    // A call that mixes shared settings with the primary's own is refused whole, and nothing changes.
    let err = try_q(&mut c, &["CONFIG", "SET", "maxmemory", "1", "save", ""])
        .await
        .expect_err("mixed");
    assert!(err.to_string().contains("separate calls"), "{err}");
    assert_eq!(
        config_of(cluster.primary(), "maxmemory").await,
        snapshot["maxmemory"]
    );
    // A setting of the primary's own stays there.
    let _: () = q(&mut c, &["CONFIG", "SET", "save", "3600 1"]).await;
    assert_eq!(config_of(cluster.primary(), "save").await, "3600 1");
    assert_ne!(config_of(&cluster.replicas()[0], "save").await, "3600 1");
}

#[tokio::test]
async fn client_kill_type_normal_skipme_yes_kills_the_other_clients_and_not_itself() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    let mut c = client(&proxy).await;
    let ids: Vec<i64> = [
        q::<i64>(&mut a, &["CLIENT", "ID"]).await,
        q::<i64>(&mut b, &["CLIENT", "ID"]).await,
        q::<i64>(&mut c, &["CLIENT", "ID"]).await,
    ]
    .into();
    let _: () = q(&mut b, &["CLIENT", "SETNAME", "bee"]).await;
    // CLIENT LIST is the proxy's clients: the ids CLIENT ID gave, in Redis's format.
    let list: String = q(&mut a, &["CLIENT", "LIST"]).await;
    for id in &ids {
        assert!(list.contains(&format!("id={id} ")), "{id} missing: {list}");
    }
    assert!(list.contains(" name=bee "), "{list}");
    assert_eq!(list.lines().count(), 3, "{list}");
    let one: String = q(&mut a, &["CLIENT", "LIST", "ID", &ids[1].to_string()]).await;
    assert_eq!(one.lines().count(), 1, "{one}");
    let normal: String = q(&mut a, &["CLIENT", "LIST", "TYPE", "normal"]).await;
    assert_eq!(normal.lines().count(), 3, "{normal}");
    let pubsub: String = q(&mut a, &["CLIENT", "LIST", "TYPE", "pubsub"]).await;
    assert_eq!(pubsub, "");
    let info: String = q(&mut a, &["CLIENT", "INFO"]).await;
    for field in [
        "id=",
        "addr=",
        "laddr=",
        "fd=",
        "age=",
        "idle=",
        "flags=N",
        "db=0",
        "obl=0",
        "omem=0",
        "cmd=",
        "user=default",
        "resp=2",
        "lib-name=",
    ] {
        assert!(info.contains(field), "{field} missing: {info}");
    }
    // The library's between-tests clean-up.
    let killed: i64 = q(
        &mut a,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
    )
    .await;
    assert_eq!(killed, 2);
    assert!(try_q(&mut b, &["PING"]).await.is_err(), "b was killed");
    assert!(try_q(&mut c, &["PING"]).await.is_err(), "c was killed");
    let _: () = q(&mut a, &["SET", "killer", "alive"]).await;
    eventually!("the killed clients are gone", {
        let list: String = q(&mut a, &["CLIENT", "LIST"]).await;
        list.lines().count() == 1
    });
    // The old form, by address; and a filter that matches nobody.
    let mut d = client(&proxy).await;
    let d_info: String = q(&mut d, &["CLIENT", "INFO"]).await;
    let addr = d_info
        .split(' ')
        .find_map(|f| f.strip_prefix("addr="))
        .expect("addr field")
        .to_string();
    let _: () = q(&mut a, &["CLIENT", "KILL", &addr]).await;
    assert!(try_q(&mut d, &["PING"]).await.is_err(), "d was killed");
    let none: i64 = q(&mut a, &["CLIENT", "KILL", "USER", "nobody"]).await;
    assert_eq!(none, 0);
    let err = try_q(&mut a, &["CLIENT", "KILL", "TYPE", "bogus"])
        .await
        .expect_err("bad type");
    assert!(err.to_string().contains("Unknown client type"), "{err}");
}

#[tokio::test]
async fn client_unblock_answers_a_client_blocked_through_the_proxy() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut blocked = client(&proxy).await;
    let id: i64 = q(&mut blocked, &["CLIENT", "ID"]).await;
    let mut other = client(&proxy).await;
    for (mode, want_error) in [("TIMEOUT", false), ("ERROR", true)] {
        let mut conn = blocked.clone();
        let waiting = tokio::spawn(async move { try_q(&mut conn, &["BLPOP", "never", "0"]).await });
        eventually!(
            "the client is blocked and CLIENT UNBLOCK reaches it",
            q::<i64>(&mut other, &["CLIENT", "UNBLOCK", &id.to_string(), mode]).await == 1
        );
        let got = tokio::time::timeout(PATIENCE, waiting)
            .await
            .expect("unblocked in time")
            .expect("task");
        match (got, want_error) {
            (Ok(Value::Nil), false) => {}
            (Err(e), true) if e.to_string().contains("UNBLOCKED") => {}
            (other, _) => panic!("{mode}: {other:?}"),
        }
    }
    assert_eq!(
        q::<i64>(&mut other, &["CLIENT", "UNBLOCK", &id.to_string()]).await,
        0,
        "not blocked now"
    );
}

#[tokio::test]
async fn tracking_redirected_to_another_client_of_the_proxy_reaches_it() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut listener = Raw::connect(&proxy).await;
    listener.send(&resp(&["CLIENT", "ID"])).await;
    let id = String::from_utf8_lossy(&listener.frame().await)
        .trim()
        .trim_start_matches(':')
        .to_string();
    listener
        .send(&resp(&["SUBSCRIBE", "__redis__:invalidate"]))
        .await;
    listener
        .expect(b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n")
        .await;
    let mut tracked = Raw::connect(&proxy).await;
    tracked
        .send(&resp(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id]))
        .await;
    tracked.expect(b"+OK\r\n").await;
    tracked.send(&resp(&["GET", "cached"])).await;
    tracked.expect(b"$-1\r\n").await;
    let mut writer = client(&proxy).await;
    let _: () = q(&mut writer, &["SET", "cached", "1"]).await;
    listener
        .expect(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$6\r\ncached\r\n")
        .await;
    // A client that is not subscribed through the proxy cannot be a target.
    let mut other = client(&proxy).await;
    let writer_id: i64 = q(&mut writer, &["CLIENT", "ID"]).await;
    let err = try_q(
        &mut other,
        &[
            "CLIENT",
            "TRACKING",
            "ON",
            "REDIRECT",
            &writer_id.to_string(),
        ],
    )
    .await
    .expect_err("not a subscriber");
    assert!(err.to_string().contains("needs the target client"), "{err}");
}

#[tokio::test]
async fn client_pause_write_holds_writes_at_the_proxy_and_lets_reads_through() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    let _: () = q(&mut a, &["CLIENT", "PAUSE", "60000", "WRITE"]).await;
    let mut writer = b.clone();
    let mut write =
        tokio::spawn(async move { q::<()>(&mut writer, &["SET", "paused", "1"]).await });
    let mut reader = client(&proxy).await;
    assert_eq!(
        q::<Option<String>>(&mut reader, &["GET", "other"]).await,
        None
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut write)
            .await
            .is_err(),
        "a write went through the pause"
    );
    // A paused write holds no one else up: other clients' commands that Redis runs during a write
    // pause, INFO on the primary among them, and the UNPAUSE itself, answer at once. (Before, the
    // pause reached the primary, and the paused write on the shared connection held them for as long.)
    let info = tokio::time::timeout(Duration::from_secs(1), async {
        q::<String>(&mut reader, &["INFO", "server"]).await
    })
    .await
    .expect("INFO answers during the pause");
    assert!(info.contains("# Server"), "{info}");
    tokio::time::timeout(Duration::from_secs(1), async {
        q::<()>(&mut a, &["CLIENT", "UNPAUSE"]).await
    })
    .await
    .expect("UNPAUSE answers at once");
    tokio::time::timeout(PATIENCE, write)
        .await
        .expect("the write goes once unpaused")
        .expect("task");
    assert_eq!(q::<String>(&mut b, &["GET", "paused"]).await, "1");
    // The nodes were never paused.
    let mut d = direct(cluster.primary()).await;
    let _: () = q(&mut d, &["SET", "direct", "1"]).await;
}

#[tokio::test]
async fn info_adds_the_proxy_section_and_hello_names_the_real_server() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let all: String = q(&mut c, &["INFO"]).await;
    assert!(all.contains("# Server"), "{all}");
    for field in [
        "# Proxy",
        "proxy_version:",
        "proxy_uptime_in_seconds:",
        "proxy_connected_clients:",
        "proxy_pinned_sessions:",
        "proxy_topology_generation:",
        "proxy_eligible_replicas:1",
        "proxy_reads_on_replicas_share:",
        "proxy_failovers:0",
        "proxy_writes_held_total:",
    ] {
        assert!(all.contains(field), "{field} missing: {all}");
    }
    let proxy_only: String = q(&mut c, &["INFO", "proxy"]).await;
    assert!(proxy_only.starts_with("# Proxy"), "{proxy_only}");
    assert!(!proxy_only.contains("# Server"));
    let server: String = q(&mut c, &["INFO", "server"]).await;
    assert!(!server.contains("# Proxy"));
    // HELLO names what the primary runs: Valkey reports its own name and version.
    let mut d = direct(cluster.primary()).await;
    let direct_info: String = q(&mut d, &["INFO", "server"]).await;
    let field = |name: &str| {
        direct_info
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let name = field("server_name").unwrap_or_else(|| "redis".into());
    let version = field(&format!("{name}_version"))
        .or_else(|| field("redis_version"))
        .expect("a version");
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["HELLO", "3"])).await;
    let hello = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(
        hello.contains(&format!("$6\r\nserver\r\n${}\r\n{name}\r\n", name.len())),
        "{hello}"
    );
    assert!(
        hello.contains(&format!(
            "$7\r\nversion\r\n${}\r\n{version}\r\n",
            version.len()
        )),
        "{hello}"
    );
}

#[tokio::test]
async fn inside_multi_info_is_queued_and_config_get_is_refused_not_leaked() {
    let (_cluster, proxy) = Cluster::builder()
        .replicas(1)
        .password("nodepw")
        .proxy()
        .await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["MULTI"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["INFO", "server"])).await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(&resp(&["EXEC"])).await;
    let exec = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(
        exec.starts_with("*1\r\n") && exec.contains("# Server"),
        "{exec}"
    );
    raw.send(&resp(&["MULTI"])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&["CONFIG", "GET", "*"])).await;
    let refused = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(refused.contains("not supported inside MULTI"), "{refused}");
    raw.send(&resp(&["EXEC"])).await;
    let exec = String::from_utf8_lossy(&raw.frame().await).into_owned();
    assert!(exec.starts_with("-EXECABORT"), "{exec}");
    assert!(!exec.contains("nodepw"));
}

#[tokio::test]
async fn monitor_shows_every_clients_commands_with_the_node_that_served_them() {
    let (cluster, proxy) = Cluster::builder().replicas(1).eventual().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["MONITOR"])).await;
    raw.expect(b"+OK\r\n").await;
    let mut c = client(&proxy).await;
    let info: String = q(&mut c, &["CLIENT", "INFO"]).await;
    let addr = info
        .split(' ')
        .find_map(|f| f.strip_prefix("addr="))
        .expect("addr field")
        .to_string();
    let _: () = q(&mut c, &["SET", "watched", "1"]).await;
    let _: Option<String> = q(&mut c, &["GET", "watched"]).await;
    let replica = cluster.replicas()[0].addr();
    let mut lines = Vec::new();
    loop {
        let line = String::from_utf8_lossy(&raw.frame().await).into_owned();
        let done = line.contains("\"GET\" \"watched\"");
        lines.push(line);
        if done {
            break;
        }
    }
    let set = lines
        .iter()
        .find(|l| l.contains("\"SET\" \"watched\" \"1\""))
        .expect("the write was shown");
    assert!(set.contains(&format!(" [0 {addr}] ")), "{set}");
    assert!(
        set.contains(&format!("(primary {})", cluster.primary().addr())),
        "{set}"
    );
    let get = lines.last().expect("the read");
    assert!(get.starts_with('+'), "{get}");
    assert!(get.contains(&format!("(replica {replica})")), "{get}");
    // Only clients' commands: never the proxy's own probes (ROLE, INFO, PING every few ms).
    assert!(lines.iter().all(|l| !l.contains("\"ROLE\"")), "{lines:#?}");
}

#[tokio::test]
async fn shutdown_and_other_node_changing_commands_need_an_admin_user() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            f.user = Some(vec!["app:apppw".into()]);
            f.admin_user = Some(vec!["ops:opspw".into()]);
        })
        .proxy()
        .await;
    let mut app = client(&proxy).await;
    let _: () = q(&mut app, &["AUTH", "app", "apppw"]).await;
    for cmd in [
        &["SHUTDOWN", "NOSAVE"][..],
        &["REPLICAOF", "NO", "ONE"],
        &["SLAVEOF", "127.0.0.1", "1"],
        &["FAILOVER"],
        &["DEBUG", "SLEEP", "0"],
        &["CONFIG", "SET", "replica-read-only", "no"],
    ] {
        let err = try_q(&mut app, cmd).await.expect_err("guarded");
        assert!(
            err.to_string().contains("only a proxy admin user"),
            "{cmd:?}: {err}"
        );
    }
    for s in [cluster.primary(), &cluster.replicas()[0]] {
        let mut d = direct(s).await;
        assert_eq!(q::<String>(&mut d, &["PING"]).await, "PONG");
    }
    let mut ops = client(&proxy).await;
    let _: () = q(&mut ops, &["AUTH", "ops", "opspw"]).await;
    // DEBUG reaches the server, which has its own say (enable-debug-command).
    if let Err(e) = try_q(&mut ops, &["DEBUG", "SLEEP", "0"]).await {
        assert!(!e.to_string().contains("admin user"), "{e}");
    }
    let _: () = q(&mut ops, &["CONFIG", "SET", "repl-timeout", "61"]).await;
    assert_eq!(config_of(cluster.primary(), "repl-timeout").await, "61");
}

#[tokio::test]
async fn node_changing_commands_are_refused_while_no_client_authentication_is_configured() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let err = try_q(&mut c, &["SHUTDOWN", "NOSAVE"])
        .await
        .expect_err("guarded");
    assert!(err.to_string().contains("NOPERM"), "{err}");
    let _: () = q(&mut c, &["SET", "after", "shutdown"]).await;
    let mut d = direct(cluster.primary()).await;
    assert_eq!(q::<String>(&mut d, &["PING"]).await, "PONG");
}

#[tokio::test]
async fn state_changing_admin_requests_need_the_admin_token() {
    let (_cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.admin_token = Some("s3cret-token".into()))
        .proxy()
        .await;
    let (status, body) = http(proxy.admin, "POST", "/failover?to=127.0.0.1:1").await;
    assert_eq!(status, 401, "{body}");
    let wrong = "Authorization: Bearer nope\r\n";
    let (status, _) = http_with(proxy.admin, "POST", "/failover?to=127.0.0.1:1", wrong).await;
    assert_eq!(status, 401);
    let right = "Authorization: Bearer s3cret-token\r\n";
    let (status, body) = http_with(proxy.admin, "POST", "/failover?to=127.0.0.1:1", right).await;
    assert!(status != 401 && status != 403, "{status} {body}");
    // Reading needs no token; the process and the build are described too.
    let (status, metrics) = http(proxy.admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "redsplit_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[tokio::test]
async fn redis_py_parses_client_info_and_client_list() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let script = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
info = r.client_info()
assert info["obl"] == 0 and info["db"] == 0, info
assert info["lib-name"] == "redis-py", info
ids = [c["id"] for c in r.client_list()]
assert str(info["id"]) in [str(i) for i in ids], (info, ids)
r.client_setname("py")
assert r.client_getname() == "py"
print("ok", info["id"])
"#;
    let Some(out) = python(script, &[proxy.listen.port().to_string()]) else {
        return;
    };
    assert!(out.starts_with("ok "), "{out}");
}

#[tokio::test]
async fn redis_pys_sentinel_class_finds_and_uses_the_proxy() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.sentinel_facade = Some(true))
        .proxy()
        .await;
    let script = r#"
import sys
from redis.sentinel import Sentinel
s = Sentinel([("127.0.0.1", int(sys.argv[1]))], socket_timeout=5)
host, port = s.discover_master("mymaster")
assert (host, port) == ("127.0.0.1", int(sys.argv[1])), (host, port)
m = s.master_for("mymaster", socket_timeout=5)
m.set("through-sentinel", "yes")
r = s.slave_for("mymaster", socket_timeout=5)
print(m.get("through-sentinel").decode(), len(s.discover_slaves("mymaster")))
"#;
    let Some(out) = python(script, &[proxy.listen.port().to_string()]) else {
        return;
    };
    assert_eq!(out.trim(), "yes 1");
    let mut d = direct(cluster.primary()).await;
    assert_eq!(
        q::<String>(&mut d, &["GET", "through-sentinel"]).await,
        "yes"
    );
    // ROLE answers as a master does for the clients that check the address they were given.
    let mut c = client(&proxy).await;
    let role: Vec<Value> = q(&mut c, &["ROLE"]).await;
    assert_eq!(role.first(), Some(&Value::BulkString(b"master".to_vec())));
}
