//! The server's one executor pool, started once from `serve.toml`'s
//! `master`; every job of every tenant runs its tasks on it:
//!
//! - `local[N]`: N threads in the server ([`weir::executor::SharedPool`]);
//! - `local-cluster[N]` (or `[N,CORES]`): N executor processes the server
//!   starts and replaces when they die, and `cluster[N]`: executors that
//!   join over the network with the cluster secret (`weir executor
//!   --driver ... --secret-file ...`) — both [`weir::cluster::SharedCluster`].
//!
//! Either way slots go to tenants by deficit round robin with the tenant's
//! `weight`, and a tenant's jobs together run at most `max_slots` tasks at
//! once. The tenants' settings follow `serve.toml`: each configuration the
//! server reads (at start and after every reload) is handed to the pool
//! before it is used, so a changed weight takes effect at the next task
//! handed out.

use std::sync::{Arc, Mutex};

use weir::cluster::{ClusterConfig, SharedCluster};
use weir::executor::{PoolTenant, SharedPool};
use weir::scheduler::{ClusterOptions, Master};

use crate::config::Config;
use crate::ServeError;

/// Threads, or executor processes.
enum Executors {
    Threads(SharedPool),
    Processes(SharedCluster),
}

pub struct ServePool {
    pool: Executors,
    /// The configuration whose tenants the pool has (compared by pointer:
    /// a reload makes a new one).
    applied: Mutex<Option<Arc<Config>>>,
}

impl ServePool {
    /// Starts the pool `master` names: its threads, or its executor
    /// processes (not waiting for them to join: tasks queue meanwhile).
    pub fn start(config: &Config) -> Result<ServePool, ServeError> {
        let fail =
            |e: std::io::Error| ServeError::Io(format!("cannot start the executor pool ({}): {e}", config.master));
        let pool = match config.master.parse::<Master>() {
            Ok(Master::LocalCluster { executors, cores }) => {
                Executors::Processes(start_cluster(config, executors, cores)?)
            }
            Ok(Master::Cluster { .. }) => Executors::Processes(start_cluster(config, 0, 1)?),
            _ => Executors::Threads(SharedPool::start(config.slots() as usize).map_err(fail)?),
        };
        let p = ServePool { pool, applied: Mutex::new(None) };
        p.set_tenants(config);
        Ok(p)
    }

    fn set_tenants(&self, config: &Config) {
        for t in config.tenants.values() {
            match &self.pool {
                Executors::Threads(p) => p.set_tenant(&t.name, t.weight, t.max_slots as usize),
                Executors::Processes(c) => c.set_tenant(&t.name, t.weight, t.max_slots as usize),
            }
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
        match &self.pool {
            Executors::Threads(p) => p.tenant(tenant),
            Executors::Processes(c) => c.tenant(tenant),
        }
    }

    /// The pool's task slots now: worker threads, or the connected
    /// executors' slots together.
    pub fn workers(&self) -> usize {
        match &self.pool {
            Executors::Threads(p) => p.workers(),
            Executors::Processes(c) => c.executors().1,
        }
    }
}

/// The executor processes of `local-cluster[N,CORES]` (`local` of them
/// started here) or `cluster[N]` (`local = 0`: they join), with the secret
/// of `cluster_secret_file` (generated for local ones when absent).
fn start_cluster(config: &Config, local: u32, cores: u32) -> Result<SharedCluster, ServeError> {
    let secret = match &config.cluster_secret_file {
        Some(f) => weir::cluster::secret_from(Some(f))
            .map_err(|e| ServeError::Io(format!("cluster_secret_file {}: {e}", f.display())))?,
        None => None,
    };
    let defaults = ClusterOptions::default();
    let cfg = ClusterConfig {
        local_executors: local,
        cores,
        listen: config.cluster_listen.clone(),
        wait_for: 0,
        secret,
        heartbeat_timeout: defaults.heartbeat_timeout,
        no_executor_timeout: defaults.no_executor_timeout,
        executor_binary: defaults.executor_binary,
        listeners: Default::default(),
        locality_wait: weir::cluster::DEFAULT_LOCALITY_WAIT,
    };
    SharedCluster::start(&cfg)
        .map_err(|e| ServeError::Io(format!("cannot start the executor pool ({}): {e}", config.master)))
}
