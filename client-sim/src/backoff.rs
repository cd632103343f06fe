//! Reconnect delays: exponential backoff with full jitter from a seeded generator, so a run
//! with the same seed waits the same way. Pure: the caller sleeps.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    rng: StdRng,
}

impl Backoff {
    /// A backoff drawing its jitter from `seed`.
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff { config, attempt: 0, rng: StdRng::seed_from_u64(seed) }
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.config.base.saturating_mul(1u32 << shift).min(self.config.max);
        let ceil_us = ceiling.as_micros().max(2) as u64;
        Duration::from_micros(self.rng.gen_range(ceil_us / 2..=ceil_us))
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
    }
}
