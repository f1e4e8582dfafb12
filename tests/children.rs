//! The children of rvdsmd that touch volumes die with it, and its recovery ends what an older
//! run left: a `kill -9` of rvdsmd in the middle of an `SDM.copy_data` leaves no qemu-img
//! writing the destination (also when the daemon sat idle long enough first for its runtime's
//! blocking threads to exit), and the restarted daemon tells the job ended, retryable; a
//! qemu-nbd still holding the volume of an interrupted job when rvdsmd starts is killed before
//! the job is called retryable, and one writing the image of an interrupted storage task is
//! killed before the task is rolled back.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chain::wait_job;
use common::domain::{Fixture, assert_success, new_id};
use common::guest::qemu_io;
use common::{libvirt, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// How long a child may take to die after its rvdsmd did.
const DEATH: Duration = Duration::from_secs(5);

fn endpoint(f: &Fixture, image: &str, volume: &str) -> Value {
    json!({"endpoint_type": "div", "sd_id": f.domain, "img_id": image, "vol_id": volume})
}

/// A `size_mib` volume in a new image, its first `data_mib` written; returns (image, volume).
fn volume_with_data(f: &Fixture, size_mib: u64, data_mib: u64) -> (String, String) {
    let (image, volume) = (new_id(), new_id());
    assert_success(&f.create(
        &image,
        &volume,
        json!({"size": (size_mib << 20).to_string()}),
    ));
    if data_mib > 0 {
        let path = f.image_dir(&image).join(&volume);
        let write = format!("write -P 0x5a 0 {data_mib}M");
        qemu_io(&["-f", "qcow2", "-c", &write, path.to_str().unwrap()]);
    }
    (image, volume)
}

fn start_copy(f: &Fixture, source: Value, destination: Value) -> String {
    let job = new_id();
    let params = json!({"job_id": job, "source": source, "destination": destination});
    assert_eq!(f.daemon.ok("SDM.copy_data", params), json!(true));
    job
}

/// The command line of a process, its arguments split; `None` once it is gone or a zombie.
fn live_cmdline(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The live processes whose program is `program` and whose command line names `word`.
fn processes_naming(program: &str, word: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            live_cmdline(*pid).is_some_and(|args| {
                args.first()
                    .is_some_and(|a| Path::new(a).file_name() == Some(program.as_ref()))
                    && args.iter().any(|a| a.contains(word))
            })
        })
        .collect()
}

/// Kills, when dropped, the processes a test found still running (they are its daemon's
/// children, or its own), so that a failing test leaves none behind.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if live_cmdline(*pid).is_some() {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// A copy whose qemu-img is caught running and held (SIGSTOP: a copy of any size then lasts
/// as long as the test needs, on a machine of any speed), then rvdsmd killed with SIGKILL: the
/// qemu-img must die with it, and the restarted daemon tell the job failed and retryable.
fn kill_the_daemon_mid_copy(f: &mut Fixture) {
    let (image, source) = volume_with_data(f, 512, 256);
    let (dst_image, dst) = volume_with_data(f, 512, 0);
    let job = start_copy(
        f,
        endpoint(f, &image, &source),
        endpoint(f, &dst_image, &dst),
    );
    // Looked for often: the copy may take well under a second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = processes_naming("qemu-img", &dst);
    while found.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        found = processes_naming("qemu-img", &dst);
    }
    assert!(
        !found.is_empty(),
        "no qemu-img ever wrote {dst}; log:\n{}",
        f.daemon.log()
    );
    let guard = KillOnDrop(found.clone());
    for pid in &found {
        kill(Pid::from_raw(*pid), Signal::SIGSTOP).unwrap();
    }
    assert!(
        live_cmdline(found[0])
            .unwrap()
            .iter()
            .any(|a| a == "convert"),
        "the process held is not the copy's qemu-img convert"
    );

    f.daemon.kill9();
    let gone = wait_until(DEATH, || {
        found.iter().all(|pid| live_cmdline(*pid).is_none())
    });
    let left: Vec<_> = found
        .iter()
        .filter_map(|pid| live_cmdline(*pid).map(|args| (*pid, args)))
        .collect();
    assert!(
        gone,
        "qemu-img outlived rvdsmd's kill -9 by {DEATH:?}: {left:?}"
    );
    drop(guard);

    f.daemon.restart_in_place(&[]);
    let info = wait_job(f, &job, Duration::from_secs(30));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 411, "{info}");
    let message = info["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stopped midway") && message.contains("can be retried"),
        "{info}"
    );
    assert!(processes_naming("qemu-img", &dst).is_empty());
}

