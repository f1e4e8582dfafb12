//! The storage verbs' requests checked into what the storage module takes, by VDSM's rules
//! (VDSM-REFERENCE §2.2): pure functions, so that every refusal is unit-tested and none can
//! change anything.

use crate::api::storage_types::{CreateDomainParams, CreateVolumeParams};
use crate::api::volume_types::{BLANK_UUID, DISK_TYPES, Preallocation, VolumeFormat};
use crate::storage::StorageError;
use crate::storage::domain::{DOMAIN_VERSION, DomainType, NewDomain};
use crate::storage::volume::{CreateRequest, SIZE_ALIGNMENT};

/// VDSM's default block size of a file domain.
const DEFAULT_BLOCK_SIZE: u32 = 512;
/// VDSM's default most hosts sharing a domain.
const DEFAULT_MAX_HOSTS: u32 = 250;
/// The only domain class rvdsm creates: DATA.
const DATA_CLASS: i64 = 1;

/// Validates `StorageDomain.create`'s parameters into a new domain.
pub(super) fn new_domain(p: CreateDomainParams) -> Result<NewDomain, StorageError> {
    let invalid = StorageError::InvalidParameter;
    let kind = DomainType::from_code(p.domain_type)
        .ok_or_else(|| invalid(format!("domainType={}", p.domain_type)))?;
    if p.domain_class != DATA_CLASS {
        return Err(invalid(format!("domainClass={}", p.domain_class)));
    }
    if p.version != i64::from(DOMAIN_VERSION) {
        return Err(invalid(format!("version={}", p.version)));
    }
    Ok(NewDomain {
        uuid: p.domain,
        kind,
        remote_path: p.type_args.path().to_owned(),
        name: p.name,
        block_size: p.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
        max_hosts: p.max_hosts.unwrap_or(DEFAULT_MAX_HOSTS),
    })
}

/// Validates `Volume.create`'s parameters into a request.
pub(super) fn create_request(p: &CreateVolumeParams) -> Result<CreateRequest, StorageError> {
    let invalid = StorageError::InvalidParameter;
    let size: u64 = p
        .size
        .trim()
        .parse()
        .map_err(|_| invalid(format!("size={}", p.size)))?;
    if size == 0 {
        return Err(StorageError::Size("size must be larger than 0".into()));
    }
    let capacity = size
        .checked_next_multiple_of(SIZE_ALIGNMENT)
        .ok_or_else(|| StorageError::Size(format!("size {size} is too large")))?;
    if !DISK_TYPES.contains(&p.disk_type.as_str()) {
        return Err(invalid(format!("diskType={}", p.disk_type)));
    }
    check_initial_size(p, size)?;
    let parent = p.src_volume.filter(|v| *v != BLANK_UUID);
    if let Some(src_image) = p.src_image.filter(|i| *i != BLANK_UUID && *i != p.image) {
        return Err(invalid(format!(
            "srcImgUUID={src_image}: volumes based on a template in another image are not supported"
        )));
    }
    if parent == Some(p.volume) {
        return Err(invalid("srcVolUUID must differ from volumeID".into()));
    }
    if parent.is_some() && p.format != VolumeFormat::Cow {
        return Err(StorageError::IncorrectFormat(
            "a volume with a parent must be COW (4)".into(),
        ));
    }
    Ok(CreateRequest {
        image: p.image,
        volume: p.volume,
        capacity,
        format: p.format,
        allocation: p.preallocate,
        disk_type: p.disk_type.clone(),
        description: p.desc.clone(),
        parent,
        legal: p.legal.unwrap_or(true),
        sequence: p.sequence.unwrap_or(0),
    })
}

