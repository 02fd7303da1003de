//! Memory gauges, read when the metrics are scraped: the process's resident set (from
//! `/proc/self/status`) and, with the `jemalloc` feature (the default), the allocator's live
//! heap and the pages it holds. Live heap against resident set tells an operator whether a
//! node's memory is data it uses or pages the allocator keeps.
//!
//! Owns: the `homeport_memory_*` gauges. Must not touch: anything but reading counters.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

/// A collector that refreshes its gauges on each scrape.
pub struct MemoryCollector {
    resident: IntGauge,
    allocated: IntGauge,
    allocator_resident: IntGauge,
    descs: Vec<Desc>,
}

impl MemoryCollector {
    pub fn new() -> Self {
        let g = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let resident = g("homeport_memory_resident_bytes", "Resident set size of the process");
        let allocated = g(
            "homeport_memory_allocated_bytes",
            "Bytes of live heap allocations (jemalloc stats.allocated; 0 without jemalloc)",
        );
        let allocator_resident = g(
            "homeport_memory_allocator_resident_bytes",
            "Bytes in pages the allocator holds resident (jemalloc stats.resident; 0 without jemalloc)",
        );
        let descs = [&resident, &allocated, &allocator_resident]
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .collect();
        MemoryCollector { resident, allocated, allocator_resident, descs }
    }

    fn refresh(&self) {
        if let Some(rss) = process_resident_bytes() {
            self.resident.set(rss as i64);
        }
        if let Some((allocated, resident)) = allocator_stats() {
            self.allocated.set(allocated as i64);
            self.allocator_resident.set(resident as i64);
        }
    }
}

impl Default for MemoryCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for MemoryCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        [&self.resident, &self.allocated, &self.allocator_resident]
            .iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

/// Resident set size from `/proc/self/status` (`VmRSS`); None where there is no procfs.
pub fn process_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib * 1024)
}

/// (live heap bytes, resident allocator bytes), after refreshing jemalloc's cached counters.
#[cfg(feature = "jemalloc")]
pub fn allocator_stats() -> Option<(u64, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some((allocated as u64, resident as u64))
}

/// Without jemalloc there are no allocator statistics.
#[cfg(not(feature = "jemalloc"))]
pub fn allocator_stats() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\thomeport\nVmPeak:\t  900 kB\nVmRSS:\t   1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tx kB\n"), None);
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn the_collector_reports_this_process() {
        let c = MemoryCollector::new();
        let families = c.collect();
        let names: Vec<_> = families.iter().map(|f| f.name().to_string()).collect();
        assert_eq!(
            names,
            [
                "homeport_memory_resident_bytes",
                "homeport_memory_allocated_bytes",
                "homeport_memory_allocator_resident_bytes"
            ]
        );
        assert!(c.resident.get() > 0, "a running test process has resident pages");
        #[cfg(feature = "jemalloc")]
        {
            // Other tests allocate and free meanwhile; 64 MiB stands well above that noise.
            let before = c.allocated.get();
            let held = vec![1u8; 64 << 20];
            c.collect();
            assert!(c.allocated.get() >= before + (32 << 20), "live heap counted");
            drop(held);
        }
    }
}
