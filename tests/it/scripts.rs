//! Lua scripts and functions as they reach the proxy: replies of any shape, scripts that run long, and
//! the commands that stop them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A script whose reply nests `depth` arrays around the integer 1.
fn nested(depth: usize) -> String {
    format!("local t = {{1}} for i = 2, {depth} do t = {{t}} end return t")
}

/// The bytes of that reply.
fn nested_reply(depth: usize) -> Vec<u8> {
    let mut out = b"*1\r\n".repeat(depth);
    out.extend_from_slice(b":1\r\n");
    out
}

#[tokio::test]
async fn a_reply_nested_deeper_than_any_limit_reaches_its_client_and_fails_no_other() {
    // One worker and one shared connection: the deep replies and the counter's share it.
    let (cluster, proxy) = Cluster::builder()
        .flags(|f| {
            f.worker_threads = Some(1);
            f.backend_connections = Some(1);
        })
        .proxy()
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (addr, stop) = (proxy.listen, stop.clone());
        tokio::spawn(async move {
            let mut c = client_at(addr).await;
            let (mut acked, mut errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..10 {
                    pipe.cmd("INCR").arg("n");
                }
                match pipe.query_async::<Vec<i64>>(&mut c).await {
                    Ok(r) => acked += r.len() as u64,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (acked, errors)
        })
    };
    let mut deep = Raw::connect(&proxy).await;
    for depth in [129, 1000, 3000] {
        for _ in 0..5 {
            deep.send(&resp(&["EVAL", &nested(depth), "0"])).await;
            deep.expect(&nested_reply(depth)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = counter.await.expect("counter");
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        errors.first()
    );
    let mut d = direct(cluster.primary()).await;
    assert_eq!(q::<u64>(&mut d, &["GET", "n"]).await, acked);
}

/// Makes `server` answer BUSY once a script has run 100 ms.
async fn busy_after_100_ms(server: &Server) {
    let mut d = direct(server).await;
    let _: () = q(&mut d, &["CONFIG", "SET", "busy-reply-threshold", "100"]).await;
}

/// Waits until `server` answers BUSY: a script or function runs there past the threshold.
async fn wait_busy(server: &Server) {
    eventually!(
        format!("{} is busy", server.addr()),
        matches!(server.call(&["PING"]).await, Ok(redis_protocol::resp2::types::OwnedFrame::Error(e)) if e.starts_with("BUSY"))
    );
}

/// Watches the proxy's primary for `window`: whether it ever named another one, or none.
async fn primary_kept_for(proxy: &redsplit::Proxy, window: Duration) -> Result<(), String> {
    let want = primary_addr(proxy);
    let until = Instant::now() + window;
    while Instant::now() < until {
        let now = primary_addr(proxy);
        if now != want {
            return Err(format!("the primary went from {want:?} to {now:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sends `cmd` on a client of its own and returns its reply (or error, or that none came) and how long
/// it took.
async fn timed(proxy: &redsplit::Proxy, cmd: &[&str]) -> (Result<String, String>, Duration) {
    let mut c = client(proxy).await;
    let started = Instant::now();
    let got = match tokio::time::timeout(PATIENCE, try_q(&mut c, cmd)).await {
        Ok(Ok(redis::Value::Okay)) => Ok("OK".into()),
        Ok(Ok(v)) => Ok(format!("{v:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no reply in {PATIENCE:?}")),
    };
    (got, started.elapsed())
}

#[tokio::test]
async fn a_script_busy_past_the_threshold_keeps_its_primary_and_is_killed_through_the_proxy() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.write_hold_ms = Some(3000))
        .proxy()
        .await;
    busy_after_100_ms(cluster.primary()).await;
    let mut runner = Raw::connect(&proxy).await;
    runner
        .send(&resp(&["EVAL", "while true do end", "0"]))
        .await;
    wait_busy(cluster.primary()).await;
    // Three discovery rounds and many probes: the node answering BUSY is alive and still the primary.
    let kept = primary_kept_for(&proxy, Duration::from_secs(3)).await;
    let (killed, took) = timed(&proxy, &["SCRIPT", "KILL"]).await;
    assert_eq!(kept, Ok(()), "and SCRIPT KILL: {killed:?} after {took:?}");
    assert_eq!(killed.as_deref(), Ok("OK"), "after {took:?}");
    assert!(took < Duration::from_secs(2), "SCRIPT KILL took {took:?}");
    let reply = String::from_utf8_lossy(&runner.frame().await).into_owned();
    assert!(reply.starts_with("-ERR Script killed by user"), "{reply}");
    // The same for a function.
    let mut c = client(&proxy).await;
    let lib = "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
    let _: String = q(&mut c, &["FUNCTION", "LOAD", lib]).await;
    runner.send(&resp(&["FCALL", "spin", "0"])).await;
    wait_busy(cluster.primary()).await;
    let (killed, took) = timed(&proxy, &["FUNCTION", "KILL"]).await;
    assert_eq!(killed.as_deref(), Ok("OK"), "after {took:?}");
    assert!(took < Duration::from_secs(2), "FUNCTION KILL took {took:?}");
    let reply = String::from_utf8_lossy(&runner.frame().await).into_owned();
    assert!(reply.starts_with("-ERR Script killed by user"), "{reply}");
    let _: () = q(&mut c, &["SET", "after", "1"]).await;
}

#[tokio::test]
async fn a_read_only_script_busy_on_a_replica_is_killed_there() {
    let (cluster, proxy) = Cluster::builder().replicas(1).eventual().proxy().await;
    busy_after_100_ms(&cluster.replicas()[0]).await;
    let mut runner = Raw::connect(&proxy).await;
    runner
        .send(&resp(&["EVAL_RO", "while true do end", "0"]))
        .await;
    wait_busy(&cluster.replicas()[0]).await;
    let (killed, took) = timed(&proxy, &["SCRIPT", "KILL"]).await;
    assert_eq!(killed.as_deref(), Ok("OK"), "after {took:?}");
    let reply = String::from_utf8_lossy(&runner.frame().await).into_owned();
    assert!(reply.starts_with("-ERR Script killed by user"), "{reply}");
}

#[tokio::test]
async fn shutdown_nosave_reaches_a_primary_busy_with_a_script_that_wrote() {
    let (cluster, proxy) = Cluster::builder()
        .flags(|f| {
            f.write_hold_ms = Some(3000);
            // SHUTDOWN is an admin user's.
            f.admin_user = Some(vec!["ops:opspw".into()]);
        })
        .proxy()
        .await;
    let mut ops = client(&proxy).await;
    let _: () = q(&mut ops, &["AUTH", "ops", "opspw"]).await;
    busy_after_100_ms(cluster.primary()).await;
    let mut runner = Raw::connect(&proxy).await;
    runner.send(&resp(&["AUTH", "ops", "opspw"])).await;
    assert_eq!(runner.frame().await, b"+OK\r\n"[..]);
    let script = "redis.call('SET', 'x', '1') while true do end";
    runner.send(&resp(&["EVAL", script, "0"])).await;
    wait_busy(cluster.primary()).await;
    let killed = try_q(&mut ops, &["SCRIPT", "KILL"]).await;
    assert!(
        killed
            .as_ref()
            .is_err_and(|e| e.to_string().contains("UNKILLABLE")),
        "{killed:?}"
    );
    let started = Instant::now();
    let _ = tokio::time::timeout(PATIENCE, try_q(&mut ops, &["SHUTDOWN", "NOSAVE"])).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "SHUTDOWN NOSAVE took {took:?}"
    );
    eventually!(
        "the primary has exited",
        tokio::net::TcpStream::connect(cluster.primary().addr().as_str())
            .await
            .is_err()
    );
}
