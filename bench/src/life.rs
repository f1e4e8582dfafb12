//! The rest of a snapshot's life beside its floors: a live merge of an active layer holding
//! `mib` MiB (`VM.merge` to its job's end) against `virsh blockcommit --active --pivot --wait`
//! on the same data; a full clone (`SDM.copy_data`) against `qemu-img convert -t writeback`
//! (flushed, as rvdsm's) of the same chain into the same kind of volume; a revert (preview volume, `VM.create`, boot to a
//! responding agent) against `qemu-img create` + `virsh create` + the agent.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use virt::connect::Connect;

use crate::host::{Guest, Host, output, run};
use crate::snap::{JobWatcher, request_snapshot};
use crate::stats::{Summary, ratio};

/// Volumes of the merge and clone measurements: room for the data beyond the fixture's ext4.
const ROOM: u64 = 2 << 30;

/// What to measure.
pub struct LifeArgs {
    /// MiB in the merged top and in the cloned chain.
    pub mib: u64,
    /// Repetitions of each measurement.
    pub reps: usize,
}

/// Every measurement, as JSON for the report.
pub async fn measure(
    host: &Host,
    conn: &Connect,
    jobs: &JobWatcher,
    args: &LifeArgs,
) -> Result<Value> {
    eprintln!("live merge of {} MiB ({} runs each)", args.mib, args.reps);
    let merge = merges(host, conn, jobs, args).await?;
    eprintln!("full clone of {} MiB ({} runs each)", args.mib, args.reps);
    let clone = clones(host, jobs, args).await?;
    eprintln!("revert to boot ({} runs each)", args.reps);
    let reverts = reverts(host, conn, args).await?;
    Ok(json!({"mib": args.mib, "merge": merge, "clone": clone,
              "revert": reverts["revert"], "vm_create": reverts["create"]}))
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// Writes `mib` MiB of a pattern at 128 MiB into a qcow2 file (past the fixture's ext4),
/// opened without its backing file (a running guest holds that one): whole clusters, so
/// nothing of the backing file is needed.
fn fill(path: &Path, mib: u64, pattern: u8) -> Result<()> {
    let image = json!({"driver": "qcow2", "backing": null,
                       "file": {"driver": "file", "filename": path}});
    run(Command::new("qemu-io")
        .args(["-c", &format!("write -P {pattern} 128M {mib}M")])
        .arg(format!("json:{image}")))
}

fn pair(ours: &[f64], floor: &[f64]) -> Value {
    let (o, f) = (Summary::of(ours), Summary::of(floor));
    json!({"rvdsm": o.json(), "floor": f.json(), "ratio": ratio(o.median, f.median)})
}

async fn merges(host: &Host, conn: &Connect, jobs: &JobWatcher, args: &LifeArgs) -> Result<Value> {
    let mut ours_guest = host.boot_guest_sized(conn, 20, ROOM).await?;
    let floor_guest = host.boot_guest_sized(conn, 21, ROOM).await?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for n in 0..args.reps {
        ours.push(rvdsm_merge(host, jobs, &mut ours_guest, args.mib).await?);
        floor.push(floor_merge(host, &floor_guest, args.mib, n)?);
    }
    Ok(pair(&ours, &floor))
}

/// rvdsm: a snapshot onto a top holding `mib` MiB, then `VM.merge` of that active layer into
/// its base, timed from the request to the job's end (pivot and top deleted included).
async fn rvdsm_merge(host: &Host, jobs: &JobWatcher, guest: &mut Guest, mib: u64) -> Result<f64> {
    let base = guest.volume.clone();
    let top = host
        .create_volume_sized(&guest.image, Some(&base), ROOM)
        .await?;
    fill(&host.image_dir(&guest.image).join(&top), mib, 0x5a)?;
    let job = request_snapshot(host, guest, &top).await?;
    jobs.wait(&job).await?;
    let job = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    host.client
        .call(
            "VM.merge",
            json!({"vmID": guest.uuid, "jobUUID": job,
                   "drive": {"poolID": host.pool, "domainID": host.domain,
                             "imageID": guest.image, "volumeID": top},
                   "baseVolUUID": base, "topVolUUID": top}),
        )
        .await?;
    let info = jobs.wait(&job).await?;
    let took = ms(started);
    if info["result"]["active"] != true {
        bail!("merge did not pivot: {info}");
    }
    Ok(took)
}

/// Floor: the same data on an overlay made by hand, switched to by libvirt, then `virsh
/// blockcommit --active --pivot --wait` (commit and pivot, nothing deleted).
fn floor_merge(host: &Host, guest: &Guest, mib: u64, n: usize) -> Result<f64> {
    let overlay = host
        .image_dir(&guest.image)
        .join(format!("floor-merge-{n}.qcow2"));
    let base = std::fs::canonicalize(&guest.path)?;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b"])
        .arg(&base)
        .arg(&overlay)
        .arg(ROOM.to_string()))?;
    fill(&overlay, mib, 0x5a)?;
    run(Command::new("virsh")
        .args([
            "-q",
            "-c",
            "qemu:///system",
            "snapshot-create-as",
            &guest.name,
        ])
        .args([
            "--disk-only",
            "--reuse-external",
            "--no-metadata",
            "--diskspec",
        ])
        .arg(format!("vda,file={}", overlay.display())))?;
    let started = Instant::now();
    run(Command::new("virsh")
        .args([
            "-q",
            "-c",
            "qemu:///system",
            "blockcommit",
            &guest.name,
            "vda",
        ])
        .args(["--active", "--pivot", "--wait"]))?;
    let took = ms(started);
    std::fs::remove_file(&overlay)?;
    Ok(took)
}

