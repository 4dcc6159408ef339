//! The checks of a chaos scenario's history against the state read straight from the final primary
//! (read-your-writes, monotonic reads and order are checked by the load as replies come).
//!
//! A write is lost when it was acknowledged and the final primary lacks it: an id not in the list; an
//! `INCR` whose value the counter no longer reaches, or that a later `INCR` was given again (the counter
//! went back). It is duplicated when it ran twice: an id twice in the list, or a counter further ahead
//! than the increments sent (acknowledged or not). A list's ids must be in the order sent.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::load::{keep, keep_distinct, History, Write, WriterLog};

/// What a writer's keys hold on the final primary.
pub struct Final {
    /// `GET chaos:c:{w}`, 0 if absent.
    pub counter: i64,
    /// `LRANGE chaos:l:{w} 0 -1`.
    pub list: Vec<String>,
}

/// The figures of one scenario.
#[derive(Debug, Default)]
pub struct Figures {
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes that failed (outcome unknown).
    pub unknown: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Acknowledged writes the final primary lacks.
    pub lost: u64,
    /// Of those, the ones acknowledged within the window around the excused instant (kill -9: see the
    /// scenario).
    pub lost_in_window: u64,
    /// Writes that ran more often than they were sent.
    pub dup: u64,
    /// Reads older than the connection's own acknowledged write.
    pub ryw: u64,
    /// Reads older than an earlier read on the same connection.
    pub monotonic: u64,
    /// Replies out of their place in a pipeline.
    pub order: u64,
    /// Ids out of sequence in a final list (a write ran after one sent later).
    pub list_order: u64,
    /// The longest time without any acknowledged write, across all writers.
    pub longest_write_pause: Duration,
    /// Acknowledged writes after the fault, per writer.
    pub after_fault: Vec<u64>,
    /// Connections opened again after the proxy closed them.
    pub reconnects: u64,
    /// The first distinct error messages.
    pub errors: Vec<String>,
    /// Examples of each anomaly.
    pub examples: Vec<String>,
}

/// Checks `history` against each writer's keys on the final primary (`finals`, in writer order):
/// `fault_end` is when the fault was over; writes lost within the window of the `excused` instant are
/// counted apart.
pub fn check(
    history: &History,
    finals: &[Final],
    fault_end: Instant,
    excused: Option<(Instant, Duration)>,
) -> Figures {
    let mut f = Figures::default();
    let mut ok_at = Vec::new();
    for (w, (log, fin)) in history.writers.iter().zip(finals).enumerate() {
        check_writer(
            w,
            log,
            fin,
            history.started,
            fault_end,
            excused,
            &mut f,
            &mut ok_at,
        );
    }
    for log in &history.readers {
        f.read_errors += log.read_errors;
        f.monotonic += log.monotonic;
        f.order += log.order;
        f.reconnects += log.reconnects;
        keep(&mut f.examples, log.examples.iter().cloned());
        keep_distinct(&mut f.errors, log.errors.iter().cloned());
    }
    ok_at.sort();
    ok_at.push(history.stopped);
    f.longest_write_pause = ok_at
        .windows(2)
        .map(|p| p[1].saturating_duration_since(p[0]))
        .max()
        .unwrap_or_default();
    f
}

impl Figures {
    /// One line of figures, to quote.
    pub fn line(&self) -> String {
        format!(
            "acked={} unknown={} lost={} lost_in_window={} dup={} ryw={} mono={} order={} list_order={} \
             longest_write_pause_ms={} read_errors={} after_fault={:?} reconnects={}",
            self.acked,
            self.unknown,
            self.lost,
            self.lost_in_window,
            self.dup,
            self.ryw,
            self.monotonic,
            self.order,
            self.list_order,
            self.longest_write_pause.as_millis(),
            self.read_errors,
            self.after_fault,
            self.reconnects
        )
    }
}

