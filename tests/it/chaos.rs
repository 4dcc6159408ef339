//! Chaos with a history checker (issue 14): writers and readers run through the proxy while the primary
//! is killed, frozen or switched over, and their history is checked against the final primary (see
//! `chaos/load.rs` and `chaos/checker.rs`). Each scenario prints one line of figures, to quote:
//!
//! ```text
//! chaos kill9: acked=.. unknown=.. lost=.. lost_in_window=.. dup=.. ryw=.. mono=.. order=.. list_order=..
//!     longest_write_pause_ms=.. read_errors=.. after_fault=[..] reconnects=.. sentinel_switch_ms=..
//!     proxy_switch_ms=.. converged_ms=.. read_retries=.. reads_hedged=.. fault_at_ms=.. took_ms=..
//! ```
//!
//! `sentinel_switch_ms` is how long after the fault began a sentinel first named another primary (its
//! election, to set against `longest_write_pause_ms`), `proxy_switch_ms` when the proxy published another
//! primary, `converged_ms` when every server agreed on one primary (the old one demoted, if it came
//! back). Times in the examples of a failure count from the load's start (`fault_at_ms` on that clock).

mod checker;
mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use redsplit::config::Addr;
use redsplit::embedded::MASTER_NAME;
use redsplit::Proxy;

use crate::harness::*;
use checker::{check, Final};
use load::{Load, WRITERS};

/// kill -9 of the primary, never restarted: Sentinel (1 s down-after) promotes a replica.
#[tokio::test]
async fn history_holds_when_the_primary_is_killed() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .down_after_ms(1000)
        .proxy()
        .await;
    chaos("kill9", cluster, proxy, Fault::Kill).await;
}

/// The primary frozen (SIGSTOP) for 2 s, less than Sentinel's 5 s down-after, then thawed: no failover;
/// writes wait for it, reads go on.
#[tokio::test]
async fn history_holds_when_the_primary_freezes_for_less_than_down_after() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .down_after_ms(5000)
        .proxy()
        .await;
    let fault = Fault::Freeze(Duration::from_millis(2000));
    chaos("freeze_short", cluster, proxy, fault).await;
}

/// The primary frozen past Sentinel's 1 s down-after: Sentinel promotes a replica while it is frozen. It
/// is thawed once the proxy follows, answers what it had received, and Sentinel demotes it.
#[tokio::test]
async fn history_holds_when_the_primary_freezes_past_down_after_and_comes_back() {
    let (cluster, proxy) = Cluster::builder()
        .replicas(2)
        .sentinels(3)
        .down_after_ms(1000)
        .proxy()
        .await;
    chaos("freeze_long", cluster, proxy, Fault::FreezePastDownAfter).await;
}

/// `SENTINEL FAILOVER` sent to one sentinel directly, not through the proxy: the proxy learns of it from
/// the sentinel's `+selected-slave` or a probe seeing the replica turn master, and holds writes until the
/// switch (before that hold, the old primary took writes the promoted replica never got).
#[tokio::test]
async fn history_holds_through_a_failover_started_at_a_sentinel() {
    let (cluster, proxy) = Cluster::builder().replicas(2).sentinels(3).proxy().await;
    chaos("sentinel_failover", cluster, proxy, Fault::SentinelFailover).await;
}

/// Three `POST /failover` in a row in static mode (`FAILOVER TO`), each asked as soon as the one before
/// answered.
#[tokio::test]
async fn history_holds_through_three_switchovers_in_static_mode() {
    let (cluster, proxy) = Cluster::builder().replicas(2).proxy().await;
    chaos(
        "post_failover_static",
        cluster,
        proxy,
        Fault::Switchovers(3),
    )
    .await;
}

/// Three `POST /failover` in a row in Sentinel mode. The proxy refuses one (409) until Sentinel has
/// converted the primary demoted by the one before (10 s and more), so this scenario is the longest.
#[tokio::test]
async fn history_holds_through_three_switchovers_in_sentinel_mode() {
    let (cluster, proxy) = Cluster::builder().replicas(2).sentinels(3).proxy().await;
    chaos(
        "post_failover_sentinel",
        cluster,
        proxy,
        Fault::Switchovers(3),
    )
    .await;
}

/// What happens to the primary while the load runs.
enum Fault {
    /// SIGKILL, never restarted.
    Kill,
    /// SIGSTOP for this long, then SIGCONT.
    Freeze(Duration),
    /// SIGSTOP until the proxy follows Sentinel to another primary, then SIGCONT: the old primary comes
    /// back and Sentinel demotes it.
    FreezePastDownAfter,
    /// `SENTINEL FAILOVER` sent to a sentinel, not through the proxy.
    SentinelFailover,
    /// `POST /failover` until this many switchovers succeeded, each asked as soon as the one before
    /// answered (a refusal is asked again after a moment).
    Switchovers(usize),
}