#[test]
fn a_copy_s_qemu_img_dies_with_a_killed_rvdsmd() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    kill_the_daemon_mid_copy(&mut f);
}

/// The parent-death signal is tied to the thread that forked the child: a child forked by a
/// runtime thread that then exits would be killed with its daemon still running, and one
/// forked by a thread that exits before the child is set up would never be. tokio's blocking
/// threads exit after 10 s idle; a copy started after the daemon idled that long must still
/// run to its end, and still die with the daemon.
#[test]
fn a_child_started_after_the_daemon_idled_lives_and_dies_with_it() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (image, source) = volume_with_data(&f, 64, 32);
    // Idle past tokio's blocking threads' keep-alive (10 s).
    std::thread::sleep(Duration::from_secs(12));
    let (dst_image, dst) = volume_with_data(&f, 64, 0);
    let job = start_copy(
        &f,
        endpoint(&f, &image, &source),
        endpoint(&f, &dst_image, &dst),
    );
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    std::thread::sleep(Duration::from_secs(12));
    kill_the_daemon_mid_copy(&mut f);
}

/// qemu-nbd serving the destination of an interrupted copy, as a run of rvdsmd without
/// parent-death signals (or one whose child was stuck in the kernel) would leave it: the next
/// rvdsmd kills it at start, says so in its log, and only then calls the job retryable.
#[test]
fn a_leftover_holding_an_interrupted_job_s_volume_is_killed_at_start() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (image, source) = volume_with_data(&f, 64, 8);
    let (dst_image, dst) = volume_with_data(&f, 64, 0);
    let marker = f.daemon.restart_paused_at("sdm:copy");
    let job = start_copy(
        &f,
        endpoint(&f, &image, &source),
        endpoint(&f, &dst_image, &dst),
    );
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));
    f.daemon.kill9();

    let destination = f.image_dir(&dst_image).join(&dst);
    let mut leftover = leftover_qemu_nbd(&f, &destination);
    let pid = i32::try_from(leftover.id()).unwrap();
    let _guard = KillOnDrop(vec![pid]);

    f.daemon.restart_in_place(&[]);
    let ended = wait_until(DEATH, || leftover.try_wait().unwrap().is_some());
    assert!(
        ended,
        "the restarted rvdsmd left qemu-nbd (pid {pid}) running"
    );
    let log = f.daemon.log();
    assert!(
        log.contains("leftover") && log.contains(&format!("pid={pid}")),
        "the kill is not in the log:\n{log}"
    );
    let info = wait_job(&f, &job, Duration::from_secs(30));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 411, "{info}");
    let message = info["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("can be retried"), "{info}");
}

/// Starts, as a process that is not rvdsmd's child, a qemu-nbd writing `path`; returns it
/// once it serves.
fn leftover_qemu_nbd(f: &Fixture, path: &Path) -> Child {
    let socket = f.data.path().join(format!("{}.sock", new_id()));
    let child = Command::new("qemu-nbd")
        .args(["-f", "qcow2", "-k", socket.to_str().unwrap()])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()),
        "qemu-nbd did not start"
    );
    child
}

/// The same at the recovery of a storage task: a qemu-nbd writing a volume of the image of
/// a `Volume.create` a crash interrupted is killed before the create is rolled back.
#[test]
fn a_leftover_writing_an_interrupted_task_s_image_is_killed_at_start() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let (task, _marker) = f.create_paused_at("create:writing", &image, &base, &top);
    f.daemon.kill9();
    let mut leftover = leftover_qemu_nbd(&f, &f.image_dir(&image).join(&base));
    let pid = i32::try_from(leftover.id()).unwrap();
    let _guard = KillOnDrop(vec![pid]);

    f.daemon.restart_in_place(&[]);
    let ended = wait_until(DEATH, || leftover.try_wait().unwrap().is_some());
    assert!(
        ended,
        "the restarted rvdsmd left qemu-nbd (pid {pid}) running"
    );
    let log = f.daemon.log();
    assert!(
        log.contains("leftover") && log.contains(&format!("pid={pid}")),
        "the kill is not in the log:\n{log}"
    );
    let status = f.daemon.ok("Task.getStatus", json!({"taskID": task}));
    assert_eq!(status["code"], 411, "{status}");
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
}
