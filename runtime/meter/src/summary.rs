//! Per-function summaries of records: how many invocations, duration and peak percentiles,
//! OOM kills and failures, and per price model the mean cost per million invocations and
//! how much of it pays for time and memory that were billed but not used.
//!
//! Pure computation on records (what `trenv meter summary` prints as tables or JSON).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pricing::{PriceBook, Usage};
use crate::record::Invocation;

/// The function name of records without one.
pub const NO_FUNCTION: &str = "(no function)";

/// One function's summary.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub function: String,
    pub count: usize,
    pub duration_ms_p50: f64,
    pub duration_ms_p90: f64,
    pub duration_ms_p99: f64,
    pub peak_mib_p50: f64,
    pub peak_mib_p90: f64,
    pub peak_mib_p99: f64,
    pub oom_kills: u64,
    pub failures: usize,
    /// Per price model: mean cost per million invocations and waste.
    pub costs: Vec<ModelCost>,
}

/// One function's mean cost under one price model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCost {
    pub model: String,
    pub cost_per_million_usd: f64,
    pub net_cost_per_million_usd: f64,
    pub waste_percent: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One row per function (records without one under [`NO_FUNCTION`]), by name.
pub fn summarise(recs: &[Invocation], book: &PriceBook) -> Vec<SummaryRow> {
    let mut groups: BTreeMap<String, Vec<&Invocation>> = Default::default();
    for r in recs {
        let key = if r.identity.function.is_empty() {
            NO_FUNCTION.to_string()
        } else {
            r.identity.function.clone()
        };
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(function, rs)| {
            let mut d: Vec<f64> = rs.iter().map(|r| ms(r.duration_us)).collect();
            let mut m: Vec<f64> = rs.iter().map(|r| mib(r.memory_peak_bytes)).collect();
            d.sort_by(f64::total_cmp);
            m.sort_by(f64::total_cmp);
            SummaryRow {
                function,
                count: rs.len(),
                duration_ms_p50: percentile(&d, 50.0),
                duration_ms_p90: percentile(&d, 90.0),
                duration_ms_p99: percentile(&d, 99.0),
                peak_mib_p50: percentile(&m, 50.0),
                peak_mib_p90: percentile(&m, 90.0),
                peak_mib_p99: percentile(&m, 99.0),
                oom_kills: rs.iter().map(|r| r.oom_kills).sum(),
                failures: rs.iter().filter(|r| r.exit_status != 0).count(),
                costs: book
                    .models()
                    .iter()
                    .map(|m| {
                        let bills: Vec<_> = rs.iter().map(|r| m.bill(&Usage::from(*r))).collect();
                        let n = bills.len().max(1) as f64;
                        let cost: f64 = bills.iter().map(|b| b.cost_usd).sum();
                        let net: f64 = bills.iter().map(|b| b.net_cost_usd).sum();
                        ModelCost {
                            model: m.name.clone(),
                            cost_per_million_usd: cost / n * 1e6,
                            net_cost_per_million_usd: net / n * 1e6,
                            waste_percent: if cost > 0.0 {
                                (cost - net) / cost * 100.0
                            } else {
                                0.0
                            },
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
    }
}
