//! Issue 28's reshape, audited with hostile values: what another host (or anyone who can
//! write a shared export) can plant in the records rvdsm reads, and which disk path rvdsm
//! takes for a volume. Real files in real directories (a symlink, a FIFO, a 1-GiB sparse
//! file, bytes that are not UTF-8), read through the same library calls rvdsmd makes.
//!
//! Each test asserts the safe behaviour: a planted record is refused or bounded, never
//! followed, never hangs or exhausts the reader.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rvdsm::jobs::tasks::TaskManager;
use rvdsm::storage::layout::DomainDir;
use rvdsm::storage::shared_records::SharedRecords;
use serde_json::{Value, json};
use uuid::Uuid;

/// How long a read of a record directory may take before it counts as hung.
const HANG: Duration = Duration::from_secs(10);

/// An unfinished `Volume.delete` task record, as a host writes it.
fn running_task(id: Uuid) -> Value {
    json!({
        "id": id,
        "verb": "Volume.delete",
        "state": "running",
        "code": 0,
        "error": "",
        "work": {
            "kind": "deleteVolume",
            "domain": Uuid::new_v4(),
            "image": Uuid::new_v4(),
            "volume": Uuid::new_v4(),
            "started": false
        }
    })
}

/// A task record that ended (`recovered`), so that `Task.clear` may forget it.
fn ended_task(id: Uuid) -> Value {
    let mut record = running_task(id);
    record["state"] = json!("recovered");
    record["code"] = json!(411);
    record["error"] = json!("Interrupted");
    record
}

fn write_json(path: &Path, record: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(record).unwrap()).unwrap();
}

/// A shared domain in a temporary mount, a local task directory, and a task manager that
/// shares its records to the domain's `master/tasks` (as the SPM's does).
struct Shared {
    _tmp: tempfile::TempDir,
    outside: PathBuf,
    tasks_dir: PathBuf,
    tasks: TaskManager,
}

fn shared() -> Shared {
    let tmp = tempfile::tempdir().unwrap();
    let domain = DomainDir::new(&tmp.path().join("mnt"), Uuid::new_v4());
    std::fs::create_dir_all(domain.root()).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let records = SharedRecords::new(domain, "tasks");
    let tasks_dir = records.path();
    let (tasks, unfinished) = TaskManager::open(&tmp.path().join("local-tasks")).unwrap();
    assert!(unfinished.is_empty());
    tasks.share_to(Some(records)).unwrap();
    Shared {
        _tmp: tmp,
        outside,
        tasks_dir,
        tasks,
    }
}

/// Runs `f` on a thread; `None` when it has not returned within [`HANG`] (then `unblock` is
/// called, so the thread can end and the test's files go).
fn within<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    unblock: impl Fn(),
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(value) => {
            handle.join().unwrap();
            Some(value)
        }
        Err(_) => {
            unblock();
            let _ = handle.join();
            None
        }
    }
}

/// Opens the FIFO at `path` for writing without blocking and closes it: a reader blocked in
/// `open` then reads end-of-file and goes on. Nothing happens when no reader waits.
fn release_fifo(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path);
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn ids(records: &[rvdsm::jobs::tasks::TaskRecord]) -> Vec<Uuid> {
    let mut ids: Vec<_> = records.iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

// ---- (3) records another host writes in the shared master domain (`master/tasks`) ----

/// A record that is a symbolic link (to a valid record outside the domain) is not followed:
/// only the plain record beside it is read.
#[test]
fn a_shared_record_that_is_a_symlink_is_not_followed() {
    let s = shared();
    let plain = Uuid::new_v4();
    write_json(
        &s.tasks_dir.join(format!("{plain}.json")),
        &running_task(plain),
    );
    let linked = Uuid::new_v4();
    let target = s.outside.join("record.json");
    write_json(&target, &running_task(linked));
    symlink(&target, s.tasks_dir.join(format!("{linked}.json"))).unwrap();

    assert_eq!(ids(&s.tasks.shared_unfinished()), [plain]);
    assert!(target.exists(), "the link's target is left alone");
}

/// A 1-GiB record (sparse, so the disk does not fill) is refused without being read into
/// memory, quickly; the plain record beside it is still read.
#[test]
fn a_huge_shared_record_is_refused_and_bounded() {
    let s = shared();
    let plain = Uuid::new_v4();
    write_json(
        &s.tasks_dir.join(format!("{plain}.json")),
        &running_task(plain),
    );
    let huge = s.tasks_dir.join(format!("{}.json", Uuid::new_v4()));
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let started = Instant::now();
    let found = s.tasks.shared_unfinished();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ids(&found), [plain]);
}

