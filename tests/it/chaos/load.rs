//! The load of a chaos scenario, and the history it records: writers and readers run through the proxy
//! while a fault happens, and every acknowledged reply and every error is kept (`checker.rs` checks it).
//!
//! - A writer owns a counter `chaos:c:{w}` and a list `chaos:l:{w}`. Each round it sends `INCR` on the
//!   counter, then `GET` of it; `RPUSH` of a fresh id (`{w}:{seq}`, `seq` rising), then `LRANGE -1 -1` (the
//!   tail): each write followed by a read of it on the same connection, which session consistency
//!   promises to see (read-your-writes) and never to see go back (monotonic reads). Those two are checked
//!   as the replies come.
//! - A reader pipelines pairs `ECHO tag`, `GET` of some writer's counter on one connection: each tag must
//!   come back in its place (order), and no counter may go back between its reads (monotonic reads).
//! - A write that fails has an unknown outcome: it may have run.
//!
//! A connection the proxy closes is opened again: a new session, whose promises start afresh. Each
//! anomaly's example says when it was seen and what every server held of the key then.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::Value;

/// How many writers and readers a scenario runs.
pub const WRITERS: usize = 3;
const READERS: usize = 2;
/// Pairs (`ECHO`, `GET`) in one reader pipeline.
const PAIRS: usize = 8;
/// Examples kept of each kind of anomaly, for the failure message.
const EXAMPLES: usize = 5;

/// The load running through a proxy: stop it with [`Load::stop`].
pub struct Load {
    /// When the load started: examples give their time from it.
    pub started: Instant,
    stop: Arc<AtomicBool>,
    /// Acknowledged writes so far, per writer.
    acks: Arc<Vec<AtomicU64>>,
    writers: Vec<tokio::task::JoinHandle<WriterLog>>,
    readers: Vec<tokio::task::JoinHandle<ReaderLog>>,
}

/// What the load recorded, once stopped.
pub struct History {
    /// Each writer's, in writer order.
    pub writers: Vec<WriterLog>,
    /// Each reader's.
    pub readers: Vec<ReaderLog>,
    /// When the load was told to stop.
    pub stopped: Instant,
    /// When the load started: examples give their time from it.
    pub started: Instant,
}

/// One write a writer sent, in the order sent.
#[derive(Debug, Clone, Copy)]
pub enum Write {
    /// `INCR` answered with this value, at this instant.
    Incr(i64, Instant),
    /// `INCR` failed: it may have run.
    IncrUnknown,
    /// `RPUSH` of id `seq` acknowledged at this instant.
    Push(u64, Instant),
    /// `RPUSH` failed: it may have run.
    PushUnknown,
}

/// What one writer saw.
#[derive(Default)]
pub struct WriterLog {
    /// Every write sent, in order.
    pub writes: Vec<Write>,
    /// Reads that failed, or answered what no read of the key answers.
    pub read_errors: u64,
    /// Reads older than the session's own acknowledged write of the key.
    pub ryw: u64,
    /// Reads older than the session's earlier read of the key.
    pub monotonic: u64,
    /// Connections opened again after the proxy closed one.
    pub reconnects: u64,
    /// The first distinct error messages.
    pub errors: Vec<String>,
    /// The first anomalies, with what the servers held.
    pub examples: Vec<String>,
}

/// What one reader saw.
#[derive(Default)]
pub struct ReaderLog {
    /// Pipelines sent.
    pub batches: u64,
    /// Reads that failed (a pipeline that failed as a whole counts once).
    pub read_errors: u64,
    /// Reads older than the session's earlier read of the key.
    pub monotonic: u64,
    /// Replies out of their place in a pipeline.
    pub order: u64,
    /// Connections opened again after the proxy closed one.
    pub reconnects: u64,
    /// The first distinct error messages.
    pub errors: Vec<String>,
    /// The first anomalies, with what the servers held.
    pub examples: Vec<String>,
}

