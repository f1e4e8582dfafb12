//! The merges a previous run of rvdsmd left (the journal pruned those past their window when
//! it was opened): finished ones are shown again under their ids;
//! the others are followed again from their journaled phase, which looks first at what the
//! domain and the images show (a commit still running is followed, one that ended is judged
//! by the chain QEMU uses, a pivot that happened is finished, one that did not is undone).

use super::journal::{Entry, Phase};
use super::{MergeError, MergeService};
use crate::jobs::kind::JobKind;

impl MergeService {
    /// Ends or resumes every merge a previous run left (at start, before requests are served).
    pub async fn recover(&self, entries: Vec<Entry>) {
        for entry in entries {
            match &entry.phase {
                Phase::Finished(end) => {
                    self.inner.jobs.restore(
                        entry.job,
                        Some(entry.vm),
                        JobKind::LiveMerge,
                        end.job_outcome(),
                    );
                }
                _ => self.resume(entry).await,
            }
        }
    }

    /// Follows an interrupted merge again from its journaled phase.
    async fn resume(&self, mut entry: Entry) {
        tracing::info!(job = %entry.job, vm = %entry.vm, phase = ?entry.phase, "resuming an interrupted merge");
        if self
            .inner
            .jobs
            .add(entry.job, Some(entry.vm), JobKind::LiveMerge)
            .is_err()
        {
            return;
        }
        let claim = match self.inner.jobs.claim_vm(entry.vm) {
            Ok(claim) => claim,
            Err(err) => {
                let err = MergeError::failed(entry.job, err.to_string());
                self.end(&mut entry, Err(err)).await;
                return;
            }
        };
        let mark = match self
            .inner
            .storage
            .merging(entry.drive.domain, entry.drive.image)
        {
            Ok(mark) => mark,
            Err(err) => {
                let err = MergeError::from_api(entry.job, err);
                self.end(&mut entry, Err(err)).await;
                return;
            }
        };
        self.inner.jobs.mark_running(entry.job);
        let locks = self
            .inner
            .storage
            .lock_images(vec![(entry.drive.domain, entry.drive.image)])
            .await;
        self.show(&entry);
        let service = self.clone();
        tokio::spawn(async move { service.follow(entry, (claim, mark), locks).await });
    }
}