/// A record whose error message is larger than any record rvdsm writes (2 MiB) is refused,
/// not parsed; one that is merely odd (64 KiB) reads as the record it is.
#[test]
fn a_shared_record_with_a_huge_message_is_refused() {
    let s = shared();
    let (big, odd) = (Uuid::new_v4(), Uuid::new_v4());
    let mut record = running_task(big);
    record["error"] = json!("x".repeat(2 << 20));
    write_json(&s.tasks_dir.join(format!("{big}.json")), &record);
    let mut record = running_task(odd);
    record["error"] = json!("y".repeat(64 << 10));
    write_json(&s.tasks_dir.join(format!("{odd}.json")), &record);
    assert_eq!(ids(&s.tasks.shared_unfinished()), [odd]);
}

/// Bytes that are not UTF-8 (and not JSON) at a record's name are skipped, nothing else.
#[test]
fn a_shared_record_that_is_not_utf8_is_skipped() {
    let s = shared();
    let plain = Uuid::new_v4();
    write_json(
        &s.tasks_dir.join(format!("{plain}.json")),
        &running_task(plain),
    );
    std::fs::write(
        s.tasks_dir.join(format!("{}.json", Uuid::new_v4())),
        b"{\"id\": \"\xff\xfe\x80\"}",
    )
    .unwrap();
    assert_eq!(ids(&s.tasks.shared_unfinished()), [plain]);
}

/// A FIFO at a record's name does not block the reader: the SPM's takeover reads the
/// shared task directory, and an open that waits for a writer that never comes would hang
/// it (and every verb behind it).
#[test]
fn a_shared_record_that_is_a_fifo_does_not_hang_the_reader() {
    let s = shared();
    let plain = Uuid::new_v4();
    write_json(
        &s.tasks_dir.join(format!("{plain}.json")),
        &running_task(plain),
    );
    let fifo = s.tasks_dir.join(format!("{}.json", Uuid::new_v4()));
    mkfifo(&fifo);
    let tasks = s.tasks.clone();
    let found = within(move || tasks.shared_unfinished(), || release_fifo(&fifo));
    let found = found.expect("reading master/tasks hung on a FIFO planted as a record");
    assert_eq!(ids(&found), [plain]);
}

/// A record whose `id` is not the id its file is named by is refused: its file name is what
/// `Task.clear` and the tombstones go by, so a record claiming another id is never cleared
/// and takes the other task's place.
#[test]
fn a_shared_record_whose_id_is_not_its_name_is_refused() {
    let s = shared();
    let plain = Uuid::new_v4();
    write_json(
        &s.tasks_dir.join(format!("{plain}.json")),
        &running_task(plain),
    );
    let (named, claimed) = (Uuid::new_v4(), Uuid::new_v4());
    write_json(
        &s.tasks_dir.join(format!("{named}.json")),
        &running_task(claimed),
    );
    assert_eq!(ids(&s.tasks.shared_unfinished()), [plain]);
}

// ---- (3) the local journal (`<state_dir>/tasks`, read by the one journal at start) ----

/// The local task directory with `plant` done in it, then opened as rvdsmd opens it at
/// start; `None` when the open hung.
fn open_local(
    plant: impl FnOnce(&Path, &Path),
    unblock: impl Fn(&Path),
) -> (tempfile::TempDir, Option<(TaskManager, Vec<Uuid>)>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tasks");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    plant(&dir, &outside);
    let opened = {
        let opened_dir = dir.clone();
        within(
            move || {
                let (tasks, unfinished) = TaskManager::open(&opened_dir).unwrap();
                let all = ids(&tasks.all());
                drop(unfinished);
                (tasks, all)
            },
            || unblock(&dir),
        )
    };
    (tmp, opened)
}

