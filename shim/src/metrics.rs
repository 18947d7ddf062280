//! Stats: libcgroups' numbers in containerd's metrics types. A v1 host answers with
//! `io.containerd.cgroups.v1.Metrics`, a v2 host with `io.containerd.cgroups.v2.Metrics`.

use std::collections::HashMap;

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use libcgroups::stats::Stats;
use trenv_runtime::container::cgroup::{Cgroup, Version};

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = type_url.to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

/// Reads the cgroup's stats and encodes them for containerd.
pub fn collect(cg: &Cgroup) -> Result<Any, trenv_runtime::container::cgroup::CgroupError> {
    let stats = cg.stats()?;
    Ok(match cg.version() {
        Version::V1 => any(
            "io.containerd.cgroups.v1.Metrics",
            &to_v1(&stats, cg.oom_kills()),
        ),
        Version::V2 => any(
            "io.containerd.cgroups.v2.Metrics",
            &to_v2(&stats, cg.memory_peak(), &cg.memory_events()),
        ),
    })
}

fn stat(s: &HashMap<String, u64>, k: &str) -> u64 {
    s.get(k).copied().unwrap_or(0)
}

pub fn to_v1(s: &Stats, oom_kills: Option<u64>) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    m.pids = MessageField::some(v1::PidsStat {
        current: s.pids.current,
        limit: s.pids.limit,
        ..Default::default()
    });
    m.cpu = MessageField::some(v1::CPUStat {
        usage: MessageField::some(v1::CPUUsage {
            total: s.cpu.usage.usage_total,
            kernel: s.cpu.usage.usage_kernel,
            user: s.cpu.usage.usage_user,
            per_cpu: s.cpu.usage.per_core_usage_total.clone(),
            ..Default::default()
        }),
        throttling: MessageField::some(v1::Throttle {
            periods: s.cpu.throttling.periods,
            throttled_periods: s.cpu.throttling.throttled_periods,
            throttled_time: s.cpu.throttling.throttled_time,
            ..Default::default()
        }),
        ..Default::default()
    });
    let entry = |d: &libcgroups::stats::MemoryData| {
        MessageField::some(v1::MemoryEntry {
            limit: d.limit,
            usage: d.usage,
            max: d.max_usage,
            failcnt: d.fail_count,
            ..Default::default()
        })
    };
    let ms = &s.memory.stats;
    m.memory = MessageField::some(v1::MemoryStat {
        cache: s.memory.cache,
        rss: stat(ms, "rss"),
        rss_huge: stat(ms, "rss_huge"),
        mapped_file: stat(ms, "mapped_file"),
        dirty: stat(ms, "dirty"),
        writeback: stat(ms, "writeback"),
        pg_pg_in: stat(ms, "pgpgin"),
        pg_pg_out: stat(ms, "pgpgout"),
        pg_fault: stat(ms, "pgfault"),
        pg_maj_fault: stat(ms, "pgmajfault"),
        inactive_anon: stat(ms, "inactive_anon"),
        active_anon: stat(ms, "active_anon"),
        inactive_file: stat(ms, "inactive_file"),
        active_file: stat(ms, "active_file"),
        unevictable: stat(ms, "unevictable"),
        hierarchical_memory_limit: stat(ms, "hierarchical_memory_limit"),
        hierarchical_swap_limit: stat(ms, "hierarchical_memsw_limit"),
        total_cache: stat(ms, "total_cache"),
        total_rss: stat(ms, "total_rss"),
        total_rss_huge: stat(ms, "total_rss_huge"),
        total_mapped_file: stat(ms, "total_mapped_file"),
        total_dirty: stat(ms, "total_dirty"),
        total_writeback: stat(ms, "total_writeback"),
        total_pg_pg_in: stat(ms, "total_pgpgin"),
        total_pg_pg_out: stat(ms, "total_pgpgout"),
        total_pg_fault: stat(ms, "total_pgfault"),
        total_pg_maj_fault: stat(ms, "total_pgmajfault"),
        total_inactive_anon: stat(ms, "total_inactive_anon"),
        total_active_anon: stat(ms, "total_active_anon"),
        total_inactive_file: stat(ms, "total_inactive_file"),
        total_active_file: stat(ms, "total_active_file"),
        total_unevictable: stat(ms, "total_unevictable"),
        usage: entry(&s.memory.memory),
        swap: entry(&s.memory.memswap),
        kernel: entry(&s.memory.kernel),
        kernel_tcp: entry(&s.memory.kernel_tcp),
        ..Default::default()
    });
    if let Some(k) = oom_kills {
        m.memory_oom_control = MessageField::some(v1::MemoryOomControl {
            oom_kill: k,
            ..Default::default()
        });
    }
    for (size, h) in &s.hugetlb {
        m.hugetlb.push(v1::HugetlbStat {
            usage: h.usage,
            max: h.max_usage,
            failcnt: h.fail_count,
            pagesize: size.clone(),
            ..Default::default()
        });
    }
    m
}

