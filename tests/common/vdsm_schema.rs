//! The facts of VDSM's schema (`lib/vdsm/api/vdsm-api.yml`, and VDSM's implementation where
//! it departs from it) that rvdsm's replies must satisfy, checked on every reply the
//! integration suite receives through [`super::Daemon::call`]: the names a manager reads, and
//! their JSON types (VDSM sends many numbers as strings).

use serde_json::Value;

/// A JSON type a field must have.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    /// A string holding an unsigned integer.
    UIntStr,
    /// A string holding a number.
    FloatStr,
    Bool,
    UInt,
    /// A JSON integer, maybe negative (VDSM's `int` and `long`).
    Int,
    Object,
    Array,
}

fn check_type(what: &str, value: &Value, ty: Ty) -> Result<(), String> {
    let ok = match ty {
        Ty::Str => value.is_string(),
        Ty::UIntStr => value.as_str().is_some_and(|s| s.parse::<u64>().is_ok()),
        Ty::FloatStr => value.as_str().is_some_and(|s| s.parse::<f64>().is_ok()),
        Ty::Bool => value.is_boolean(),
        Ty::UInt => value.is_u64(),
        Ty::Int => value.is_i64(),
        Ty::Object => value.is_object(),
        Ty::Array => value.is_array(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what} should be {ty:?}, is {value}"))
    }
}

fn fields(what: &str, object: &Value, required: &[(&str, Ty)]) -> Result<(), String> {
    let map = object
        .as_object()
        .ok_or_else(|| format!("{what} should be an object: {object}"))?;
    for (name, ty) in required {
        let value = map
            .get(*name)
            .ok_or_else(|| format!("{what} lacks {name}: {object}"))?;
        check_type(&format!("{what}.{name}"), value, *ty)?;
    }
    Ok(())
}

const STATUSES: &[&str] = &[
    "Down",
    "Migration Destination",
    "Migration Source",
    "Paused",
    "Powering down",
    "RebootInProgress",
    "Restoring state",
    "Saving State",
    "Up",
    "WaitForLaunch",
    "Powering up",
];

fn short_status(what: &str, v: &Value) -> Result<(), String> {
    fields(
        what,
        v,
        &[
            ("vmId", Ty::Str),
            ("status", Ty::Str),
            ("statusTime", Ty::UIntStr),
        ],
    )?;
    let status = v["status"].as_str().unwrap_or_default();
    if STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(format!("{what}.status {status:?} is not a VmStatus"))
    }
}

fn vm_stats(what: &str, v: &Value) -> Result<(), String> {
    short_status(what, v)?;
    if v["status"] == "Down" {
        return fields(
            what,
            v,
            &[
                ("exitCode", Ty::UInt),
                ("exitMessage", Ty::Str),
                ("exitReason", Ty::UInt),
            ],
        );
    }
    fields(
        what,
        v,
        &[
            ("vmName", Ty::Str),
            ("elapsedTime", Ty::UIntStr),
            ("cpuUser", Ty::FloatStr),
            ("cpuSys", Ty::FloatStr),
            ("memUsage", Ty::UIntStr),
            ("kvmEnable", Ty::Str),
            ("acpiEnable", Ty::Str),
            ("timeOffset", Ty::Str),
            ("disks", Ty::Object),
            ("network", Ty::Object),
            ("vmJobs", Ty::Object),
        ],
    )?;
    // VDSM's `VmJobsMap`: `BlockJobInfo` by job UUID (cur and end as strings, VDSM's).
    for (id, job) in v["vmJobs"].as_object().into_iter().flatten() {
        let what = format!("{what}.vmJobs.{id}");
        fields(
            &what,
            job,
            &[
                ("id", Ty::Str),
                ("jobType", Ty::Str),
                ("blockJobType", Ty::Str),
                ("drive", Ty::Str),
                ("imgUUID", Ty::Str),
                ("bandwidth", Ty::UInt),
                ("cur", Ty::UIntStr),
                ("end", Ty::UIntStr),
            ],
        )?;
        if job["id"] != id.as_str() || job["jobType"] != "block" {
            return Err(format!(
                "{what}: id and jobType must be the key and \"block\": {job}"
            ));
        }
    }
    for (name, disk) in v["disks"].as_object().into_iter().flatten() {
        fields(
            &format!("{what}.disks.{name}"),
            disk,
            &[
                ("readBytes", Ty::UIntStr),
                ("writtenBytes", Ty::UIntStr),
                ("readOps", Ty::UIntStr),
                ("writeOps", Ty::UIntStr),
                ("readRate", Ty::FloatStr),
                ("writeRate", Ty::FloatStr),
                ("readLatency", Ty::UIntStr),
                ("writeLatency", Ty::UIntStr),
                ("flushLatency", Ty::UIntStr),
                ("truesize", Ty::UIntStr),
                ("apparentsize", Ty::UIntStr),
            ],
        )?;
    }
    Ok(())
}

