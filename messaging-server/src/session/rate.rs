//! The per-connection send limit: a token bucket.

use std::time::Instant;

pub struct RateLimit {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    /// `rate` sends per second sustained, `burst` above it; starts full.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::starting_at(rate, burst, Instant::now())
    }

    fn starting_at(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut limit = RateLimit::starting_at(10, 5, t0);
        let first: usize = (0..8).filter(|_| limit.allow_at(t0)).count();
        assert_eq!(first, 5, "the burst, then refusals");
        // 10 per second: one more token every 100 ms, never above the burst.
        assert!(limit.allow_at(t0 + Duration::from_millis(100)));
        assert!(!limit.allow_at(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| limit.allow_at(later)).count(), 5);
    }
}
