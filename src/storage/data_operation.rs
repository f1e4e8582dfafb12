//! VDSM's data operations on a volume (`VolumeManifest.operation`, VDSM-REFERENCE §4): the
//! caller's expected generation checked first, the volume ILLEGAL while its data is being
//! written when asked (a copy's destination), and at the end the generation bumped and the
//! volume LEGAL. A manager that saw a generation knows whether the data changed since.
//! Blocking file I/O.

use uuid::Uuid;

use super::domain::Domain;
use super::error::StorageError;
use super::volume::{read_meta, write_meta};
use crate::api::volume_types::Legality;

/// Generations wrap at this, as VDSM's (`MAX_GENERATION` 999).
const GENERATIONS: u32 = 1000;

/// Starts a data operation on `volume`: refused when `expected` is given and is not its
/// generation; the volume is made ILLEGAL when `set_illegal`.
pub fn begin(
    domain: &Domain,
    image: Uuid,
    volume: Uuid,
    expected: Option<u32>,
    set_illegal: bool,
) -> Result<(), StorageError> {
    let _lock = domain.lock().acquire()?;
    let mut meta = read_meta(domain, image, volume)?;
    if let Some(expected) = expected
        && expected != meta.generation
    {
        return Err(StorageError::GenerationMismatch(format!(
            "volume {volume} is at generation {}, not the expected {expected}",
            meta.generation
        )));
    }
    if set_illegal && meta.legality != Legality::Illegal {
        meta.legality = Legality::Illegal;
        write_meta(domain, image, volume, &meta)?;
    }
    Ok(())
}

/// Ends a data operation that succeeded: the generation bumped, the volume LEGAL.
pub fn end(domain: &Domain, image: Uuid, volume: Uuid) -> Result<u32, StorageError> {
    let _lock = domain.lock().acquire()?;
    let mut meta = read_meta(domain, image, volume)?;
    meta.generation = (meta.generation + 1) % GENERATIONS;
    meta.legality = Legality::Legal;
    write_meta(domain, image, volume, &meta)?;
    Ok(meta.generation)
}
