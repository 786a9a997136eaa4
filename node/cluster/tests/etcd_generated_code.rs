//! The vendored etcd client's protobuf code matches its .proto files: regenerated here with a
//! pure-Rust protobuf compiler (protox) and tonic's generator, and compared byte for byte.
//!
//! The node's build compiles the committed code and never runs protoc. After changing the
//! protos or the generator's version, regenerate with
//! `HOTSHARD_REGENERATE_ETCD=1 cargo test -p hotshard-cluster --test etcd_generated_code`.

use std::path::{Path, PathBuf};

/// The proto files the client's gRPC code comes from, as etcd-client's own build compiled them.
const PROTOS: [&str; 5] = [
    "auth.proto",
    "kv.proto",
    "rpc.proto",
    "v3election.proto",
    "v3lock.proto",
];

fn vendored_crate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etcd-client")
}

/// Generates the client's Rust code into `out_dir`, as the release's build script did (clients
/// only, no servers).
fn generate(out_dir: &Path) {
    let proto_root = vendored_crate().join("proto");
    let files: Vec<PathBuf> = PROTOS.iter().map(|name| proto_root.join(name)).collect();
    let descriptors = protox::compile(&files, [&proto_root]).expect("the vendored protos compile");
    tonic_prost_build::configure()
        .build_server(false)
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .expect("tonic generates the client code");
}

fn rust_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the directory can be listed")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".rs"))
        .collect();
    names.sort();
    names
}

#[test]
fn committed_etcd_code_matches_the_protos() {
    let fresh = tempfile::tempdir().expect("a temporary directory");
    generate(fresh.path());
    let committed = vendored_crate().join("src/rpc/generated");

    if std::env::var_os("HOTSHARD_REGENERATE_ETCD").is_some() {
        std::fs::create_dir_all(&committed).expect("the generated directory can be made");
        for name in rust_files(fresh.path()) {
            std::fs::copy(fresh.path().join(&name), committed.join(&name)).expect("copied");
        }
    }

    assert_eq!(
        rust_files(fresh.path()),
        rust_files(&committed),
        "the generated files differ in name from the committed ones"
    );
    for name in rust_files(fresh.path()) {
        let fresh_code = std::fs::read_to_string(fresh.path().join(&name)).expect("readable");
        let committed_code = std::fs::read_to_string(committed.join(&name)).expect("readable");
        assert!(
            fresh_code == committed_code,
            "{name} differs from what the protos generate: regenerate it (see this test's header)"
        );
    }
}