fn each(
    what: &str,
    v: &Value,
    check: fn(&str, &Value) -> Result<(), String>,
) -> Result<(), String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("{what} should be a list: {v}"))?;
    items
        .iter()
        .enumerate()
        .try_for_each(|(i, item)| check(&format!("{what}[{i}]"), item))
}

fn capabilities(what: &str, v: &Value) -> Result<(), String> {
    fields(
        what,
        v,
        &[
            ("uuid", Ty::Str),
            ("cpuFlags", Ty::Str),
            ("cpuModel", Ty::Str),
            ("cpuCores", Ty::UIntStr),
            ("cpuSockets", Ty::UIntStr),
            ("cpuThreads", Ty::UIntStr),
            ("memSize", Ty::UIntStr),
            ("operatingSystem", Ty::Object),
            ("kvmEnabled", Ty::Str),
            ("clusterLevels", Ty::Array),
            ("supportedENGINEs", Ty::Array),
            ("packages2", Ty::Object),
            ("software_version", Ty::Str),
            ("liveSnapshot", Ty::Str),
            ("liveMerge", Ty::Str),
            ("networks", Ty::Object),
            ("nics", Ty::Object),
            ("vmTypes", Ty::Array),
        ],
    )?;
    for (name, package) in v["packages2"].as_object().into_iter().flatten() {
        fields(
            &format!("{what}.packages2.{name}"),
            package,
            &[("version", Ty::Str), ("release", Ty::Str)],
        )?;
    }
    fields(
        &format!("{what}.operatingSystem"),
        &v["operatingSystem"],
        &[
            ("name", Ty::Str),
            ("version", Ty::Str),
            ("release", Ty::Str),
        ],
    )
}

fn host_stats(what: &str, v: &Value) -> Result<(), String> {
    fields(
        what,
        v,
        &[
            ("cpuUser", Ty::FloatStr),
            ("cpuSys", Ty::FloatStr),
            ("cpuIdle", Ty::FloatStr),
            ("cpuLoad", Ty::FloatStr),
            ("memFree", Ty::UInt),
            ("memUsed", Ty::UIntStr),
            ("vmCount", Ty::UInt),
            ("vmActive", Ty::UInt),
            ("bootTime", Ty::UIntStr),
            ("elapsedTime", Ty::UIntStr),
            ("network", Ty::Object),
        ],
    )
}

fn uuid_string(what: &str, v: &Value) -> Result<(), String> {
    let ok = v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("{what} should be a UUID string: {v}"))
    }
}

/// VDSM's `StorageDomainVitals`.
fn domain_vitals(what: &str, v: &Value) -> Result<(), String> {
    fields(
        what,
        v,
        &[
            ("code", Ty::Int),
            ("lastCheck", Ty::FloatStr),
            ("delay", Ty::FloatStr),
            ("valid", Ty::Bool),
            ("version", Ty::UInt),
            ("acquired", Ty::Bool),
            ("actual", Ty::Bool),
        ],
    )
}

/// The states of a domain in a pool (`POOL_DOMAINS` and `StoragePool.getInfo`).
const POOL_DOMAIN_STATES: &[&str] = &["Active", "Attached"];

