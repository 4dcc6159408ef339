//! Connection state a client expects to be its own: SELECT, AUTH, HELLO, CLIENT subcommands, RESET, QUIT.

use redis::Value;

use crate::harness::*;

#[tokio::test]
async fn select_isolates_databases_and_replicas_serve_the_selected_one() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    let _: () = q(&mut a, &["SELECT", "3"]).await;
    let _: () = q(&mut a, &["SET", "k", "db3"]).await;
    let _: () = q(&mut b, &["SET", "k", "db0"]).await;
    let got_a: Option<String> = q(&mut a, &["GET", "k"]).await;
    assert_eq!(
        got_a.as_deref(),
        Some("db3"),
        "a reads its own write in db 3"
    );
    let got_b: Option<String> = q(&mut b, &["GET", "k"]).await;
    assert_eq!(
        got_b.as_deref(),
        Some("db0"),
        "b reads its own write in db 0"
    );
    // A session that never wrote reads db 3 from the replica.
    let mut r = client(&proxy).await;
    let _: () = q(&mut r, &["SELECT", "3"]).await;
    eventually!(
        "db 3 read from the replica",
        q::<Option<String>>(&mut r, &["GET", "k"]).await.as_deref() == Some("db3")
    );
    let mut d = direct(&cluster.replicas()[0]).await;
    let _: () = q(&mut d, &["SELECT", "3"]).await;
    eventually!(
        "db 3 on the replica",
        q::<Option<String>>(&mut d, &["GET", "k"]).await.as_deref() == Some("db3")
    );
    let err = try_q(&mut a, &["SELECT", "99999"])
        .await
        .expect_err("out of range");
    assert!(
        err.to_string().contains("DB index is out of range"),
        "{err}"
    );
    assert_eq!(
        q::<String>(&mut a, &["GET", "k"]).await,
        "db3",
        "a failed SELECT keeps the database"
    );
    let err = try_q(&mut a, &["SELECT", "x"])
        .await
        .expect_err("not a number");
    assert!(err.to_string().contains("not an integer"), "{err}");
}

#[tokio::test]
async fn auth_uses_the_clients_credentials_and_backend_credentials_stay_hidden() {
    let (_cluster, proxy) = Cluster::builder()
        .replicas(1)
        .password("s3cret")
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    // Backend credentials serve clients that do not authenticate.
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    // A client's own AUTH is checked by the primary; a wrong one fails and changes nothing.
    let err = try_q(&mut c, &["AUTH", "wrong"])
        .await
        .expect_err("wrong password");
    assert!(err.to_string().contains("WRONGPASS"), "{err}");
    assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "v");
    let _: () = q(&mut c, &["AUTH", "s3cret"]).await;
    let _: () = q(&mut c, &["AUTH", "default", "s3cret"]).await;
    assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "v");
    // The backend password appears nowhere a client can ask for it.
    let info: String = q(&mut c, &["CLIENT", "INFO"]).await;
    assert!(!info.contains("s3cret"));
}

