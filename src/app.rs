//! Wiring: config in, a ready engine out. Shared by the binary and the
//! integration tests so both start the service the same way.

use std::sync::Arc;

use crate::config::{Config, StoreBackend};
use crate::engine::Engine;
use crate::geo::{GeoDatabases, GeoError};
use crate::policy::{PolicyLoadError, PolicySnapshot};
use crate::pseudonym::{KeyError, Pseudonymizer};
use crate::signals::IpList;
use crate::signals::ip_list::IpListError;
use crate::store::{ContextStore, MemoryStore};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StartError {
    #[error(transparent)]
    Policies(#[from] PolicyLoadError),
    #[error(transparent)]
    IpList(#[from] IpListError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Geo(#[from] GeoError),
}

/// Loads everything the config names; any problem stops the start.
pub fn build_engine(config: Arc<Config>) -> Result<Engine, StartError> {
    let policies = PolicySnapshot::load(&config.policies_dir)?;
    let deny_list = IpList::load(&config.ip_lists.deny)?;
    let geo = Arc::new(GeoDatabases::open(&config.geo.databases())?);
    let pseudonymizer = match &config.store.hash_key_file {
        Some(path) => Pseudonymizer::from_file(path)?,
        None => Pseudonymizer::random()?,
    };
    let store: Arc<dyn ContextStore> = match config.store.backend {
        StoreBackend::Memory => Arc::new(MemoryStore::new(&config.store, config.windows)),
    };
    tracing::info!(
        policy.version = policies.version(),
        policy.count = policies.policy_count(),
        journeys = policies.catalog().journeys.len(),
        policies.dir = %config.policies_dir.display(),
        "policies loaded"
    );
    Ok(Engine::new(
        policies,
        store,
        pseudonymizer,
        deny_list,
        geo,
        config,
    ))
}