pub fn to_v2(s: &Stats, peak: Option<u64>, events: &[(String, u64)]) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    m.pids = MessageField::some(v2::PidsStat {
        current: s.pids.current,
        limit: s.pids.limit,
        ..Default::default()
    });
    // libcgroups passes v2's cpu.stat through in microseconds, as containerd wants them.
    m.cpu = MessageField::some(v2::CPUStat {
        usage_usec: s.cpu.usage.usage_total,
        user_usec: s.cpu.usage.usage_user,
        system_usec: s.cpu.usage.usage_kernel,
        nr_periods: s.cpu.throttling.periods,
        nr_throttled: s.cpu.throttling.throttled_periods,
        throttled_usec: s.cpu.throttling.throttled_time,
        ..Default::default()
    });
    let ms = &s.memory.stats;
    m.memory = MessageField::some(v2::MemoryStat {
        anon: stat(ms, "anon"),
        file: stat(ms, "file"),
        kernel_stack: stat(ms, "kernel_stack"),
        slab: stat(ms, "slab"),
        sock: stat(ms, "sock"),
        shmem: stat(ms, "shmem"),
        file_mapped: stat(ms, "file_mapped"),
        file_dirty: stat(ms, "file_dirty"),
        file_writeback: stat(ms, "file_writeback"),
        anon_thp: stat(ms, "anon_thp"),
        inactive_anon: stat(ms, "inactive_anon"),
        active_anon: stat(ms, "active_anon"),
        inactive_file: stat(ms, "inactive_file"),
        active_file: stat(ms, "active_file"),
        unevictable: stat(ms, "unevictable"),
        pgfault: stat(ms, "pgfault"),
        pgmajfault: stat(ms, "pgmajfault"),
        usage: s.memory.memory.usage,
        usage_limit: s.memory.memory.limit,
        swap_usage: s.memory.memswap.usage,
        swap_limit: s.memory.memswap.limit,
        max_usage: peak.unwrap_or(s.memory.memory.max_usage),
        ..Default::default()
    });
    let ev = |k: &str| events.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    m.memory_events = MessageField::some(v2::MemoryEvents {
        low: ev("low"),
        high: ev("high"),
        max: ev("max"),
        oom: ev("oom"),
        oom_kill: ev("oom_kill"),
        oom_group_kill: ev("oom_group_kill"),
        ..Default::default()
    });
    for (size, h) in &s.hugetlb {
        m.hugetlb.push(v2::HugeTlbStat {
            current: h.usage,
            max: h.max_usage,
            pagesize: size.clone(),
            failcnt: h.fail_count,
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_metrics_carry_peak_and_oom_kills() {
        let mut s = Stats::default();
        s.memory.memory.usage = 10 << 20;
        s.memory.memory.limit = 64 << 20;
        s.cpu.usage.usage_total = 5_000;
        let m = to_v2(&s, Some(20 << 20), &[("oom_kill".into(), 2)]);
        assert_eq!(m.memory.usage, 10 << 20);
        assert_eq!(m.memory.max_usage, 20 << 20);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.cpu.usage_usec, 5_000);
    }

    #[test]
    fn v1_metrics_map_memory_entries() {
        let mut s = Stats::default();
        s.memory.memory.usage = 7;
        s.memory.memory.max_usage = 9;
        let m = to_v1(&s, Some(1));
        assert_eq!(m.memory.usage.usage, 7);
        assert_eq!(m.memory.usage.max, 9);
        assert_eq!(m.memory_oom_control.oom_kill, 1);
    }
}
