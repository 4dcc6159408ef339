//! The output budget every client shares (`max_total_output_bytes`): replies waiting for clients that do
//! not read them, summed over every session on every worker. Past it the largest consumers are closed
//! first, until the rest fits, as Redis's client eviction (`maxmemory-clients`) does.
//!
//! Each session holds a [`Charge`] and reports its output to it after every turn. The hot path is cheap:
//! output under [`GRAIN`] (a reply written at once, the usual case) is not counted, so most turns touch
//! nothing shared; larger output costs one atomic add on the total (the gauge
//! `redsplit_client_output_bytes` is that total). Only when the total passes the budget does the session
//! that pushed it over take the registry's lock, pick the largest consumers and wake them; each closes on
//! its own worker.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// Output below this is not counted: at most this much per client escapes the budget (40 MiB over 10,000
/// clients), and a client that takes its replies at once never touches the shared total.
const GRAIN: usize = 4096;

/// The budget and the sessions that draw on it.
#[derive(Debug)]
pub(super) struct Budget {
    /// `None`: no total limit (only the gauge is kept).
    limit: Option<usize>,
    /// Bytes counted now, over every session.
    total: IntGauge,
    /// Every session with output counted or possible, by session id.
    clients: Mutex<FxHashMap<u64, Arc<Usage>>>,
}

/// One session's share, as the budget sees it.
#[derive(Debug, Default)]
struct Usage {
    /// Bytes counted for it now.
    bytes: AtomicUsize,
    /// Chosen to be closed.
    evicted: AtomicBool,
    /// Wakes the session once chosen.
    wake: Notify,
}

impl Budget {
    /// A budget of `limit` bytes (none: unlimited), counted on `total`.
    pub fn new(limit: Option<usize>, total: IntGauge) -> Budget {
        Budget {
            limit,
            total,
            clients: Mutex::new(FxHashMap::default()),
        }
    }

    /// The charge of session `id`, which leaves the budget when dropped.
    pub fn charge(self: &Arc<Budget>, id: u64) -> Charge {
        let usage = Arc::new(Usage::default());
        if self.limit.is_some() {
            self.lock().insert(id, usage.clone());
        }
        Charge {
            budget: self.clone(),
            id,
            usage,
            charged: 0,
        }
    }

    /// Chooses sessions to close, largest first, until what the others hold fits in the budget.
    /// Sessions chosen earlier that have not closed yet count as gone. If another session is choosing
    /// already, leaves it to that one.
    fn evict(&self, limit: usize) {
        let Ok(clients) = self.clients.try_lock() else {
            return;
        };
        let total = usize::try_from(self.total.get()).unwrap_or(0);
        let bytes = |u: &Usage| u.bytes.load(Ordering::Relaxed);
        let mut freed: usize = clients
            .values()
            .filter(|u| u.evicted.load(Ordering::Relaxed))
            .map(|u| bytes(u))
            .sum();
        if total.saturating_sub(freed) <= limit {
            return;
        }
        let mut largest: Vec<&Arc<Usage>> = clients
            .values()
            .filter(|u| !u.evicted.load(Ordering::Relaxed) && bytes(u) > 0)
            .collect();
        largest.sort_unstable_by_key(|u| Reverse(bytes(u)));
        for u in largest {
            if total.saturating_sub(freed) <= limit {
                break;
            }
            freed += bytes(u);
            u.evicted.store(true, Ordering::Relaxed);
            u.wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Arc<Usage>>> {
        self.clients
            .lock()
            .expect("budget registry lock is never poisoned: nothing panics while holding it")
    }
}

/// A session's draw on the budget.
#[derive(Debug)]
pub(super) struct Charge {
    budget: Arc<Budget>,
    id: u64,
    usage: Arc<Usage>,
    /// What this session has counted on the total.
    charged: usize,
}

impl Charge {
    /// Reports the session's output now; past the budget, chooses sessions to close (this one, if it
    /// is among the largest).
    pub fn set(&mut self, output: usize) {
        let now = if output < GRAIN { 0 } else { output };
        if now == self.charged {
            return;
        }
        let grew = now > self.charged;
        self.budget.total.add(now as i64 - self.charged as i64);
        self.usage.bytes.store(now, Ordering::Relaxed);
        self.charged = now;
        if let Some(limit) = self.budget.limit {
            if grew && usize::try_from(self.budget.total.get()).unwrap_or(0) > limit {
                self.budget.evict(limit);
            }
        }
    }

    /// True once the session was chosen to be closed.
    pub fn is_evicted(&self) -> bool {
        self.usage.evicted.load(Ordering::Relaxed)
    }

    /// Resolves once the session is chosen to be closed.
    pub async fn evicted(&self) {
        while !self.is_evicted() {
            self.usage.wake.notified().await;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.total.sub(self.charged as i64);
        if self.budget.limit.is_some() {
            self.budget.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<Budget> {
        let gauge = IntGauge::new("output", "output").expect("gauge");
        Arc::new(Budget::new(Some(limit), gauge))
    }

    #[test]
    fn past_the_budget_the_largest_are_chosen_until_the_rest_fits() {
        let b = budget(100_000);
        let mut charges: Vec<Charge> = (0..4).map(|id| b.charge(id)).collect();
        charges[0].set(10_000);
        charges[1].set(50_000);
        charges[2].set(30_000);
        assert!(charges.iter().all(|c| !c.is_evicted()), "90,000 fit");
        // 130,000: the largest alone (50,000) brings it back to 80,000.
        charges[3].set(40_000);
        let evicted: Vec<bool> = charges.iter().map(Charge::is_evicted).collect();
        assert_eq!(evicted, [false, true, false, false]);
        // Growing again while the chosen one has not closed yet: it counts as gone.
        charges[3].set(50_000);
        assert!(!charges[3].is_evicted() && !charges[2].is_evicted());
        charges.remove(1);
        assert_eq!(b.total.get(), 90_000);
    }

    #[test]
    fn output_taken_at_once_is_not_counted_and_leaving_gives_back_what_was() {
        let b = budget(10_000);
        let mut c = b.charge(1);
        c.set(GRAIN - 1);
        assert_eq!(b.total.get(), 0);
        c.set(8_000);
        assert_eq!(b.total.get(), 8_000);
        drop(c);
        assert_eq!(b.total.get(), 0);
        assert!(b.lock().is_empty());
    }
}
