//! A small map whose entries expire: the webhook authenticator's and authorizer's answer caches
//! (the kubelet caches TokenReviews 2 min, SubjectAccessReviews 5 min when allowed and 30 s when
//! denied). Bounded, so a flood of distinct tokens cannot grow it without end.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(max: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let map = self.entries.lock().ok()?;
        map.get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: K, value: V, ttl: Duration) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= self.max {
            map.retain(|_, (_, until)| *until > now);
        }
        if map.len() >= self.max {
            // Still full of live entries: forget the one closest to expiry.
            if let Some(k) = map
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        map.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c = TtlCache::new(2);
        c.put(1, "a", Duration::from_secs(60));
        c.put(2, "b", Duration::ZERO);
        assert_eq!(c.get(&1), Some("a"));
        assert_eq!(c.get(&2), None, "expired");
        c.put(3, "c", Duration::from_secs(30));
        c.put(4, "d", Duration::from_secs(90));
        assert_eq!(c.entries.lock().unwrap().len(), 2);
        assert_eq!(c.get(&4), Some("d"));
    }
}
