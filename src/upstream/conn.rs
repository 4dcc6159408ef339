//! The shared pipelined connection: many sessions' jobs written in order, replies cut off in order.
//!
//! One task per connection owns the socket and the job queue across reconnects:
//!
//! ```text
//!   idle ──job──▶ connecting ──ok──▶ running ──socket error──▶ idle (in-flight jobs fail: Lost)
//!                     │                  │
//!                     └──fail──▶ down (queued jobs fail: Connect) ──backoff──▶ idle
//! ```
//!
//! A job is pushed on the in-flight queue before its bytes are written, so a reply always finds its job.
//! Jobs still queued when a connection dies were never written: they wait for the next connection.
//!
//! A job whose writes replicas must acknowledge ([`Want::acks`]) gets `WAIT` after its batch, whose reply
//! the connection reads itself. While a WAIT is unanswered the node runs nothing else from this
//! connection, so jobs arriving meanwhile are gathered and written together once it answers, under one
//! WAIT (a group commit): a connection pays one acknowledgement round trip per group, not per batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use bytes::Bytes;

use super::{
    connect, offsets, verdict, Acks, ConnKey, Error, Job, JobTx, Node, Offsets, Reply, Stream,
    Verdicts, Want,
};
use crate::io::OutBuf;
use crate::metrics::BackendError;
use crate::node;
use crate::resp::ReplyScanner;

/// Handle to a shared connection task. Cloning is cheap; the task ends when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Shared {
    tx: JobTx,
    /// The node it connects to.
    pub node: Arc<Node>,
    /// When bytes last came from the node on this connection.
    pub progress: Arc<Progress>,
}

/// When a connection last received bytes from its node. A request waiting on it measures how long the
/// node has been silent, not how long ago the request went out: the node may be streaming the replies
/// queued ahead of it (a pipeline of large values), and one connection's replies come in order.
#[derive(Debug, Default)]
pub struct Progress(AtomicU64);

impl Progress {
    /// Notes bytes received now.
    fn mark(&self) {
        let micros = anchor().elapsed().as_micros() as u64;
        self.0.store(micros.max(1), Ordering::Relaxed);
    }

    /// When bytes last came, if ever.
    pub fn last(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(anchor() + Duration::from_micros(micros)),
        }
    }
}

/// The instant progress is counted from.
fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

/// Largest batch of queued jobs written with one system call.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// Longest a group of writes waiting for acknowledgements lingers for more (see `write_loop`).
const MAX_LINGER: Duration = Duration::from_millis(2);
/// Backoff after a failed connect: first and longest.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Shared {
    /// Spawns the connection task. It connects when the first job arrives.
    pub fn spawn(node: Arc<Node>, key: ConnKey) -> Shared {
        let (tx, rx) = mpsc::unbounded_channel();
        let span =
            tracing::debug_span!("upstream", addr = %node.addr, db = key.db, resp3 = key.resp3);
        let progress = Arc::new(Progress::default());
        tokio::spawn(run(node.clone(), key, rx, progress.clone()).instrument(span));
        Shared { tx, node, progress }
    }

    /// Queues a job. If the task is gone (it never ends while a handle exists), the job's receiver sees
    /// the sender dropped.
    pub fn send(&self, job: Job) {
        self.node
            .outstanding
            .fetch_add(job.count as usize, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            self.node
                .outstanding
                .fetch_sub(job.count as usize, Ordering::Relaxed);
        }
    }
}

