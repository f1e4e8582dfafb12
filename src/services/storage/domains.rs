//! Domain and image verbs: `StorageDomain.create/getInfo/getStats/getVolumes`,
//! `Host.getStorageDomains`, `Image.getVolumes`, `Image.prepare` and `Image.teardown`.

use std::sync::Arc;

use uuid::Uuid;

use super::{StorageService, blocking, validate};
use crate::api::ApiError;
use crate::api::storage_types::{
    CreateDomainParams, DomainInfo, DomainParams, DomainStats, DomainVolumesParams,
    GetStorageDomainsParams, ImageParams, PrepareImageParams, PreparedImage, TeardownImageParams,
};
use crate::api::volume_types::BLANK_UUID;
use crate::storage::domain::Domain;
use crate::storage::{StorageError, image};

/// VDSM's alignment of file domains, in bytes.
const FILE_DOMAIN_ALIGNMENT: u32 = 1_048_576;

impl StorageService {
    /// `StorageDomain.create`.
    pub async fn create_domain(&self, p: CreateDomainParams) -> Result<(), ApiError> {
        let new = validate::new_domain(p)?;
        if self.domain(new.uuid).is_ok() {
            return Err(StorageError::DomainExists(new.uuid).into());
        }
        let service = self.clone();
        // On a shared pool a new domain is unattached until the pool's verbs attach it, as
        // VDSM's; a host that runs alone keeps its domains in its own pool at once.
        let pool = self.inner.cluster.is_none().then_some(self.inner.pool);
        let mut domain = blocking(move || Domain::create(&service.inner.repo, &new, pool)).await?;
        if let Some(cluster) = &self.inner.cluster {
            // A new domain: no other host uses its lease areas yet.
            if let Err(err) = cluster.format_domain(super::pool::areas_of(&domain)).await {
                let root = domain.dir.root().to_owned();
                blocking(move || {
                    std::fs::remove_dir_all(&root).map_err(StorageError::io("remove", &root))
                })
                .await?;
                return Err(err.into());
            }
            domain.share(cluster.domain_leases(domain.uuid, domain.block_size));
        }
        tracing::info!(domain = %domain.uuid, root = %domain.dir.root().display(), "storage domain created");
        let mut domains = self
            .inner
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner());
        domains.insert(domain.uuid, Arc::new(domain));
        Ok(())
    }

    /// `StorageDomain.getInfo`.
    pub fn domain_info(&self, p: DomainParams) -> Result<DomainInfo, ApiError> {
        let domain = self.domain(p.domain)?;
        Ok(DomainInfo {
            uuid: domain.uuid,
            kind: domain.kind.name().to_owned(),
            class: "Data".to_owned(),
            name: domain.name.clone(),
            role: domain.role.clone(),
            pool: if domain.pool.is_nil() {
                Vec::new()
            } else {
                vec![domain.pool]
            },
            version: domain.version.to_string(),
            block_size: domain.block_size,
            alignment: FILE_DOMAIN_ALIGNMENT,
            remote_path: domain.remote_path.clone(),
        })
    }

    /// `StorageDomain.getStats`.
    pub async fn domain_stats(&self, p: DomainParams) -> Result<DomainStats, ApiError> {
        let domain = self.domain(p.domain)?;
        let (free, total) = blocking(move || domain.space()).await?;
        Ok(DomainStats {
            disktotal: total.to_string(),
            diskfree: free.to_string(),
            mdavalid: true,
            mdathreshold: true,
        })
    }

    /// `Host.getStorageDomains`.
    pub fn storage_domains(&self, p: GetStorageDomainsParams) -> Vec<Uuid> {
        let domains = self.inner.domains.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<Uuid> = domains
            .values()
            .filter(|d| p.pool.is_none_or(|pool| pool == d.pool))
            .map(|d| d.uuid)
            .collect();
        ids.sort();
        ids
    }

    /// `StorageDomain.getVolumes`.
    pub async fn domain_volumes(&self, p: DomainVolumesParams) -> Result<Vec<Uuid>, ApiError> {
        self.check_pool(p.pool)?;
        let domain = self.domain(p.domain)?;
        let only = p.image.filter(|i| *i != BLANK_UUID);
        blocking(move || {
            let images = match only {
                Some(image) => vec![image],
                None => domain.images()?,
            };
            let mut volumes = Vec::new();
            for image in images {
                volumes.extend(domain.volumes(image)?);
            }
            Ok(volumes)
        })
        .await
    }

    /// `Image.getVolumes`.
    pub async fn image_volumes(&self, p: ImageParams) -> Result<Vec<Uuid>, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image).await?;
        blocking(move || domain.volumes(p.image)).await
    }

    /// `Image.prepare`: every volume of the image must be usable; returns the path through the
    /// pool's link to the domain, as VDSM's paths are.
    pub async fn prepare_image(&self, p: PrepareImageParams) -> Result<PreparedImage, ApiError> {
        let domain = self.image_domain(p.pool, p.domain, p.image).await?;
        let pool_dir = self.inner.repo.pool_dir(self.inner.pool);
        let path = blocking(move || {
            image::prepare(&domain, &pool_dir, p.image, p.volume, p.allow_illegal)
        })
        .await?;
        Ok(PreparedImage {
            path: path.to_string_lossy().into_owned(),
        })
    }

    /// `Image.teardown`: nothing to release on a file domain once the ids are checked.
    pub async fn teardown_image(&self, p: TeardownImageParams) -> Result<(), ApiError> {
        self.image_domain(p.pool, p.domain, p.image).await?;
        Ok(())
    }
}