/// Writes acknowledged to each writer after the fault, and after the servers agreed again, that show
/// the writers are going on.
const PROGRESS: u64 = 20;
/// The load runs at least this long before the fault, and again once the servers agree after it.
const LOAD_FOR: Duration = Duration::from_secs(1);

/// Runs the load, the fault, and checks the history: prints the figures, then asserts them.
async fn chaos(name: &str, mut cluster: Cluster, proxy: Proxy, fault: Fault) {
    let started = Instant::now();
    let old = primary_addr(&proxy).expect("a primary");
    let servers = std::iter::once(("primary".to_string(), cluster.primary()))
        .chain(
            cluster
                .replicas()
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("replica{i}"), r)),
        )
        .map(|(name, s)| {
            let addr = s.addr();
            (
                format!("{name}({})", addr.port()),
                addr.as_str().parse().expect("loopback address"),
            )
        })
        .collect();
    let load = Load::start(proxy.listen, servers).await;
    // The load's start on the wall clock, to set the examples' times against the proxy's log.
    let load_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let load_started = load.started;
    assert!(
        progress(&load, PROGRESS, PATIENCE).await,
        "{name}: load running"
    );
    // The load's length, not a wait for a condition.
    tokio::time::sleep_until((started + LOAD_FOR).into()).await;
    let watch = Watch::start(&cluster, &proxy);
    let fault_start = Instant::now();
    let Inflicted {
        excused,
        switchovers,
        mut note,
    } = inflict(name, &fault, &mut cluster, &proxy, &old).await;
    let fault_end = Instant::now();
    let converged = converge(&cluster, Duration::from_secs(60)).await;
    let converged_at = Instant::now();
    let progressed = progress(&load, PROGRESS, PATIENCE).await;
    tokio::time::sleep_until((converged_at + LOAD_FOR).into()).await;
    let history = load.stop().await;
    let figures = check(&history, &final_state(&cluster).await, fault_end, excused);
    let (sentinel_switch, proxy_switch, primaries) = watch.stop(&old, fault_start).await;
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| d.as_millis().to_string());
    // Reads the proxy sent again, or hedged: how the reads of an anomaly may have gone elsewhere.
    let metrics = http(proxy.admin, "GET", "/metrics").await.1;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    note.push_str(&format!(
        "read_retries={} reads_hedged={} ",
        counter("redsplit_read_retries_total "),
        counter("redsplit_reads_hedged_total ")
    ));
    eprintln!(
        "chaos {name}: {} sentinel_switch_ms={} proxy_switch_ms={} converged_ms={} {note}fault_at_ms={} \
         took_ms={}",
        figures.line(),
        ms(sentinel_switch),
        ms(proxy_switch),
        ms(converged
            .is_some()
            .then(|| converged_at.duration_since(fault_start))),
        fault_start.duration_since(load_started).as_millis(),
        started.elapsed().as_millis()
    );

    let evidence = format!(
        "{name}: {}; examples: {:?}; errors: {:?}; primaries published (ms after the fault): {primaries:?}; \
         {note}fault_at_ms={} load_started_unix_ms={load_wall}",
        figures.line(),
        figures.examples,
        figures.errors,
        fault_start.duration_since(load_started).as_millis(),
    );
    if let Some((n, done)) = switchovers {
        assert_eq!(done, n, "{name}: switchovers done: {note}");
    }
    assert!(
        converged.is_some(),
        "{name}: the servers agree on one primary"
    );
    assert_eq!(figures.lost - figures.lost_in_window, 0, "lost; {evidence}");
    assert_eq!(figures.dup, 0, "duplicated; {evidence}");
    assert_eq!(figures.ryw, 0, "read-your-writes; {evidence}");
    assert_eq!(figures.monotonic, 0, "monotonic reads; {evidence}");
    assert_eq!(figures.order, 0, "pipeline order; {evidence}");
    assert_eq!(figures.list_order, 0, "list order; {evidence}");
    assert!(
        progressed && figures.after_fault.iter().all(|n| *n > 0),
        "every writer goes on after the fault; {evidence}"
    );
}

/// What [`inflict`] did.
struct Inflicted {
    /// The instant around which lost writes are counted apart, and the window around it.
    excused: Option<(Instant, Duration)>,
    /// Switchovers asked for, and done.
    switchovers: Option<(usize, usize)>,
    /// What to add to the figures' line.
    note: String,
}