async fn run(
    node: Arc<Node>,
    key: ConnKey,
    mut rx: mpsc::UnboundedReceiver<Job>,
    progress: Arc<Progress>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(job) = rx.recv().await else { return };
        let stream = match connect(&node.addr, &key, node.settings()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(upstream = %node.addr, error = %e, "upstream connect failed");
                node.metrics.load().error(BackendError::Connect);
                node.settings().refresh.notify_one();
                fail(&node, job, &e);
                // Fail everything queued now, then refuse new jobs until the backoff ends, so a dead node
                // costs clients an immediate error instead of a connect timeout each.
                let until = tokio::time::Instant::now() + backoff;
                while let Ok(Some(j)) = tokio::time::timeout_at(until, rx.recv()).await {
                    fail(&node, j, &e);
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        debug!(upstream = %node.addr, "upstream connected");
        let connections = node.metrics.load().connections.clone();
        connections.inc();
        // Jobs written (or being written) and not yet answered, oldest first. Both halves run in this one
        // task, so the lock is never contended; it only satisfies `Send`.
        let inflight = Mutex::new(InFlight::default());
        // One loop, compiled for each kind of halves: plain TCP keeps its lock-free owned halves.
        let ended = match stream {
            Stream::Plain(s) => {
                let (reader, writer) = s.into_split();
                drive(&node, reader, writer, &mut rx, &inflight, &progress, job).await
            }
            Stream::Tls(s) => {
                let (reader, writer) = tokio::io::split(s);
                drive(&node, reader, writer, &mut rx, &inflight, &progress, job).await
            }
        };
        connections.dec();
        let Ended::Broken(error) = ended else { return };
        let InFlight {
            slots,
            held,
            unsent,
            ..
        } = std::mem::take(&mut *lock(&inflight));
        // Answered in full: their replies go out, only without the offset after them (and, for those
        // that awaited acknowledgements, with none: their clients learn the writes are unacknowledged).
        for (job, reply) in held {
            deliver(&node, job, reply);
        }
        // Gathered behind a WAIT and never written: nothing ran.
        let never = Error::Connect {
            addr: node.addr.clone(),
            reason: "connection lost before the request was written".into(),
        };
        for j in unsent {
            fail(&node, j, &never);
        }
        let left: Vec<Job> = slots
            .into_iter()
            .filter_map(|s| match s {
                Slot::Job(j) => Some(j),
                Slot::Role { .. } | Slot::Wait(_) => None,
            })
            .collect();
        if let Some(e) = &error {
            node.metrics.load().error(match e {
                Error::Protocol { .. } => BackendError::Protocol,
                _ => BackendError::Lost,
            });
            warn!(upstream = %node.addr, error = %e, inflight = left.len(), "upstream connection lost");
            node.settings().refresh.notify_one();
        }
        // Whatever was written may have run: report it lost (or the node's garbage), never re-send it.
        let lost = match error {
            Some(e @ Error::Protocol { .. }) => e,
            _ => Error::Lost {
                addr: node.addr.clone(),
            },
        };
        for j in left {
            fail(&node, j, &lost);
        }
    }
}

/// What is in flight on a connection, in the order the node answers it.
#[derive(Default)]
struct InFlight {
    slots: VecDeque<Slot>,
    /// Jobs answered in full that wait for the offset measured after them, or for their WAIT.
    held: Vec<(Job, Reply)>,
    /// WAITs written and not yet answered: the node runs nothing else of this connection meanwhile.
    waits: usize,
    /// Jobs taken from the queue while a WAIT is unanswered, to be written once it is.
    unsent: Vec<Job>,
    /// When the oldest unanswered WAIT was written.
    wait_sent: VecDeque<Instant>,
    /// How long the last WAIT took to answer: the replicas' acknowledgement round trip.
    wait_took: Duration,
}

/// One thing the node will answer.
enum Slot {
    /// A client's job.
    Job(Job),
    /// The connection's own `ROLE` around a batch (`after`: after it), sent at measurement `epoch`.
    Role { after: bool, epoch: u64 },
    /// The connection's own `WAIT` after a batch, for the jobs that asked for these acknowledgements.
    Wait(Acks),
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.held.is_empty() && self.unsent.is_empty()
    }
}

/// How a connection's loops ended.
enum Ended {
    /// Every handle is gone and every reply delivered: the task ends.
    Finished,
    /// The connection broke (why, if known): what is in flight fails, and the next job connects again.
    Broken(Option<Error>),
}

/// Runs the reader and the writer of one connection until it breaks or is no longer needed.
async fn drive<R, W>(
    node: &Node,
    reader: R,
    writer: W,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    inflight: &Mutex<InFlight>,
    progress: &Progress,
    first: Job,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let writer_done = AtomicBool::new(false);
    // Rung by the reader as each WAIT is answered: the writer may write what it gathered meanwhile.
    let waited = tokio::sync::Notify::new();
    let read = read_loop(node, reader, inflight, progress, &writer_done, &waited);
    let write = write_loop(writer, rx, inflight, first, &waited);
    tokio::pin!(read, write);
    // Reader first: a connection the node closed is noticed before another job is written into it.
    tokio::select! {
        biased;
        // The socket failed or the node sent garbage.
        e = &mut read => Ended::Broken(e),
        // The socket refused a write, or every handle is gone.
        w = &mut write => match w {
            Err(e) => Ended::Broken(Some(Error::Connect { addr: node.addr.clone(), reason: e.to_string() })),
            Ok(()) => {
                // Let the reader answer what is in flight, then stop.
                writer_done.store(true, Ordering::Relaxed);
                if lock(inflight).is_empty() {
                    return Ended::Finished;
                }
                match read.await {
                    None => Ended::Finished,
                    e => Ended::Broken(e),
                }
            }
        },
    }
}

