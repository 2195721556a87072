//! `generator`: seeded synthetic text, a pure function of the batch time.

use weir_codec::BatchBuilder;

use super::queue::empty_batch;
use super::{InputDescriptor, Source, SourceCursor, SourceError};

/// Seeded synthetic text: `w<rank>` words with a Zipf-like rank distribution.
pub(super) struct GeneratorSource {
    pub(super) lines: u64,
    pub(super) words: u32,
    pub(super) vocab: u32,
    pub(super) seed: u64,
    pub(super) left: Option<u64>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl GeneratorSource {
    fn generate(&self, time: i64) -> Vec<u8> {
        let mut state = self.seed ^ (time as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Sizes are bounded by `SourceSpec::check`; saturating all the same.
        let capacity = self.lines.saturating_mul(self.words as u64).saturating_mul(8).min(1 << 30);
        let mut b = BatchBuilder::with_capacity(capacity as usize);
        let mut line = String::new();
        for _ in 0..self.lines {
            line.clear();
            for i in 0..self.words {
                // u^3 skews ranks towards small numbers (a cheap Zipf-like law).
                let u = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                let rank = ((u * u * u) * self.vocab as f64) as u32;
                if i > 0 {
                    line.push(' ');
                }
                line.push('w');
                line.push_str(&rank.to_string());
            }
            b.push_with(|w| w.str(&line));
        }
        b.finish()
    }
}

impl Source for GeneratorSource {
    fn poll(&mut self, time: i64, _wall: bool) -> Result<(Vec<u8>, InputDescriptor), SourceError> {
        if let Some(l) = &mut self.left {
            if *l == 0 {
                return Ok((empty_batch(), InputDescriptor::Generated { empty: true }));
            }
            *l -= 1;
        }
        Ok((self.generate(time), InputDescriptor::Generated { empty: false }))
    }
    fn replay(&self, time: i64, d: &InputDescriptor) -> Result<Vec<u8>, SourceError> {
        match d {
            InputDescriptor::Generated { empty: true } => Ok(empty_batch()),
            InputDescriptor::Generated { empty: false } => Ok(self.generate(time)),
            other => Err(SourceError::Replay(format!("a generator cannot replay {other:?}"))),
        }
    }
    fn cursor(&self) -> SourceCursor {
        SourceCursor::Generator { left: self.left }
    }
    fn restore(&mut self, c: &SourceCursor) -> Result<(), SourceError> {
        if let SourceCursor::Generator { left } = c {
            self.left = *left;
        }
        Ok(())
    }
    fn exhausted(&self) -> bool {
        self.left == Some(0)
    }
    fn waits_for_input(&self) -> bool {
        false
    }
}
