//! Counter-keyed random streams: one independent stream per (seed, epoch, sample index), so
//! a sample's augmentation does not depend on which thread draws it or when.

/// SplitMix64 finaliser: a bijective 64-bit mixer, used to derive stream keys.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A xoshiro256++ generator keyed by `(seed, epoch, index)`.
#[derive(Clone, Debug)]
pub struct SampleRng {
    s: [u64; 4],
}

impl SampleRng {
    /// The stream of one sample of one epoch. `index = u64::MAX` is reserved for the epoch's
    /// shuffle.
    pub fn for_sample(seed: u64, epoch: u64, index: u64) -> Self {
        let key = splitmix(splitmix(splitmix(seed) ^ epoch) ^ index);
        let mut s = [0u64; 4];
        let mut z = key;
        for w in &mut s {
            z = splitmix(z);
            *w = z;
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Self { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `[0, n)` (unbiased, Lemire's multiply-and-reject); `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map(|_| SampleRng::for_sample(1, 0, 5).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let b = SampleRng::for_sample(1, 1, 5).next_u64();
        let c = SampleRng::for_sample(1, 0, 6).next_u64();
        assert!(a[0] != b && a[0] != c && b != c);
    }

    #[test]
    fn below_is_in_range() {
        let mut r = SampleRng::for_sample(0, 0, 0);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }
}
