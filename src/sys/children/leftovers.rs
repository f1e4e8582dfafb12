//! Finding and ending the qemu-img and qemu-nbd processes an earlier run of rvdsmd left
//! writing a volume: read from `/proc` (each process's command line, resolved against its
//! working directory, and the files it holds open and how), never from the storage, so a hung
//! mount does not stall the scan. Blocking (file reads, a bounded wait): call it off the reactor.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The programs rvdsmd starts on volumes.
pub const VOLUME_TOOLS: [&str; 2] = ["qemu-img", "qemu-nbd"];

/// A process found holding or naming a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// When it started (clock ticks since boot): with the pid, which process it is.
    started: u64,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

/// The live processes other than this one and its children whose program is one of
/// `programs` and that may write a file whose path `matches`: they hold it open for writing,
/// or name it (in an argument, resolved against their working directory) and have not opened
/// it yet.
pub fn find(programs: &[&str], matches: impl Fn(&Path) -> bool) -> Vec<Leftover> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).is_ok_and(|p| p != me))
        .filter_map(|pid| inspect(pid, programs, &matches))
        .filter(|found| u32::try_from(found.ppid).is_ok_and(|p| p != me))
        .collect()
}

/// `pid` as a [`Leftover`], if it runs one of `programs` on a file that `matches`.
fn inspect(pid: i32, programs: &[&str], matches: &impl Fn(&Path) -> bool) -> Option<Leftover> {
    let (state, ppid, started) = stat(pid)?;
    if state == 'Z' {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    if !programs.contains(&program) {
        return None;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let named = args[1..]
        .iter()
        .flat_map(|a| argument_paths(a, cwd.as_deref()))
        .any(|p| matches(&p));
    // One that holds the file only for reading (`qemu-img info -U`) writes nothing: not a
    // leftover. One that names it but has not opened it yet may be about to write.
    let writes = match opened(pid, matches) {
        Opened::ForWriting => true,
        Opened::ForReading => false,
        Opened::No => named,
    };
    if !writes {
        return None;
    }
    Some(Leftover {
        pid,
        ppid,
        started,
        cmdline: args.join(" "),
    })
}

/// The paths an argument may name: itself, and what follows a `=` (`-o backing_file=...`,
/// `file.filename=...`), each made absolute against the process's working directory.
fn argument_paths(arg: &str, cwd: Option<&Path>) -> Vec<PathBuf> {
    let mut names = vec![arg];
    if let Some((_, value)) = arg.rsplit_once('=') {
        names.push(value);
    }
    names
        .into_iter()
        .filter(|n| !n.is_empty() && !n.starts_with('-'))
        .filter_map(|n| {
            let path = Path::new(n);
            match (path.is_absolute(), cwd) {
                (true, _) => Some(path.to_path_buf()),
                (false, Some(cwd)) => Some(cwd.join(path)),
                (false, None) => None,
            }
        })
        .collect()
}

/// How a process holds the files that match.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    /// At least one of them open for writing.
    ForWriting,
    /// Open, for reading only.
    ForReading,
    /// None of them.
    No,
}

/// How `pid` holds the files whose path `matches` (a file handed over as a descriptor is named
/// by no argument): the access mode of each descriptor, from `/proc/<pid>/fdinfo`.
fn opened(pid: i32, matches: &impl Fn(&Path) -> bool) -> Opened {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Opened::No;
    };
    let mut found = Opened::No;
    for fd in fds.flatten() {
        if !std::fs::read_link(fd.path()).is_ok_and(|target| matches(&target)) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ));
        let flags = info.ok().and_then(|text| {
            let octal = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
            u32::from_str_radix(octal.trim(), 8).ok()
        });
        // O_ACCMODE is 3, O_RDONLY 0; an unreadable mode counts as writing.
        if flags.is_none_or(|f| f & 3 != 0) {
            return Opened::ForWriting;
        }
        found = Opened::ForReading;
    }
    found
}

/// `(state, parent pid, start time)` of `pid`, from `/proc/<pid>/stat` (the fields after the
/// command name, which may hold spaces and parentheses, so it is cut at its last `)`).
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 3 (state), 4 (ppid) and 22 (starttime) of proc(5), counted from 1.
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((state, ppid, started))
}

/// Whether `found` is still running: the same pid, started at the same time, not a zombie.
fn still_running(found: &Leftover) -> bool {
    stat(found.pid).is_some_and(|(state, _, started)| state != 'Z' && started == found.started)
}

/// How long recovery waits for a leftover killed with SIGKILL to be gone.
pub const GRACE: Duration = Duration::from_secs(10);

