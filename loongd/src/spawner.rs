//! The spawner loongd owns: started once with the bundled tier profiles, loongd's own paths
//! hidden from every sandbox; or why there is none (every sandbox and every worker is then
//! refused, saying why). Below both users of it: `sandbox run` and the worker pools.

use std::{path::PathBuf, sync::Arc};

use loong_sandbox::{SpawnError, Spawner, SpawnerConfig};

/// Why loongd has no spawner: every sandbox (and every worker) is then refused, saying this.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum SpawnerUnavailable {
    #[error("bundled tier profiles are invalid:\n{}", .0.join("\n"))]
    Profiles(Vec<String>),
    #[error(
        "the sandbox helper {} is missing; install loong-spawn next to loongd or in {}",
        .0.display(),
        crate::programs::LIB_DIR
    )]
    HelperMissing(PathBuf),
    #[error("{0}")]
    Start(Arc<SpawnError>),
}

/// Starts the spawner with the bundled tier profiles; loongd's own paths are hidden from
/// every sandbox.
pub(crate) fn start_spawner(
    kernel_paths: Vec<PathBuf>,
    sandbox: &crate::config::SandboxConfig,
) -> Result<Arc<Spawner>, SpawnerUnavailable> {
    let profiles = loong_profiles::bundled()
        .map_err(|ps| SpawnerUnavailable::Profiles(ps.iter().map(ToString::to_string).collect()))?;
    let mut config = SpawnerConfig::new(profiles);
    config.helper = crate::programs::find(loong_sandbox::spawn::HELPER_NAME);
    config.hidden = kernel_paths;
    config.sandbox_id = (sandbox.uid, sandbox.gid);
    config.rootless_own_uid = sandbox.rootless_own_uid;
    config.spare = sandbox.spare;
    if !config.helper.exists() {
        return Err(SpawnerUnavailable::HelperMissing(config.helper.clone()));
    }
    let spawner = Spawner::start(config).map_err(|e| SpawnerUnavailable::Start(Arc::new(e)))?;
    if let loong_sandbox::subids::IdMode::OwnUid(missing) = spawner.ids() {
        tracing::warn!(%missing, "rootless without subordinate ids");
    }
    Ok(Arc::new(spawner))
}