/// A symbolic link at a record's name in the local journal is not followed.
#[test]
fn a_local_record_that_is_a_symlink_is_not_followed() {
    let plain = Uuid::new_v4();
    let linked = Uuid::new_v4();
    let (_tmp, opened) = open_local(
        |dir, outside| {
            write_json(&dir.join(format!("{plain}.json")), &ended_task(plain));
            let target = outside.join("record.json");
            write_json(&target, &ended_task(linked));
            symlink(&target, dir.join(format!("{linked}.json"))).unwrap();
        },
        |_| {},
    );
    let (_, all) = opened.unwrap();
    assert_eq!(all, [plain]);
}

/// A FIFO at a record's name in the local journal does not hang rvdsmd's start.
#[test]
fn a_local_record_that_is_a_fifo_does_not_hang_the_start() {
    let plain = Uuid::new_v4();
    let fifo_id = Uuid::new_v4();
    let (_tmp, opened) = open_local(
        |dir, _| {
            write_json(&dir.join(format!("{plain}.json")), &ended_task(plain));
            mkfifo(&dir.join(format!("{fifo_id}.json")));
        },
        |dir| release_fifo(&dir.join(format!("{fifo_id}.json"))),
    );
    let (_, all) = opened.expect("opening the task journal hung on a FIFO planted as a record");
    assert_eq!(all, [plain]);
}

/// The peak memory of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 1-GiB record in the local journal is not read into memory whole (the shared records
/// are bounded at 1 MiB; a journal record is a few KiB).
#[test]
fn a_huge_local_record_is_bounded() {
    let plain = Uuid::new_v4();
    let before = peak_rss_kib();
    let (_tmp, opened) = open_local(
        |dir, _| {
            write_json(&dir.join(format!("{plain}.json")), &ended_task(plain));
            std::fs::File::create(dir.join(format!("{}.json", Uuid::new_v4())))
                .unwrap()
                .set_len(1 << 30)
                .unwrap();
        },
        |_| {},
    );
    let (_, all) = opened.unwrap();
    let grew = peak_rss_kib().saturating_sub(before);
    assert_eq!(all, [plain]);
    assert!(
        grew < 256 << 10,
        "opening the journal took {} MiB more memory for a 1-GiB record",
        grew >> 10
    );
}

/// Bytes that are not UTF-8 in the local journal are skipped; the start goes on.
#[test]
fn a_local_record_that_is_not_utf8_is_skipped() {
    let plain = Uuid::new_v4();
    let (_tmp, opened) = open_local(
        |dir, _| {
            write_json(&dir.join(format!("{plain}.json")), &ended_task(plain));
            std::fs::write(dir.join(format!("{}.json", Uuid::new_v4())), b"\xff\xfe{").unwrap();
        },
        |_| {},
    );
    assert_eq!(opened.unwrap().1, [plain]);
}

/// A local record whose `id` is not its file's name: `Task.clear` of the id it claims
/// removes `<id>.json`, so the planted file would bring the task back at every start. It is
/// refused at the open, or, if read, cleared for good.
#[test]
fn a_local_record_whose_id_is_not_its_name_is_refused_or_cleared_for_good() {
    let (named, claimed) = (Uuid::new_v4(), Uuid::new_v4());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tasks");
    std::fs::create_dir_all(&dir).unwrap();
    write_json(&dir.join(format!("{named}.json")), &ended_task(claimed));
    let (tasks, _) = TaskManager::open(&dir).unwrap();
    if tasks.get(claimed).is_ok() {
        tasks.clear(claimed).unwrap();
        drop(tasks);
        let (tasks, _) = TaskManager::open(&dir).unwrap();
        assert!(
            tasks.get(claimed).is_err(),
            "task {claimed} cleared, and back after a restart (its record is named {named})"
        );
    }
}

// ---- (1) which volume a disk's path is on: one rule in `virt`, no looser than the old ----

/// The live merge's old rule (before issue 28): the volume is the file's name, the image its
/// directory's name, both UUIDs; nothing else was checked.
fn old_merge_rule(path: &str) -> Option<(Uuid, Uuid)> {
    let path = Path::new(path);
    let volume = Uuid::parse_str(path.file_name()?.to_str()?).ok()?;
    let image = Uuid::parse_str(path.parent()?.file_name()?.to_str()?).ok()?;
    Some((image, volume))
}