/// Inflicts `fault` on the primary `old` while the load runs; returns once it is over.
async fn inflict(
    name: &str,
    fault: &Fault,
    cluster: &mut Cluster,
    proxy: &Proxy,
    old: &Addr,
) -> Inflicted {
    let mut note = String::new();
    // A write acknowledged just before kill -9 may not have reached a replica: Redis replicates
    // asynchronously and the killed process's unsent stream is gone (closing that window takes WAIT). The
    // proxy's part is only to send no write anywhere else, so writes lost within this window of the kill
    // are counted apart (as in `failover.rs`'s kill -9 test); the reply can still be on its way when the
    // signal lands, hence either side.
    let mut excused = None;
    // Switchovers asked for, and done.
    let mut switchovers = None;
    match *fault {
        Fault::Kill => {
            cluster.primary_mut().kill();
            excused = Some((Instant::now(), Duration::from_millis(500)));
        }
        Fault::Freeze(d) => {
            cluster.primary().signal("STOP").expect("SIGSTOP");
            // The fault's length, not a wait for a condition.
            tokio::time::sleep(d).await;
            cluster.primary().signal("CONT").expect("SIGCONT");
        }
        Fault::FreezePastDownAfter => {
            cluster.primary().signal("STOP").expect("SIGSTOP");
            let switched = poll(Duration::from_secs(60), || async {
                primary_addr(proxy).is_some_and(|p| p != *old)
            })
            .await;
            // Thawed a moment after the switch, as a VM pause ends: it answers what it had received.
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.primary().signal("CONT").expect("SIGCONT");
            assert!(
                switched,
                "{name}: the proxy follows Sentinel to another primary"
            );
        }
        Fault::SentinelFailover => {
            let reply = cluster.sentinels()[0]
                .call(&["SENTINEL", "FAILOVER", MASTER_NAME])
                .await
                .expect("SENTINEL FAILOVER");
            note = format!("sentinel_reply={} ", text(reply));
            let switched = poll(Duration::from_secs(60), || async {
                primary_addr(proxy).is_some_and(|p| p != *old)
            })
            .await;
            assert!(
                switched,
                "{name}: the proxy follows Sentinel to another primary"
            );
        }
        Fault::Switchovers(n) => {
            let mut statuses = Vec::new();
            let mut refusals: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            while statuses.iter().filter(|s| **s == 200).count() < n && Instant::now() < deadline {
                let (status, body) = http(proxy.admin, "POST", "/failover").await;
                statuses.push(status);
                if status != 200 {
                    let refusal = format!("{status}:{body}");
                    if !refusals.contains(&refusal) {
                        refusals.push(refusal);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            let done = statuses.iter().filter(|s| **s == 200).count();
            switchovers = Some((n, done));
            note = format!("statuses={statuses:?} refusals={refusals:?} ");
        }
    }
    Inflicted {
        excused,
        switchovers,
        note,
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `patience` is over (false).
async fn poll<F, Fut>(patience: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether every writer gets `n` more writes acknowledged within `patience`.
async fn progress(load: &Load, n: u64, patience: Duration) -> bool {
    let from = load.acks();
    poll(patience, || async {
        load.acks()
            .iter()
            .zip(&from)
            .all(|(now, from)| *now >= from + n)
    })
    .await
}

/// The role a data server answers.
#[derive(Debug, PartialEq)]
enum Role {
    Master,
    /// A replica of the server on this port, with its link up or not.
    Replica {
        port: u16,
        connected: bool,
    },
    /// Not running, or not answering.
    Silent,
}

/// The data servers, with their roles now.
async fn roles(cluster: &Cluster) -> Vec<(&Server, Role)> {
    let mut out = Vec::new();
    for s in std::iter::once(cluster.primary()).chain(cluster.replicas()) {
        let role = match s.pid() {
            None => Role::Silent,
            Some(_) => match s.call(&["ROLE"]).await {
                Ok(OwnedFrame::Array(r)) => match r.first().map(|f| text(f.clone())).as_deref() {
                    Some("master") => Role::Master,
                    Some("slave") => Role::Replica {
                        port: r
                            .get(2)
                            .and_then(|p| match p {
                                OwnedFrame::Integer(p) => u16::try_from(*p).ok(),
                                _ => None,
                            })
                            .unwrap_or(0),
                        connected: r.get(3).map(|f| text(f.clone())).as_deref()
                            == Some("connected"),
                    },
                    _ => Role::Silent,
                },
                _ => Role::Silent,
            },
        };
        out.push((s, role));
    }
    out
}

/// Waits until the running servers agree: one master, every other a replica with its link up (of it,
/// or of one of its replicas). Returns the master's address, `None` if they did not agree in `patience`.
async fn converge(cluster: &Cluster, patience: Duration) -> Option<Addr> {
    let deadline = Instant::now() + patience;
    loop {
        let roles = roles(cluster).await;
        let masters: Vec<_> = roles.iter().filter(|(_, r)| *r == Role::Master).collect();
        let replicas_up = roles.iter().all(|(_, r)| {
            matches!(
                r,
                Role::Master
                    | Role::Replica {
                        connected: true,
                        ..
                    }
            ) || *r == Role::Silent
        });
        let running = roles.iter().filter(|(s, _)| s.pid().is_some()).count();
        let silent_running = roles
            .iter()
            .any(|(s, r)| s.pid().is_some() && *r == Role::Silent);
        if masters.len() == 1 && replicas_up && !silent_running && running > 0 {
            return Some(masters[0].0.addr());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The final primary: the master the most replicas follow.
async fn final_primary(cluster: &Cluster) -> &Server {
    let roles = roles(cluster).await;
    roles
        .iter()
        .filter(|(_, r)| *r == Role::Master)
        .max_by_key(|(s, _)| {
            roles
                .iter()
                .filter(|(_, r)| matches!(r, Role::Replica { port, .. } if *port == s.port))
                .count()
        })
        .map(|(s, _)| *s)
        .expect("a server answers ROLE master")
}

/// Each writer's keys, read straight from the final primary.
async fn final_state(cluster: &Cluster) -> Vec<Final> {
    let mut c = direct(final_primary(cluster).await).await;
    let mut out = Vec::new();
    for w in 0..WRITERS {
        let counter: Option<i64> = q(&mut c, &["GET", &format!("chaos:c:{w}")]).await;
        let list: Vec<String> = q(&mut c, &["LRANGE", &format!("chaos:l:{w}"), "0", "-1"]).await;
        out.push(Final {
            counter: counter.unwrap_or(0),
            list,
        });
    }
    out
}

/// Watches, from the fault on, which primary the sentinels name and which the proxy publishes.
struct Watch {
    stop: Arc<AtomicBool>,
    sentinels: tokio::task::JoinHandle<Vec<(Instant, String)>>,
    proxy: tokio::task::JoinHandle<Vec<(Instant, String)>>,
}

impl Watch {
    fn start(cluster: &Cluster, proxy: &Proxy) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let addrs: Vec<Addr> = cluster.sentinels().iter().map(|s| s.addr()).collect();
        let sentinels = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen: Vec<(Instant, String)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for a in &addrs {
                        let ask: &[&str] = &["SENTINEL", "get-master-addr-by-name", MASTER_NAME];
                        if let Ok(OwnedFrame::Array(hp)) = redsplit::embedded::call(a, &[ask]).await
                        {
                            let named = hp.into_iter().map(text).collect::<Vec<_>>().join(":");
                            if seen.last().map(|(_, p)| p) != Some(&named) {
                                seen.push((Instant::now(), named));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        };
        let proxy = {
            let (topo, stop) = (proxy.topo.clone(), stop.clone());
            let mut changes = topo.subscribe();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let changed =
                        tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
                    if matches!(changed, Ok(Err(_))) {
                        break;
                    }
                    let now = topo
                        .snapshot()
                        .primary()
                        .map_or("-".into(), |n| n.addr.to_string());
                    if seen.last().map(|(_, p)| p) != Some(&now) {
                        seen.push((Instant::now(), now));
                    }
                }
                seen
            })
        };
        Watch {
            stop,
            sentinels,
            proxy,
        }
    }

    /// How long after `from` a sentinel first named a primary other than `old`, and the proxy published
    /// one; and the primaries the proxy published (ms after `from`).
    async fn stop(
        self,
        old: &Addr,
        from: Instant,
    ) -> (Option<Duration>, Option<Duration>, Vec<(u128, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        let sentinels = self.sentinels.await.expect("sentinel watch");
        let proxy = self.proxy.await.expect("proxy watch");
        let old = old.to_string();
        let first = |seen: &[(Instant, String)]| {
            seen.iter()
                .find(|(_, p)| *p != old)
                .map(|(at, _)| at.saturating_duration_since(from))
        };
        let published = proxy
            .iter()
            .map(|(at, p)| (at.saturating_duration_since(from).as_millis(), p.clone()))
            .collect();
        (first(&sentinels), first(&proxy), published)
    }
}
