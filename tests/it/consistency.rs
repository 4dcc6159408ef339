//! Read-your-writes and monotonic reads, against a replica made stale on purpose: `CLIENT PAUSE WRITE` on a
//! replica stops it applying the replication stream while it keeps serving reads and answering ROLE.
//! Each test also runs the same workload in `eventual` mode and sees stale reads there, which proves the
//! workload can catch a violation.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redsplit::config::Consistency;
use redsplit::Proxy;

use crate::harness::*;

/// A primary with `replicas` replicas, and a proxy whose lag limit is far above the test's duration, so a
/// paused replica stays eligible: only the session guarantees keep reads away from it.
async fn lenient(replicas: usize, consistency: Consistency) -> (Cluster, Proxy) {
    Cluster::builder()
        .replicas(replicas)
        .flags(move |f| {
            f.consistency = Some(consistency);
            f.max_lag_ms = Some(600_000);
        })
        .proxy()
        .await
}

async fn pause_replication(cluster: &Cluster, replica: usize) {
    let mut r = direct(&cluster.replicas()[replica]).await;
    let _: () = q(&mut r, &["CLIENT", "PAUSE", "60000", "WRITE"]).await;
}

/// Writes then reads back, one command at a time; returns how many reads were stale.
async fn write_then_read(c: &mut MultiplexedConnection, rounds: usize) -> usize {
    let mut stale = 0;
    for i in 0..rounds {
        let _: () = q(c, &["SET", "ryw", &i.to_string()]).await;
        let got: Option<String> = q(c, &["GET", "ryw"]).await;
        if got != Some(i.to_string()) {
            stale += 1;
        }
    }
    stale
}

#[tokio::test]
async fn a_session_reads_its_own_writes_even_from_a_stale_replica_setup() {
    let (cluster, proxy) = lenient(1, Consistency::Session).await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "ryw", "start"]).await;
    pause_replication(&cluster, 0).await;
    assert_eq!(
        write_then_read(&mut c, 300).await,
        0,
        "no stale read in session mode"
    );
    // The session still reads from the replica once it no longer needs fresher data: a new session
    // that never wrote is served by it.
    let mut fresh = client(&proxy).await;
    let before = calls(&cluster.replicas()[0], "get").await;
    let _: Option<String> = q(&mut fresh, &["GET", "ryw"]).await;
    assert_eq!(calls(&cluster.replicas()[0], "get").await, before + 1);
}

#[tokio::test]
async fn eventual_mode_serves_stale_reads_from_the_same_setup() {
    let (cluster, proxy) = lenient(1, Consistency::Eventual).await;
    let mut c = client(&proxy).await;
    pause_replication(&cluster, 0).await;
    assert!(
        write_then_read(&mut c, 50).await > 0,
        "the workload can see stale data"
    );
}

/// Another client writes `v2` over `v1`; one replica has it, the other is frozen at `v1`. Returns how
/// often a session that had already seen `v2` later read `v1`.
async fn regressions(consistency: Consistency) -> usize {
    let (cluster, proxy) = lenient(2, consistency).await;
    let mut writer = client(&proxy).await;
    let _: () = q(&mut writer, &["SET", "mono", "v1"]).await;
    for r in cluster.replicas() {
        let mut d = direct(r).await;
        eventually!(
            "v1 replicated",
            q::<Option<String>>(&mut d, &["GET", "mono"])
                .await
                .as_deref()
                == Some("v1")
        );
    }
    pause_replication(&cluster, 1).await;
    let _: () = q(&mut writer, &["SET", "mono", "v2"]).await;
    let mut d = direct(&cluster.replicas()[0]).await;
    eventually!(
        "v2 on replica 0",
        q::<Option<String>>(&mut d, &["GET", "mono"])
            .await
            .as_deref()
            == Some("v2")
    );
    let mut count = 0;
    for _ in 0..20 {
        let mut reader = client(&proxy).await;
        let mut seen_v2 = false;
        for _ in 0..30 {
            let v: Option<String> = q(&mut reader, &["GET", "mono"]).await;
            match v.as_deref() {
                Some("v2") => seen_v2 = true,
                Some("v1") if seen_v2 => count += 1,
                _ => {}
            }
        }
    }
    count
}

#[tokio::test]
async fn a_session_never_reads_older_data_than_it_has_read() {
    assert_eq!(regressions(Consistency::Session).await, 0);
}

#[tokio::test]
async fn eventual_mode_can_read_backwards_in_the_same_setup() {
    assert!(
        regressions(Consistency::Eventual).await > 0,
        "the workload can see a regression"
    );
}