fn lock(q: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    q.lock()
        .expect("in-flight lock is never poisoned: nothing panics while holding it")
}

/// Writes jobs until every handle is dropped (`Ok`) or the socket fails.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    inflight: &Mutex<InFlight>,
    first: Job,
    waited: &tokio::sync::Notify,
) -> std::io::Result<()> {
    // Small requests are copied together, large ones written in place (vectored).
    let mut out = OutBuf::default();
    let mut batch: Vec<Job> = Vec::new();
    let mut next = Some(first);
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return Ok(()),
            },
        };
        // Let the other sessions woken in this tick queue their requests first, then write them all in
        // one system call: Redis answers a pipeline for a fraction of the CPU it spends per lone request.
        tokio::task::yield_now().await;
        // Batch whatever else is queued: many clients' requests in one write is the point of sharing.
        let mut size = 0;
        let mut job = Some(job);
        while let Some(j) = job.take() {
            size += j.bytes.len();
            batch.push(j);
            if size < MAX_BATCH_BYTES {
                job = rx.try_recv().ok();
            }
        }
        // A WAIT is unanswered: the node would run none of this before it answers anyway. Gather what
        // comes meanwhile and write it all then, under one WAIT.
        let waiting = lock(inflight).waits > 0;
        if waiting {
            lock(inflight).unsent.append(&mut batch);
            loop {
                tokio::select! {
                    biased;
                    // The last WAIT answered: write what was gathered.
                    _ = waited.notified() => if lock(inflight).waits == 0 { break },
                    // More to gather, while the group is not too large; every handle gone: write
                    // what was gathered, then stop when the queue is empty.
                    j = rx.recv(), if size < MAX_BATCH_BYTES => match j {
                        Some(j) => {
                            size += j.bytes.len();
                            let mut q = lock(inflight);
                            q.unsent.push(j);
                            if q.waits == 0 {
                                break;
                            }
                        }
                        None => {
                            // Wait for the WAIT's answer without gathering more.
                            size = MAX_BATCH_BYTES;
                        }
                    },
                }
            }
            batch.append(&mut lock(inflight).unsent);
        }
        // A group that waits for acknowledgements lingers a moment (an eighth of the last round trip to
        // the replicas, at most 2 ms) for the clients its WAIT just answered: their next writes join it
        // instead of forming a group of their own, which would wait behind this one for a whole round
        // trip (groups that split never merge again, and each costs every client one more round trip).
        // Under a millisecond (replicas close by) a timer would round up to one: the writer only lets
        // the sessions woken meanwhile queue first.
        let lingering = batch.iter().any(|j| j.want.acks.is_some());
        if lingering && size < MAX_BATCH_BYTES {
            let linger = (lock(inflight).wait_took / 8).min(MAX_LINGER);
            if linger >= Duration::from_millis(1) {
                let until = tokio::time::Instant::now() + linger;
                // Every handle gone, or the moment over: write what there is.
                while let Ok(Some(j)) = tokio::time::timeout_at(until, rx.recv()).await {
                    size += j.bytes.len();
                    batch.push(j);
                    if size >= MAX_BATCH_BYTES {
                        break;
                    }
                }
            } else if waiting {
                tokio::task::yield_now().await;
                while size < MAX_BATCH_BYTES {
                    let Ok(j) = rx.try_recv() else { break };
                    size += j.bytes.len();
                    batch.push(j);
                }
            }
        }
        let mut want = Want::NONE;
        let mut acks: Vec<Acks> = Vec::new();
        for j in &batch {
            want.before |= j.want.before;
            want.after |= j.want.after;
            if let Some(a) = j.want.acks {
                if !acks.contains(&a) {
                    acks.push(a);
                }
            }
        }
        // One WAIT per distinct requirement (clients of users with their own): the weakest first, so
        // that its jobs are not held for a stronger one's timeout. Each counts the same writes.
        acks.sort_unstable();
        {
            // Queued for the reader before the bytes go out, so a reply always finds its job; one `ROLE`
            // before and one after bracket every job of the batch that asked.
            let epoch = if want.any() { node::next_epoch() } else { 0 };
            let mut q = lock(inflight);
            if want.before {
                out.push(Bytes::from_static(offsets::ROLE));
                q.slots.push_back(Slot::Role {
                    after: false,
                    epoch,
                });
            }
            for j in batch.drain(..) {
                out.push(j.bytes.clone());
                q.slots.push_back(Slot::Job(j));
            }
            if want.after {
                out.push(Bytes::from_static(offsets::ROLE));
                q.slots.push_back(Slot::Role { after: true, epoch });
            }
            for a in acks {
                out.push(a.request());
                q.slots.push_back(Slot::Wait(a));
                q.waits += 1;
                q.wait_sent.push_back(Instant::now());
            }
        }
        out.write_to(&mut w).await?;
        // TLS keeps what the socket did not take until flushed; on plain TCP this returns at once.
        w.flush().await?;
    }
}

