//! Running qemu-img: an argument vector (never a shell), at the lowest CPU and I/O priority
//! (`nice -n 19 ionice -c 3`, as VDSM runs it), bounded by a timeout, stoppable, and with its
//! error text kept for the task's error.

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
    let child = Command::new("nice")
        .args(["-n", "19", "ionice", "-c", "3", "qemu-img"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| QemuImgError::Spawn(e.to_string()))?;
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
}
