//! Wiring between the deploy engine and the proxy (belongs with daemon.rs): a
//! `RoutePublisher` over `proxy::Tables`. It keeps the static routes (from the config file)
//! and the engine's routes per key, and on every change builds one whole `RouteTable` from
//! all of them and publishes it: one atomic swap, counters carried over. A change that does
//! not validate (a domain already taken) is refused and changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::deploy::RoutePublisher;
use crate::model::route::{RouteSpec, RouteTable};
use crate::proxy::Tables;

struct Routes {
    base: Vec<RouteSpec>,
    dynamic: BTreeMap<String, Vec<RouteSpec>>,
}

/// `RoutePublisher` over the proxy's tables.
pub struct ProxyRoutes {
    tables: Arc<Tables>,
    routes: Mutex<Routes>,
}

impl ProxyRoutes {
    /// `base`: the configured routes, always kept.
    pub fn new(tables: Arc<Tables>, base: Vec<RouteSpec>) -> Self {
        Self {
            tables,
            routes: Mutex::new(Routes {
                base,
                dynamic: BTreeMap::new(),
            }),
        }
    }

    fn apply(&self, change: impl FnOnce(&mut Routes)) -> Result<(), String> {
        // Writers only (deploy engine, config reload); the request path never takes this lock.
        let mut cur = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Routes {
            base: cur.base.clone(),
            dynamic: cur.dynamic.clone(),
        };
        change(&mut next);
        let all: Vec<RouteSpec> = next
            .base
            .iter()
            .chain(next.dynamic.values().flatten())
            .cloned()
            .collect();
        let previous = self.tables.load_full();
        let table = RouteTable::build(&all, Some(&previous)).map_err(|e| e.to_string())?;
        self.tables.publish(table);
        *cur = next;
        Ok(())
    }

    /// Replaces the configured routes (config reload) keeping the engine's.
    pub fn set_base(&self, base: Vec<RouteSpec>) -> Result<(), String> {
        self.apply(|r| r.base = base)
    }
}

impl RoutePublisher for ProxyRoutes {
    fn set_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), String> {
        self.apply(|r| {
            if routes.is_empty() {
                r.dynamic.remove(key);
            } else {
                r.dynamic.insert(key.to_string(), routes);
            }
        })
    }

    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64> {
        let t = self.tables.load();
        t.route(route)?
            .backends
            .iter()
            .find(|b| b.id == backend_id)
            .map(|b| b.stats.inflight.load(std::sync::atomic::Ordering::Relaxed))
    }
}
