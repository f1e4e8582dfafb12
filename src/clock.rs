//! The crate's two clocks, so that no module reads the time its own way: wall-clock epoch
//! seconds (journal entries, auto-thaw deadlines, snapshot notes, volume ctimes) and the
//! monotonic clock in milliseconds, VDSM's time base for `statusTime` and `notify_time`.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Seconds since the epoch (0 on a clock set before 1970).
pub fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The monotonic clock in milliseconds (`CLOCK_MONOTONIC`, as VDSM's `time.monotonic`).
pub fn monotonic_millis() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
            + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward() {
        let (wall, mono) = (epoch_secs(), monotonic_millis());
        assert!(wall > 1_600_000_000, "{wall}");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(monotonic_millis() >= mono + 5);
    }
}
