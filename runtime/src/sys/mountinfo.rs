//! `/proc/PID/mountinfo`, parsed once for everyone who needs to find a mount.

use std::fs;
use std::path::PathBuf;

/// One mount, as a line of mountinfo describes it (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's id (unique in the system while it exists; CRIU's images name mounts by it).
    pub id: i32,
    /// The directory of the filesystem that forms the mount's root.
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,relatime`).
    pub mount_options: String,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options (`rw,nsdelegate`, `rw,memory`).
    pub super_options: String,
}

impl MountEntry {
    /// Whether the per-superblock options contain `option`.
    pub fn has_super_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// The mounts of `/proc/PID/mountinfo` (this process's with `None`); empty if it cannot be
/// read.
pub fn read(pid: Option<i32>) -> Vec<MountEntry> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/mountinfo"),
        None => "/proc/self/mountinfo".into(),
    };
    parse(&fs::read_to_string(path).unwrap_or_default())
}

/// Parses mountinfo text; lines that do not have its shape are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut pre = pre.split_whitespace();
    let id = pre.next()?.parse().ok()?;
    let root = unescape(pre.nth(2)?);
    let mount_point = PathBuf::from(unescape(pre.next()?));
    let mount_options = pre.next()?.to_string();
    let mut post = post.split_whitespace();
    Some(MountEntry {
        id,
        root,
        mount_point,
        mount_options,
        fstype: post.next()?.to_string(),
        source: unescape(post.next().unwrap_or_default()),
        super_options: post.next().unwrap_or_default().to_string(),
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 35 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
90 30 0:50 /data /mnt/with\\040space rw,relatime - tmpfs my\\040pool rw,size=1024k
garbage line
";

    #[test]
    fn fields_are_parsed_with_optional_fields_skipped() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4, "the garbage line is skipped");
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!((m[1].id, m[3].id), (35, 90));
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[1].mount_options, "rw,nosuid,nodev,noexec,relatime");
        assert_eq!(m[1].super_options, "rw,nsdelegate,memory_recursiveprot");
        assert!(m[1].has_super_option("nsdelegate"));
        assert!(!m[1].has_super_option("nsdelegat"));
        assert!(m[2].has_super_option("memory"));
    }

    #[test]
    fn escaped_paths_are_decoded() {
        let m = parse(SAMPLE);
        assert_eq!(m[3].root, "/data");
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[3].source, "my pool");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn this_process_has_a_root_mount() {
        assert!(read(None).iter().any(|m| m.mount_point == Path::new("/")));
    }
}
