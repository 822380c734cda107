//! Deploys: the engine (fake runtime and real dockerd), app specs, secrets, store recovery, the
//! apps API, deploys across an upgrade. One test binary (one link) with a module per former test
//! file; helpers in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod apps_api;
mod canary;
mod deploy_spec;
mod docker_deploy;
mod docker_engine;
mod pull_ceiling;
mod secrets;
mod store_recovery;
mod traffic;
mod upgrade_deploy;
mod versions;
