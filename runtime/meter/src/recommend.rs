//! Memory-size recommendations: from runs of a function at several memory limits, the
//! limit that is best under each price model for an [`Objective`] (the lowest median cost,
//! the lowest median duration, or a weighted balance of both).
//!
//! A limit where any run failed (OOM kill or a non-zero exit) is never recommended: a
//! cheaper size that does not work is no saving. Pure computation on records, so that
//! `trenv meter recommend`, `trenv trace --limits` and other tools give the same answer.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::pricing::{PriceBook, Usage};
use crate::record::Invocation;

/// What a recommendation minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The lowest median cost.
    Cost,
    /// The lowest median duration.
    Time,
    /// A weighted balance of normalised median cost and duration.
    Balance,
}

#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error(
        "the runs have no memory limit: run the function at several limits first \
         (trenv trace IMAGE --limits 128,256,512)"
    )]
    NoLimits,
    #[error("every memory limit had failed runs (OOM or a non-zero exit): try larger limits")]
    EveryLimitFailed,
}

/// One memory limit tried: (MB, median ms, median $, runs, failed runs).
pub type Candidate = (u64, f64, f64, usize, usize);

/// For one price model: the best memory limit among those the runs were made with.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub model: String,
    pub objective: Objective,
    pub memory_limit_mb: u64,
    pub median_duration_ms: f64,
    pub median_cost_usd: f64,
    pub cost_per_million_usd: f64,
    /// Every limit tried: (MB, median ms, median $, runs, failed runs).
    pub candidates: Vec<Candidate>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[(v.len() - 1) / 2]
    }
}

/// Groups runs by their memory limit, drops limits where any run failed (OOM or exit
/// status), and picks, per model, the limit minimising the objective. `weight` (clamped
/// to 0..1) is the weight of cost against time for [`Objective::Balance`].
pub fn recommend(
    recs: &[&Invocation],
    book: &PriceBook,
    objective: Objective,
    weight: f64,
) -> Result<Vec<Recommendation>, RecommendError> {
    let mut by_limit: BTreeMap<u64, Vec<&Invocation>> = Default::default();
    for r in recs {
        by_limit
            .entry(r.memory_limit_bytes >> 20)
            .or_default()
            .push(r);
    }
    if by_limit.keys().all(|&l| l == 0) {
        return Err(RecommendError::NoLimits);
    }
    let weight = weight.clamp(0.0, 1.0);
    let mut out = Vec::new();
    for model in book.models() {
        let mut candidates = Vec::new();
        for (&mb, rs) in &by_limit {
            if mb == 0 {
                continue;
            }
            let failed = rs
                .iter()
                .filter(|r| r.exit_status != 0 || r.oom_kills > 0)
                .count();
            let mut d: Vec<f64> = rs.iter().map(|r| r.duration_us as f64 / 1000.0).collect();
            let mut c: Vec<f64> = rs
                .iter()
                .map(|r| model.bill(&Usage::from(*r)).cost_usd)
                .collect();
            candidates.push((mb, median(&mut d), median(&mut c), rs.len(), failed));
        }
        let ok: Vec<_> = candidates.iter().filter(|c| c.4 == 0).collect();
        let Some(max_d) = ok.iter().map(|c| c.1).reduce(f64::max) else {
            return Err(RecommendError::EveryLimitFailed);
        };
        let max_c = ok.iter().map(|c| c.2).fold(0.0, f64::max);
        let score = |c: &Candidate| match objective {
            Objective::Cost => c.2,
            Objective::Time => c.1,
            Objective::Balance => {
                weight * c.2 / max_c.max(f64::MIN_POSITIVE)
                    + (1.0 - weight) * c.1 / max_d.max(f64::MIN_POSITIVE)
            }
        };
        let best = ok
            .iter()
            .min_by(|a, b| score(a).total_cmp(&score(b)).then(a.0.cmp(&b.0)))
            .expect("non-empty");
        out.push(Recommendation {
            model: model.name.clone(),
            objective,
            memory_limit_mb: best.0,
            median_duration_ms: best.1,
            median_cost_usd: best.2,
            cost_per_million_usd: best.2 * 1e6,
            candidates: candidates.clone(),
        });
    }
    Ok(out)
}
