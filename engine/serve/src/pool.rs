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

use serde::Serialize;

use weir::cluster::{ClusterConfig, SharedCluster};
use weir::executor::block_store::BlockBudget;
use weir::executor::{PoolTenant, SharedPool, ThreadPlacement};
use weir::scheduler::{ClusterOptions, Master};

use crate::config::Config;
use crate::cpu::CpuShares;
use crate::ServeError;

/// Threads, or executor processes.
enum Executors {
    Threads(SharedPool),
    Processes(SharedCluster),
}

pub struct ServePool {
    pool: Executors,
    /// `serve.toml`'s `master`, for the status.
    master: String,
    /// The configuration whose tenants the pool has (compared by pointer:
    /// a reload makes a new one).
    applied: Mutex<Option<Arc<Config>>>,
    /// Each tenant's block budget (`block_quota_bytes`), shared by its
    /// jobs; a reload changes the limits in place.
    budgets: Mutex<std::collections::BTreeMap<String, Arc<BlockBudget>>>,
    /// The tenants' CPU cgroups (`cpu_cgroup`), if the operator set them.
    cpu: Option<Arc<CpuShares>>,
}

impl ServePool {
    /// Starts the pool `master` names: its threads, or its executor
    /// processes (not waiting for them to join: tasks queue meanwhile).
    pub fn start(config: &Config) -> Result<ServePool, ServeError> {
        // (Config refuses `cpu_cgroup` with executor processes.)
        let cpu = match &config.cpu_cgroup {
            Some(dir) => Some(Arc::new(CpuShares::open(dir, config)?)),
            None => None,
        };
        let fail =
            |e: std::io::Error| ServeError::Io(format!("cannot start the executor pool ({}): {e}", config.master));
        let pool = match config.master.parse::<Master>() {
            Ok(Master::LocalCluster { executors, cores }) => {
                Executors::Processes(start_cluster(config, executors, cores)?)
            }
            Ok(Master::Cluster { .. }) => Executors::Processes(start_cluster(config, 0, 1)?),
            _ => {
                let place = cpu.clone().map(|c| c as Arc<dyn ThreadPlacement>);
                Executors::Threads(SharedPool::start_placed(config.slots() as usize, place).map_err(fail)?)
            }
        };
        let p = ServePool {
            pool,
            master: config.master.clone(),
            applied: Mutex::new(None),
            budgets: Mutex::default(),
            cpu,
        };
        p.set_tenants(config);
        Ok(p)
    }

