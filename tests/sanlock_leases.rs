//! The safe wrappers of `rvdsm::sys::sanlock` against a real sanlock daemon: formatting a
//! lockspace and a resource, joining, reading hosts, acquiring (with and without a version),
//! reading owners and versions, releasing, leaving.
//!
//! libsanlock finds its daemon through `SANLOCK_RUN_DIR`, read from the environment of the
//! process, which a test must not change while others run: the test runs its body in a child
//! process of this binary started with the daemon's run directory.

mod common;

use std::path::Path;
use std::process::Command;

use common::sanlock::{Sanlock, disk_dir};
use rvdsm::sys::sanlock::{Disk, HostState, Lockspace, Registration, Resource, Sector, code};

const CHILD: &str = "RVDSM_SANLOCK_TEST_DIR";
const IO_TIMEOUT: u32 = 3;

#[test]
fn wrappers_drive_a_real_daemon() {
    match std::env::var(CHILD) {
        Ok(dir) => leases_in(Path::new(&dir)),
        Err(_) => {
            let daemon = Sanlock::start();
            let areas = disk_dir("sanlock-areas");
            let (key, run_dir) = daemon.env();
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "wrappers_drive_a_real_daemon", "--nocapture"])
                .env(key, run_dir)
                .env(CHILD, areas.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}\n{}\nsanlock's log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                daemon.log()
            );
        }
    }
}

fn leases_in(dir: &Path) {
    let ids = dir.join("ids");
    let leases = dir.join("leases");
    std::fs::File::create(&ids).unwrap();
    std::fs::File::create(&leases).unwrap();
    let lockspace = Lockspace {
        name: "rvdsm-test".into(),
        host_id: 1,
        disk: Disk {
            path: ids,
            offset: 0,
        },
    };
    let resource = Resource {
        lockspace: lockspace.name.clone(),
        name: "SDM".into(),
        disk: Disk {
            path: leases,
            offset: 1 << 20,
        },
    };

    lockspace.format(Sector::B512, IO_TIMEOUT).unwrap();
    assert_eq!(lockspace.joined().unwrap(), None);
    lockspace.join(IO_TIMEOUT, true).unwrap();
    assert_eq!(lockspace.joined().unwrap(), Some(true));
    let again = lockspace.join(IO_TIMEOUT, true).unwrap_err();
    assert_eq!(again.code, code::EEXIST, "{again}");
    // Right after a join the daemon has not watched the hosts long enough (EAGAIN).
    let mut me = Vec::new();
    let known = common::wait_until(std::time::Duration::from_secs(30), || {
        match lockspace.hosts(1) {
            Ok(hosts) => {
                me = hosts;
                true
            }
            Err(e) if e.code == code::EAGAIN => false,
            Err(e) => panic!("{e}"),
        }
    });
    assert!(known, "the daemon never knew its own host");
    assert_eq!(me.len(), 1, "{me:?}");
    assert_eq!(me[0].id, 1);
    assert!(me[0].generation >= 1, "{me:?}");
    assert!(
        matches!(me[0].state, HostState::Live | HostState::Unknown),
        "{me:?}"
    );

    resource.format(Sector::B512).unwrap();
    assert_eq!(resource.version().unwrap(), 0);
    assert!(resource.owners().unwrap().is_empty());

    let registration = Registration::new().unwrap();
    registration.acquire(&resource, None).unwrap();
    assert_eq!(resource.version().unwrap(), 1);
    let owners = resource.owners().unwrap();
    assert_eq!(owners.iter().map(|h| h.id).collect::<Vec<_>>(), [1]);
    registration.release(&resource).unwrap();
    assert!(resource.owners().unwrap().is_empty());

    // With a version: only if nobody acquired the lease since.
    registration.acquire(&resource, Some(1)).unwrap();
    assert_eq!(resource.version().unwrap(), 2);
    registration.release(&resource).unwrap();
    let stale = registration.acquire(&resource, Some(1)).unwrap_err();
    assert!(stale.code < 0 && !stale.message.is_empty(), "{stale}");
    assert!(resource.owners().unwrap().is_empty());

    // Bad names never reach the daemon.
    let bad = Resource {
        name: "a:b".into(),
        ..resource.clone()
    };
    assert_eq!(registration.acquire(&bad, None).unwrap_err().code, -22);

    // A process that ends releases what it held: dropping the registration does too.
    registration.acquire(&resource, None).unwrap();
    drop(registration);
    let released = common::wait_until(std::time::Duration::from_secs(10), || {
        resource.owners().is_ok_and(|o| o.is_empty())
    });
    assert!(released, "the lease outlived its registration");

    lockspace.leave(true).unwrap();
    assert_eq!(lockspace.joined().unwrap(), None);
    // Leaving a lockspace not joined is not an error.
    lockspace.leave(true).unwrap();
}
