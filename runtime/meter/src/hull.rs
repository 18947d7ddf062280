//! Memory hulls: from the memory series of many runs of a function, the most memory any
//! run used in each time bin (the max hull), and the same shifted earlier so that a limit
//! following it rises before the function needs the memory (the upscaling hull).
//!
//! A hull file (JSON, written by `trenv meter hull`, read by the shim for live autotuning
//! through the annotation `io.trenv.meter.hull=<path>`):
//!
//! ```json
//! {"format": 1, "bin_ms": 100, "lookahead_bins": 2, "runs": 20,
//!  "max_hull_bytes": [...], "upscaling_hull_bytes": [...], "peak_bytes": 0}
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::{Invocation, read_series};

pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HullError {
    #[error("no memory series to build a hull from: run the function with metering sampling on")]
    NoSeries,
    #[error("reading hull {path}: {reason}; create one with `trenv meter hull`")]
    Read { path: String, reason: String },
    #[error("hull {path} is not usable: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hull {
    pub format: u32,
    /// Width of a bin in milliseconds.
    pub bin_ms: u64,
    /// How many bins earlier the upscaling hull rises.
    pub lookahead_bins: usize,
    /// How many runs were combined.
    pub runs: usize,
    /// Per bin: the largest memory use of any run in that bin.
    pub max_hull_bytes: Vec<u64>,
    /// Per bin: the max hull over this bin and the next `lookahead_bins`.
    pub upscaling_hull_bytes: Vec<u64>,
    /// The largest exact peak of any run (covers what sampling missed).
    pub peak_bytes: u64,
}

