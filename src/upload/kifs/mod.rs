//! The KiFS backend. (Skeleton.)

pub mod wire;

use crate::config::FolderConfig;

use super::{UploadError, UploadJob, Uploaded};

pub struct KifsBackend {}

impl KifsBackend {
    pub async fn prepare_folder(&self, folder: &FolderConfig) -> Result<(), String> {
        let _ = folder;
        todo!()
    }

    pub async fn upload(&self, job: &mut UploadJob) -> Result<Uploaded, UploadError> {
        let _ = job;
        todo!()
    }
}