#[tokio::test]
async fn ten_thousand_pipelined_write_then_read_pairs_see_no_stale_read() {
    let (_cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    let mut c = client(&proxy).await;
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("SET").arg("pair").arg(i).ignore();
        pipe.cmd("GET").arg("pair");
    }
    let got: Vec<i64> = pipe.query_async(&mut c).await.expect("pipeline");
    assert_eq!(got, (0..10_000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn consistency_primary_sends_every_read_to_the_primary() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| f.consistency = Some(Consistency::Primary))
        .proxy()
        .await;
    let mut c = client(&proxy).await;
    for _ in 0..30 {
        let _: Option<String> = q(&mut c, &["GET", "x"]).await;
    }
    assert_eq!(calls(cluster.primary(), "get").await, 30);
    assert_eq!(calls(&cluster.replicas()[0], "get").await, 0);
}

#[tokio::test]
async fn session_reads_return_to_replicas_once_they_hold_the_write() {
    let (cluster, proxy) = Cluster::builder().replicas(1).proxy().await;
    let mut c = client(&proxy).await;
    let _: () = q(&mut c, &["SET", "k", "v"]).await;
    let replica = &cluster.replicas()[0];
    let before = calls(replica, "get").await;
    // After a probe confirms the replica has the write, this same session's reads go there again.
    eventually!("reads back on the replica", {
        let v: Option<String> = q(&mut c, &["GET", "k"]).await;
        assert_eq!(v.as_deref(), Some("v"));
        calls(replica, "get").await > before
    });
}

/// Reads served so far by the primary and by replicas, from the proxy's metrics.
async fn reads_by_role(p: &Proxy) -> (f64, f64) {
    let (_, body) = http(p.admin, "GET", "/metrics").await;
    let mut by_role = (0.0, 0.0);
    for line in body
        .lines()
        .filter(|l| l.starts_with("redsplit_commands_total{") && l.contains("kind=\"read\""))
    {
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if line.contains("role=\"primary\"") {
            by_role.0 += v;
        } else {
            by_role.1 += v;
        }
    }
    by_role
}

/// Many connections writing their own keys and reading their own and everyone's, with one replica 30 ms
/// behind a relay (within the lag limit: it serves reads), in every mode: `session` and `global` keep
/// their promises while serving most reads from replicas, and the same history through `eventual` shows
/// the stale reads the checker is there to catch.
#[tokio::test]
async fn a_history_of_many_connections_keeps_every_promise_of_each_mode() {
    use crate::history::{run, Workload};
    let cluster = Cluster::builder()
        .replicas(2)
        .delay_replica(1, Duration::from_millis(30))
        .start()
        .await;
    let workload = Workload {
        connections: 6,
        keys: 240,
        write_one_in: 4,
    };
    for mode in [
        Consistency::Session,
        Consistency::Global,
        Consistency::Eventual,
    ] {
        let proxy = proxy_with(redsplit::config::Flags {
            consistency: Some(mode),
            ..cluster.flags()
        })
        .await;
        wait_eligible(&proxy, 2).await;
        let before = reads_by_role(&proxy).await;
        let seen = run(
            proxy.listen,
            workload,
            &format!("{mode:?}:"),
            Duration::from_millis(1500),
        )
        .await;
        let after = reads_by_role(&proxy).await;
        let (primary, replicas) = (after.0 - before.0, after.1 - before.1);
        let share = replicas / (primary + replicas).max(1.0);
        eprintln!(
            "{mode:?}: {seen:?}, {:.0}% of reads on replicas",
            share * 100.0
        );
        assert_eq!(seen.errors, 0, "{mode:?}: {seen:?}");
        assert!(seen.reads > 500, "{mode:?}: {seen:?}");
        match mode {
            Consistency::Eventual => assert!(
                seen.ryw + seen.monotonic > 0,
                "the history catches the stale reads eventual allows: {seen:?}"
            ),
            _ => {
                assert_eq!((seen.ryw, seen.monotonic), (0, 0), "{mode:?}: {seen:?}");
                assert!(
                    share > 0.5,
                    "{mode:?}: only {share:.2} of reads on replicas"
                );
            }
        }
        if mode == Consistency::Global {
            assert_eq!(seen.global, 0, "global: {seen:?}");
        }
    }
}

/// A read checked on a replica that turns out to be behind the session's write, with a write of the
/// session pipelined after it: the write waits for the check, so the read can still go to the primary
/// and returns the session's own write. Before: the replica's old value reached the client (20 of 20);
/// then, with stale replies never delivered, the read failed (it could go nowhere once the write ran).
#[tokio::test]
async fn a_read_found_behind_with_a_write_pipelined_after_it_is_never_delivered_stale() {
    let (cluster, proxy) = lenient(1, Consistency::Session).await;
    let mut raw = Raw::connect(&proxy).await;
    let mut r = direct(&cluster.replicas()[0]).await;
    let mut stale = Vec::new();
    for i in 0..20 {
        let old = format!("old{i}");
        raw.send(&resp(&["SET", "k", &old])).await;
        raw.expect(b"+OK\r\n").await;
        eventually!(
            "the replica has the old value",
            q::<Option<String>>(&mut r, &["GET", "k"]).await.as_deref() == Some(old.as_str())
        );
        // The replica stops applying the stream; its last probe still shows it level.
        let _: () = q(&mut r, &["CLIENT", "PAUSE", "2000", "WRITE"]).await;
        raw.send(&resp(&["SET", "k", "new"])).await;
        raw.expect(b"+OK\r\n").await;
        let mut pipeline = resp(&["GET", "k"]);
        pipeline.extend(resp(&["SET", "x", "1"]));
        raw.send(&pipeline).await;
        let got = String::from_utf8_lossy(&raw.frame().await).into_owned();
        raw.expect(b"+OK\r\n").await;
        if got.contains("old") {
            stale.push(got.clone());
        }
        assert!(got == "$3\r\nnew\r\n" || got.contains("old"), "{got:?}");
        let _: () = q(&mut r, &["CLIENT", "UNPAUSE"]).await;
    }
    assert!(stale.is_empty(), "stale reads delivered: {stale:?}");
}

/// A pipeline `GET k`, `ECHO`, `GET k` on a session whose reads go to the one replica, which stops
/// answering (`CLIENT PAUSE ALL`: it runs nothing, the replication stream included) before the GETs
/// reach it, while `k` goes from `old` to `new` on the primary. `again` after the GETs were sent, the
/// first goes to the primary (a hedge, or its read timeout: `tweak` sets which), and sees `new`; the
/// second, already sent to the replica, runs there once the pause ends, before the stream it postponed
/// too, and sees `old`. The primary is paused meanwhile too, so that the second's reply is in when the
/// first's is delivered. Each step leaves 200 ms or more to the next on a busy machine. Returns the two
/// GETs' replies.
async fn reads_behind_a_read_sent_again(
    again: Duration,
    tweak: impl FnOnce(&mut redsplit::config::Flags),
) -> (String, String) {
    let (cluster, proxy) = Cluster::builder()
        .replicas(1)
        .flags(|f| {
            f.max_lag_ms = Some(600_000);
            tweak(f);
        })
        .proxy()
        .await;
    let mut writer = client(&proxy).await;
    let _: () = q(&mut writer, &["SET", "k", "old"]).await;
    let mut r = direct(&cluster.replicas()[0]).await;
    eventually!(
        "the replica has the old value",
        q::<Option<String>>(&mut r, &["GET", "k"]).await.as_deref() == Some("old")
    );
    let mut p = direct(cluster.primary()).await;
    let mut raw = Raw::connect(&proxy).await;
    // Pauses end by themselves: a paused server postpones CLIENT UNPAUSE too.
    let ms = |d: Duration| d.as_millis().to_string();
    let until = ms(again + Duration::from_millis(300));
    let _: () = q(&mut r, &["CLIENT", "PAUSE", &until, "ALL"]).await;
    let start = Instant::now();
    let mut pipeline = resp(&["GET", "k"]);
    pipeline.extend(resp(&["ECHO", "between"]));
    pipeline.extend(resp(&["GET", "k"]));
    raw.send(&pipeline).await;
    // The GETs reach the replica before the write's stream: it runs them first when the pause ends.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _: () = q(&mut writer, &["SET", "k", "new"]).await;
    // The primary answers the first GET sent again only after the replica answered the second.
    tokio::time::sleep_until((start + again - Duration::from_millis(200)).into()).await;
    let _: () = q(&mut p, &["CLIENT", "PAUSE", "700", "ALL"]).await;
    let first = String::from_utf8_lossy(&raw.frame().await).into_owned();
    raw.expect(b"$7\r\nbetween\r\n").await;
    let second = String::from_utf8_lossy(&raw.frame().await).into_owned();
    (first, second)
}

/// Before: the hedge took the first GET to the primary (`new`) and left the second on the replica
/// (`old`): the session read back in time within one pipeline (2 of 2 runs, each test). The chaos
/// test's readers saw it in every run of the switchovers in Sentinel mode (`mono=2` to 13, hedges and
/// read retries in each), before any fault as after.
#[tokio::test]
async fn a_hedged_read_takes_the_session_s_later_reads_with_it() {
    let got = reads_behind_a_read_sent_again(Duration::from_millis(400), |f| {
        f.read_hedge_ms = Some(400);
        f.read_timeout_ms = Some(5000);
    })
    .await;
    assert_eq!(got, ("$3\r\nnew\r\n".into(), "$3\r\nnew\r\n".into()));
}

/// The same with the read timeout, not a hedge, sending the first GET to the primary.
#[tokio::test]
async fn a_read_sent_again_after_its_timeout_takes_the_session_s_later_reads_with_it() {
    let got = reads_behind_a_read_sent_again(Duration::from_millis(1000), |f| {
        f.read_hedge_ms = Some(60_000);
        f.read_timeout_ms = Some(1000);
    })
    .await;
    assert_eq!(got, ("$3\r\nnew\r\n".into(), "$3\r\nnew\r\n".into()));
}
