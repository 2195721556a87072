//! Per-tenant CPU shares through cgroups (`cpu_cgroup` in `serve.toml`).
//!
//! The pool's deficit round robin hands task slots to tenants by weight,
//! but a job also works outside the pool: its driver thread generates or
//! reads its batches, commits its outputs and checkpoints, and none of that
//! takes a slot. A neighbour whose driver keeps a core busy therefore slows
//! a victim's tasks however the slots are shared (`docs/benchmarks.md`,
//! the noisy neighbour). With `cpu_cgroup` set, the kernel shares the cores
//! by tenant instead: each tenant gets a child cgroup of that directory with
//! `cpu.shares` = 1024 x its weight, each job's driver thread joins its
//! tenant's cgroup as it starts (the threads it starts are born there), and
//! a pool thread joins the cgroup of the tenant whose task it is about to
//! run (when that differs from its last one: about 25 µs a move). Under
//! contention a tenant then gets CPU time in proportion to its weight,
//! whichever of its threads uses it; an idle tenant's share goes to the
//! others.
//!
//! This is the cgroup v1 `cpu` controller, where `tasks` places single
//! threads: the operator makes the directory (for example
//! `/sys/fs/cgroup/cpu/weir`) and lets the server's user write in it. cgroup
//! v2 places threads only in threaded subtrees and is refused with that
//! reason. The tenants' cgroups are made at start and on reload (a changed
//! weight is written again) and left in place at exit: the kernel empties
//! them with the server, and the next start reuses them.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use weir::executor::ThreadPlacement;

use crate::config::Config;
use crate::ServeError;

/// `cpu.shares` of weight 1 (the kernel's default for a cgroup).
const SHARES_PER_WEIGHT: u64 = 1024;
/// The kernel's largest `cpu.shares`.
const MAX_SHARES: u64 = 262_144;

/// The tenants' CPU cgroups under one directory.
pub struct CpuShares {
    dir: PathBuf,
    /// Tenants whose placement failed, warned about once each.
    warned: Mutex<BTreeSet<String>>,
}

/// `weight` as `cpu.shares`.
pub fn shares(weight: u32) -> u64 {
    (u64::from(weight) * SHARES_PER_WEIGHT).clamp(2, MAX_SHARES)
}

impl CpuShares {
    /// Opens `config.cpu_cgroup` (making it if it is missing) and makes
    /// every tenant's cgroup with its weight. Refused, naming the
    /// directory and what is wrong, when it is not a cgroup v1 `cpu`
    /// directory the server may write in.
    pub fn open(dir: &Path, config: &Config) -> Result<CpuShares, ServeError> {
        let refuse = |m: String| ServeError::config(&config.path, None, format!("cpu_cgroup {}: {m}", dir.display()));
        if let Err(e) = std::fs::create_dir(dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(refuse(format!("cannot make it: {e}")));
            }
        }
        if !dir.join("cpu.shares").is_file() {
            let m = if dir.join("cpu.weight").is_file() || dir.join("cgroup.controllers").is_file() {
                "a cgroup v2 directory: only the cgroup v1 cpu controller places single threads (tasks), which this needs"
            } else {
                "not a directory of the cgroup v1 cpu controller (it has no cpu.shares; for example /sys/fs/cgroup/cpu/weir)"
            };
            return Err(refuse(m.into()));
        }
        let c = CpuShares { dir: dir.to_path_buf(), warned: Mutex::default() };
        for t in config.tenants.values() {
            c.set_weight(&t.name, t.weight).map_err(|e| refuse(format!("tenant {}: {e}", t.name)))?;
        }
        Ok(c)
    }

    /// Makes `tenant`'s cgroup if it is missing and gives it `weight`.
    pub fn set_weight(&self, tenant: &str, weight: u32) -> std::io::Result<()> {
        let dir = self.dir.join(tenant);
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        write_file(&dir.join("cpu.shares"), shares(weight).to_string().as_bytes())
    }

    /// Gives every tenant of a reloaded `config` its cgroup and weight (a
    /// failure is logged: the tenant runs on where it was).
    pub fn apply(&self, config: &Config) {
        for t in config.tenants.values() {
            if let Err(e) = self.set_weight(&t.name, t.weight) {
                tracing::warn!(target: "weir::serve", "cpu_cgroup: tenant {}'s cgroup: {e}", t.name);
            }
        }
    }

    /// The directory of `tenant`'s cgroup.
    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.dir.join(tenant)
    }
}

impl ThreadPlacement for CpuShares {
    fn enter(&self, tenant: &str) {
        // "0" is the writing thread itself (cgroup v1 `tasks`).
        if let Err(e) = write_file(&self.dir.join(tenant).join("tasks"), b"0") {
            let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
            if warned.insert(tenant.to_string()) {
                tracing::warn!(
                    target: "weir::serve",
                    "cpu_cgroup: cannot place a thread of tenant {tenant} in {}: {e} (it runs where it was)",
                    self.dir.join(tenant).display()
                );
            }
        }
    }
}

/// Writes `bytes` to a cgroup file in one write (cgroup files take one
/// value per write).
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_become_shares_within_the_kernels_bounds() {
        assert_eq!(shares(1), 1024);
        assert_eq!(shares(4), 4096);
        assert_eq!(shares(256), 262_144);
        assert_eq!(shares(1_000_000), 262_144);
    }

    #[test]
    fn a_directory_that_is_not_a_cpu_cgroup_is_refused_with_its_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("serve.toml");
        let config = Config::parse(&path, "").expect("config");
        let dir = tmp.path().join("cg");
        let e = CpuShares::open(&dir, &config).err().expect("refused").to_string();
        assert!(e.contains("cpu_cgroup") && e.contains(&dir.display().to_string()) && e.contains("cpu.shares"), "{e}");
        std::fs::write(dir.join("cpu.weight"), "100").expect("v2 look-alike");
        let e = CpuShares::open(&dir, &config).err().expect("refused").to_string();
        assert!(e.contains("cgroup v2"), "{e}");
    }
}
