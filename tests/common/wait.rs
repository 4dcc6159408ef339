//! Waiting on a condition, for every test binary: [`eventually!`] and the patience it has.

use std::time::Duration;

/// How long any condition in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls a condition (an expression, `.await` allowed) until it holds, failing the test after
/// [`PATIENCE`], or after the given patience for conditions that wait on a slow timer of Redis's own.
macro_rules! eventually {
    ($what:expr, $cond:expr) => {
        eventually!($what, $cond, $crate::wait::PATIENCE)
    };
    ($what:expr, $cond:expr, $patience:expr) => {{
        let started = tokio::time::Instant::now();
        let deadline = started + $patience;
        loop {
            if $cond {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {:?} waiting for: {}",
                started.elapsed(),
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}
