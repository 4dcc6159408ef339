//! Drivers shared by the benches.

use redsplit::resp::RequestScanner;

/// Scans every request in `buf`; returns how many.
pub fn scan_requests(s: &mut RequestScanner, buf: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while let Ok(Some(req)) = s.scan(&buf[at..]) {
        at += req.len;
        n += 1;
    }
    assert_eq!(at, buf.len(), "every request scanned");
    n
}
