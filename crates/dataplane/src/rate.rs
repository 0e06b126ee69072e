//! Rate limits by key (a peer, a peer and a reason): a token bucket per key, so a burst passes
//! and a flood is held to a steady rate, with a count of what was held back for the next line
//! that passes to report. Time is tokio's, so the limits are tested on a paused clock.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::limits::Rate;

/// Keys tracked at once: far more than the peers and reasons of a fabric. Past it, keys whose
/// buckets are full again are forgotten first (they are as good as new); a flood of new keys
/// beyond that shares one bucket.
const MAX_KEYS: usize = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
    held_back: u64,
}

pub(crate) struct RateLimited<K> {
    rate: Rate,
    buckets: Mutex<HashMap<Option<K>, Bucket>>,
}

impl<K: Hash + Eq> RateLimited<K> {
    pub fn new(rate: Rate) -> RateLimited<K> {
        RateLimited {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Whether one more of `key` may pass now: if so, how many were held back since the last
    /// that passed.
    pub fn pass(&self, key: K) -> Option<u64> {
        let now = Instant::now();
        let Rate { burst, every } = self.rate;
        let mut buckets = self.buckets.lock();
        let refill = |b: &mut Bucket| {
            let earned = now.duration_since(b.at).as_secs_f64() / every.as_secs_f64().max(1e-9);
            b.tokens = (b.tokens + earned).min(f64::from(burst));
            b.at = now;
        };
        // One place is kept for the shared bucket.
        let full = |buckets: &HashMap<Option<K>, Bucket>, key: &Option<K>| {
            buckets.len() >= MAX_KEYS - 1 && !buckets.contains_key(key)
        };
        let mut key = Some(key);
        if full(&buckets, &key) {
            buckets.retain(|k, b| {
                refill(b);
                k.is_none() || b.tokens < f64::from(burst) || b.held_back > 0
            });
        }
        if full(&buckets, &key) {
            key = None;
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(burst),
            at: now,
            held_back: 0,
        });
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(std::mem::take(&mut bucket.held_back))
        } else {
            bucket.held_back += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RATE: Rate = Rate {
        burst: 3,
        every: Duration::from_millis(500),
    };

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_with_a_count_of_what_was_held_back() {
        let limited = RateLimited::new(RATE);
        assert_eq!(
            (0..5).map(|_| limited.pass("a")).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(0), None, None]
        );
        // Another key has its own bucket.
        assert_eq!(limited.pass("b"), Some(0));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limited.pass("a"), Some(2));
        assert_eq!(limited.pass("a"), None);
        // Refilled up to the burst, no further.
        tokio::time::advance(Duration::from_secs(60)).await;
        let passed = (0..10).filter(|_| limited.pass("a").is_some()).count();
        assert_eq!(passed, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_new_keys_shares_one_bucket() {
        let limited = RateLimited::new(RATE);
        let passed = (0..MAX_KEYS + 100)
            .filter(|i| limited.pass(*i).is_some())
            .count();
        // Every key up to the table's size, then the shared bucket's burst.
        assert_eq!(passed, MAX_KEYS - 1 + RATE.burst as usize);
        assert!(limited.buckets.lock().len() <= MAX_KEYS);
    }
}
