//! Snapshots of several guests at once: rvdsm's wall time for 1, 2, 4, 8 (16) guests all at
//! once and one after another, `Host.ping2`'s latency while the largest run runs, and the
//! floor, the direct libvirt call for every guest at once.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Notify;

use crate::host::{Guest, Host};
use crate::snap::{self, JobWatcher};
use crate::stats::{self, Summary};

/// What the parallel runs measured.
pub struct Parallel {
    /// (guests, parallel wall, sequential wall), ms.
    pub rows: Vec<(usize, Summary, Summary)>,
    /// (guests, the floor's parallel wall), ms.
    pub floor: Vec<(usize, Summary)>,
    /// `Host.ping2` p99 while the largest parallel run ran, ms.
    pub ping_p99: f64,
    /// rvdsmd's resident memory with every guest running, KiB.
    pub rss_with_vms: u64,
}

/// Runs rvdsm's parallel snapshots and the floor's, alternating on the same guests (so at the
/// same chain depth), and rvdsm's one after another.
pub async fn measure(
    host: &Host,
    jobs: &JobWatcher,
    guests: &mut [Guest],
    reps: usize,
) -> Result<Parallel> {
    let counts: Vec<usize> = [1, 2, 4, 8, 16]
        .into_iter()
        .filter(|n| *n <= guests.len())
        .collect();
    let (mut rows, mut floor) = (Vec::new(), Vec::new());
    let mut ping_p99 = f64::NAN;
    for &n in &counts {
        let (mut par, mut seq, mut floor_par) = (Vec::new(), Vec::new(), Vec::new());
        if n == *counts.last().unwrap_or(&1) {
            // A run of its own, not timed with the others: the pings, back to back, take a
            // CPU from the guests.
            ping_p99 = with_pings(host, jobs, &mut guests[..n]).await?;
        }
        for _ in 0..reps {
            par.push(snap::many(host, jobs, &mut guests[..n], true).await?);
            floor_par.push(snap::floor_many(host, &mut guests[..n]).await?);
            seq.push(snap::many(host, jobs, &mut guests[..n], false).await?);
        }
        let (par, seq, floor_par) = (
            Summary::of(&par),
            Summary::of(&seq),
            Summary::of(&floor_par),
        );
        eprintln!(
            "  {n} guests: parallel {} ms, sequential {} ms; floor, parallel {} ms",
            par.show(),
            seq.show(),
            floor_par.show()
        );
        rows.push((n, par, seq));
        floor.push((n, floor_par));
    }
    let rss_with_vms = host.rss_kib();
    Ok(Parallel {
        rows,
        floor,
        ping_p99,
        rss_with_vms,
    })
}

/// One parallel run with `Host.ping2` sent back to back beside it: the pings' p99, ms.
async fn with_pings(host: &Host, jobs: &JobWatcher, guests: &mut [Guest]) -> Result<f64> {
    let count = guests.len();
    let stop = Arc::new(Notify::new());
    let pinger = {
        let stop = Arc::clone(&stop);
        async move { snap::ping_during(host, stop).await }
    };
    let (wall, pings) = tokio::join!(
        async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let wall = snap::many(host, jobs, guests, true).await;
            stop.notify_waiters();
            wall
        },
        pinger
    );
    let mut pings = pings?;
    pings.sort_by(f64::total_cmp);
    let p99 = stats::percentile(&pings, 99.0);
    eprintln!(
        "  Host.ping2 during {count} snapshots: {} pings, p99 {p99:.3} ms",
        pings.len()
    );
    wall?;
    Ok(p99)
}
