//! Reconnect delays: exponential backoff with full jitter from a seeded generator, so a run
//! with the same seed waits the same way. Pure: the caller gives the seed and sleeps.

use std::time::Duration;

/// Backoff settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { base: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

/// Exponential backoff with jitter: attempt `n` waits a uniform time in
/// `[ceiling/2, ceiling]` with `ceiling = min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff drawing its jitter from `seed` (the caller's randomness: a seeded run, or
    /// any random number where replay does not matter).
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff { config, attempt: 0, rng: SplitMix64(seed) }
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.config.base.saturating_mul(1u32 << shift).min(self.config.max);
        let ceil_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX).max(2);
        let lo = ceil_us / 2;
        // `ceil_us - lo + 1` cannot overflow: `lo` is at least 1. The modulo bias is below
        // 2^-40 for any ceiling under a week: irrelevant for a jitter.
        Duration::from_micros(lo + self.rng.next() % (ceil_us - lo + 1))
    }

    /// Attempts made since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first delay (after a successful connect).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny, well-mixed generator, enough for jitter,
/// and with no dependency or system entropy, so the crate stays pure and builds for wasm32.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_replays() {
        let cfg = BackoffConfig { base: Duration::from_millis(10), max: Duration::from_millis(100) };
        let mut a = Backoff::new(cfg, 42);
        let delays: Vec<Duration> = (0..8).map(|_| a.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_millis(10 * (1 << n)).min(cfg.max);
            assert!(*d >= ceiling / 2 && *d <= ceiling, "attempt {n}: {d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        let mut b = Backoff::new(cfg, 42);
        assert_eq!(delays, (0..8).map(|_| b.next_delay()).collect::<Vec<_>>(), "same seed, same delays");
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_millis(10));
        let mut c = Backoff::new(cfg, 43);
        assert_ne!(delays, (0..8).map(|_| c.next_delay()).collect::<Vec<_>>(), "another seed, other delays");
    }

    #[test]
    fn jitter_spreads_over_the_interval() {
        let cfg = BackoffConfig { base: Duration::from_millis(100), max: Duration::from_millis(100) };
        let mut b = Backoff::new(cfg, 7);
        let (mut low, mut high) = (0, 0);
        for _ in 0..1000 {
            let d = b.next_delay();
            if d < Duration::from_millis(75) {
                low += 1;
            } else {
                high += 1;
            }
        }
        assert!(low > 400 && high > 400, "low {low}, high {high}");
    }
}
