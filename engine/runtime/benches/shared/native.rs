//! What the WordCount benches share: the native loop's fast hasher and the
//! hypervisor's steal counter. Included by path (`#[path]`) from the engine's
//! `wordcount` bench and the CLI's `run_wordcount` bench.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash: the fast hasher of the native reference loops.
#[derive(Default)]
pub struct Fx(u64);

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`Fx`] hashers for a `HashMap`.
pub type Fast = BuildHasherDefault<Fx>;

/// (steal, total) jiffies of all CPUs, from /proc/stat (Linux only).
pub fn cpu_steal() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    Some((*cpu.get(7)?, cpu.iter().take(8).sum()))
}
