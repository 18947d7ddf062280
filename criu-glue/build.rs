//! Generates Rust types for CRIU's RPC protocol and the image files trenv rewrites, from
//! the protos vendored in `proto/` (CRIU 4.1.1, MIT: see proto/LICENSE), with the pure-Rust
//! protobuf parser (no protoc).

use std::fs;

fn main() {
    let mut inputs: Vec<String> = fs::read_dir("proto")
        .expect("proto/ directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(".proto").then(|| format!("proto/{name}"))
        })
        .collect();
    inputs.sort();
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .inputs(&inputs)
        .cargo_out_dir("criu_proto")
        .run_from_script();
    println!("cargo:rerun-if-changed=proto");
}