impl Load {
    /// Starts the writers and readers against the proxy at `addr`. An anomaly's example says what
    /// each of `servers` (named) holds of the key when it is seen.
    pub async fn start(addr: SocketAddr, servers: Vec<(String, SocketAddr)>) -> Load {
        let witness = Arc::new(Witness {
            started: Instant::now(),
            servers,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let conn = connect(addr).await;
            let (stop, acks) = (stop.clone(), acks.clone());
            writers.push(tokio::spawn(writer(
                w,
                witness.clone(),
                addr,
                conn,
                stop,
                acks,
            )));
        }
        let mut readers = Vec::new();
        for r in 0..READERS {
            let conn = connect(addr).await;
            readers.push(tokio::spawn(reader(
                r,
                witness.clone(),
                addr,
                conn,
                stop.clone(),
            )));
        }
        Load {
            started: witness.started,
            stop,
            acks,
            writers,
            readers,
        }
    }

    /// Acknowledged writes so far, per writer.
    pub fn acks(&self) -> Vec<u64> {
        self.acks
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops the load: what it recorded.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        let mut writers = Vec::new();
        for w in self.writers {
            let log = tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("a writer stops within a minute")
                .expect("writer task");
            writers.push(log);
        }
        let mut readers = Vec::new();
        for r in self.readers {
            let log = tokio::time::timeout(Duration::from_secs(60), r)
                .await
                .expect("a reader stops within a minute")
                .expect("reader task");
            readers.push(log);
        }
        History {
            writers,
            readers,
            stopped,
            started: self.started,
        }
    }
}

/// Writer `w`: rounds of INCR + GET, RPUSH + LRANGE tail, until `stop`.
async fn writer(
    w: usize,
    witness: Arc<Witness>,
    addr: SocketAddr,
    mut c: MultiplexedConnection,
    stop: Arc<AtomicBool>,
    acks: Arc<Vec<AtomicU64>>,
) -> WriterLog {
    let (counter, list) = (format!("chaos:c:{w}"), format!("chaos:l:{w}"));
    let mut log = WriterLog::default();
    // This session's promises: the newest value it was acknowledged, the newest it read.
    let mut session = Session::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut dropped = false;
        match cmd(&mut c, &["INCR", &counter]).await {
            Ok(Value::Int(v)) => {
                log.writes.push(Write::Incr(v, Instant::now()));
                acks[w].fetch_add(1, Ordering::Relaxed);
                session.wrote_counter = session.wrote_counter.max(v);
            }
            Ok(other) => {
                log.writes.push(Write::IncrUnknown);
                keep_distinct(&mut log.errors, [format!("INCR answered {other:?}")]);
            }
            Err(e) => {
                log.writes.push(Write::IncrUnknown);
                dropped |= note_error(&mut log.errors, &e);
            }
        }
        // Once the connection is gone, the round ends: its other commands could not be sent.
        let get = if dropped {
            None
        } else {
            Some(cmd(&mut c, &["GET", &counter]).await)
        };
        match get {
            None => {}
            Some(Ok(v)) => match counter_value(&v) {
                Some(v) => {
                    if v < session.wrote_counter {
                        log.ryw += 1;
                        let what = format!(
                            "writer {w}: GET {v} after INCR acknowledged {}",
                            session.wrote_counter
                        );
                        witness
                            .note(&mut log.examples, what, &["GET", &counter])
                            .await;
                    } else if v < session.read_counter {
                        log.monotonic += 1;
                        let what =
                            format!("writer {w}: GET {v} after reading {}", session.read_counter);
                        witness
                            .note(&mut log.examples, what, &["GET", &counter])
                            .await;
                    }
                    session.read_counter = session.read_counter.max(v);
                }
                None => {
                    log.read_errors += 1;
                    keep_distinct(&mut log.errors, [format!("GET answered {v:?}")]);
                }
            },
            Some(Err(e)) => {
                log.read_errors += 1;
                dropped |= note_error(&mut log.errors, &e);
            }
        }
        if dropped {
            c = reconnect(addr, &stop).await;
            // A new connection is a new session: what the old one was promised does not carry over.
            session = Session::default();
            log.reconnects += 1;
            continue;
        }
        seq += 1;
        let id = format!("{w}:{seq}");
        match cmd(&mut c, &["RPUSH", &list, &id]).await {
            Ok(Value::Int(_)) => {
                log.writes.push(Write::Push(seq, Instant::now()));
                acks[w].fetch_add(1, Ordering::Relaxed);
                session.wrote_id = seq;
            }
            Ok(other) => {
                log.writes.push(Write::PushUnknown);
                keep_distinct(&mut log.errors, [format!("RPUSH answered {other:?}")]);
            }
            Err(e) => {
                log.writes.push(Write::PushUnknown);
                dropped |= note_error(&mut log.errors, &e);
            }
        }
        let tail = if dropped {
            None
        } else {
            Some(cmd(&mut c, &["LRANGE", &list, "-1", "-1"]).await)
        };
        match tail {
            None => {}
            Some(Ok(Value::Array(tail))) => {
                let got = match tail.first() {
                    None => Some(0),
                    Some(Value::BulkString(b)) => std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.strip_prefix(&format!("{w}:")))
                        .and_then(|s| s.parse::<u64>().ok()),
                    Some(_) => None,
                };
                match got {
                    Some(t) if t < session.wrote_id => {
                        log.ryw += 1;
                        let what = format!(
                            "writer {w}: list tail {w}:{t} after RPUSH {w}:{} acknowledged",
                            session.wrote_id
                        );
                        let probe = ["LRANGE", list.as_str(), "-1", "-1"];
                        witness.note(&mut log.examples, what, &probe).await;
                    }
                    Some(t) if t < session.read_id => {
                        log.monotonic += 1;
                        let what = format!(
                            "writer {w}: list tail {w}:{t} after reading {w}:{}",
                            session.read_id
                        );
                        let probe = ["LRANGE", list.as_str(), "-1", "-1"];
                        witness.note(&mut log.examples, what, &probe).await;
                    }
                    Some(_) => {}
                    None => {
                        log.read_errors += 1;
                        keep_distinct(&mut log.errors, [format!("LRANGE answered {tail:?}")]);
                    }
                }
                if let Some(t) = got {
                    session.read_id = session.read_id.max(t);
                }
            }
            Some(Ok(other)) => {
                log.read_errors += 1;
                keep_distinct(&mut log.errors, [format!("LRANGE answered {other:?}")]);
            }
            Some(Err(e)) => {
                log.read_errors += 1;
                dropped |= note_error(&mut log.errors, &e);
            }
        }
        if dropped {
            c = reconnect(addr, &stop).await;
            session = Session::default();
            log.reconnects += 1;
        }
        // A pace, not a wait: leaves the two shared cores to the servers and the proxy.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    log
}

