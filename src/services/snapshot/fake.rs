//! A scripted hypervisor for the snapshot flow's unit tests: each call answers what the test
//! set, and every call is recorded, so that a test asserts exactly what would have happened.

use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use super::flow::VmOps;
use crate::virt::{
    DefinedSwitch, DiskSwitch, FreezeState, MemoryDump, PauseReport, RunState, VirtError,
};

/// A libvirt error with `code`.
pub fn libvirt(code: i32) -> VirtError {
    VirtError::Libvirt {
        op: "test",
        code,
        message: format!("libvirt error {code}"),
    }
}

/// A scripted hypervisor that records every call.
#[derive(Default)]
pub struct Fake {
    pub state: Option<RunState>,
    pub freeze_states: Mutex<Vec<Result<FreezeState, VirtError>>>,
    pub freeze: Option<Result<u32, VirtError>>,
    pub thaws: Mutex<Vec<Result<u32, VirtError>>>,
    pub snapshot: Option<Result<(), VirtError>>,
    pub timeout_fails: bool,
    pub journal_fails: bool,
    pub disown_fails: bool,
    pub calls: Mutex<Vec<&'static str>>,
}

impl Fake {
    pub fn running() -> Self {
        Self {
            state: Some(RunState::Running),
            freeze_states: Mutex::new(vec![Ok(FreezeState::Thawed)]),
            freeze: Some(Ok(1)),
            thaws: Mutex::new(vec![Ok(1)]),
            snapshot: Some(Ok(())),
            ..Self::default()
        }
    }
    fn record(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

impl VmOps for Fake {
    async fn run_state(&self, _: Uuid) -> Result<RunState, VirtError> {
        self.record("state");
        Ok(self.state.unwrap())
    }
    async fn set_agent_timeout(&self, _: Uuid, _: Duration) -> Result<(), VirtError> {
        self.record("timeout");
        if self.timeout_fails {
            Err(libvirt(1))
        } else {
            Ok(())
        }
    }
    async fn freeze_state(&self, _: Uuid, _: Duration) -> Result<FreezeState, VirtError> {
        self.record("status");
        let mut states = self.freeze_states.lock().unwrap();
        if states.len() > 1 {
            states.remove(0)
        } else {
            states[0].clone()
        }
    }
    async fn record_freeze_intent(&self, _: Uuid) -> Result<(), String> {
        // Recorded only when it fails: the other tests' call lists stay about the hypervisor.
        if self.journal_fails {
            self.record("journal");
            Err("disk full".into())
        } else {
            Ok(())
        }
    }
    async fn disown_freeze(&self, _: Uuid) -> Result<(), String> {
        self.record("disown");
        if self.disown_fails {
            Err("disk full".into())
        } else {
            Ok(())
        }
    }
    async fn freeze(&self, _: Uuid) -> Result<u32, VirtError> {
        self.record("freeze");
        self.freeze.clone().unwrap()
    }
    async fn thaw(&self, _: Uuid) -> Result<u32, VirtError> {
        self.record("thaw");
        let mut thaws = self.thaws.lock().unwrap();
        if thaws.len() > 1 {
            thaws.remove(0)
        } else {
            thaws[0].clone()
        }
    }
    async fn external_snapshot(
        &self,
        _: Uuid,
        _: Vec<DiskSwitch>,
        _: Vec<String>,
    ) -> Result<(), VirtError> {
        self.record("snapshot");
        self.snapshot.clone().unwrap()
    }
    async fn memory_snapshot(
        &self,
        _: Uuid,
        _: Vec<DiskSwitch>,
        _: Vec<String>,
        _: MemoryDump,
    ) -> Result<PauseReport, VirtError> {
        self.record("memory");
        self.snapshot
            .clone()
            .unwrap()
            .map(|()| PauseReport::default())
    }
    async fn switch_defined_disks(&self, _: Uuid, _: Vec<DefinedSwitch>) -> Result<(), VirtError> {
        self.record("redefine");
        Ok(())
    }
}
