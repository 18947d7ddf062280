//! Generates Rust types for CRIU's RPC protocol from the vendored `proto/rpc.proto`
//! (CRIU 4.1.1, MIT: see proto/LICENSE) with the pure-Rust protobuf parser (no protoc).

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .include("proto")
        .input("proto/rpc.proto")
        .cargo_out_dir("criu_proto")
        .run_from_script();
    println!("cargo:rerun-if-changed=proto/rpc.proto");
}
