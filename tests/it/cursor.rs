//! SCAN-family cursors continue on the node that returned them, however slowly the client iterates.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::*;

/// Every element of a paced iteration: `cmd` (`SCAN`, or `SSCAN key` and the like) from cursor 0 until
/// the cursor comes back 0, `COUNT count`, a pause between calls longer than the proxy's probes.
async fn paced(
    c: &mut redis::aio::MultiplexedConnection,
    cmd: &[&str],
    count: usize,
) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    let count = count.to_string();
    loop {
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend([&cursor[..], "COUNT", &count]);
        let (next, items): (String, Vec<String>) = q(c, &args).await;
        seen.extend(items);
        if next == "0" {
            return seen;
        }
        cursor = next;
        // Slower than the probes (20 ms): the next read is free to go to another replica.
        tokio::time::sleep(Duration::from_millis(130)).await;
    }
}

#[tokio::test]
async fn a_paced_iteration_of_each_scan_command_returns_every_element() {
    let (_cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let mut c = client(&proxy).await;
    let n = 3000;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
        pipe.cmd("SADD").arg("set").arg(i).ignore();
        pipe.cmd("HSET")
            .arg("hash")
            .arg(format!("f{i}"))
            .arg(i)
            .ignore();
        pipe.cmd("ZADD")
            .arg("zset")
            .arg(i)
            .arg(format!("m{i}"))
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("fill");
    let keys: HashSet<String> = paced(&mut c, &["SCAN"], 400).await.into_iter().collect();
    assert_eq!(keys.len(), n + 3, "SCAN returned every key");
    let members: HashSet<String> = paced(&mut c, &["SSCAN", "set"], 400)
        .await
        .into_iter()
        .collect();
    assert_eq!(members.len(), n, "SSCAN returned every member");
    // HSCAN and ZSCAN return field, value pairs.
    let fields = paced(&mut c, &["HSCAN", "hash"], 400).await;
    let fields: HashSet<&String> = fields.iter().step_by(2).collect();
    assert_eq!(fields.len(), n, "HSCAN returned every field");
    let zmembers = paced(&mut c, &["ZSCAN", "zset"], 400).await;
    let zmembers: HashSet<&String> = zmembers.iter().step_by(2).collect();
    assert_eq!(zmembers.len(), n, "ZSCAN returned every member");
    // redis-cli, as a person runs it (it scans 10 at a time: a smaller database, paced past the probes).
    let mut db1 = client(&proxy).await;
    let _: () = q(&mut db1, &["SELECT", "1"]).await;
    let mut pipe = redis::pipe();
    for i in 0..400 {
        pipe.cmd("SET").arg(format!("one:{i}")).arg(i).ignore();
    }
    let _: () = pipe.query_async(&mut db1).await.expect("fill db 1");
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &proxy.listen.port().to_string(), "-n", "1"])
        .args(["--scan", "-i", "0.03"])
        .output()
        .await
        .expect("redis-cli --scan");
    let listed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed.len(), 400, "redis-cli --scan listed every key");
}

#[tokio::test]
async fn a_cursor_whose_node_is_gone_is_refused_with_a_request_to_start_again() {
    let (mut cluster, proxy) = Cluster::builder().replicas(1).eventual().proxy().await;
    let mut c = client(&proxy).await;
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("fill");
    // Reads go to the replica; the first cursor is its.
    eventually!("the replica has every key", {
        let d: i64 = q(&mut direct(&cluster.replicas()[0]).await, &["DBSIZE"]).await;
        d == 2000
    });
    let (cursor, _): (String, Vec<String>) = q(&mut c, &["SCAN", "0", "COUNT", "100"]).await;
    assert_ne!(cursor, "0");
    cluster.replicas_mut()[0].kill();
    eventually!("the replica is out of rotation", {
        proxy
            .topo
            .snapshot()
            .replica_nodes()
            .all(|n| !n.repl.is_eligible())
    });
    let e = try_q(&mut c, &["SCAN", &cursor, "COUNT", "100"])
        .await
        .expect_err("the cursor's node is gone");
    assert!(
        e.to_string()
            .contains("start the iteration again with cursor 0"),
        "{e}"
    );
}
