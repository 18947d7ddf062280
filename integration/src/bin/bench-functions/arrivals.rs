//! The workloads' arrival sequences, generated from a seed so that every mode sees the same
//! requests at the same offsets.
//!
//! * **W1**: `bursts` bursts; each burst's size (its concurrency) drawn from N(max, 0.1·max)
//!   (rounded, at least 1); every request of a burst arrives at the same instant, each to a
//!   function drawn uniformly; gaps between bursts drawn uniformly from [0.5, 1.5]·gap.
//! * **W2**: the same with exactly `max` requests per burst and gaps of exactly `gap`.
//! * **trace**: per-function per-minute invocation counts in the form of the Azure Functions
//!   2019 dataset (`invocations_per_function_md.anon.d01.csv`: `HashOwner, HashApp,
//!   HashFunction, Trigger, 1 … 1440`), synthesised (the dataset cannot be downloaded here)
//!   or read from such a file: see [`synthesise`]. Each minute is compressed to
//!   `minute_secs` seconds; a minute's invocations arrive at uniformly random offsets within
//!   it (the dataset has no finer resolution), a timer-triggered function's at the start of
//!   each minute.

use std::fmt::Write as _;

/// One request: when (ms after the workload starts), to which function, which check.
#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    pub at_ms: f64,
    pub function: usize,
    pub check: usize,
}

/// SplitMix64: small, seeded, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Normal (Box–Muller).
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Poisson (Knuth's method below 30, a rounded normal above).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            return self.normal(lambda, lambda.sqrt()).round().max(0.0) as u64;
        }
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.uniform();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

/// A seed of its own per workload, from the run's seed.
pub fn seed_for(seed: u64, workload: &str) -> u64 {
    workload.bytes().fold(seed ^ 0xC0FF_EE00_D15E_A5E5, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// Bursts (W1 with `fixed` false, W2 with `fixed` true) over `functions` functions whose
/// check lists have `checks[f]` entries.
pub fn bursts(
    seed: u64,
    checks: &[usize],
    bursts: usize,
    max: usize,
    gap_s: f64,
    fixed: bool,
) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut t = 0.0;
    for _ in 0..bursts {
        let size = if fixed {
            max
        } else {
            rng.normal(max as f64, 0.1 * max as f64).round().max(1.0) as usize
        };
        for _ in 0..size {
            let function = rng.below(checks.len());
            let check = rng.below(checks[function].max(1));
            out.push(Arrival {
                at_ms: t,
                function,
                check,
            });
        }
        let gap = if fixed {
            gap_s
        } else {
            gap_s * (0.5 + rng.uniform())
        };
        t += gap * 1e3;
    }
    out
}

/// Per-function per-minute counts, as one row of the Azure dataset each.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRow {
    pub function: String,
    /// `http` or `timer`, as the dataset's Trigger column.
    pub trigger: String,
    pub counts: Vec<u64>,
}

/// Synthesises `minutes` minutes of per-minute invocation counts for `names`, shaped like the
/// Azure Functions 2019 trace (Shahrad et al., ATC '20): popularity heavy-tailed across
/// functions, a daily swing, bursts, and a timer-triggered function.
///
/// * Popularity: the functions in a seeded random order get weights 1/(rank+1)^1.5, each
///   multiplied by a lognormal factor e^N(0, 0.5); the weights are scaled so that all
///   functions together average `per_minute` invocations per minute.
/// * Daily swing: every rate is multiplied by 1 + 0.6·sin(2π·m/minutes + φ), φ per function
///   within ±0.5 rad of a common phase: the trace's whole length is one compressed "day".
/// * Bursts: in any minute, a function starts a burst with probability 0.04; for 1–3
///   minutes its rate is multiplied by a factor uniform in [3, 8].
/// * The least popular function is timer-triggered: exactly one invocation every minute.
/// * A minute's count is Poisson with that minute's rate.
pub fn synthesise(seed: u64, names: &[String], minutes: usize, per_minute: f64) -> Vec<TraceRow> {
    let mut rng = Rng::new(seed);
    let n = names.len();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    let mut weight = vec![0.0; n];
    for (rank, &f) in order.iter().enumerate() {
        weight[f] = (rank as f64 + 1.0).powf(-1.5) * rng.normal(0.0, 0.5).exp();
    }
    let timer = (n > 1).then(|| order[n - 1]);
    let sum: f64 = weight
        .iter()
        .enumerate()
        .filter(|(f, _)| Some(*f) != timer)
        .map(|(_, w)| w)
        .sum();
    let common = rng.uniform() * 2.0 * std::f64::consts::PI;
    let mut rows = Vec::new();
    for f in 0..n {
        let phase = common + rng.normal(0.0, 0.25).clamp(-0.5, 0.5);
        let base = weight[f] / sum.max(f64::MIN_POSITIVE)
            * (per_minute - timer.map_or(0.0, |_| 1.0)).max(0.0);
        let mut burst_left = 0;
        let mut burst_factor = 1.0;
        let mut counts = Vec::with_capacity(minutes);
        for m in 0..minutes {
            if Some(f) == timer {
                counts.push(1);
                continue;
            }
            if burst_left == 0 && rng.uniform() < 0.04 {
                burst_left = 1 + rng.below(3);
                burst_factor = 3.0 + 5.0 * rng.uniform();
            }
            let factor = if burst_left > 0 {
                burst_left -= 1;
                burst_factor
            } else {
                1.0
            };
            let day = 1.0
                + 0.6
                    * (2.0 * std::f64::consts::PI * m as f64 / minutes.max(1) as f64 + phase).sin();
            counts.push(rng.poisson(base * day * factor));
        }
        rows.push(TraceRow {
            function: names[f].clone(),
            trigger: if Some(f) == timer { "timer" } else { "http" }.into(),
            counts,
        });
    }
    rows
}

