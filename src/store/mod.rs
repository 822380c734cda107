//! SQLite storage. (Placeholder on the `docker` branch: the api helper owns this file; only
//! the `deployments` line below is needed from here.)

pub mod deployments;