/// VDSM's rules for `initialSize` on a file domain: an integer (a number or a decimal
/// string); 0 or absent means none (VDSM tests `if initial_size:`); any other value only for
/// a RAW preallocated volume, and then within `0..=size`. Accepted values are not used: a
/// file volume's allocation follows from its format and preallocation.
fn check_initial_size(p: &CreateVolumeParams, size: u64) -> Result<(), StorageError> {
    let invalid = |why: &str| StorageError::InvalidParameter(format!("initialSize: {why}"));
    let value: i128 = match &p.initial_size {
        None | Some(serde_json::Value::Null) => return Ok(()),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| invalid("not an integer"))?,
        Some(serde_json::Value::String(text)) => {
            text.trim().parse().map_err(|_| invalid("not an integer"))?
        }
        Some(_) => return Err(invalid("not an integer")),
    };
    if value == 0 {
        return Ok(());
    }
    if !(p.format == VolumeFormat::Raw && p.preallocate == Preallocation::Preallocated) {
        return Err(invalid("only for RAW preallocated volumes on file domains"));
    }
    if value < 0 || value > i128::from(size) {
        return Err(invalid("must be between 0 and size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use uuid::Uuid;

    const IMAGE: &str = "33333333-3333-3333-3333-333333333333";
    const VOLUME: &str = "44444444-4444-4444-4444-444444444444";
    const PARENT: &str = "55555555-5555-5555-5555-555555555555";

    /// `base` with `changes` applied, as the verb's parameters.
    fn with<T: serde::de::DeserializeOwned>(mut base: Value, changes: Value) -> T {
        for (k, v) in changes.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn volume(changes: Value) -> CreateVolumeParams {
        let base = json!({"volumeID": VOLUME, "storagepoolID": Uuid::nil(),
            "storagedomainID": Uuid::nil(), "imageID": IMAGE, "size": "1000",
            "volFormat": 4, "preallocate": 2, "diskType": "DATA", "srcVolUUID": PARENT});
        with(base, changes)
    }

    #[test]
    fn a_snapshot_volume_request_is_rounded_and_keeps_its_parent() {
        let request = create_request(&volume(json!({}))).unwrap();
        assert_eq!(request.capacity, 4096, "rounded up to 4 KiB");
        assert_eq!(request.parent, Some(PARENT.parse().unwrap()));
        assert!(request.legal);
        let base = create_request(&volume(json!({"srcVolUUID": BLANK_UUID}))).unwrap();
        assert_eq!(base.parent, None, "BLANK is no parent");
        // VDSM ignores a zero initialSize on any volume (`if initial_size:`).
        for zero in [json!("0"), json!(0), Value::Null] {
            assert!(create_request(&volume(json!({"initialSize": zero}))).is_ok());
        }
        let raw = json!({"volFormat": 5, "preallocate": 1, "srcVolUUID": BLANK_UUID,
                         "initialSize": "1000"});
        assert!(
            create_request(&volume(raw)).is_ok(),
            "within size, RAW preallocated"
        );
    }

    #[test]
    fn bad_volume_requests_are_refused_with_vdsm_errors() {
        let refused = |changes| create_request(&volume(changes)).unwrap_err();
        assert!(matches!(
            refused(json!({"size": "x"})),
            StorageError::InvalidParameter(_)
        ));
        assert!(matches!(
            refused(json!({"size": "0"})),
            StorageError::Size(_)
        ));
        let huge = u64::MAX.to_string();
        assert!(matches!(
            refused(json!({"size": huge})),
            StorageError::Size(_)
        ));
        assert!(matches!(
            refused(json!({"diskType": "NOPE"})),
            StorageError::InvalidParameter(_)
        ));
        assert!(matches!(
            refused(json!({"initialSize": "10"})),
            StorageError::InvalidParameter(_)
        ));
        let raw_prealloc = json!({"volFormat": 5, "preallocate": 1, "srcVolUUID": BLANK_UUID});
        let raw = |extra: Value| {
            let mut changes = raw_prealloc.clone();
            for (k, v) in extra.as_object().unwrap() {
                changes[k] = v.clone();
            }
            changes
        };
        for bad in [json!(-1), json!("1001"), json!(1.5), json!("x"), json!([1])] {
            let err = refused(raw(json!({"initialSize": bad.clone()})));
            assert!(
                matches!(err, StorageError::InvalidParameter(_)),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            refused(json!({"srcImgUUID": PARENT})),
            StorageError::InvalidParameter(_)
        ));
        assert!(matches!(
            refused(json!({"srcVolUUID": VOLUME})),
            StorageError::InvalidParameter(_)
        ));
        assert!(matches!(
            refused(json!({"volFormat": 5})),
            StorageError::IncorrectFormat(_)
        ));
    }

    fn domain(changes: Value) -> CreateDomainParams {
        let base = json!({"storagedomainID": Uuid::nil(), "domainType": 4,
            "typeArgs": "/srv/d", "name": "d", "domainClass": 1, "version": 5});
        with(base, changes)
    }

    #[test]
    fn domain_requests_take_vdsm_defaults_and_refuse_the_rest() {
        let new = new_domain(domain(json!({}))).unwrap();
        assert_eq!((new.block_size, new.max_hosts), (512, 250));
        assert_eq!(new.remote_path, "/srv/d");
        for bad in [
            json!({"domainType": 2}),
            json!({"domainClass": 2}),
            json!({"version": 4}),
        ] {
            let err = new_domain(domain(bad.clone())).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidParameter(_)),
                "{bad}: {err}"
            );
        }
    }
}
