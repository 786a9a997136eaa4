//! Compiles the one C file of the node: INCRBYFLOAT's long double arithmetic
//! (`csrc/long_double.c`, see there why it is C).

fn main() {
    println!("cargo:rerun-if-changed=csrc/long_double.c");
    cc::Build::new()
        .file("csrc/long_double.c")
        .warnings(true)
        .compile("hotshard_long_double");
}
