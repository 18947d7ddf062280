//! Which idle sandbox a new container gets, and which idle sandboxes go (TrEnv's policy):
//! an idle sandbox last used by the same function, else the least recently used
//! compatible one, else none (a cold start in a new sandbox). Compatible means the same
//! tenant and the same key; nothing crosses tenants. Idle sandboxes older than the
//! keep-alive go, then a tenant's least recently used beyond its share (so that one
//! tenant's bursts cannot push every other tenant's warm sandboxes out), then the least
//! recently used beyond the pool's size, then the least recently used for as long as the
//! idle ones together hold more memory than the pool's memory bound. Pure functions over
//! the records, so they are tested without a kernel.

use std::time::Duration;

use super::record::Record;

/// What a new container needs.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub tenant: &'a str,
    pub key: &'a str,
    pub function: &'a str,
}

/// The pool's bounds (`[sandboxes]` in trenv's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// At most this many idle sandboxes on the node.
    pub max_idle: usize,
    /// At most this many idle sandboxes of one tenant.
    pub max_idle_per_tenant: usize,
    /// An idle sandbox is destroyed after this long unused.
    pub keep_alive: Duration,
    /// The idle sandboxes together hold at most this many bytes (each as measured when it
    /// was last purged).
    pub max_idle_memory: u64,
}

/// The sandbox to give a container that wants `want`, if any.
pub fn choose<'r>(records: &'r [Record], want: &Want<'_>) -> Option<&'r Record> {
    let compatible = records
        .iter()
        .filter(|r| r.is_idle() && r.tenant == want.tenant && r.key == want.key);
    // The same function's most recently used sandbox (its caches are the warmest), else
    // the least recently used of any function.
    let same = compatible
        .clone()
        .filter(|r| !want.function.is_empty() && r.function == want.function)
        .max_by_key(|r| r.last_used_ms);
    same.or_else(|| compatible.min_by_key(|r| r.last_used_ms))
}