impl Hull {
    /// Builds hulls from series of `(t_us, bytes)` samples, one per run, and the runs' exact
    /// peaks.
    pub fn build(
        series: &[Vec<(u64, u64)>],
        peaks: &[u64],
        bin_ms: u64,
        lookahead_bins: usize,
    ) -> Result<Hull, HullError> {
        let bin_us = bin_ms.max(1) * 1000;
        let bins = series
            .iter()
            .filter_map(|s| s.last().map(|&(t, _)| (t / bin_us) as usize + 1))
            .max()
            .ok_or(HullError::NoSeries)?;
        let mut hull = vec![0u64; bins];
        for s in series {
            for &(t, v) in s {
                let b = (t / bin_us) as usize;
                hull[b] = hull[b].max(v);
            }
        }
        let upscaling = (0..bins)
            .map(|i| {
                hull[i..=(i + lookahead_bins).min(bins - 1)]
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        Ok(Hull {
            format: FORMAT,
            bin_ms,
            lookahead_bins,
            runs: series.len(),
            max_hull_bytes: hull,
            upscaling_hull_bytes: upscaling,
            peak_bytes: peaks.iter().copied().max().unwrap_or(0),
        })
    }

    /// Builds hulls from the memory series of `recs` in the meter directory `dir` (records
    /// without a series add only their exact peak).
    pub fn from_records(
        dir: &Path,
        recs: &[Invocation],
        bin_ms: u64,
        lookahead_bins: usize,
    ) -> Result<Hull, HullError> {
        let series: Vec<Vec<(u64, u64)>> = recs
            .iter()
            .map(|r| read_series(dir, r))
            .filter(|s| !s.is_empty())
            .collect();
        let peaks: Vec<u64> = recs.iter().map(|r| r.memory_peak_bytes).collect();
        Hull::build(&series, &peaks, bin_ms, lookahead_bins)
    }

    pub fn load(path: &Path) -> Result<Hull, HullError> {
        let p = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| HullError::Read {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Hull::parse(&text, &p)
    }

    /// A hull from the bytes of a hull file read from `origin`. Errors say where the file
    /// stops being a hull, never what it holds (the shim reads files that containers name,
    /// as root: an error must not reveal another file's content).
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Hull, HullError> {
        let p = origin.to_string();
        let hull: Hull = serde_json::from_slice(bytes).map_err(|e| HullError::Invalid {
            path: p.clone(),
            reason: format!(
                "not a hull file ({} error at line {} column {})",
                match e.classify() {
                    serde_json::error::Category::Io => "read",
                    serde_json::error::Category::Syntax => "syntax",
                    serde_json::error::Category::Data => "data",
                    serde_json::error::Category::Eof => "unexpected end of file",
                },
                e.line(),
                e.column()
            ),
        })?;
        if hull.format != FORMAT {
            return Err(HullError::Invalid {
                path: p,
                reason: format!("format {} (this trenv reads format {FORMAT})", hull.format),
            });
        }
        if hull.bin_ms == 0 || hull.upscaling_hull_bytes.is_empty() {
            return Err(HullError::Invalid {
                path: p,
                reason: "bin_ms must be > 0 and upscaling_hull_bytes non-empty".into(),
            });
        }
        Ok(hull)
    }

    /// The limit the upscaling hull asks for at `elapsed_ms` since the start; after the
    /// hull's end, its largest value (the function ran longer than any traced run).
    pub fn limit_at(&self, elapsed_ms: u64) -> u64 {
        let bin = (elapsed_ms / self.bin_ms) as usize;
        match self.upscaling_hull_bytes.get(bin) {
            Some(&v) => v,
            None => self
                .upscaling_hull_bytes
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                .max(self.peak_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_hull_is_refused_without_echoing_it() {
        for text in [
            "root:$6$secret:19000:0:99999:7:::",
            "\"root:$6$secret\"",
            "{\"format\": \"root:$6$secret\"}",
        ] {
            let e = Hull::parse(text.as_bytes(), "/x").unwrap_err().to_string();
            assert!(e.contains("not a hull file"), "{e}");
            assert!(!e.contains("secret") && !e.contains("root"), "{e}");
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn max_hull_covers_every_run_per_bin() {
        let a = vec![(0, 10 * MIB), (50_000, 20 * MIB), (150_000, 5 * MIB)];
        let b = vec![(10_000, 15 * MIB), (120_000, 30 * MIB), (250_000, 8 * MIB)];
        let h = Hull::build(&[a.clone(), b.clone()], &[31 * MIB, 20 * MIB], 100, 2).unwrap();
        assert_eq!(h.max_hull_bytes, vec![20 * MIB, 30 * MIB, 8 * MIB]);
        for s in [a, b] {
            for (t, v) in s {
                assert!(v <= h.max_hull_bytes[(t / 100_000) as usize]);
            }
        }
        assert_eq!(h.peak_bytes, 31 * MIB);
    }

    #[test]
    fn upscaling_hull_rises_lookahead_bins_early() {
        let s = vec![
            (0, MIB),
            (100_000, MIB),
            (200_000, MIB),
            (300_000, 50 * MIB),
            (400_000, MIB),
        ];
        let h = Hull::build(&[s], &[50 * MIB], 100, 2).unwrap();
        assert_eq!(
            h.upscaling_hull_bytes,
            vec![MIB, 50 * MIB, 50 * MIB, 50 * MIB, MIB]
        );
        assert_eq!(h.limit_at(0), MIB);
        assert_eq!(h.limit_at(150), 50 * MIB);
        assert_eq!(h.limit_at(450), MIB);
        // After the hull: its maximum.
        assert_eq!(h.limit_at(10_000), 50 * MIB);
    }

    #[test]
    fn no_series_is_an_error() {
        assert!(matches!(
            Hull::build(&[], &[], 100, 2),
            Err(HullError::NoSeries)
        ));
    }

    #[test]
    fn load_checks_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.json");
        let h = Hull::build(&[vec![(0, MIB)]], &[MIB], 100, 2).unwrap();
        std::fs::write(&p, serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(Hull::load(&p).unwrap(), h);
        std::fs::write(&p, r#"{"format":9}"#).unwrap();
        assert!(Hull::load(&p).is_err());
        assert!(
            Hull::load(&dir.path().join("missing.json"))
                .unwrap_err()
                .to_string()
                .contains("trenv meter hull")
        );
    }
}
