//! Invocation records: one per invocation (a container's init process, or an exec), with
//! the exact memory peak from the kernel, CPU time, wall and monotonic times, OOM kills,
//! the exit status, and the name of its memory time series.
//!
//! Records are appended to `invocations.jsonl` in the meter directory (one `write(2)` per
//! line, then `fdatasync`; a torn last line left by a crash is closed before the next
//! append and skipped by readers). The record goes first: it is what a platform bills, and
//! a series (a CSV file, written to a temporary name and renamed into place) is hundreds of
//! times larger, so on a filling disk the series must not take the space the record needs.
//! A record whose series could not be written names a file that does not exist (readers
//! treat it as missing, [`series_missing`]); no temporary file is left behind. Format: see
//! docs/metering.md.
//!
//! This is the file format only: the shim's live side (sampling a cgroup while the
//! invocation runs) is `trenv_runtime::metering`, which produces these records.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the record format (docs/metering.md).
pub const FORMAT: u32 = 1;

/// Where the shim writes records unless `TRENV_METER_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/trenv/meter";

/// The meter directory named by `TRENV_METER_DIR`, or [`DEFAULT_DIR`].
pub fn dir_from_env() -> PathBuf {
    std::env::var_os("TRENV_METER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("metering directory {dir}: {source}; set TRENV_METER_DIR to a writable directory")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the metering record to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "writing the memory series to {path}: {source}; its record is kept, the series is \
         missing (free space in the metering directory)"
    )]
    Series {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`write_record`] stored.
#[derive(Debug)]
pub struct Written {
    /// The record as appended (its `series` names its series file, if it has one).
    pub record: Invocation,
    /// Why the series file is missing, when it could not be written; the record is kept.
    pub series_lost: Option<RecordError>,
}

/// Who the invocation was.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub namespace: String,
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    pub sandbox_id: String,
    pub image: String,
    pub function: String,
    /// How the container started: "cold", "checkpoint" or "template" (restored).
    #[serde(default)]
    pub start: String,
    /// The pooled sandbox it ran in: "new", "repurposed" or "" (namespaces of its own).
    #[serde(default)]
    pub sandbox: String,
    /// The function that ran in a repurposed sandbox before.
    #[serde(default)]
    pub previous_function: String,
    /// A template restore whose process a shared shim restored ahead (its reserve).
    #[serde(default)]
    pub reserve: bool,
}

/// One invocation's record (one line of invocations.jsonl).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    pub format: u32,
    #[serde(flatten)]
    pub identity: Identity,
    pub pid: i32,
    /// Wall-clock start and end, microseconds since the Unix epoch.
    pub started_at_us: i64,
    pub ended_at_us: i64,
    /// Duration on the monotonic clock, microseconds.
    pub duration_us: u64,
    pub cpu_user_us: u64,
    pub cpu_system_us: u64,
    /// Exact peak of the cgroup's memory (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub memory_peak_bytes: u64,
    /// The largest sampled value (for comparison with sampling-based tools).
    pub memory_sampled_max_bytes: u64,
    /// Memory limit in force at the end; 0 = unlimited.
    pub memory_limit_bytes: u64,
    pub oom_kills: u64,
    pub exit_status: u32,
    pub cgroup_version: u32,
    pub sample_interval_us: u64,
    pub samples: usize,
    /// The memory series, relative to the meter directory ("" without sampling).
    pub series: String,
}

/// An id made safe to use as (part of) a file name: anything but ASCII letters, digits,
/// `-`, `_` and `.` becomes `_` (the same rule as `trenv_runtime::file_name_safe`, which
/// names the runtime's own files).
pub fn file_name_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Appends the record, then writes its series (atomically, by rename). The record does not
/// depend on the series: when the series cannot be written (a full disk), the record is
/// kept, the temporary file removed, and [`Written::series_lost`] says why.
pub fn write_record(
    dir: &Path,
    rec: Invocation,
    series: &[(u64, u64)],
) -> Result<Written, RecordError> {
    write_record_with(dir, rec, series, |f, bytes| {
        f.write_all(bytes)?;
        f.sync_data()
    })
}