/// Reads replies and hands them to their jobs. Returns `None` once drained after the writer finished,
/// else the error that ended the connection.
async fn read_loop<R: AsyncRead + Unpin>(
    node: &Node,
    mut r: R,
    inflight: &Mutex<InFlight>,
    progress: &Progress,
    writer_done: &AtomicBool,
    waited: &tokio::sync::Notify,
) -> Option<Error> {
    let addr = &node.addr;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = ReplyScanner::new(node.settings().limits);
    let mut answered = 0u32;
    let mut scanned = 0usize;
    let mut verdicts = Verdicts::default();
    // The offset the last `ROLE` before a batch reported: what the batch's jobs see at least.
    let mut before: Option<u64> = None;
    loop {
        if writer_done.load(Ordering::Relaxed) && lock(inflight).is_empty() {
            return None;
        }
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            // After a large reply the buffer is the tail of its allocation: let it go with the reply
            // instead of keeping it alive for as long as this connection reads into it.
            buf = BytesMut::with_capacity(READ_CHUNK);
        } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Some(Error::Lost { addr: addr.clone() }),
            Ok(_) => progress.mark(),
        }
        loop {
            let frame = match scanner.scan(&buf[scanned..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(source) => {
                    return Some(Error::Protocol {
                        addr: addr.clone(),
                        source,
                    })
                }
            };
            if frame.is_push() {
                // Nothing enables pushes on a shared connection; drop any stray one without losing order.
                let tail = buf.split_off(scanned);
                buf.extend_from_slice(&tail[frame.len..]);
                continue;
            }
            let mut q = lock(inflight);
            match q.slots.front() {
                None => {
                    warn!(upstream = %addr, "reply without a request");
                    return Some(Error::Protocol {
                        addr: addr.clone(),
                        source: crate::resp::Error::UnexpectedReply,
                    });
                }
                // The connection's own ROLE: it answers no job; its offset brackets the batch's.
                Some(&Slot::Role { after, epoch }) => {
                    q.slots.pop_front();
                    let offset = offsets::role_offset(&buf[..frame.len]);
                    let _ = buf.split_to(frame.len);
                    if let Some(o) = offset {
                        node.repl.observe(epoch, o);
                    }
                    if after {
                        // Those that await a WAIT too stay held, with the offset.
                        let held = std::mem::take(&mut q.held);
                        let mut ready = Vec::new();
                        for (job, mut reply) in held {
                            reply.offsets.after = offset;
                            if job.want.acks.is_some() {
                                q.held.push((job, reply));
                            } else {
                                ready.push((job, reply));
                            }
                        }
                        drop(q);
                        for (job, reply) in ready {
                            deliver(node, job, reply);
                        }
                    } else {
                        before = offset;
                    }
                    continue;
                }
                // The connection's own WAIT: it answers no job; its count goes to the jobs that asked.
                Some(&Slot::Wait(acks)) => {
                    q.slots.pop_front();
                    q.waits = q.waits.saturating_sub(1);
                    if let Some(sent) = q.wait_sent.pop_front() {
                        q.wait_took = sent.elapsed();
                    }
                    let count = offsets::wait_count(&buf[..frame.len]);
                    if !buf.starts_with(b":") {
                        let reply = String::from_utf8_lossy(&buf[..frame.len.min(200)]);
                        warn!(upstream = %addr, reply = %reply.trim_end(), "WAIT refused: writes count as unacknowledged");
                    }
                    let _ = buf.split_to(frame.len);
                    let held = std::mem::take(&mut q.held);
                    let mut ready = Vec::new();
                    for (job, mut reply) in held {
                        if job.want.acks == Some(acks) {
                            reply.acked = Some(count);
                            ready.push((job, reply));
                        } else {
                            q.held.push((job, reply));
                        }
                    }
                    drop(q);
                    waited.notify_one();
                    for (job, reply) in ready {
                        deliver(node, job, reply);
                    }
                    continue;
                }
                Some(Slot::Job(_)) => {}
            }
            if frame.is_error() {
                let v = verdict::judge(&buf[scanned..scanned + frame.len]);
                if v.topology_changed() {
                    node.settings().refresh.notify_one();
                }
                verdicts.note(answered, v);
            }
            scanned += frame.len;
            answered += 1;
            let Some(Slot::Job(front)) = q.slots.front() else {
                continue;
            };
            if front.count == answered {
                let Some(Slot::Job(job)) = q.slots.pop_front() else {
                    continue;
                };
                let reply = Reply {
                    bytes: buf.split_to(scanned).freeze(),
                    verdicts: std::mem::take(&mut verdicts),
                    offsets: Offsets {
                        before: before.filter(|_| job.want.before),
                        after: None,
                    },
                    from_primary: node.is_primary(),
                    acked: None,
                };
                scanned = 0;
                answered = 0;
                if job.want.after || job.want.acks.is_some() {
                    q.held.push((job, reply));
                } else {
                    drop(q);
                    deliver(node, job, reply);
                }
            }
        }
    }
}

