//! The KiFS emulator. (Skeleton.)

use std::path::Path;

use axum::Router;

use super::EmulatorError;

#[derive(Debug, Clone, clap::Args)]
pub struct KifsOptions {}

pub fn router(options: &KifsOptions, data_dir: &Path) -> Result<Router, EmulatorError> {
    let _ = (options, data_dir);
    Ok(Router::new())
}
