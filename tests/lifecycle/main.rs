//! berthd as a process: socket activation, readiness, reload, upgrade, drain; packaging files. One
//! test binary (one link) with a module per former test file; helpers in `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod lifecycle;
mod nix_files;
mod upgrade_race;
