//! Simulated hosts for the nemesis tests (`tests/netns.rs`): each host is a
//! Linux network namespace with its own address on a private test subnet,
//! joined by a veth pair to a bridge that itself lives in a namespace, so
//! no traffic and no configuration ever touches the machine's own network.
//! Processes run inside a host with `ip netns exec` (which execs, so the pid
//! the test holds is the `weir` process itself) in the host's own working
//! directory.
//!
//! Faults are made with `ip` alone (no iptables or tc, which this kind of
//! machine may lack): a host's link goes down by setting its bridge port
//! down (its processes keep running, its packets go nowhere); two hosts are
//! partitioned from each other by pointing each one's neighbour entry for
//! the other at a MAC address nobody has (`ip neigh replace ... nud
//! permanent`), which drops their packets silently, exactly like a network
//! that lost them, while both still reach everyone else.
//!
//! Everything a [`World`] creates it removes when dropped, also when the test
//! fails or panics: the processes in its namespaces are killed (continued
//! first, if stopped), then the namespaces are deleted. Namespaces left by a
//! test process that died without dropping (SIGKILL of the test runner) are
//! swept by the next [`World::new`]: their names carry the pid of the process
//! that made them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cluster::{signal_quietly, Proc, SIGCONT, SIGKILL};

/// Every namespace the tests create starts with this.
const PREFIX: &str = "weirt";
/// A MAC address no host has: a neighbour entry pointing at it blackholes
/// the traffic to that neighbour.
const NOWHERE_MAC: &str = "02:00:5e:77:77:77";

static WORLDS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why network namespaces cannot be used here, if they cannot.
pub(crate) fn unavailable() -> Option<String> {
    // Unique, as tests probe at the same time.
    let probe = format!("{PREFIX}{}-probe{}", std::process::id(), WORLDS.fetch_add(1, Ordering::SeqCst));
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!("cannot create a network namespace (needs root / CAP_SYS_ADMIN and iproute2): {e}")),
    }
}

/// None (the test should return) after printing why, when namespaces are
/// unavailable; under `WEIR_REQUIRE_TEST_SERVERS=1` (scripts/test.sh) a
/// missing facility fails the test instead of skipping it.
pub(crate) fn require(test: &str) -> Option<()> {
    let Some(why) = unavailable() else { return Some(()) };
    let msg = format!("SKIPPED {test}: {why}");
    assert!(std::env::var_os("WEIR_REQUIRE_TEST_SERVERS").is_none(), "{msg}");
    eprintln!("{msg}");
    None
}

/// Deletes namespaces left behind by test processes that are gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Kills every process in namespace `ns` (continuing stopped ones first).
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        signal_quietly(pid, SIGCONT);
        signal_quietly(pid, SIGKILL);
    }
}

/// One simulated host.
pub(crate) struct Host {
    pub(crate) name: String,
    /// Its network namespace.
    pub(crate) ns: String,
    /// Its address on the test subnet.
    pub(crate) ip: String,
    /// Its working directory (no other host's processes run there).
    pub(crate) dir: PathBuf,
    /// Its veth's end on the bridge (in the bridge's namespace).
    port: String,
}

/// A set of hosts on one bridge; dropped, it removes them all.
pub(crate) struct World {
    pub(crate) hosts: Vec<Host>,
    bridge: String,
    /// Holds every host's working directory (and whatever the test shares).
    pub(crate) root: tempfile::TempDir,
}

impl World {
    /// Creates hosts `names` (10.77.S.11, .12, ... in that order) on a
    /// fresh bridge.
    pub(crate) fn new(names: &[&str]) -> World {
        sweep_stale();
        let n = WORLDS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{PREFIX}{}-{n}", std::process::id());
        // Each world has its own bridge namespace, so subnets never meet;
        // the number only makes addresses in logs tell worlds apart.
        let subnet = 1 + (std::process::id() + n) % 250;
        let root = tempfile::tempdir().unwrap();
        let mut world = World { hosts: Vec::new(), bridge: format!("{tag}-br"), root };
        let br = world.bridge.clone();
        ip(&["netns", "add", &br]).unwrap();
        ip(&["-n", &br, "link", "set", "lo", "up"]).unwrap();
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]).unwrap();
        ip(&["-n", &br, "link", "set", "br0", "up"]).unwrap();
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            let port = format!("p{i}");
            let addr = format!("10.77.{subnet}.{}", 11 + i);
            ip(&["netns", "add", &ns]).unwrap();
            // Pushed before it is configured, so Drop removes it if a step fails.
            let dir = world.root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            world.hosts.push(Host {
                name: name.to_string(),
                ns: ns.clone(),
                ip: addr.clone(),
                dir,
                port: port.clone(),
            });
            ip(&["link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &br]).unwrap();
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]).unwrap();
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).unwrap();
            ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
            ip(&["-n", &br, "link", "set", &port, "master", "br0"]).unwrap();
            ip(&["-n", &br, "link", "set", &port, "up"]).unwrap();
        }
        world
    }

    pub(crate) fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    /// `weir ARGS` on host `name`, in its working directory, with the
    /// cluster secret and the host's own compiled-code cache (no shared
    /// disk: a host compiles a module the first time it meets it); stderr
    /// is read line by line ([`Proc`]).
    pub(crate) fn spawn(&self, name: &str, secret: &str, args: &[&str]) -> Proc {
        let h = self.host(name);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.ns, env!("CARGO_BIN_EXE_weir")])
            .args(args)
            .current_dir(&h.dir)
            .env("WEIR_SECRET", secret)
            .env("WEIR_CACHE_DIR", h.dir.join(".weir-cache"))
            .env_remove("WEIR_LOG");
        Proc::spawn(&mut c)
    }

    /// `program ARGS` on host `name`, in its working directory, with `env`
    /// (no cluster secret); stderr is read line by line ([`Proc`]).
    pub(crate) fn spawn_program(&self, name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let h = self.host(name);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.ns, program]).args(args).current_dir(&h.dir).env_remove("WEIR_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        Proc::spawn(&mut c)
    }

    /// Runs `program ARGS` on host `name` to its end; whether it succeeded.
    pub(crate) fn run_on(&self, name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> bool {
        let h = self.host(name);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.ns, program]).args(args).current_dir(&h.dir);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().is_ok_and(|o| o.status.success())
    }

    /// Takes host `name`'s link down (true) or up: while down it reaches
    /// nobody and nobody reaches it; its processes keep running.
    pub(crate) fn link(&self, name: &str, up: bool) {
        let h = self.host(name);
        ip(&["-n", &self.bridge, "link", "set", &h.port, if up { "up" } else { "down" }]).unwrap();
    }

    /// Silently drops all traffic between hosts `a` and `b` (cut), or lets
    /// it through again; each still reaches every other host.
    pub(crate) fn partition(&self, a: &str, b: &str, cut: bool) {
        let (ha, hb) = (self.host(a), self.host(b));
        for (from, to) in [(ha, hb), (hb, ha)] {
            if cut {
                let args = [
                    "-n",
                    &from.ns,
                    "neigh",
                    "replace",
                    &to.ip,
                    "lladdr",
                    NOWHERE_MAC,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ];
                ip(&args).unwrap();
            } else {
                // Learnt again by ARP at the next packet.
                ip(&["-n", &from.ns, "neigh", "del", &to.ip, "dev", "eth0"]).unwrap();
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all_in(&h.ns);
        }
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.bridge]);
    }
}