/// Where and when an anomaly was seen: examples say it.
struct Witness {
    started: Instant,
    servers: Vec<(String, SocketAddr)>,
}

impl Witness {
    /// Adds `what` to `examples` (up to [`EXAMPLES`]), with the time since the load started and what
    /// each server answers to `probe` now (straight, not through the proxy; `?` if it does not answer
    /// within 300 ms, as a frozen one).
    async fn note(&self, examples: &mut Vec<String>, what: String, probe: &[&str]) {
        if examples.len() >= EXAMPLES {
            return;
        }
        let at = self.started.elapsed().as_millis();
        let mut held = Vec::new();
        for (name, addr) in &self.servers {
            let ask = async {
                let mut c = redis::Client::open(format!("redis://{addr}/"))
                    .ok()?
                    .get_multiplexed_async_connection()
                    .await
                    .ok()?;
                cmd(&mut c, probe).await.ok()
            };
            let v = match tokio::time::timeout(Duration::from_millis(300), ask).await {
                Ok(Some(v)) => short(&v),
                _ => "?".into(),
            };
            held.push(format!("{name}={v}"));
        }
        examples.push(format!("+{at}ms {what}; servers now: {}", held.join(" ")));
    }
}

/// A reply in a few characters.
fn short(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Array(a) => format!("[{}]", a.iter().map(short).collect::<Vec<_>>().join(",")),
        other => format!("{other:?}"),
    }
}

/// What a writer's session was acknowledged and has read.
#[derive(Default)]
struct Session {
    wrote_counter: i64,
    read_counter: i64,
    wrote_id: u64,
    read_id: u64,
}

