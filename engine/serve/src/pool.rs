//! The server's one executor pool: `local[N]` of `serve.toml`'s `master`
//! started once, every job of every tenant running its tasks on it
//! ([`weir::executor::SharedPool`]). Slots go to tenants by deficit round
//! robin with the tenant's `weight`; a tenant's jobs together run at most
//! `max_slots` tasks at once. The tenants' settings follow `serve.toml`:
//! each configuration the server reads (at start and after every reload) is
//! handed to the pool before it is used, so a changed weight takes effect
//! at the next task handed out.

use std::sync::{Arc, Mutex};

use weir::executor::{PoolTenant, SharedPool};

use crate::config::Config;
use crate::ServeError;

pub struct ServePool {
    pool: SharedPool,
    /// The configuration whose tenants the pool has (compared by pointer:
    /// a reload makes a new one).
    applied: Mutex<Option<Arc<Config>>>,
}

impl ServePool {
    /// Starts the pool's threads, as many as `master = "local[N]"` says.
    pub fn start(config: &Config) -> Result<ServePool, ServeError> {
        let pool = SharedPool::start(config.slots() as usize)
            .map_err(|e| ServeError::Io(format!("cannot start the executor pool ({}): {e}", config.master)))?;
        let p = ServePool { pool, applied: Mutex::new(None) };
        p.set_tenants(config);
        Ok(p)
    }

    fn set_tenants(&self, config: &Config) {
        for t in config.tenants.values() {
            self.pool.set_tenant(&t.name, t.weight, t.max_slots as usize);
        }
    }

    /// Gives the pool `config`'s tenants' weights and caps, unless it has them.
    pub fn apply(&self, config: &Arc<Config>) {
        let mut applied = match self.applied.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, config)) {
            return;
        }
        self.set_tenants(config);
        *applied = Some(config.clone());
    }

    /// Where a job of `tenant` runs its tasks.
    pub fn tenant(&self, tenant: &str) -> PoolTenant {
        self.pool.tenant(tenant)
    }

    /// The pool's worker threads.
    pub fn workers(&self) -> usize {
        self.pool.workers()
    }
}