/// The idle sandboxes to destroy at `now_ms`: those unused for longer than the keep-alive,
/// then each tenant's least recently used beyond `max_idle_per_tenant`, then the least
/// recently used beyond `max_idle`, then the least recently used while the rest hold more
/// than `max_idle_memory`.
pub fn evictions(records: &[Record], bounds: &Bounds, now_ms: u64) -> Vec<String> {
    let keep_ms = bounds.keep_alive.as_millis() as u64;
    let mut idle: Vec<&Record> = records.iter().filter(|r| r.is_idle()).collect();
    // Oldest first: whatever goes beyond a bound is the least recently used.
    idle.sort_by_key(|r| r.last_used_ms);
    let (expired, kept): (Vec<&Record>, Vec<&Record>) = idle
        .into_iter()
        .partition(|r| now_ms.saturating_sub(r.last_used_ms) > keep_ms);
    let mut out: Vec<String> = expired.into_iter().map(|r| r.id.clone()).collect();
    let mut per_tenant: std::collections::HashMap<&str, usize> = Default::default();
    for r in &kept {
        *per_tenant.entry(r.tenant.as_str()).or_default() += 1;
    }
    let mut left = Vec::new();
    for r in kept {
        let n = per_tenant
            .get_mut(r.tenant.as_str())
            .expect("counted above");
        if *n > bounds.max_idle_per_tenant {
            *n -= 1;
            out.push(r.id.clone());
        } else {
            left.push(r);
        }
    }
    let extra = left.len().saturating_sub(bounds.max_idle);
    let (evicted, left) = left.split_at(extra.min(left.len()));
    out.extend(evicted.iter().map(|r| r.id.clone()));
    let mut held: u64 = left.iter().map(|r| r.memory.unwrap_or(0)).sum();
    // Evicting a sandbox that holds nothing measured frees nothing.
    for r in left.iter().filter(|r| r.memory.unwrap_or(0) > 0) {
        if held <= bounds.max_idle_memory {
            break;
        }
        held -= r.memory.unwrap_or(0);
        out.push(r.id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::record::{Owner, State};
    use super::*;

    fn rec(id: &str, tenant: &str, key: &str, function: &str, used: u64) -> Record {
        Record {
            id: id.into(),
            tenant: tenant.into(),
            key: key.into(),
            state: State::Idle,
            function: function.into(),
            network: None,
            created_ms: 0,
            last_used_ms: used,
            uses: 1,
            memory: None,
            names: None,
        }
    }

    fn want<'a>(tenant: &'a str, function: &'a str) -> Want<'a> {
        Want {
            tenant,
            key: "k",
            function,
        }
    }

    #[test]
    fn the_same_function_is_preferred_then_the_least_recently_used() {
        let rs = vec![
            rec("a", "t", "k", "f1", 10),
            rec("b", "t", "k", "f2", 5),
            rec("c", "t", "k", "f2", 30),
            rec("d", "t", "k", "f3", 20),
        ];
        assert_eq!(choose(&rs, &want("t", "f2")).unwrap().id, "c");
        assert_eq!(choose(&rs, &want("t", "f9")).unwrap().id, "b");
        assert_eq!(choose(&rs, &want("t", "")).unwrap().id, "b");
    }

    #[test]
    fn nothing_crosses_tenants_keys_or_busy_sandboxes() {
        let mut busy = rec("busy", "t", "k", "f", 1);
        busy.state = State::Busy {
            owner: Owner::me(),
            container: "c".into(),
        };
        let rs = vec![
            rec("x", "other", "k", "f", 1),
            rec("y", "t", "other-key", "f", 1),
            busy,
        ];
        assert!(choose(&rs, &want("t", "f")).is_none());
        assert_eq!(choose(&rs, &want("other", "g")).unwrap().id, "x");
    }

    #[test]
    fn expired_and_surplus_idle_sandboxes_are_evicted_oldest_first() {
        let bounds = Bounds {
            max_idle: 2,
            max_idle_per_tenant: 10,
            keep_alive: Duration::from_secs(60),
            max_idle_memory: u64::MAX,
        };
        let rs = vec![
            rec("old", "t", "k", "f", 0),
            rec("a", "t", "k", "f", 100_000),
            rec("b", "t", "k", "f", 90_000),
            rec("c", "t", "k", "f", 110_000),
        ];
        let now = 120_000;
        assert_eq!(evictions(&rs, &bounds, now), vec!["old", "b"]);
        let roomy = Bounds {
            max_idle: 10,
            ..bounds
        };
        assert_eq!(evictions(&rs, &roomy, now), vec!["old"]);
        let zero = Bounds {
            max_idle: 0,
            max_idle_per_tenant: 10,
            keep_alive: Duration::from_secs(3600),
            max_idle_memory: u64::MAX,
        };
        assert_eq!(evictions(&rs, &zero, now).len(), 4);
    }

    #[test]
    fn a_tenant_beyond_its_share_loses_its_oldest_and_leaves_the_others_alone() {
        let bounds = Bounds {
            max_idle: 5,
            max_idle_per_tenant: 2,
            keep_alive: Duration::from_secs(600),
            max_idle_memory: u64::MAX,
        };
        // Tenant "busy" burst last: four idle sandboxes, newer than "quiet"'s two.
        let rs = vec![
            rec("q1", "quiet", "k", "f", 10),
            rec("q2", "quiet", "k", "f", 20),
            rec("b1", "busy", "k", "f", 30),
            rec("b2", "busy", "k", "f", 40),
            rec("b3", "busy", "k", "f", 50),
            rec("b4", "busy", "k", "f", 60),
        ];
        assert_eq!(evictions(&rs, &bounds, 100), vec!["b1", "b2"]);
        // Within their shares, the node's bound takes the oldest of all.
        let node = Bounds {
            max_idle: 3,
            ..bounds
        };
        assert_eq!(evictions(&rs, &node, 100), vec!["b1", "b2", "q1"]);
    }

    #[test]
    fn the_least_recently_used_go_while_the_idle_ones_hold_more_than_the_memory_bound() {
        let bounds = Bounds {
            max_idle: 10,
            max_idle_per_tenant: 10,
            keep_alive: Duration::from_secs(600),
            max_idle_memory: 300,
        };
        let with = |id: &str, used: u64, memory: Option<u64>| Record {
            memory,
            ..rec(id, "t", "k", "f", used)
        };
        let rs = vec![
            with("old", 10, Some(100)),
            with("mid", 20, Some(150)),
            with("new", 30, Some(200)),
            with("unmeasured", 25, None),
        ];
        // 450 held: the oldest goes (350), then the next (200, within the bound).
        assert_eq!(evictions(&rs, &bounds, 100), vec!["old", "mid"]);
        let roomy = Bounds {
            max_idle_memory: 450,
            ..bounds
        };
        assert!(evictions(&rs, &roomy, 100).is_empty());
        // One sandbox alone above the bound goes too: the pool keeps nothing it cannot hold.
        let tiny = Bounds {
            max_idle_memory: 0,
            ..bounds
        };
        assert_eq!(
            evictions(&rs, &tiny, 100),
            vec!["old", "mid", "new"],
            "an unmeasured sandbox counts as nothing"
        );
        // Sandboxes in use are not the pool's to count.
        let mut busy = with("busy", 1, Some(10_000));
        busy.state = State::Busy {
            owner: Owner::me(),
            container: "c".into(),
        };
        assert!(evictions(&[busy], &bounds, 100).is_empty());
    }
}
