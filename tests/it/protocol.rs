//! Bad input and broken connections: a clear error for the culprit, nothing for everyone else.

use crate::harness::*;

async fn protocol_error_closes_only_that_client(bytes: &[u8], want: &str) {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut good = client(&proxy).await;
    let _: () = q(&mut good, &["SET", "k", "v"]).await;
    let mut bad = Raw::connect(&proxy).await;
    bad.send(bytes).await;
    let got = String::from_utf8_lossy(&bad.closed().await).into_owned();
    assert!(got.starts_with("-ERR Protocol error: "), "{got:?}");
    assert!(got.contains(want), "{got:?} should mention {want:?}");
    assert_eq!(
        q::<String>(&mut good, &["GET", "k"]).await,
        "v",
        "other clients go on"
    );
}

#[tokio::test]
async fn malformed_multibulk_gets_a_protocol_error() {
    protocol_error_closes_only_that_client(b"*2\r\n$3\r\nGET\r\n:5\r\n", "expected '$'").await;
}

#[tokio::test]
async fn negative_bulk_length_gets_a_protocol_error() {
    protocol_error_closes_only_that_client(b"*1\r\n$-5\r\n", "invalid bulk length").await;
}

#[tokio::test]
async fn huge_bulk_length_gets_a_protocol_error_without_buffering() {
    protocol_error_closes_only_that_client(b"*1\r\n$99999999999\r\n", "exceeds the limit").await;
}

#[tokio::test]
async fn huge_array_length_gets_a_protocol_error() {
    protocol_error_closes_only_that_client(b"*99999999999\r\n", "exceeds the limit").await;
}

#[tokio::test]
async fn unterminated_inline_command_gets_a_protocol_error() {
    protocol_error_closes_only_that_client(&vec![b'a'; 70_000], "too big inline request").await;
}

#[tokio::test]
async fn unbalanced_quotes_get_a_protocol_error() {
    protocol_error_closes_only_that_client(b"SET \"a b\r\n", "unbalanced quotes").await;
}

#[tokio::test]
async fn replies_before_a_protocol_error_are_still_delivered() {
    let (_cluster, proxy) = Cluster::builder().proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["SET", "a", "1"]);
    out.extend(resp(&["GET", "a"]));
    out.extend(b"*1\r\n!garbage\r\n");
    raw.send(&out).await;
    let got = raw.closed().await;
    assert!(
        got.starts_with(b"+OK\r\n$1\r\n1\r\n-ERR Protocol error:"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_request_larger_than_the_limit_is_refused() {
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| {
            f.max_request_bytes = Some(4096);
            f.max_bulk_bytes = Some(1024);
        })
        .proxy()
        .await;
    let mut raw = Raw::connect(&proxy).await;
    // Many bulks each within the bulk limit, together over the request limit.
    let mut out = b"*100\r\n".to_vec();
    for _ in 0..10 {
        out.extend(b"$1000\r\n");
        out.extend(vec![b'x'; 1000]);
        out.extend(b"\r\n");
    }
    raw.send(&out).await;
    let got = String::from_utf8_lossy(&raw.closed().await).into_owned();
    assert!(got.contains("request larger than 4096 bytes"), "{got}");
}

/// A proxy that allows 16 commands in flight per client, a client, and a 100 KB value under `big`. The
/// output limits are raised above the 200 MB a lazy client's pipeline asks for: this is about a client
/// that reads late, not about the limits (on a loaded machine the default 64 MiB closed it first).
async fn a_big_value_and_16_in_flight() -> (
    Cluster,
    redsplit::Proxy,
    redis::aio::MultiplexedConnection,
    String,
) {
    let (cluster, proxy) = Cluster::builder()
        .flags(|f| {
            f.max_client_inflight = Some(16);
            f.max_client_output_bytes = Some(512 << 20);
            f.max_total_output_bytes = Some(1 << 30);
        })
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    let big = "x".repeat(100_000);
    let _: () = q(&mut c, &["SET", "big", &big]).await;
    (cluster, proxy, c, big)
}

#[tokio::test]
async fn a_client_that_does_not_read_stops_being_read_and_others_go_on() {
    let (_cluster, proxy, mut c, big) = a_big_value_and_16_in_flight().await;
    let lazy = Raw::connect(&proxy).await;
    let one = resp(&["GET", "big"]);
    let n = 2_000;
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend_from_slice(&one);
    }
    // Written from a task: once the proxy stops reading, this write blocks, as it should.
    let (mut rd, mut wr) = lazy.stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&out).await.expect("write");
        wr
    });
    // Meanwhile other clients are served.
    for _ in 0..20 {
        assert_eq!(q::<String>(&mut c, &["GET", "big"]).await.len(), 100_000);
    }
    // The lazy client finally reads: every reply arrives, in order, complete.
    use tokio::io::AsyncReadExt;
    let expected = format!("$100000\r\n{big}\r\n").into_bytes();
    let mut got = vec![0u8; expected.len()];
    for _ in 0..n {
        tokio::time::timeout(PATIENCE, rd.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(got == expected);
    }
    let _ = writer.await;
}