/// VDSM's `StoragePoolInfo` (`info`) and its `dominfo` map (`StoragePool.getInfo`).
fn pool_info(what: &str, v: &Value) -> Result<(), String> {
    fields(what, v, &[("info", Ty::Object), ("dominfo", Ty::Object)])?;
    let info = &v["info"];
    fields(
        &format!("{what}.info"),
        info,
        &[
            ("master_uuid", Ty::Str),
            ("master_ver", Ty::Int),
            ("name", Ty::Str),
            ("domains", Ty::Str),
            ("spm_id", Ty::Int),
            ("lver", Ty::Int),
            ("version", Ty::Str),
            ("type", Ty::Str),
            ("isoprefix", Ty::Str),
            ("pool_status", Ty::Str),
        ],
    )?;
    uuid_string(&format!("{what}.info.master_uuid"), &info["master_uuid"])?;
    // "<sd>:<state>,..." (VDSM's `POOL_DOMAINS`), empty for a pool of no domain.
    let listed = info["domains"].as_str().unwrap_or_default();
    for entry in listed.split(',').filter(|e| !e.is_empty()) {
        let (sd, state) = entry
            .split_once(':')
            .ok_or_else(|| format!("{what}.info.domains: {entry:?} is not <sd>:<state>"))?;
        uuid_string(&format!("{what}.info.domains"), &Value::from(sd))?;
        if !POOL_DOMAIN_STATES.contains(&state) {
            return Err(format!("{what}.info.domains: state {state:?} of {sd}"));
        }
    }
    for (sd, dom) in v["dominfo"].as_object().into_iter().flatten() {
        let what = format!("{what}.dominfo.{sd}");
        fields(
            &what,
            dom,
            &[
                ("status", Ty::Str),
                ("alerts", Ty::Array),
                ("isoprefix", Ty::Str),
                ("version", Ty::Int),
                ("diskfree", Ty::UIntStr),
                ("disktotal", Ty::UIntStr),
            ],
        )?;
        let status = dom["status"].as_str().unwrap_or_default();
        if !POOL_DOMAIN_STATES.contains(&status) {
            return Err(format!(
                "{what}.status {status:?} is not a pool domain state"
            ));
        }
    }
    Ok(())
}

/// Checks a successful reply of `method` against VDSM's types; `Err` says what is wrong.
pub fn check_reply(method: &str, reply: &Value) -> Result<(), String> {
    match method {
        "Host.getVMList" | "Host.getVMFullList" => each(method, reply, short_status),
        "VM.getStats" | "Host.getAllVmStats" => each(method, reply, vm_stats),
        "VM.create" => short_status(method, reply),
        "VM.pause" | "VM.cont" => fields(method, reply, &[("vmList", Ty::Object)]),
        "VM.destroy"
        | "VM.shutdown"
        | "Host.ping2"
        | "VM.freeze"
        | "VM.thaw"
        | "VM.snapshot"
        | "Task.clear"
        | "Task.stop"
        | "Image.teardown"
        | "StorageDomain.create"
        | "VM.merge"
        | "SDM.merge"
        | "SDM.copy_data"
        | "StoragePool.connect"
        | "StoragePool.disconnect"
        | "StoragePool.spmStop"
        | "StoragePool.create"
        | "StorageDomain.attach"
        | "StorageDomain.activate"
        | "StorageDomain.deactivate"
        | "StorageDomain.detach"
        | "StorageDomain.format" => check_type(method, reply, Ty::Bool),
        "StoragePool.getInfo" => pool_info(method, reply),
        "StoragePool.getSpmStatus" => fields(
            method,
            reply,
            &[
                ("spmStatus", Ty::Str),
                ("spmLver", Ty::Int),
                ("spmId", Ty::Int),
            ],
        ),
        "Host.getStorageRepoStats" => reply
            .as_object()
            .ok_or_else(|| format!("{method} should be a map: {reply}"))?
            .values()
            .try_for_each(|vitals| domain_vitals(method, vitals)),
        "Host.getCapabilities" => capabilities(method, reply),
        "Host.getStats" => host_stats(method, reply),
        "Host.dumpxmls" => reply
            .as_object()
            .ok_or_else(|| format!("{method} should be a map: {reply}"))?
            .values()
            .try_for_each(|xml| check_type("Host.dumpxmls value", xml, Ty::Str)),
        "Volume.create"
        | "Volume.delete"
        | "Image.delete"
        | "Image.deleteVolumes"
        | "StoragePool.prepareMerge"
        | "StoragePool.finalizeMerge"
        | "StoragePool.spmStart"
        | "StoragePool.switchMaster"
        | "Lease.create"
        | "Lease.delete" => uuid_string(method, reply),
        "Lease.info" => fields(
            method,
            reply,
            &[
                ("sd_id", Ty::Str),
                ("lease_id", Ty::Str),
                ("path", Ty::Str),
                ("offset", Ty::UInt),
            ],
        ),
        // VDSM: `owners` a list of host ids (its schema says uint), `version` null while free.
        "Lease.status" => {
            let owners = &reply["owners"];
            check_type("Lease.status owners", owners, Ty::Array)?;
            owners
                .as_array()
                .into_iter()
                .flatten()
                .try_for_each(|id| check_type("Lease.status owner", id, Ty::UInt))?;
            match &reply["version"] {
                Value::Null => Ok(()),
                version => check_type("Lease.status version", version, Ty::UInt),
            }
        }
        "Image.reconcileVolumeChain" => each(method, reply, uuid_string),
        "Volume.getSize" => fields(
            method,
            reply,
            &[("apparentsize", Ty::UIntStr), ("truesize", Ty::UIntStr)],
        ),
        "Task.getStatus" => fields(
            method,
            reply,
            &[
                ("taskID", Ty::Str),
                ("taskState", Ty::Str),
                ("taskResult", Ty::Str),
                ("message", Ty::Str),
            ],
        ),
        "Image.prepare" => fields(method, reply, &[("path", Ty::Str)]),
        _ => Ok(()),
    }
}