async fn clones(host: &Host, jobs: &JobWatcher, args: &LifeArgs) -> Result<Value> {
    // The source: a base and a top each holding half of the data, as a VM's chain would.
    let image = uuid::Uuid::new_v4().to_string();
    let base = host.create_volume_sized(&image, None, ROOM).await?;
    let dir = host.image_dir(&image);
    fill(&dir.join(&base), args.mib / 2, 0x11)?;
    let top = host.create_volume_sized(&image, Some(&base), ROOM).await?;
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x22 1G {}M", args.mib / 2),
        ])
        .arg(dir.join(&top)))?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for n in 0..args.reps {
        let dst_image = uuid::Uuid::new_v4().to_string();
        let dst = host.create_volume_sized(&dst_image, None, ROOM).await?;
        let job = uuid::Uuid::new_v4().to_string();
        let endpoint = |img: &str, vol: &str| json!({"endpoint_type": "div", "sd_id": host.domain, "img_id": img, "vol_id": vol});
        // Each copy starts with nothing of the previous steps left to write back.
        run(&mut Command::new("sync"))?;
        let started = Instant::now();
        host.client
            .call(
                "SDM.copy_data",
                json!({"job_id": job, "source": endpoint(&image, &top),
                       "destination": endpoint(&dst_image, &dst)}),
            )
            .await?;
        jobs.wait(&job).await?;
        ours.push(ms(started));

        let floor_dst = dir.join(format!("floor-clone-{n}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "compat=1.1"])
            .arg(&floor_dst)
            .arg(ROOM.to_string()))?;
        run(&mut Command::new("sync"))?;
        let started = Instant::now();
        // The same durability as rvdsm's (convert's default cache mode never flushes).
        run(Command::new("qemu-img")
            .args([
                "convert",
                "-t",
                "writeback",
                "-f",
                "qcow2",
                "-O",
                "qcow2",
                "-n",
            ])
            .arg(dir.join(&top))
            .arg(&floor_dst))?;
        floor.push(ms(started));
        std::fs::remove_file(&floor_dst)?;
    }
    let mut result = pair(&ours, &floor);
    // Throughput: the floor's time over rvdsm's (≥ 0.95 is the target).
    let median = |side: &str| result[side]["median"].as_f64().unwrap_or(f64::NAN);
    result["throughput_ratio"] = json!(ratio(median("floor"), median("rvdsm")));
    Ok(result)
}

async fn reverts(host: &Host, conn: &Connect, args: &LifeArgs) -> Result<Value> {
    // The snapshot reverted to: a volume with the fixture's data, no VM on it.
    let image = uuid::Uuid::new_v4().to_string();
    let snapshot = host.create_volume(&image, None).await?;
    let dir = host.image_dir(&image);
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(host.repo.join("fixtures/build/data.qcow2"))
        .arg(dir.join(&snapshot)))?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    let (mut ours_create, mut floor_create) = (Vec::new(), Vec::new());
    for n in 0..args.reps {
        let (whole, create) = rvdsm_revert(host, conn, &image, &snapshot, n).await?;
        ours.push(whole);
        ours_create.push(create);
        let (whole, create) = floor_revert(host, conn, &dir.join(&snapshot), n).await?;
        floor.push(whole);
        floor_create.push(create);
    }
    Ok(json!({"revert": pair(&ours, &floor), "create": pair(&ours_create, &floor_create)}))
}