/// The rows as the dataset's CSV: `HashOwner,HashApp,HashFunction,Trigger,1,2,…`.
pub fn to_csv(rows: &[TraceRow]) -> String {
    let minutes = rows.iter().map(|r| r.counts.len()).max().unwrap_or(0);
    let mut out = String::from("HashOwner,HashApp,HashFunction,Trigger");
    for m in 1..=minutes {
        let _ = write!(out, ",{m}");
    }
    out.push('\n');
    for r in rows {
        let _ = write!(out, "trenv-bench,{0},{0},{1}", r.function, r.trigger);
        for c in &r.counts {
            let _ = write!(out, ",{c}");
        }
        out.push('\n');
    }
    out
}

/// Rows of a CSV in the dataset's form; the first `functions` rows (in file order) are
/// given to the benchmark's functions in turn, with at most `minutes` minutes each.
pub fn from_csv(text: &str, names: &[String], minutes: usize) -> Result<Vec<TraceRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or("the trace file is empty")?;
    if !header.starts_with("HashOwner") {
        return Err(format!(
            "not a per-minute invocation file of the Azure dataset (header {:?})",
            header.chars().take(60).collect::<String>()
        ));
    }
    let mut rows = Vec::new();
    for (line, name) in lines.zip(names) {
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() < 5 {
            return Err(format!("a row with no minutes: {line:?}"));
        }
        let counts = cols[4..]
            .iter()
            .take(minutes)
            .map(|c| c.trim().parse::<u64>().map_err(|e| format!("{c:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(TraceRow {
            function: name.clone(),
            trigger: cols[3].to_string(),
            counts,
        });
    }
    if rows.len() < names.len() {
        return Err(format!(
            "the trace file has {} rows for {} functions",
            rows.len(),
            names.len()
        ));
    }
    Ok(rows)
}

/// The arrivals of `rows` (row i is function i), one minute compressed to `minute_secs`.
pub fn from_trace(
    seed: u64,
    rows: &[TraceRow],
    checks: &[usize],
    minute_secs: f64,
) -> Vec<Arrival> {
    let mut rng = Rng::new(seed ^ 0x0074_7261_6365);
    let mut out = Vec::new();
    for (f, row) in rows.iter().enumerate() {
        for (m, &count) in row.counts.iter().enumerate() {
            for k in 0..count {
                let within = if row.trigger == "timer" {
                    k as f64 * 0.001
                } else {
                    rng.uniform()
                };
                out.push(Arrival {
                    at_ms: (m as f64 + within) * minute_secs * 1e3,
                    function: f,
                    check: rng.below(checks[f].max(1)),
                });
            }
        }
    }
    out.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_arrivals() {
        let a = bursts(7, &[2, 3, 1], 5, 10, 6.0, false);
        assert_eq!(a, bursts(7, &[2, 3, 1], 5, 10, 6.0, false));
        assert_ne!(a, bursts(8, &[2, 3, 1], 5, 10, 6.0, false));
    }

    #[test]
    fn fixed_bursts_have_max_requests_and_fixed_gaps() {
        let a = bursts(1, &[1, 1], 3, 10, 5.0, true);
        assert_eq!(a.len(), 30);
        for (i, x) in a.iter().enumerate() {
            assert_eq!(x.at_ms, (i / 10) as f64 * 5000.0);
        }
    }

    #[test]
    fn normal_bursts_centre_on_max() {
        let a = bursts(3, &[1; 8], 400, 10, 1.0, false);
        let mean = a.len() as f64 / 400.0;
        assert!((9.7..10.3).contains(&mean), "{mean}");
    }

    #[test]
    fn a_synthetic_trace_is_heavy_tailed_with_a_timer() {
        let rows = synthesise(1, &names(8), 60, 12.0);
        let totals: Vec<u64> = rows.iter().map(|r| r.counts.iter().sum()).collect();
        let all: u64 = totals.iter().sum();
        let mean = all as f64 / 60.0;
        assert!((8.0..17.0).contains(&mean), "{mean} per minute");
        let max = *totals.iter().max().unwrap();
        assert!(max as f64 > 0.3 * all as f64, "{totals:?}");
        let timers: Vec<_> = rows.iter().filter(|r| r.trigger == "timer").collect();
        assert_eq!(timers.len(), 1);
        assert!(timers[0].counts.iter().all(|&c| c == 1));
    }

    #[test]
    fn the_csv_form_reads_back() {
        let rows = synthesise(2, &names(3), 10, 5.0);
        let back = from_csv(&to_csv(&rows), &names(3), 10).unwrap();
        assert_eq!(rows, back);
        assert!(from_csv("a,b\n", &names(1), 5).is_err());
    }

    #[test]
    fn trace_arrivals_fall_in_their_compressed_minute() {
        let rows = vec![TraceRow {
            function: "f".into(),
            trigger: "http".into(),
            counts: vec![0, 3, 1],
        }];
        let a = from_trace(1, &rows, &[1], 4.0);
        assert_eq!(a.len(), 4);
        assert!(a[..3].iter().all(|x| (4000.0..8000.0).contains(&x.at_ms)));
        assert!((8000.0..12000.0).contains(&a[3].at_ms));
    }
}
