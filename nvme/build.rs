//! Build script: with feature `spdk`, finds a system SPDK through pkg-config and compiles
//! the small C shim that keeps SPDK's struct layouts on the C side. Without the feature it
//! does nothing.

fn main() {
    #[cfg(feature = "spdk")]
    spdk::build();
}

#[cfg(feature = "spdk")]
mod spdk {
    pub fn build() {
        println!("cargo:rerun-if-changed=src/spdk/shim.c");
        println!("cargo:rerun-if-env-changed=HOTSHARD_SPDK_TYPECHECK_ONLY");
        // Lets the Rust side be type-checked on machines without SPDK (`cargo check`);
        // nothing built this way can link.
        if std::env::var_os("HOTSHARD_SPDK_TYPECHECK_ONLY").is_some() {
            println!("cargo:warning=HOTSHARD_SPDK_TYPECHECK_ONLY: SPDK not linked; type-check only");
            return;
        }
        let mut includes = Vec::new();
        for lib in ["spdk_nvme", "spdk_env_dpdk"] {
            match pkg_config::Config::new().statik(false).probe(lib) {
                Ok(found) => includes.extend(found.include_paths),
                Err(e) => panic!(
                    "feature `spdk` needs a system SPDK that pkg-config can find ({lib}: {e}). \
                     Install SPDK (its `make install` writes the .pc files) and set \
                     PKG_CONFIG_PATH, or build without `--features spdk`."
                ),
            }
        }
        let mut cc = cc::Build::new();
        cc.file("src/spdk/shim.c").warnings(true);
        for inc in includes {
            cc.include(inc);
        }
        cc.compile("hotshard_spdk_shim");
    }
}
