//! CLOCK_MONOTONIC as a number, so that an instant can cross a process boundary (a zygote
//! worker stamps when it released a process; the shim turns that back into an [`Instant`]).

use std::time::{Duration, Instant};

/// Nanoseconds on CLOCK_MONOTONIC, the clock behind [`Instant`] on Linux.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The [`Instant`] of a CLOCK_MONOTONIC reading taken in this or another process. A
/// reading from the future (it cannot be) maps to now.
pub fn instant_of(ns: u64) -> Instant {
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(ns)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_maps_back_to_its_instant() {
        let before = Instant::now();
        let ns = monotonic_ns();
        let after = Instant::now();
        let back = instant_of(ns);
        // Instant and monotonic_ns read the same clock: the reading lies between.
        assert!(
            back >= before - Duration::from_micros(50),
            "{back:?} < {before:?}"
        );
        assert!(
            back <= after + Duration::from_micros(50),
            "{back:?} > {after:?}"
        );
        let earlier = instant_of(ns - 5_000_000);
        let d = back.duration_since(earlier);
        assert!(d.as_micros().abs_diff(5_000) < 50, "{d:?}");
        assert!(instant_of(u64::MAX) <= Instant::now());
    }
}