#[test]
fn the_checker_catches_what_a_manager_would_trip_on() {
    let good = serde_json::json!([{"vmId": "x", "status": "Up", "statusTime": "12"}]);
    assert!(check_reply("Host.getVMList", &good).is_ok());
    let int_time = serde_json::json!([{"vmId": "x", "status": "Up", "statusTime": 12}]);
    assert!(check_reply("Host.getVMList", &int_time).is_err());
    let job = serde_json::json!({"id": "j", "jobType": "block", "blockJobType": "commit",
        "drive": "vda", "imgUUID": "i", "bandwidth": 0, "cur": 5, "end": "9"});
    let mut up = serde_json::json!({"vmId": "x", "status": "Up", "statusTime": "1",
        "vmName": "n", "elapsedTime": "1", "cpuUser": "0.0", "cpuSys": "0.0", "memUsage": "0",
        "kvmEnable": "true", "acpiEnable": "true", "timeOffset": "0", "disks": {},
        "network": {}, "vmJobs": {"j": job}});
    let err = check_reply("VM.getStats", &serde_json::json!([up.clone()])).unwrap_err();
    assert!(err.contains("cur"), "{err}");
    up["vmJobs"]["j"]["cur"] = "5".into();
    assert!(check_reply("VM.getStats", &serde_json::json!([up])).is_ok());
    let down = serde_json::json!([{"vmId": "x", "status": "Down", "statusTime": "1"}]);
    assert!(
        check_reply("VM.getStats", &down)
            .unwrap_err()
            .contains("exitCode")
    );
}

#[test]
fn the_checker_knows_the_pool_s_info() {
    let mut good = serde_json::json!({
        "info": {"master_uuid": "9b5c8d5e-2c4a-4a35-8a7e-3b7f7c1f0a01", "master_ver": 1,
                 "name": "pool", "spm_id": 1, "lver": 2, "version": "5", "type": "LOCALFS",
                 "isoprefix": "", "pool_status": "connected",
                 "domains": "9b5c8d5e-2c4a-4a35-8a7e-3b7f7c1f0a01:Active"},
        "dominfo": {"9b5c8d5e-2c4a-4a35-8a7e-3b7f7c1f0a01": {"status": "Active", "alerts": [],
                    "isoprefix": "", "version": 5, "diskfree": "10", "disktotal": "20"}},
    });
    assert_eq!(check_reply("StoragePool.getInfo", &good), Ok(()));
    let mut string_version = good.clone();
    string_version["info"]["master_ver"] = "1".into();
    let err = check_reply("StoragePool.getInfo", &string_version).unwrap_err();
    assert!(err.contains("master_ver"), "{err}");
    good["info"]["domains"] = "9b5c8d5e-2c4a-4a35-8a7e-3b7f7c1f0a01:Master".into();
    let err = check_reply("StoragePool.getInfo", &good).unwrap_err();
    assert!(err.contains("Master"), "{err}");
    assert!(check_reply("StoragePool.create", &serde_json::json!(null)).is_err());
}
