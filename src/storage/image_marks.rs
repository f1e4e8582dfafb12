//! What runs on an image besides its lock: a full copy reading it (any number at once) or a
//! merge changing its chain (one, live or cold). The two exclude each other: the chain must
//! not change under a copy. Each is a mark held by a guard, dropped when the work ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::StorageError;
use super::image::ImageRef;

/// The mark of an image a merge changes.
const MERGING: isize = -1;

/// The images being copied (how many copies read each) or merged (`MERGING`). A std lock,
/// never held across I/O.
#[derive(Clone, Default)]
pub struct ImageActivity {
    marks: Arc<Mutex<HashMap<ImageRef, isize>>>,
}

/// An image a full copy reads: merges of it are refused until it drops.
pub struct CopyReading {
    activity: ImageActivity,
    image: ImageRef,
}

/// An image a merge changes: copies of it are refused until it drops.
pub struct MergeMark {
    activity: ImageActivity,
    image: ImageRef,
}

impl ImageActivity {
    fn marks(&self) -> MutexGuard<'_, HashMap<ImageRef, isize>> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a full copy is reading the image now.
    pub fn is_being_copied(&self, image: ImageRef) -> bool {
        self.marks().get(&image).is_some_and(|count| *count > 0)
    }

    /// Marks the image as read by a full copy until the guard drops; refused while a merge
    /// changes it.
    pub fn reading(&self, image: ImageRef) -> Result<CopyReading, StorageError> {
        let mut marks = self.marks();
        let count = marks.entry(image).or_default();
        if *count == MERGING {
            return Err(StorageError::InvalidParameter(format!(
                "image {} is being merged: it can be copied once the merge ends",
                image.image
            )));
        }
        *count += 1;
        Ok(CopyReading {
            activity: self.clone(),
            image,
        })
    }

    /// Marks the image as changed by a merge (live, or a cold merge's commit) until the guard
    /// drops; refused while a copy reads it or another merge changes it.
    pub fn merging(&self, image: ImageRef) -> Result<MergeMark, StorageError> {
        let mut marks = self.marks();
        let count = marks.entry(image).or_default();
        if *count != 0 {
            let why = if *count > 0 {
                "is being copied (SDM.copy_data): its chain cannot change until the copy ends"
            } else {
                "is being merged"
            };
            return Err(StorageError::InvalidParameter(format!(
                "image {} {why}",
                image.image
            )));
        }
        *count = MERGING;
        Ok(MergeMark {
            activity: self.clone(),
            image,
        })
    }
}

impl Drop for CopyReading {
    fn drop(&mut self) {
        let mut marks = self.activity.marks();
        if let Some(count) = marks.get_mut(&self.image) {
            *count -= 1;
            if *count <= 0 {
                marks.remove(&self.image);
            }
        }
    }
}

impl Drop for MergeMark {
    fn drop(&mut self) {
        self.activity.marks().remove(&self.image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn copies_and_merges_of_one_image_exclude_each_other() {
        let activity = ImageActivity::default();
        let image = ImageRef::new(Uuid::from_u128(1), Uuid::from_u128(2));
        let other = ImageRef::new(Uuid::from_u128(1), Uuid::from_u128(3));
        let first = activity.reading(image).unwrap();
        let second = activity.reading(image).unwrap();
        assert!(activity.is_being_copied(image));
        assert!(activity.merging(image).is_err());
        let merging_other = activity.merging(other).unwrap();
        assert!(activity.reading(other).is_err());
        drop(first);
        assert!(activity.merging(image).is_err(), "one copy still reads");
        drop(second);
        assert!(!activity.is_being_copied(image));
        let merge = activity.merging(image).unwrap();
        assert!(activity.merging(image).is_err());
        drop(merge);
        drop(merging_other);
        assert!(activity.reading(other).is_ok());
    }
}
