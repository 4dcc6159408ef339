//! Bad input from either side: the culprit gets a clear error or a closed connection, everyone else goes on.
//! docs/bad-inputs.md lists every case and the test that covers it.

use std::time::Duration;

use redsplit::config::Flags;

use crate::harness::*;
use crate::mock::{MockRedis, Script};

/// A proxy over a scripted fake primary (no replicas).
async fn over(mock: &MockRedis) -> redsplit::Proxy {
    let f = Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        primary: Some(mock.addr.to_string()),
        probe_interval_ms: Some(20),
        log_level: Some("error".into()),
        ..Flags::default()
    };
    let p = proxy_with(f).await;
    eventually!("topology", p.topo.snapshot().primary().is_some());
    p
}

#[tokio::test]
async fn an_upstream_sending_garbage_fails_only_the_command_in_flight() {
    let mock = MockRedis::start(vec![("garbage", Script::Reply(b"?not resp\r\n"))]).await;
    let proxy = over(&mock).await;
    let mut c = client(&proxy).await;
    let err = try_q(&mut c, &["SET", "garbage", "1"])
        .await
        .expect_err("garbage from upstream");
    // A write that reached the node is never re-sent: the client is told why, and that it may have run.
    let err = err.to_string();
    assert!(err.contains("protocol error from"), "{err}");
    assert!(err.contains("may have run"), "{err}");
    // The connection is replaced: the same client and others go on.
    let _: () = q(&mut c, &["SET", "fine", "1"]).await;
    let mut other = client(&proxy).await;
    let _: () = q(&mut other, &["SET", "fine", "2"]).await;
}

#[tokio::test]
async fn an_upstream_closing_mid_reply_fails_only_the_command_in_flight() {
    let mock = MockRedis::start(vec![("half", Script::ReplyThenClose(b"$10\r\nabc"))]).await;
    let proxy = over(&mock).await;
    let mut c = client(&proxy).await;
    let err = try_q(&mut c, &["SET", "half", "1"])
        .await
        .expect_err("connection lost mid-reply");
    assert!(err.to_string().contains("lost"), "{err}");
    let _: () = q(&mut c, &["SET", "fine", "1"]).await;
}

#[tokio::test]
async fn a_read_failing_the_same_way_twice_gets_the_error() {
    let mock = MockRedis::start(vec![("half", Script::ReplyThenClose(b"$10\r\nabc"))]).await;
    let proxy = over(&mock).await;
    let mut c = client(&proxy).await;
    // Reads may run again, so it is retried once; then the client learns why it failed.
    let err = try_q(&mut c, &["GET", "half"])
        .await
        .expect_err("fails twice");
    assert!(err.to_string().contains("lost"), "{err}");
    let _: () = q(&mut c, &["SET", "fine", "1"]).await;
}

#[tokio::test]
async fn binary_garbage_from_a_client_never_disturbs_others() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut good = client(&proxy).await;
    let _: () = q(&mut good, &["SET", "k", "v"]).await;
    // A multibulk header followed by garbage: a protocol error, that client alone closed.
    let mut bad = Raw::connect(&proxy).await;
    let mut junk: Vec<u8> = b"*3\r\n".to_vec();
    junk.extend((0u8..=255).cycle().take(4096));
    bad.send(&junk).await;
    let got = bad.closed().await;
    assert!(
        got.starts_with(b"-ERR Protocol error:"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Binary bytes read as an inline command are an unknown command for Redis to refuse, not a crash.
    let mut inline = Raw::connect(&proxy).await;
    inline.send(b"\x01\x02\x03\xff\xfe\n").await;
    let reply = inline.frame().await;
    assert!(
        reply.starts_with(b"-ERR unknown command"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(q::<String>(&mut good, &["GET", "k"]).await, "v");
}

#[tokio::test]
async fn a_client_trickling_one_byte_at_a_time_is_served_and_holds_up_no_one() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut good = client(&proxy).await;
    let _: () = q(&mut good, &["SET", "k", "v"]).await;
    let mut slow = Raw::connect(&proxy).await;
    let request = resp(&["GET", "k"]);
    let trickle = async {
        for b in &request {
            slow.send(std::slice::from_ref(b)).await;
            // Pacing, as a slow network delivers: the point of the test, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slow.expect(b"$1\r\nv\r\n").await;
    };
    let others = async {
        for _ in 0..100 {
            assert_eq!(q::<String>(&mut good, &["GET", "k"]).await, "v");
        }
    };
    tokio::join!(trickle, others);
}