/// rvdsm: the preview volume (`Volume.create` on the snapshot), `VM.create` on it, the agent
/// answering; then the VM destroyed and the preview deleted (not timed). Milliseconds: the
/// whole, and `VM.create` alone (request to reply: the domain defined and started).
async fn rvdsm_revert(
    host: &Host,
    conn: &Connect,
    image: &str,
    snapshot: &str,
    n: usize,
) -> Result<(f64, f64)> {
    let vm = uuid::Uuid::new_v4().to_string();
    let name = format!("rvdsm-bench-{}-revert-{n}", std::process::id());
    let started = Instant::now();
    let preview = host.create_volume(image, Some(snapshot)).await?;
    let xml = engine_xml(host, &vm, &name, image, &preview)?;
    let creating = Instant::now();
    host.client
        .call("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}))
        .await?;
    let create = ms(creating);
    let domain = conn.lookup_domain_by_uuid_string(&vm)?;
    wait_agent(&domain).await?;
    let took = ms(started);
    host.client.call("VM.destroy", json!({"vmID": vm})).await?;
    let task = host
        .client
        .call(
            "Image.deleteVolumes",
            json!({"storagepoolID": host.pool, "storagedomainID": host.domain,
                   "imageID": image, "volumeList": [preview], "postZero": false,
                   "force": true}),
        )
        .await?;
    host.wait_task(task.as_str().context("no task id")?).await?;
    Ok((took, create))
}

/// Floor: `qemu-img create` of an overlay on the snapshot, `virsh create` of the fixture's
/// definition on it, the agent answering. Milliseconds: the whole, and libvirt's
/// `virDomainCreateXML` alone (what `virsh create` calls, without virsh's own start).
async fn floor_revert(
    host: &Host,
    conn: &Connect,
    snapshot: &Path,
    n: usize,
) -> Result<(f64, f64)> {
    let overlay = host.dir.path().join(format!("floor-revert-{n}.qcow2"));
    let name = format!("rvdsm-bench-{}-floor-revert-{n}", std::process::id());
    let started = Instant::now();
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(snapshot)
        .arg(&overlay))?;
    let xml = output(
        Command::new(host.repo.join("fixtures/guest-xml"))
            .args(["--name", &name, "--console"])
            .arg(host.dir.path().join(format!("floor-revert-{n}.log")))
            .arg("--disk")
            .arg(&overlay),
    )?;
    let creating = Instant::now();
    let domain = conn.create_domain_xml(&xml, 0)?;
    let create = ms(creating);
    wait_agent(&domain).await?;
    let took = ms(started);
    let _ = domain.destroy();
    std::fs::remove_file(&overlay)?;
    Ok((took, create))
}

async fn wait_agent(domain: &virt::domain::Domain) -> Result<()> {
    let started = Instant::now();
    loop {
        let pinged = {
            let domain = domain.clone();
            tokio::task::spawn_blocking(move || {
                domain.qemu_agent_command("{\"execute\":\"guest-ping\"}", 1, 0)
            })
            .await?
        };
        if pinged.is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("the reverted guest's agent never answered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An engine's domain XML for the fixture guest on `(image, volume)` of the bench's domain.
fn engine_xml(host: &Host, vm: &str, name: &str, image: &str, volume: &str) -> Result<String> {
    let placeholder = format!(
        "/rhev/data-center/{}/{}/images/{image}/{volume}",
        host.pool, host.domain
    );
    let xml = output(
        Command::new(host.repo.join("fixtures/guest-xml"))
            .args(["--name", name, "--console"])
            .arg(host.dir.path().join(format!("{name}.log")))
            .args(["--disk", &placeholder]),
    )?;
    let metadata = format!(
        r#"<uuid>{vm}</uuid><metadata><ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><ovirt-vm:device devtype="disk" name="vda"><ovirt-vm:poolID>{}</ovirt-vm:poolID><ovirt-vm:domainID>{}</ovirt-vm:domainID><ovirt-vm:imageID>{image}</ovirt-vm:imageID><ovirt-vm:volumeID>{volume}</ovirt-vm:volumeID></ovirt-vm:device></ovirt-vm:vm></metadata>"#,
        host.pool, host.domain
    );
    let at = xml.find("</name>").context("a <name>")? + "</name>".len();
    Ok(format!("{}{metadata}{}", &xml[..at], &xml[at..]))
}