/// Checks writer `w`'s history against its keys on the final primary.
#[allow(clippy::too_many_arguments)]
fn check_writer(
    w: usize,
    log: &WriterLog,
    fin: &Final,
    started: Instant,
    fault_end: Instant,
    excused: Option<(Instant, Duration)>,
    f: &mut Figures,
    ok_at: &mut Vec<Instant>,
) {
    let in_window = |at: Instant| {
        excused.is_some_and(|(e, window)| {
            e.saturating_duration_since(at) <= window && at.saturating_duration_since(e) <= window
        })
    };
    let lost = |at: Instant, what: String, f: &mut Figures| {
        f.lost += 1;
        if in_window(at) {
            f.lost_in_window += 1;
        }
        let ms = at.saturating_duration_since(started).as_millis();
        keep(&mut f.examples, [format!("{what} ({ms} ms)")]);
    };
    f.ryw += log.ryw;
    f.monotonic += log.monotonic;
    f.read_errors += log.read_errors;
    f.reconnects += log.reconnects;
    keep(&mut f.examples, log.examples.iter().cloned());
    keep_distinct(&mut f.errors, log.errors.iter().cloned());
    let mut after = 0;
    for write in &log.writes {
        match write {
            Write::Incr(_, at) | Write::Push(_, at) => {
                f.acked += 1;
                ok_at.push(*at);
                after += u64::from(*at > fault_end);
            }
            Write::IncrUnknown | Write::PushUnknown => f.unknown += 1,
        }
    }
    f.after_fault.push(after);

    // INCR: an acknowledged value is lost when the final counter is below it, or when a later INCR was
    // given a value not above it (the counter went back). It ran twice when a value is further ahead of
    // the one before than the INCRs sent in between.
    let incrs: Vec<(i64, Instant)> = log
        .writes
        .iter()
        .filter_map(|x| match x {
            Write::Incr(v, at) => Some((*v, *at)),
            _ => None,
        })
        .collect();
    let mut later_min = fin.counter + 1;
    for (v, at) in incrs.iter().rev() {
        if *v >= later_min {
            lost(
                *at,
                format!(
                    "writer {w}: INCR acknowledged {v}, the counter later at {}",
                    later_min - 1
                ),
                f,
            );
        }
        later_min = later_min.min(*v);
    }
    let (mut prev, mut sent) = (0i64, 0i64);
    for x in &log.writes {
        match x {
            Write::IncrUnknown => sent += 1,
            Write::Incr(v, _) => {
                sent += 1;
                if *v > prev + sent {
                    f.dup += (*v - prev - sent) as u64;
                    keep(
                        &mut f.examples,
                        [format!(
                            "writer {w}: INCR gave {v} after {prev} with {sent} sent"
                        )],
                    );
                }
                (prev, sent) = (*v, 0);
            }
            _ => {}
        }
    }
    if fin.counter > prev + sent {
        f.dup += (fin.counter - prev - sent) as u64;
        keep(
            &mut f.examples,
            [format!(
                "writer {w}: final counter {} after {prev} with {sent} sent",
                fin.counter
            )],
        );
    }

    // RPUSH: every acknowledged id is in the final list, none twice, in the order sent.
    let mut present = HashSet::new();
    let mut last: Option<u64> = None;
    for id in &fin.list {
        let seq = id
            .strip_prefix(&format!("{w}:"))
            .and_then(|s| s.parse::<u64>().ok());
        let Some(seq) = seq else {
            f.list_order += 1;
            keep(&mut f.examples, [format!("writer {w}: foreign id {id:?}")]);
            continue;
        };
        if !present.insert(seq) {
            f.dup += 1;
            keep(&mut f.examples, [format!("writer {w}: id {id} twice")]);
        } else if last.is_some_and(|l| seq < l) {
            f.list_order += 1;
            keep(
                &mut f.examples,
                [format!("writer {w}: id {id} after {w}:{last:?}")],
            );
        }
        last = Some(last.map_or(seq, |l| l.max(seq)));
    }
    for x in &log.writes {
        if let Write::Push(seq, at) = x {
            if !present.contains(seq) {
                lost(
                    *at,
                    format!("writer {w}: id {w}:{seq} acknowledged, not in the list"),
                    f,
                );
            }
        }
    }
}