/// Hands a job its replies. A client that went away dropped its receiver; its replies are discarded.
fn deliver(node: &Node, job: Job, reply: Reply) {
    node.outstanding
        .fetch_sub(job.count as usize, Ordering::Relaxed);
    let _ = job.reply.send(Ok(reply));
}

fn fail(node: &Node, job: Job, e: &Error) {
    node.outstanding
        .fetch_sub(job.count as usize, Ordering::Relaxed);
    let _ = job.reply.send(Err(e.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Addr;
    use tokio::net::TcpListener;

    /// Reads exactly `n` bytes from `sock`.
    async fn read_n(sock: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        sock.read_exact(&mut buf).await.expect("read");
        buf
    }

    fn cmd(args: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        crate::resp::encode_command(&mut out, args);
        Bytes::from(out)
    }

    #[tokio::test]
    async fn jobs_arriving_while_a_wait_is_unanswered_go_out_together_under_one_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = Addr::parse(&listener.local_addr().expect("addr").to_string()).expect("addr");
        let node = Node::new(addr, crate::upstream::test_settings());
        let conn = Shared::spawn(node, ConnKey::default());
        let acks = Acks {
            replicas: 1,
            timeout_ms: 100,
        };
        let want = Want {
            acks: Some(acks),
            ..Want::NONE
        };
        let wait = acks.request();
        let first = crate::upstream::submit(&conn, cmd(&[b"SET", b"a", b"1"]), 1, want);
        let (mut sock, _) = listener.accept().await.expect("accept");
        // The connection opens once the node answers a PING.
        let ping = cmd(&[b"PING"]);
        assert_eq!(read_n(&mut sock, ping.len()).await, ping);
        sock.write_all(b"+PONG\r\n").await.expect("answer");
        let want_bytes = [cmd(&[b"SET", b"a", b"1"]), wait.clone()].concat();
        assert_eq!(read_n(&mut sock, want_bytes.len()).await, want_bytes);
        // Two more jobs, each given every chance to be written on its own while the WAIT is unanswered.
        let second = crate::upstream::submit(&conn, cmd(&[b"SET", b"b", b"1"]), 1, want);
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let read = crate::upstream::submit(&conn, cmd(&[b"GET", b"b"]), 1, Want::NONE);
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        sock.write_all(b"+OK\r\n:1\r\n").await.expect("answer");
        let r = first.await.expect("delivered").expect("replied");
        assert_eq!((&r.bytes[..], r.acked), (&b"+OK\r\n"[..], Some(1)));
        let want_bytes = [cmd(&[b"SET", b"b", b"1"]), cmd(&[b"GET", b"b"]), wait].concat();
        assert_eq!(
            String::from_utf8_lossy(&read_n(&mut sock, want_bytes.len()).await),
            String::from_utf8_lossy(&want_bytes),
            "one write, one WAIT for both"
        );
        sock.write_all(b"+OK\r\n$1\r\n1\r\n:0\r\n")
            .await
            .expect("answer");
        let r = second.await.expect("delivered").expect("replied");
        assert_eq!(r.acked, Some(0));
        let r = read.await.expect("delivered").expect("replied");
        assert_eq!((&r.bytes[..], r.acked), (&b"$1\r\n1\r\n"[..], None));
    }
}