/// Ends what an earlier run left writing a file that `matches` before recovery touches it or
/// calls its work retryable: each qemu-img or qemu-nbd [`find`] finds is logged (for `what`,
/// the interrupted work) and killed with SIGKILL, then waited for up to [`GRACE`]. Returns
/// those still running then. Killed rather than waited for, as the systemd unit's control
/// group would have killed them: the work they did is over, and nothing else may write its
/// volumes. Blocking.
pub fn end_writers(what: &str, matches: impl Fn(&Path) -> bool) -> Vec<Leftover> {
    let found = find(&VOLUME_TOOLS, matches);
    for leftover in &found {
        tracing::warn!(pid = leftover.pid, ppid = leftover.ppid, cmdline = %leftover.cmdline,
            "killing a leftover of an earlier run writing a volume of {what}");
    }
    let alive = kill_and_wait(&found, GRACE);
    for leftover in &alive {
        tracing::error!(pid = leftover.pid, cmdline = %leftover.cmdline,
            "a leftover writing a volume of {what} is still running {} s after SIGKILL", GRACE.as_secs());
    }
    alive
}

/// Kills each of `found` with SIGKILL and waits for all to be gone, up to `within`; returns
/// those still running then (a process stuck in the kernel on a hung mount dies only when its
/// I/O returns).
pub fn kill_and_wait(found: &[Leftover], within: Duration) -> Vec<Leftover> {
    for leftover in found {
        if still_running(leftover) {
            let _ = kill(Pid::from_raw(leftover.pid), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + within;
    loop {
        let running: Vec<Leftover> = found.iter().filter(|f| still_running(f)).cloned().collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn arguments_are_resolved_against_the_working_directory() {
        let cwd = Path::new("/sd/images/img");
        assert_eq!(
            argument_paths("vol", Some(cwd)),
            vec![PathBuf::from("/sd/images/img/vol")]
        );
        assert_eq!(
            argument_paths("/abs/vol", Some(cwd)),
            vec![PathBuf::from("/abs/vol")]
        );
        assert_eq!(
            argument_paths("backing_file=base", Some(cwd)),
            vec![
                PathBuf::from("/sd/images/img/backing_file=base"),
                PathBuf::from("/sd/images/img/base"),
            ]
        );
        assert!(argument_paths("-f", Some(cwd)).is_empty());
        assert!(argument_paths("vol", None).is_empty());
    }

    /// Starts `qemu-nbd options... file` in `dir` through `sh -c '... &'`: the shell exits at
    /// once and qemu-nbd is reparented, as a leftover of a dead rvdsmd is. Returns its pid
    /// once it serves (it has opened the file).
    fn orphan_qemu_nbd(dir: &Path, options: &str, file: &str) -> i32 {
        let socket = dir.join(format!("{file}.sock"));
        let line = format!(
            "qemu-nbd {options} -f qcow2 -k {} {file} </dev/null >/dev/null 2>&1 & echo $!",
            socket.display()
        );
        let started = Command::new("sh")
            .args(["-c", &line])
            .current_dir(dir)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&started.stdout)
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        pid
    }

    fn end(pid: i32) {
        if stat(pid).is_some_and(|(s, _, _)| s != 'Z') {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Real qemu-nbd processes, not children of this one, on images named relative to their
    /// working directory: the one that writes its image is found, and killed; one that only
    /// reads its image is not found.
    #[test]
    fn a_qemu_nbd_writing_a_volume_is_found_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["vol", "ro"] {
            let made = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", name, "1M"])
                .current_dir(dir.path())
                .status()
                .unwrap();
            assert!(made.success());
        }
        let writer = orphan_qemu_nbd(dir.path(), "", "vol");
        let reader = orphan_qemu_nbd(dir.path(), "-r", "ro");
        let (vol, ro) = (dir.path().join("vol"), dir.path().join("ro"));
        let found = find(&VOLUME_TOOLS, |p: &Path| p == vol);
        let found_reading = find(&VOLUME_TOOLS, |p: &Path| p == ro);
        let survivors = kill_and_wait(&found, Duration::from_secs(5));
        let left = find(&VOLUME_TOOLS, |p: &Path| p == vol);
        end(writer);
        end(reader);
        assert_eq!(found.iter().map(|f| f.pid).collect::<Vec<_>>(), [writer]);
        assert!(found[0].cmdline.starts_with("qemu-nbd"), "{found:?}");
        assert!(survivors.is_empty(), "{survivors:?}");
        assert!(left.is_empty(), "{left:?}");
        assert!(found_reading.is_empty(), "{found_reading:?}");
    }
}
