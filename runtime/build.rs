//! Generates the native syscall name → number table used to compile OCI seccomp profiles,
//! from the kernel's UAPI headers (Debian package linux-libc-dev).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let candidates: &[&str] = match arch.as_str() {
        "x86_64" => &[
            "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
            "/usr/include/asm/unistd_64.h",
        ],
        "aarch64" => &["/usr/include/asm-generic/unistd.h"],
        other => panic!("trenv: no syscall table source for architecture {other}"),
    };
    let header = candidates
        .iter()
        .find(|p| fs::metadata(p).is_ok())
        .unwrap_or_else(|| {
            panic!("trenv: none of {candidates:?} exists; install the linux-libc-dev package")
        });
    println!("cargo:rerun-if-changed={header}");
    let text = fs::read_to_string(header).expect("read syscall header");
    let mut table: Vec<(String, i64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("#define __NR_")?;
            let mut parts = rest.split_whitespace();
            let name = parts.next()?;
            let nr: i64 = parts.next()?.parse().ok()?;
            Some((name.to_string(), nr))
        })
        .collect();
    table.sort();
    table.dedup_by(|a, b| a.0 == b.0);
    let mut out = String::from("pub(super) static SYSCALLS: &[(&str, i64)] = &[\n");
    for (name, nr) in &table {
        out.push_str(&format!("    ({name:?}, {nr}),\n"));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("syscalls.rs");
    fs::write(dest, out).expect("write syscall table");
}
