//! The children of rvdsmd that touch volumes (qemu-img, through `nice` and `ionice`): started
//! so that they die with rvdsmd, however it dies, and found again when an older run left one.
//!
//! tokio's `kill_on_drop` kills a child when its handle is dropped, which a `kill -9` of
//! rvdsmd never does: a copy then kept writing its destination with init as its parent, while
//! the restarted daemon called the job retryable. Outside the systemd unit (whose control
//! group is killed whole) nothing else ends it. So each child asks the kernel, before it
//! execs, for SIGKILL when its parent goes (`PR_SET_PDEATHSIG`); `nice` and `ionice` exec into
//! qemu-img and keep it (it survives an execve of a binary that is not set-user-ID).
//!
//! The kernel's "parent" there is the *thread* that forked the child, not the process: the
//! signal comes when that thread exits. tokio's blocking threads exit after 10 s idle, and any
//! runtime thread may go with its runtime, killing a copy in the middle of its run. So every
//! such child is forked by one thread, [`spawn_tied`]'s spawner, which lives as long as the
//! process (it waits for requests on a channel whose sender is never dropped): its exit is the
//! process's.
//!
//! [`leftovers`] finds the qemu-img and qemu-nbd processes a previous run left (a run without
//! this, or a child stuck in the kernel when its SIGKILL came), so that recovery can end them
//! before it calls a job retryable.

pub mod leftovers;

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::mpsc;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpid, getppid};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A child to fork: the command, the runtime that reaps it, where to answer.
struct Request {
    command: Command,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Starts `command` as a child that gets SIGKILL when rvdsmd dies (see the module's text);
/// the caller keeps its other settings (`kill_on_drop` included). Must be called from within
/// a tokio runtime, which reaps the child.
pub async fn spawn_tied(mut command: Command) -> io::Result<Child> {
    let parent = getpid();
    // SAFETY: the closure runs in the forked child, before exec, where only
    // async-signal-safe work is allowed: it makes two system calls (`prctl`, `getppid`) and
    // builds an `io::Error` from a raw errno, which allocates nothing. It touches no lock and
    // no memory but its captured `Pid` (a plain integer, copied).
    unsafe {
        command.pre_exec(move || die_with(parent));
    }
    let runtime = Handle::try_current().map_err(io::Error::other)?;
    let (reply, answer) = oneshot::channel();
    let gone = || io::Error::other("the thread that starts rvdsmd's children is gone");
    spawner()
        .map_err(|e| io::Error::other(e.clone()))?
        .send(Request {
            command,
            runtime,
            reply,
        })
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// In the child, before exec: SIGKILL when the forking thread (the spawner) exits, and exit
/// now if the parent already died between the fork and this call (the signal would never
/// come: the child was reparented before it asked).
fn die_with(parent: Pid) -> io::Result<()> {
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid() != parent {
        // An error here makes the child exit before exec; nobody is left to read it.
        return Err(Errno::ESRCH.into());
    }
    Ok(())
}

/// The spawner thread's queue, the thread started on first use.
fn spawner() -> Result<&'static mpsc::Sender<Request>, &'static String> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<Request>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (sender, requests) = mpsc::channel();
            std::thread::Builder::new()
                .name("rvdsm-spawner".into())
                .spawn(move || serve(&requests))
                .map(|_| sender)
                .map_err(|e| format!("cannot start the thread that starts children: {e}"))
        })
        .as_ref()
}

/// The spawner's loop: forks each child inside its caller's runtime (which registers it for
/// reaping). It never returns: the sender lives in a static.
fn serve(requests: &mpsc::Receiver<Request>) {
    for Request {
        mut command,
        runtime,
        reply,
    } in requests.iter()
    {
        // A panic (a runtime gone, say) must not end this thread: every later child would
        // fail to start.
        let child = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _inside = runtime.enter();
            command.spawn()
        }))
        .unwrap_or_else(|_| Err(io::Error::other("starting the child panicked")));
        // A caller gone meanwhile drops the child here, killed if it asked for kill_on_drop.
        let _ = reply.send(child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    }

    fn sleeper(seconds: &str) -> Command {
        let mut command = Command::new("nice");
        command
            .args(["-n", "19", "ionice", "-c", "3", "sleep", seconds])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// The thread trap: a child started from a runtime's blocking thread must outlive that
    /// thread, which exits once idle (here after 50 ms).
    #[test]
    fn a_child_outlives_the_runtime_thread_that_asked_for_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_keep_alive(Duration::from_millis(50))
            .enable_all()
            .build()
            .unwrap();
        let mut child = runtime.block_on(async {
            tokio::task::spawn_blocking(|| Handle::current().block_on(spawn_tied(sleeper("30"))))
                .await
                .unwrap()
                .unwrap()
        });
        let pid = child.id().unwrap();
        // The blocking thread idles out meanwhile.
        std::thread::sleep(Duration::from_millis(500));
        let outlived = alive(pid);
        runtime.block_on(async {
            child.kill().await.unwrap();
        });
        assert!(
            outlived,
            "the child died with the runtime thread that asked for it"
        );
    }

    /// The parent-death signal set before exec survives `nice` and `ionice` exec'ing into
    /// the program: a process that started its child through them is killed with SIGKILL,
    /// and the child dies within 5 s. The parent is this test binary run again as
    /// [`parent_of_a_tied_child`].
    #[test]
    fn a_child_dies_with_its_parent_through_nice_and_ionice() {
        use std::io::BufRead;
        let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::children::tests::parent_of_a_tied_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RVDSM_TEST_TIED_PARENT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(parent.stdout.take().unwrap());
        let child = loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "no child announced");
            // The harness prints the test's name on the same line.
            if let Some((_, pid)) = line.trim().split_once("TIED-CHILD ") {
                break pid.parse::<u32>().unwrap();
            }
        };
        // The child has become `sleep` (through nice and ionice) before its parent dies.
        let exec_chain_done = || {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !exec_chain_done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(exec_chain_done(), "the child never became sleep");
        parent.kill().unwrap();
        parent.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(child) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let survived = alive(child);
        if survived {
            let _ = nix::sys::signal::kill(
                Pid::from_raw(i32::try_from(child).unwrap()),
                Signal::SIGKILL,
            );
        }
        assert!(!survived, "the child outlived its killed parent");
    }

    /// Run by [`a_child_dies_with_its_parent_through_nice_and_ionice`] only: starts a tied
    /// child, says its pid, and waits to be killed.
    #[test]
    #[ignore = "run as a child process by another test"]
    fn parent_of_a_tied_child() {
        if std::env::var_os("RVDSM_TEST_TIED_PARENT").is_none() {
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let child = spawn_tied(sleeper("60")).await.unwrap();
            println!("TIED-CHILD {}", child.id().unwrap());
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(child);
        });
    }
}