/// [`write_record`] with the series' bytes written by `write` (tests inject a full disk).
fn write_record_with(
    dir: &Path,
    mut rec: Invocation,
    series: &[(u64, u64)],
    write: impl FnOnce(&mut File, &[u8]) -> std::io::Result<()>,
) -> Result<Written, RecordError> {
    fs::create_dir_all(dir).map_err(|source| RecordError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    if !series.is_empty() {
        rec.series = format!(
            "series/{}-{}-{}.csv",
            rec.started_at_us,
            file_name_safe(&rec.identity.container_id),
            file_name_safe(&rec.identity.exec_id)
        );
    }
    append(dir, &rec)?;
    let series_lost = if series.is_empty() {
        None
    } else {
        write_series(&dir.join(&rec.series), series, write).err()
    };
    Ok(Written {
        record: rec,
        series_lost,
    })
}

/// Appends one record line to `invocations.jsonl`.
fn append(dir: &Path, rec: &Invocation) -> Result<(), RecordError> {
    let path = dir.join("invocations.jsonl");
    let werr = |source| RecordError::Write {
        path: path.clone(),
        source,
    };
    let mut line = serde_json::to_string(rec).map_err(|e| werr(std::io::Error::other(e)))?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(werr)?;
    // A crash during an earlier append may have left a torn last line: close it first.
    let len = f.metadata().map_err(werr)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1).map_err(werr)?;
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
    }
    f.write_all(line.as_bytes()).map_err(werr)?;
    f.sync_data().map_err(werr)?;
    Ok(())
}