#[tokio::test]
async fn hello_3_gives_resp3_replies() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(&resp(&["HELLO", "3"])).await;
    let hello = raw.frame().await;
    assert!(
        hello.starts_with(b"%7\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    raw.send(&resp(&["HSET", "h", "f", "v"])).await;
    raw.expect(b":1\r\n").await;
    raw.send(&resp(&["HGETALL", "h"])).await;
    raw.expect(b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n").await;
    raw.send(&resp(&["GET", "missing"])).await;
    raw.expect(b"_\r\n").await;
    raw.send(&resp(&["CLIENT", "GETNAME"])).await;
    raw.expect(b"_\r\n").await;
    raw.send(&resp(&["HELLO", "2", "SETNAME", "me"])).await;
    let hello = raw.frame().await;
    assert!(hello.starts_with(b"*14\r\n"));
    raw.send(&resp(&["HGETALL", "h"])).await;
    raw.expect(b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n").await;
    raw.send(&resp(&["CLIENT", "GETNAME"])).await;
    raw.expect(b"$2\r\nme\r\n").await;
    raw.send(&resp(&["HELLO", "4"])).await;
    raw.expect(b"-NOPROTO unsupported protocol version\r\n")
        .await;
}

#[tokio::test]
async fn client_subcommands_describe_the_clients_own_connection() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut a = client(&proxy).await;
    let mut b = client(&proxy).await;
    let id_a: i64 = q(&mut a, &["CLIENT", "ID"]).await;
    let id_b: i64 = q(&mut b, &["CLIENT", "ID"]).await;
    assert_ne!(id_a, id_b);
    assert_eq!(
        q::<Option<String>>(&mut a, &["CLIENT", "GETNAME"]).await,
        None
    );
    let _: () = q(&mut a, &["CLIENT", "SETNAME", "alpha"]).await;
    assert_eq!(q::<String>(&mut a, &["CLIENT", "GETNAME"]).await, "alpha");
    assert_eq!(
        q::<Option<String>>(&mut b, &["CLIENT", "GETNAME"]).await,
        None,
        "names are per client"
    );
    let info: String = q(&mut a, &["CLIENT", "INFO"]).await;
    assert!(
        info.contains(&format!("id={id_a} ")) && info.contains("name=alpha"),
        "{info}"
    );
    let err = try_q(&mut a, &["CLIENT", "SETNAME", "has space"])
        .await
        .expect_err("bad name");
    assert!(err.to_string().contains("cannot contain spaces"));
    let _: () = q(&mut a, &["CLIENT", "NO-EVICT", "on"]).await;
    // Nothing of this reached a shared upstream connection.
    assert_eq!(calls(cluster.primary(), "client|setname").await, 0);
    assert_eq!(calls(cluster.primary(), "client|no-evict").await, 0);
}

#[tokio::test]
async fn client_reply_off_and_skip_suppress_replies() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["CLIENT", "REPLY", "OFF"]);
    out.extend(resp(&["SET", "a", "1"]));
    out.extend(resp(&["GET", "a"]));
    out.extend(resp(&["CLIENT", "REPLY", "ON"]));
    out.extend(resp(&["CLIENT", "REPLY", "SKIP"]));
    out.extend(resp(&["INCR", "a"]));
    out.extend(resp(&["INCR", "a"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n:3\r\n").await;
}

#[tokio::test]
async fn silenced_replies_at_the_inflight_limit_do_not_stall_the_rest_of_the_pipeline() {
    // Local replies complete as soon as they are queued; with CLIENT REPLY OFF they add no output, so
    // nothing but the freed in-flight slots says the rest of the pipeline can go now.
    let (_cluster, proxy) = Cluster::builder()
        .flags(|f| f.max_client_inflight = Some(4))
        .proxy()
        .await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["CLIENT", "REPLY", "OFF"]);
    for _ in 0..50 {
        out.extend(resp(&["CLIENT", "GETNAME"]));
    }
    out.extend(resp(&["CLIENT", "REPLY", "ON"]));
    out.extend(resp(&["CLIENT", "ID"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n:").await;
}

#[tokio::test]
async fn reset_and_quit_behave_like_redis() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    let mut out = resp(&["SELECT", "2"]);
    out.extend(resp(&["SET", "k", "in2"]));
    out.extend(resp(&["CLIENT", "SETNAME", "x"]));
    out.extend(resp(&["RESET"]));
    out.extend(resp(&["GET", "k"]));
    out.extend(resp(&["CLIENT", "GETNAME"]));
    out.extend(resp(&["QUIT"]));
    out.extend(resp(&["SET", "after", "quit"]));
    raw.send(&out).await;
    raw.expect(b"+OK\r\n+OK\r\n+OK\r\n+RESET\r\n$-1\r\n$-1\r\n+OK\r\n")
        .await;
    assert!(raw.closed().await.is_empty(), "nothing after QUIT");
    let mut d = direct(cluster.primary()).await;
    assert_eq!(
        q::<Option<String>>(&mut d, &["GET", "after"]).await,
        None,
        "commands after QUIT never ran"
    );
}

#[tokio::test]
async fn ping_echo_and_inline_commands_work() {
    let (_cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(
        b"PING\r\nPING hello\r\nset greeting \"hi there\"\r\nGET greeting\n\r\necho 'a b'\r\n",
    )
    .await;
    raw.expect(b"+PONG\r\n$5\r\nhello\r\n+OK\r\n$8\r\nhi there\r\n$3\r\na b\r\n")
        .await;
    let mut c = client(&proxy).await;
    let v: Value = q(&mut c, &["PING"]).await;
    assert_eq!(v, Value::SimpleString("PONG".into()));
}

#[tokio::test]
async fn commands_naming_client_ids_name_the_proxys_clients_never_an_upstream_connection() {
    let (cluster, proxy) = Cluster::builder().proxy().await;
    let mut c = client(&proxy).await;
    assert_eq!(
        q::<i64>(&mut c, &["CLIENT", "KILL", "ID", "999999"]).await,
        0
    );
    assert_eq!(q::<i64>(&mut c, &["CLIENT", "UNBLOCK", "999999"]).await, 0);
    let err = try_q(&mut c, &["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"])
        .await
        .expect_err("no such client");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // The shared upstream connections survived: nothing was killed.
    let _: () = q(&mut c, &["SET", "still", "here"]).await;
    assert_eq!(calls(cluster.primary(), "client|kill").await, 0);
}