    fn set_tenants(&self, config: &Config) {
        if let Some(cpu) = &self.cpu {
            cpu.apply(config);
        }
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        for t in config.tenants.values() {
            match budgets.get(&t.name) {
                Some(b) => b.set_limit(t.block_quota_bytes),
                None => {
                    let what = format!("tenant {}'s block_quota_bytes", t.name);
                    budgets.insert(t.name.clone(), BlockBudget::new(what, t.block_quota_bytes));
                }
            }
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

    /// Where a job's driver thread goes as it starts (its tenant's CPU
    /// cgroup), if anywhere.
    pub fn placement(&self) -> Option<Arc<dyn ThreadPlacement>> {
        self.cpu.clone().map(|c| c as Arc<dyn ThreadPlacement>)
    }

    /// Where a job of `tenant` runs its tasks.
    pub fn tenant(&self, tenant: &str) -> PoolTenant {
        let seat = match &self.pool {
            Executors::Threads(p) => p.tenant(tenant),
            Executors::Processes(c) => c.tenant(tenant),
        };
        match self.block_budget(tenant) {
            Some(b) => seat.with_block_budget(b),
            None => seat,
        }
    }

    /// `tenant`'s block budget (bytes its live jobs' blocks hold now, and
    /// its `block_quota_bytes`).
    pub fn block_budget(&self, tenant: &str) -> Option<Arc<BlockBudget>> {
        self.budgets.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned()
    }

    /// What the pool is now, as the tenant `only` may see it (`None`: the
    /// operator, who sees everything): each executor process with its
    /// slots and heartbeats, and the jobs with tasks on it — of `only`'s
    /// jobs alone, and the tasks running counted of those alone, so a tenant
    /// learns nothing of another's jobs. Threads (`local[N]`) have no
    /// per-executor rows. Read under the pool's lock, no I/O.
    pub fn status(&self, only: Option<&str>) -> PoolView {
        match &self.pool {
            Executors::Threads(p) => {
                PoolView { master: self.master.clone(), kind: "threads", slots: p.workers(), executors: Vec::new() }
            }
            Executors::Processes(c) => {
                let executors: Vec<ExecutorView> = c
                    .status()
                    .into_iter()
                    .map(|x| {
                        let jobs: Vec<JobTasksView> = x
                            .jobs
                            .into_iter()
                            .filter(|j| only.is_none_or(|t| t == j.tenant))
                            .map(|j| JobTasksView { tenant: j.tenant, job: j.job, tasks_running: j.tasks_running })
                            .collect();
                        let tasks_running = match only {
                            None => x.tasks_running,
                            Some(_) => jobs.iter().map(|j| j.tasks_running).sum(),
                        };
                        ExecutorView {
                            id: x.id,
                            pid: x.pid,
                            address: x.address,
                            slots: x.slots,
                            heartbeats: x.heartbeats,
                            last_heartbeat_age_ms: x.last_heartbeat_age_ms,
                            tasks_running,
                            udf_memory_bytes: x.udf_memory_bytes,
                            udf_memory_peak_bytes: x.udf_memory_peak_bytes,
                            jobs,
                        }
                    })
                    .collect();
                PoolView {
                    master: self.master.clone(),
                    kind: "processes",
                    slots: executors.iter().map(|x| x.slots as usize).sum(),
                    executors,
                }
            }
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

/// The pool as `GET /api/v1/pool` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// `serve.toml`'s `master`.
    pub master: String,
    /// `"threads"` (`local[N]`) or `"processes"` (`local-cluster[N]`,
    /// `cluster[N]`).
    pub kind: &'static str,
    /// Task slots: the threads, or the connected executors' together.
    pub slots: usize,
    /// The connected executor processes (none for threads).
    pub executors: Vec<ExecutorView>,
}

/// One executor process of the pool.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorView {
    pub id: u64,
    pub pid: u32,
    /// Its block server address.
    pub address: String,
    pub slots: u32,
    pub heartbeats: u64,
    /// How long ago it was last heard from (its newest heartbeat or other
    /// message, or its joining), as of this answer (every 100 ms while it
    /// is healthy; it grows while it is silent, and past the heartbeat
    /// timeout it is lost and gone from the list).
    pub last_heartbeat_age_ms: Option<u64>,
    /// Tasks running on it now (a tenant: of its own jobs only).
    pub tasks_running: u64,
    pub udf_memory_bytes: Option<u64>,
    pub udf_memory_peak_bytes: Option<u64>,
    /// The jobs with tasks running on it (a tenant: its own only).
    pub jobs: Vec<JobTasksView>,
}

/// A job's tasks running on one executor.
#[derive(Debug, Clone, Serialize)]
pub struct JobTasksView {
    pub tenant: String,
    pub job: String,
    pub tasks_running: u64,
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
    SharedCluster::start(&cluster_config(config, local, cores, secret))
        .map_err(|e| ServeError::Io(format!("cannot start the executor pool ({}): {e}", config.master)))
}

/// The runtime's cluster configuration from `serve.toml`: where executors
/// join, their secret, and the locality wait (`locality_wait_ms`); the
/// timeouts are `weir run`'s defaults.
fn cluster_config(config: &Config, local: u32, cores: u32, secret: Option<Vec<u8>>) -> ClusterConfig {
    let defaults = ClusterOptions::default();
    ClusterConfig {
        local_executors: local,
        cores,
        listen: config.cluster_listen.clone(),
        wait_for: 0,
        secret,
        heartbeat_timeout: defaults.heartbeat_timeout,
        no_executor_timeout: defaults.no_executor_timeout,
        executor_binary: defaults.executor_binary,
        listeners: Default::default(),
        locality_wait: std::time::Duration::from_millis(config.locality_wait_ms),
        max_frame: config.cluster_max_frame_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn config(extra: &str) -> Config {
        let text = format!(
            "master = \"cluster[2]\"\ncluster_listen = \"0.0.0.0:7078\"\ncluster_secret_file = \"secret\"\n{extra}"
        );
        Config::parse(Path::new("/etc/weir/serve.toml"), &text).unwrap()
    }

    /// `locality_wait_ms` is what the shared cluster's scheduler waits
    /// (`ClusterConfig::locality_wait`, which the runtime's unit test
    /// `a_busy_preferred_executor_holds_up_no_other_task_and_is_waited_for_a_bounded_time`
    /// shows it honours), and its default is the runtime's.
    #[test]
    fn locality_wait_ms_reaches_the_cluster_config() {
        let cfg = cluster_config(&config("locality_wait_ms = 250\n"), 0, 1, Some(b"s".to_vec()));
        assert_eq!(cfg.locality_wait, Duration::from_millis(250));
        assert_eq!(cfg.listen.as_deref(), Some("0.0.0.0:7078"));
        assert_eq!((cfg.local_executors, cfg.wait_for), (0, 0));
        let cfg = cluster_config(&config("locality_wait_ms = 0\n"), 0, 1, None);
        assert_eq!(cfg.locality_wait, Duration::ZERO, "0: no wait");
        let cfg = cluster_config(&config(""), 2, 3, None);
        assert_eq!(cfg.locality_wait, weir::cluster::DEFAULT_LOCALITY_WAIT);
        assert_eq!((cfg.local_executors, cfg.cores), (2, 3));
    }
}