/// Writes a series CSV to a temporary name and renames it into place; on failure the
/// temporary file is removed.
fn write_series(
    path: &Path,
    series: &[(u64, u64)],
    write: impl FnOnce(&mut File, &[u8]) -> std::io::Result<()>,
) -> Result<(), RecordError> {
    let mut text = String::with_capacity(series.len() * 16 + 32);
    text.push_str("t_us,memory_bytes\n");
    for (t, v) in series {
        text.push_str(&format!("{t},{v}\n"));
    }
    let tmp = path.with_extension("csv.tmp");
    let written = (|| {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut f = File::create(&tmp)?;
        write(&mut f, text.as_bytes())?;
        fs::rename(&tmp, path)
    })();
    written.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        RecordError::Series {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads every complete record of a meter directory (torn lines are skipped).
pub fn read_records(dir: &Path) -> Result<Vec<Invocation>, RecordError> {
    let path = dir.join("invocations.jsonl");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RecordError::Write { path, source }),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Whether a record names a series whose file is not there (it could not be written, e.g.
/// on a full disk: the record was kept without it).
pub fn series_missing(dir: &Path, r: &Invocation) -> bool {
    !r.series.is_empty() && !dir.join(&r.series).exists()
}

/// Reads a record's memory series (`(t_us, bytes)` samples): empty without one, or when
/// its file cannot be read or is missing ([`series_missing`]).
pub fn read_series(dir: &Path, r: &Invocation) -> Vec<(u64, u64)> {
    if r.series.is_empty() {
        return Vec::new();
    }
    fs::read_to_string(dir.join(&r.series))
        .map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let (t, v) = l.split_once(',')?;
                    Some((t.parse().ok()?, v.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The latest record of a container's init process (`exec` empty) or of one of its execs.
pub fn latest<'a>(recs: &'a [Invocation], container: &str, exec: &str) -> Option<&'a Invocation> {
    recs.iter()
        .rev()
        .find(|r| r.identity.container_id == container && r.identity.exec_id == exec)
}

/// Which records to look at: those of a function, a container and a namespace (each when
/// given), then only the last `last` of them.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub function: Option<String>,
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub last: Option<usize>,
}

impl Selection {
    /// The selected records, in their order.
    pub fn apply(&self, mut recs: Vec<Invocation>) -> Vec<Invocation> {
        recs.retain(|r| {
            self.function
                .as_ref()
                .is_none_or(|f| &r.identity.function == f)
                && self
                    .container
                    .as_ref()
                    .is_none_or(|c| &r.identity.container_id == c)
                && self
                    .namespace
                    .as_ref()
                    .is_none_or(|n| &r.identity.namespace == n)
        });
        if let Some(n) = self.last {
            let skip = recs.len().saturating_sub(n);
            recs.drain(..skip);
        }
        recs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Invocation {
        Invocation {
            format: FORMAT,
            identity: Identity {
                container_id: id.into(),
                ..Default::default()
            },
            pid: 1,
            started_at_us: 1,
            ended_at_us: 2,
            duration_us: 1,
            cpu_user_us: 0,
            cpu_system_us: 0,
            memory_peak_bytes: 10,
            memory_sampled_max_bytes: 9,
            memory_limit_bytes: 0,
            oom_kills: 0,
            exit_status: 0,
            cgroup_version: 1,
            sample_interval_us: 10_000,
            samples: 0,
            series: String::new(),
        }
    }

    #[test]
    fn records_round_trip_and_series_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_record(dir.path(), record("a"), &[(0, 5), (10, 9)]).unwrap();
        assert!(w.series_lost.is_none(), "{:?}", w.series_lost);
        let r = w.record;
        assert!(r.series.starts_with("series/"));
        assert!(!series_missing(dir.path(), &r));
        let csv = fs::read_to_string(dir.path().join(&r.series)).unwrap();
        assert_eq!(csv, "t_us,memory_bytes\n0,5\n10,9\n");
        write_record(dir.path(), record("b"), &[]).unwrap();
        let all = read_records(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], r);
        assert_eq!(all[1].identity.container_id, "b");
    }

    #[test]
    fn a_torn_last_line_is_closed_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_record(dir.path(), record("a"), &[]).unwrap();
        let path = dir.path().join("invocations.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"format\":1,\"contai").unwrap();
        write_record(dir.path(), record("c"), &[]).unwrap();
        let ids: Vec<String> = read_records(dir.path())
            .unwrap()
            .into_iter()
            .map(|r| r.identity.container_id)
            .collect();
        assert_eq!(ids, vec!["a".to_string(), "c".to_string()]);
    }

    /// The names left in a directory.
    fn names(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_record_is_appended_before_its_series_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let w = write_record_with(&d, record("first"), &[(0, 5)], |f, bytes| {
            let recs = read_records(&d).unwrap();
            assert_eq!(recs.len(), 1, "the record is not there before the series");
            assert_eq!(recs[0].identity.container_id, "first");
            f.write_all(bytes)
        })
        .unwrap();
        assert!(w.series_lost.is_none());
        assert_eq!(read_series(&d, &w.record), vec![(0, 5)]);
    }

    /// A full disk: the series' write fails half-way (as `write(2)` does with ENOSPC).
    #[test]
    fn a_series_that_cannot_be_written_keeps_its_record_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let series = [(0, 5), (10_000, 9), (20_000, 7)];
        let w = write_record_with(dir.path(), record("full"), &series, |f, bytes| {
            f.write_all(&bytes[..bytes.len() / 2])?;
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        })
        .unwrap();
        let lost = w.series_lost.expect("the series is reported lost");
        assert!(matches!(lost, RecordError::Series { .. }), "{lost:?}");
        assert!(lost.to_string().contains("its record is kept"), "{lost}");
        let recs = read_records(dir.path()).unwrap();
        assert_eq!(recs, vec![w.record.clone()], "the record is kept");
        assert!(series_missing(dir.path(), &recs[0]));
        assert!(read_series(dir.path(), &recs[0]).is_empty());
        assert!(
            names(&dir.path().join("series")).is_empty(),
            "left in series/: {:?}",
            names(&dir.path().join("series"))
        );
    }

    /// The series directory cannot be made (a file stands in its way): the record is kept.
    #[test]
    fn a_series_directory_that_cannot_be_made_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("series"), "not a directory").unwrap();
        let w = write_record(dir.path(), record("nodir"), &[(0, 1)]).unwrap();
        assert!(w.series_lost.is_some());
        assert_eq!(read_records(dir.path()).unwrap().len(), 1);
        assert!(series_missing(dir.path(), &w.record));
        assert_eq!(names(dir.path()).len(), 2, "{:?}", names(dir.path()));
    }

    /// Records written without a series need no series directory and name no series.
    #[test]
    fn a_record_without_samples_names_no_series() {
        let dir = tempfile::tempdir().unwrap();
        let w = write_record(dir.path(), record("peak-only"), &[]).unwrap();
        assert!(w.record.series.is_empty() && w.series_lost.is_none());
        assert!(!series_missing(dir.path(), &w.record));
    }
}
