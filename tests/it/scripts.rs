//! Lua scripts and functions as they reach the proxy: replies of any shape, scripts that run long, and
//! the commands that stop them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
