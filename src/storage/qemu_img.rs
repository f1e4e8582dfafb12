//! Running qemu-img: an argument vector (never a shell), at the lowest CPU and I/O priority
//! (`nice -n 19 ionice -c 3`, as VDSM runs it), bounded by a timeout, stoppable, and with its
//! error text kept for the task's error. It dies with rvdsmd, even killed with SIGKILL.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Why a qemu-img run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuImgError {
    /// It could not be started.
    #[error("cannot run qemu-img: {0}")]
    Spawn(String),
    /// It exited with an error.
    #[error("qemu-img failed ({status}): {stderr}")]
    Failed {
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// It ran past its deadline and was killed.
    #[error("qemu-img did not finish within {0} s and was killed")]
    Timeout(u64),
    /// It was stopped on request.
    #[error("qemu-img was stopped")]
    Stopped,
}

/// Runs `qemu-img args...` in `cwd`; returns its standard output.
pub async fn run(
    args: &[&str],
    cwd: &Path,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<String, QemuImgError> {
    let child = spawn(args, cwd).await?;
    // Dropping the wait future kills the child (kill_on_drop), on timeout and on stop alike.
    let output = tokio::select! {
        output = child.wait_with_output() => output.map_err(|e| QemuImgError::Spawn(e.to_string()))?,
        () = tokio::time::sleep(timeout) => return Err(QemuImgError::Timeout(timeout.as_secs())),
        () = stop.cancelled() => return Err(QemuImgError::Stopped),
    };
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(QemuImgError::Failed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs a long `qemu-img` operation given `-p` (commit, convert) as [`run`] does, calling
/// `progress` with each percentage it prints.
pub async fn run_with_progress(
    args: &[&str],
    cwd: &Path,
    timeout: Duration,
    stop: &CancellationToken,
    mut progress: impl FnMut(f64) + Send,
) -> Result<(), QemuImgError> {
    use tokio::io::AsyncReadExt;
    let mut child = spawn(args, cwd).await?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let work = async {
        let mut errors = Vec::new();
        let read_errors = stderr.read_to_end(&mut errors);
        let read_progress = async {
            let mut buf = [0u8; 512];
            let mut line = Vec::new();
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for byte in &buf[..n] {
                    if matches!(byte, b'\r' | b'\n') {
                        if let Some(percent) = parse_progress(&String::from_utf8_lossy(&line)) {
                            progress(percent);
                        }
                        line.clear();
                    } else {
                        line.push(*byte);
                    }
                }
            }
        };
        let (_, ()) = tokio::join!(read_errors, read_progress);
        let status = child
            .wait()
            .await
            .map_err(|e| QemuImgError::Spawn(e.to_string()))?;
        if status.success() {
            Ok(())
        } else {
            Err(QemuImgError::Failed {
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&errors).trim().to_owned(),
            })
        }
    };
    tokio::select! {
        result = work => result,
        () = tokio::time::sleep(timeout) => Err(QemuImgError::Timeout(timeout.as_secs())),
        () = stop.cancelled() => Err(QemuImgError::Stopped),
    }
}

/// The percentage of a `qemu-img -p` progress line: `    (42.17/100%)`.
fn parse_progress(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.trim().parse().ok()
}

/// Starts `nice -n 19 ionice -c 3 qemu-img args...` in `cwd`, tied to rvdsmd: killed when its
/// handle is dropped (timeout, stop) and when rvdsmd dies (see [`crate::sys::children`]).
async fn spawn(args: &[&str], cwd: &Path) -> Result<tokio::process::Child, QemuImgError> {
    let mut command = Command::new("nice");
    command
        .args(["-n", "19", "ionice", "-c", "3", "qemu-img"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::sys::children::spawn_tied(command)
        .await
        .map_err(|e| QemuImgError::Spawn(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let minute = Duration::from_secs(60);
        run(
            &["create", "-q", "-f", "qcow2", "a", "1M"],
            dir.path(),
            minute,
            &stop,
        )
        .await
        .unwrap();
        assert!(dir.path().join("a").exists());
        let err = run(
            &["create", "-f", "nope", "b", "1M"],
            dir.path(),
            minute,
            &stop,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, QemuImgError::Failed { stderr, .. } if stderr.contains("nope")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stop_and_timeout_end_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let slow = [
            "create",
            "-q",
            "-f",
            "raw",
            "-o",
            "preallocation=full",
            "big",
            "4G",
        ];
        let stop = CancellationToken::new();
        stop.cancel();
        let err = run(&slow, dir.path(), Duration::from_secs(60), &stop).await;
        assert_eq!(err, Err(QemuImgError::Stopped));
        let running = CancellationToken::new();
        let err = run(&slow, dir.path(), Duration::ZERO, &running).await;
        assert_eq!(err, Err(QemuImgError::Timeout(0)));
    }

    #[test]
    fn progress_lines_are_read() {
        assert_eq!(parse_progress("    (42.17/100%)"), Some(42.17));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100.0));
        assert_eq!(parse_progress("Image committed."), None);
    }

    #[tokio::test]
    async fn a_long_run_reports_its_progress() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let minute = Duration::from_secs(60);
        run(
            &["create", "-q", "-f", "qcow2", "src", "8M"],
            dir.path(),
            minute,
            &stop,
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        run_with_progress(
            &["convert", "-p", "-f", "qcow2", "-O", "raw", "src", "dst"],
            dir.path(),
            minute,
            &stop,
            |p| seen.push(p),
        )
        .await
        .unwrap();
        assert_eq!(seen.last(), Some(&100.0), "{seen:?}");
        let err = run_with_progress(
            &["convert", "-p", "nope", "x"],
            dir.path(),
            minute,
            &stop,
            |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QemuImgError::Failed { .. }), "{err}");
    }
}
