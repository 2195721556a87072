//! What the benchmarks share: seeded WordCount-like lines.

/// `n` lines of 10 words `w<rank>`, ranks skewed towards small numbers
/// (u^3 of a uniform draw over 100 000), from a fixed-seed LCG.
pub fn lines(n: usize, seed: u64) -> Vec<String> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            (0..10)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    format!("w{}", (u * u * u * 100_000.0) as u32)
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}