/// Hostile paths a domain's XML can hold (`..` and `.` components, a volume named by a
/// directory above it, relative paths, a non-UUID domain, other spellings of `images`): the
/// one rule names a volume only where the old merge rule named the same image and volume,
/// and refuses every path whose last three components are not `<domain>/images/<image>/
/// <volume>` literally.
#[test]
fn the_one_disk_rule_is_no_looser_than_the_merge_rule_it_replaced() {
    use rvdsm::virt::xml::disk_volume;
    let (sd, img, vol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (sd2, img2, vol2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let refused = [
        format!("/rhev/data-center/p/{sd}/images/{img}/{vol}/.."),
        format!("/rhev/data-center/p/{sd}/images/{img}/../{img2}/{vol}"),
        format!("/rhev/data-center/p/{sd}/images/../images/{img}/{vol}/../{vol2}"),
        format!("/rhev/data-center/p/{sd}/images/{img}/{vol}/../../{img2}/{vol2}"),
        format!("/rhev/data-center/p/{sd}/Images/{img}/{vol}"),
        format!("/rhev/data-center/p/{sd}/images/{img}/{vol}.qcow2"),
        format!("/rhev/data-center/p/not-a-domain/images/{img}/{vol}"),
        format!("images/{img}/{vol}"),
        format!("{img}/{vol}"),
        format!("/{img}/{vol}"),
        format!("/{sd}/images/{img}"),
        format!("nbd://host/{sd}/images/{img}/{vol}?x"),
        "/dev/sdb".into(),
        String::new(),
    ];
    for path in &refused {
        assert_eq!(disk_volume(path), None, "{path}");
    }
    let named = [
        format!("/rhev/data-center/p/{sd}/images/{img}/{vol}"),
        format!("/rhev/data-center/p/{sd}/images/{img}/{vol}/"),
        format!("/rhev/data-center/p/{sd}/images/{img}//{vol}"),
        format!("{sd}/images/{img}/{vol}"),
    ];
    // Named by the rule, though the kernel resolves them elsewhere (`..` before the last
    // three components): tolerated only because the old rule named them too.
    let tolerated = [
        format!("/x/{sd2}/images/{img2}/../../{sd}/images/{img}/{vol}"),
        format!("/x/{sd2}/images/{img2}/{vol2}/../../../../{sd}/images/{img}/{vol}"),
    ];
    for path in &named {
        let v = disk_volume(path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!((v.domain, v.image, v.volume), (sd, img, vol), "{path}");
    }
    for path in refused.iter().chain(&named).chain(&tolerated) {
        if let Some(v) = disk_volume(path) {
            assert_eq!(old_merge_rule(path), Some((v.image, v.volume)), "{path}");
        }
    }
}

/// A volume, an image and a domain are named only by the one spelling rvdsm's layout gives
/// their files (lowercase, hyphenated): `{uuid}`, `urn:uuid:...`, the 32 bare hex digits or
/// upper case name other files, which the one rule must not take for the volume (a merge
/// would commit files that are not the volumes the storage metadata describes).
#[test]
fn the_one_disk_rule_names_a_volume_only_by_its_canonical_uuid() {
    use rvdsm::virt::xml::disk_volume;
    let (sd, img, vol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let upper = |u: Uuid| u.hyphenated().to_string().to_uppercase();
    for path in [
        format!("/rhev/data-center/p/{sd}/images/{img}/{{{vol}}}"),
        format!("/rhev/data-center/p/{sd}/images/{img}/urn:uuid:{vol}"),
        format!("/rhev/data-center/p/{sd}/images/{img}/{}", vol.simple()),
        format!("/rhev/data-center/p/{sd}/images/{img}/{}", upper(vol)),
        format!("/rhev/data-center/p/{sd}/images/{}/{vol}", img.simple()),
        format!("/rhev/data-center/p/{{{sd}}}/images/{img}/{vol}"),
    ] {
        assert_eq!(disk_volume(&path), None, "{path}");
    }
}
