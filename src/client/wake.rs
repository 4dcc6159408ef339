//! A wake gate: lets the session loop skip polling a future that has not woken it.
//!
//! The session's `select!` polls every arm on every turn, two or three turns per command. Some arms are
//! costly to poll and almost never ready: the shutdown token (two locks shared by every session of every
//! worker thread) and the deadline tick (a timer registration). A gate polls its future with a waker of
//! its own, which notes the wake-up and passes it on to the task; until that happens, polling the gate
//! costs one atomic load.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Gates the polls of one future (or one poll function with its own registration, like a timer).
#[derive(Debug)]
pub(super) struct WakeGate {
    flag: Arc<Flag>,
    /// `flag` as a waker, made once.
    waker: Waker,
    /// The task's waker last handed to `flag`; `None` until the first poll.
    task: Option<Waker>,
}

#[derive(Debug, Default)]
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .expect("wake gate lock is never poisoned: nothing panics while holding it")
            .clone();
        if let Some(t) = task {
            t.wake();
        }
    }
}

impl Default for WakeGate {
    fn default() -> WakeGate {
        let flag = Arc::new(Flag::default());
        WakeGate {
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }
}

impl WakeGate {
    /// Calls `f` with a context whose waker opens the gate, unless the gate is shut: `f` was called before
    /// and its waker has not fired since. `f` must register that waker whenever it returns `Pending`.
    pub fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let same_task = self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if !same_task {
            // First poll, or polled from another task: wake-ups go to this one now, and `f` is called in
            // case one was missed meanwhile.
            *self
                .flag
                .task
                .lock()
                .expect("wake gate lock is never poisoned: nothing panics while holding it") =
                Some(cx.waker().clone());
            self.task = Some(cx.waker().clone());
        } else if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let out = f(&mut Context::from_waker(&self.waker));
        if out.is_ready() {
            // `f` registered nothing this time: call it on the next poll.
            self.task = None;
        }
        out
    }
}

/// Resolves once the token is cancelled; cheap to poll again while it is not (see [`WakeGate`]).
pub(super) struct Shutdown {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    gate: WakeGate,
}

impl Shutdown {
    pub fn new(token: CancellationToken) -> Shutdown {
        Shutdown {
            cancelled: Box::pin(token.cancelled_owned()),
            gate: WakeGate::default(),
        }
    }
}

impl Future for Shutdown {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let cancelled = &mut this.cancelled;
        this.gate.poll_with(cx, |cx| cancelled.as_mut().poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_resolves_when_the_token_is_cancelled_after_the_first_poll() {
        let token = CancellationToken::new();
        let mut shutdown = Shutdown::new(token.clone());
        let mut polls = 0;
        let first = std::future::poll_fn(|cx| {
            polls += 1;
            Poll::Ready(Pin::new(&mut shutdown).poll(cx))
        })
        .await;
        assert!(first.is_pending());
        // Not woken: stays pending without asking the token.
        let again = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut shutdown).poll(cx))).await;
        assert!(again.is_pending());
        let canceller = tokio::spawn(async move { token.cancel() });
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut shutdown)
            .await
            .expect("shutdown resolves once cancelled");
        canceller.await.expect("canceller ran");
        assert_eq!(polls, 1);
    }

    #[tokio::test]
    async fn shutdown_of_a_cancelled_token_resolves_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        Shutdown::new(token).await;
    }
}