#[tokio::test]
async fn a_killed_upstream_connection_is_reestablished_for_idle_clients() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    let _: Option<String> = q(&mut c, &["GET", "k"]).await;
    for s in [cluster.primary(), &cluster.replicas()[0]] {
        let mut d = direct(s).await;
        let _: i64 = q(
            &mut d,
            &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
        )
        .await;
    }
    // Clients with nothing in flight see no error at all.
    for i in 0..50 {
        let _: () = q(&mut c, &["SET", "k", &i.to_string()]).await;
        let v: String = q(&mut c, &["GET", "k"]).await;
        assert_eq!(v, i.to_string());
    }
}

#[tokio::test]
async fn a_client_hanging_up_mid_pipeline_does_not_disturb_others() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    for _ in 0..20 {
        let mut raw = Raw::connect(&proxy).await;
        let mut out = Vec::new();
        for i in 0..500 {
            out.extend(resp(&["SET", &format!("h{i}"), "v"]));
            out.extend(resp(&["GET", &format!("h{i}")]));
        }
        out.extend(b"*3\r\n$3\r\nSET\r\n$1\r\nx");
        raw.send(&out).await;
        drop(raw);
        let _: () = q(&mut c, &["SET", "alive", "1"]).await;
        assert_eq!(q::<String>(&mut c, &["GET", "alive"]).await, "1");
    }
}

/// Writes `out` completely, then reads `want` bytes of replies.
async fn write_all_then_read(
    addr: std::net::SocketAddr,
    out: Vec<u8>,
    want: usize,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(PATIENCE, s.write_all(&out))
        .await
        .map_err(|_| "write of the pipeline never completed".to_string())?
        .map_err(|e| e.to_string())?;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < want {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .map_err(|_| format!("replies stalled at {got} of {want} bytes"))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {got} of {want} bytes"));
        }
        got += n;
    }
    Ok(())
}

#[tokio::test]
async fn a_client_that_writes_its_whole_pipeline_before_reading_is_served_as_redis_serves_it() {
    // Many clients write a whole pipeline before reading a reply. A proxy that stops reading while
    // replies wait (it did, past 1 MiB, for a day) deadlocks with them; Redis keeps reading.
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let payload = "x".repeat(64 * 1024);
    let n = 400;
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(resp(&["ECHO", &payload]));
    }
    let reply_len = format!("${}\r\n", payload.len()).len() + payload.len() + 2;
    let primary = cluster
        .primary()
        .addr()
        .to_string()
        .parse()
        .expect("ip:port");
    let direct = write_all_then_read(primary, out.clone(), n * reply_len).await;
    assert_eq!(direct, Ok(()), "redis-server itself");
    let via = write_all_then_read(proxy.listen, out, n * reply_len).await;
    assert_eq!(via, Ok(()), "through the proxy");
}
