//! Generates the syscall name → number tables used to compile OCI seccomp profiles, from
//! the kernel's UAPI headers (Debian package linux-libc-dev): one table per ABI that a
//! process on this architecture's kernel can use, since a profile's `architectures` ask
//! for each to be filtered with its own numbers (on x86_64: x86_64 itself, i386 through
//! `int 0x80`, and x32, whose numbers carry `__X32_SYSCALL_BIT`).

use std::env;
use std::fs;
use std::path::PathBuf;

/// `__X32_SYSCALL_BIT` of arch/x86/include/uapi/asm/unistd.h.
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

fn main() {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    // (name of the generated table, candidate headers)
    let tables: &[(&str, &[&str])] = match arch.as_str() {
        "x86_64" => &[
            (
                "X86_64",
                &[
                    "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
                    "/usr/include/asm/unistd_64.h",
                ],
            ),
            (
                "X86",
                &[
                    "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
                    "/usr/include/asm/unistd_32.h",
                ],
            ),
            (
                "X32",
                &[
                    "/usr/include/x86_64-linux-gnu/asm/unistd_x32.h",
                    "/usr/include/asm/unistd_x32.h",
                ],
            ),
        ],
        "aarch64" => &[("AARCH64", &["/usr/include/asm-generic/unistd.h"])],
        other => panic!("trenv: no syscall table source for architecture {other}"),
    };
    let mut out = String::new();
    for (name, candidates) in tables {
        let header = candidates
            .iter()
            .find(|p| fs::metadata(p).is_ok())
            .unwrap_or_else(|| {
                panic!("trenv: none of {candidates:?} exists; install the linux-libc-dev package")
            });
        println!("cargo:rerun-if-changed={header}");
        let text = fs::read_to_string(header).expect("read syscall header");
        let mut table: Vec<(String, i64)> = text.lines().filter_map(parse_define).collect();
        table.sort();
        table.dedup_by(|a, b| a.0 == b.0);
        out.push_str(&format!("pub(super) static {name}: &[(&str, i64)] = &[\n"));
        for (syscall, nr) in &table {
            out.push_str(&format!("    ({syscall:?}, {nr}),\n"));
        }
        out.push_str("];\n");
    }
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("syscalls.rs");
    fs::write(dest, out).expect("write syscall table");
}

/// `#define __NR_name 39` or, in unistd_x32.h, `#define __NR_name (__X32_SYSCALL_BIT + 39)`.
fn parse_define(line: &str) -> Option<(String, i64)> {
    let rest = line.strip_prefix("#define __NR_")?;
    let (name, value) = rest.split_once(char::is_whitespace)?;
    let value = value.trim();
    let nr = match value
        .strip_prefix("(__X32_SYSCALL_BIT + ")
        .and_then(|v| v.strip_suffix(')'))
    {
        Some(offset) => X32_SYSCALL_BIT + offset.trim().parse::<i64>().ok()?,
        None => value.parse().ok()?,
    };
    Some((name.to_string(), nr))
}
