//! The Redivis backend. (Skeleton.)

use crate::config::FolderConfig;

use super::{UploadError, UploadJob, Uploaded};

pub struct RedivisBackend {}

impl RedivisBackend {
    pub fn new(config: &crate::config::RedivisConfig) -> Result<RedivisBackend, String> {
        let _ = config;
        Err("the Redivis backend is not built yet".into())
    }

    pub async fn prepare_folder(&self, folder: &FolderConfig) -> Result<(), String> {
        let _ = folder;
        todo!()
    }

    pub async fn upload(&self, job: &mut UploadJob) -> Result<Uploaded, UploadError> {
        let _ = job;
        todo!()
    }
}