/// Reader `r`: pipelines of `ECHO tag` and `GET` of a writer's counter, until `stop`.
async fn reader(
    r: usize,
    witness: Arc<Witness>,
    addr: SocketAddr,
    mut c: MultiplexedConnection,
    stop: Arc<AtomicBool>,
) -> ReaderLog {
    let mut log = ReaderLog::default();
    let mut seen: HashMap<usize, i64> = HashMap::new();
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    while !stop.load(Ordering::Relaxed) {
        log.batches += 1;
        let mut pipe = redis::pipe();
        let mut asked = Vec::new();
        for j in 0..PAIRS {
            let tag = format!("r{r}:{}:{j}", log.batches);
            let w = rng.random_range(0..WRITERS);
            pipe.cmd("ECHO").arg(&tag);
            pipe.cmd("GET").arg(format!("chaos:c:{w}"));
            asked.push((tag, w));
        }
        let sent = witness.started.elapsed().as_millis();
        let replies = match c.req_packed_commands(&pipe, 0, 2 * PAIRS).await {
            Ok(replies) => replies,
            Err(e) => {
                log.read_errors += 1;
                if note_error(&mut log.errors, &e) {
                    c = reconnect(addr, &stop).await;
                    seen.clear();
                    log.reconnects += 1;
                }
                continue;
            }
        };
        if replies.len() != 2 * PAIRS {
            log.order += 1;
            keep(
                &mut log.examples,
                [format!(
                    "reader {r}: {} replies to {} commands",
                    replies.len(),
                    2 * PAIRS
                )],
            );
            continue;
        }
        for ((tag, w), pair) in asked.iter().zip(replies.chunks(2)) {
            match &pair[0] {
                Value::BulkString(b) if b == tag.as_bytes() => {}
                Value::ServerError(e) => {
                    log.read_errors += 1;
                    keep_distinct(&mut log.errors, [format!("ECHO: {e:?}")]);
                }
                other => {
                    log.order += 1;
                    keep(
                        &mut log.examples,
                        [format!("reader {r}: ECHO {tag} answered {other:?}")],
                    );
                }
            }
            match (&pair[1], counter_value(&pair[1])) {
                (_, Some(v)) => {
                    let before = seen.get(w).copied().unwrap_or(0);
                    if v < before {
                        log.monotonic += 1;
                        let key = format!("chaos:c:{w}");
                        let what = format!(
                            "reader {r}: {key} read {v} after {before} (pair {tag} sent +{sent}ms)"
                        );
                        witness.note(&mut log.examples, what, &["GET", &key]).await;
                    }
                    seen.insert(*w, before.max(v));
                }
                (Value::ServerError(e), None) => {
                    log.read_errors += 1;
                    keep_distinct(&mut log.errors, [format!("GET: {e:?}")]);
                }
                (other, None) => {
                    log.order += 1;
                    keep(
                        &mut log.examples,
                        [format!(
                            "reader {r}: GET after ECHO {tag} answered {other:?}"
                        )],
                    );
                }
            }
        }
        // A pace, not a wait (see the writer).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    log
}

/// A counter's value from a `GET` reply: nil is 0; `None` if the reply is no counter.
fn counter_value(v: &Value) -> Option<i64> {
    match v {
        Value::Nil => Some(0),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// Sends one command.
async fn cmd(c: &mut MultiplexedConnection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await
}

/// Notes an error; true if the connection is gone.
fn note_error(errors: &mut Vec<String>, e: &redis::RedisError) -> bool {
    keep_distinct(errors, [e.to_string()]);
    e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error()
}

/// A connection to the proxy.
async fn connect(addr: SocketAddr) -> MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/"))
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the proxy")
}

/// A new connection to the proxy, tried until it connects (or the load stops: then one last try).
async fn reconnect(addr: SocketAddr, stop: &AtomicBool) -> MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("valid url");
    let started = Instant::now();
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return c,
            Err(e) => assert!(
                !stop.load(Ordering::Relaxed) && started.elapsed() < crate::wait::PATIENCE,
                "the proxy takes no connection: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds examples up to [`EXAMPLES`].
pub fn keep(to: &mut Vec<String>, from: impl IntoIterator<Item = String>) {
    for x in from {
        if to.len() >= EXAMPLES {
            return;
        }
        to.push(x);
    }
}

/// Adds distinct messages up to [`EXAMPLES`].
pub fn keep_distinct(to: &mut Vec<String>, from: impl IntoIterator<Item = String>) {
    for x in from {
        if to.len() >= EXAMPLES {
            return;
        }
        if !to.contains(&x) {
            to.push(x);
        }
    }
}
