//! The volume verbs' and the cold merge's preparation decisions, on real volumes with a fake
//! hypervisor saying which VM uses what: a create's outcome and its refusals (which change
//! nothing), a delete refused while a VM uses the volume or libvirt cannot tell, and
//! `StoragePool.prepareMerge`'s outcomes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::codes;
use crate::services::testing::{Bed, params};
use crate::virt::fake::{FakeVm, libvirt_error};

/// Every file under `dir`: what a refused request must leave as it was.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            }
            out.insert(entry.path());
        }
    }
    out
}

/// The image's directory, whose files a refusal must not change.
fn image_files(bed: &Bed, image: Uuid) -> BTreeSet<PathBuf> {
    let some_volume = Path::new(&bed.path(image, Uuid::nil())).to_owned();
    files(some_volume.parent().expect("an image directory"))
}

fn volume_ids(bed: &Bed, image: Uuid, volume: Uuid) -> Value {
    json!({
        "volumeID": volume, "storagepoolID": bed.pool,
        "storagedomainID": bed.domain, "imageID": image,
    })
}

fn subchain(
    bed: &Bed,
    image: Uuid,
    base: Uuid,
    top: Uuid,
) -> crate::api::merge_types::PoolSubchainParams {
    params(json!({
        "storagepoolID": bed.pool,
        "subchainInfo": {"sd_id": bed.domain, "img_id": image, "base_id": base, "top_id": top},
    }))
}

/// A volume created on a parent is the image's new leaf; a second create of the same id is
/// refused (212) before any task, and changes no file.
#[tokio::test]
async fn a_created_volume_is_the_leaf_and_a_duplicate_is_refused_untouched() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let [base, top] = [volumes[0], volumes[1]];
    let info = bed.info(image, top).await.unwrap();
    assert_eq!((info.parent, info.legality.as_str()), (base, "LEGAL"));
    assert_eq!(bed.info(image, base).await.unwrap().children, [top]);

    let before = image_files(&bed, image);
    let again = bed.create_params(image, top, Some(base), json!({}));
    let err = bed
        .services
        .storage
        .create_volume(params(again))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::VOLUME_ALREADY_EXISTS, "{err}");
    assert_eq!(image_files(&bed, image), before);
}

/// A delete is refused (222) while a VM uses the volume, and while libvirt cannot tell; no
/// task starts and no file changes. Once no VM uses it, the delete's task removes it.
#[tokio::test]
async fn a_delete_is_refused_while_a_vm_uses_the_volume() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(1).await;
    let volume = volumes[0];
    let vm = Uuid::new_v4();
    bed.fake
        .add(FakeVm::running(vm).with_disk("vda", &bed.path(image, volume)));
    let before = image_files(&bed, image);
    let delete = || params(volume_ids(&bed, image, volume));

    let err = bed
        .services
        .storage
        .delete_volume(delete())
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CANNOT_DELETE_VOLUME, "{err}");
    bed.fake
        .fail_next("disk_paths_in_use", libvirt_error("list", 1));
    let err = bed
        .services
        .storage
        .delete_volume(delete())
        .await
        .unwrap_err();
    assert_ne!(err.code(), 0, "refused when libvirt cannot tell: {err}");
    assert_eq!(image_files(&bed, image), before, "nothing changed");
    assert_eq!(bed.info(image, volume).await.unwrap().legality, "LEGAL");

    bed.fake.edit(vm, |v| v.disks.clear());
    let task = bed
        .services
        .storage
        .delete_volume(delete())
        .await
        .expect("Volume.delete");
    let status = bed.wait_task(task).await;
    assert_eq!(status.task_result, "success", "{status:?}");
    let err = bed.info(image, volume).await.unwrap_err();
    assert_eq!(err.code(), codes::VOLUME_DOES_NOT_EXIST, "{err}");
}

/// A volume with a child is not deleted (204): the child would lose its backing data.
#[tokio::test]
async fn a_volume_with_a_child_is_not_deleted() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let before = image_files(&bed, image);
    let err = bed
        .services
        .storage
        .delete_volume(params(volume_ids(&bed, image, volumes[0])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::VOLUME_IMAGE_HAS_CHILDREN, "{err}");
    assert_eq!(image_files(&bed, image), before);
}

/// `StoragePool.prepareMerge` grows the base to the top's capacity in a task; it is refused
/// while a VM uses the image, changing nothing.
#[tokio::test]
async fn prepare_merge_grows_the_base_unless_a_vm_uses_the_image() {
    let bed = Bed::open().await;
    let image = Uuid::new_v4();
    let (base, top) = (Uuid::new_v4(), Uuid::new_v4());
    bed.volume(image, base, None).await;
    let bigger = bed.create_params(
        image,
        top,
        Some(base),
        json!({"size": (2u64 << 30).to_string()}),
    );
    let task = bed
        .services
        .storage
        .create_volume(params(bigger))
        .await
        .unwrap();
    assert_eq!(bed.wait_task(task).await.task_result, "success");

    let vm = Uuid::new_v4();
    let chain = bed.leaf_first(image, &[base, top]);
    bed.fake.add(FakeVm::running(vm).with_chain("vda", &chain));
    let before = image_files(&bed, image);
    let err = bed
        .services
        .storage
        .prepare_merge(subchain(&bed, image, base, top))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CANNOT_DELETE_VOLUME, "{err}");
    assert_eq!(image_files(&bed, image), before);
    assert_eq!(
        bed.info(image, base).await.unwrap().capacity,
        (1u64 << 30).to_string()
    );

    bed.fake.edit(vm, |v| v.disks.clear());
    let task = bed
        .services
        .storage
        .prepare_merge(subchain(&bed, image, base, top))
        .await
        .expect("StoragePool.prepareMerge");
    assert_eq!(bed.wait_task(task).await.task_result, "success");
    assert_eq!(
        bed.info(image, base).await.unwrap().capacity,
        (2u64 << 30).to_string()
    );
}

/// A create on a parent whose file is not the qcow2 image its metadata says is refused
/// (200) before any task starts: no file of the new volume, no child of the parent.
#[tokio::test]
async fn a_create_on_a_broken_parent_is_refused_before_its_task() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(1).await;
    let parent = volumes[0];
    std::fs::write(bed.path(image, parent), b"not a qcow2 image").unwrap();
    let before = image_files(&bed, image);
    let child = Uuid::new_v4();
    let p = bed.create_params(image, child, Some(parent), json!({}));
    let err = bed
        .services
        .storage
        .create_volume(params(p))
        .await
        .unwrap_err();
    assert_eq!(err.code(), 200, "{err}");
    assert_eq!(image_files(&bed, image), before, "nothing changed");
    assert!(bed.info(image, parent).await.unwrap().children.is_empty());
}
