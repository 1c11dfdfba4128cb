//! Build script of the DPDK stack.
//!
//! With `libdpdk` ≥ 22.11 found by `pkg-config` (Debian 12: `apt-get install libdpdk-dev
//! pkg-config clang libclang-dev`), it generates the bindings with `bindgen` (small allowlist),
//! compiles the C shim in `csrc/` with the compiler flags `pkg-config --cflags libdpdk` gives
//! (they include `-include rte_config.h`), links DPDK, and sets `cfg(dpdk_available)`.
//!
//! Without it, the crate still builds: the stack's constructor then returns
//! `StackError::Unavailable` carrying the reason recorded here in `DPDK_UNAVAILABLE_REASON`.
//! `DATAPLANE_NO_DPDK=1` forces that fallback (to test the laptop build on a DPDK machine).

use std::env;
use std::path::PathBuf;

const MIN_VERSION: &str = "22.11";
const INSTALL: &str = "apt-get install libdpdk-dev pkg-config clang libclang-dev";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dpdk_available)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/shim.c");
    println!("cargo:rerun-if-changed=csrc/shim.h");
    println!("cargo:rerun-if-env-changed=DATAPLANE_NO_DPDK");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    match build() {
        Ok(()) => println!("cargo:rustc-cfg=dpdk_available"),
        Err(reason) => {
            println!("cargo:warning=DPDK backend not built: {reason}");
            println!("cargo:rustc-env=DPDK_UNAVAILABLE_REASON={reason}");
        }
    }
}

fn build() -> Result<(), String> {
    if env::var_os("DATAPLANE_NO_DPDK").is_some_and(|v| v != "0") {
        return Err("disabled at build time by DATAPLANE_NO_DPDK".into());
    }
    let lib = pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .cargo_metadata(false)
        .probe("libdpdk")
        .map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            format!(
                "libdpdk >= {MIN_VERSION} not found by pkg-config ({first}); install it with `{INSTALL}` and rebuild"
            )
        })?;
    // The full compile flags (pkg-config's `--cflags`), e.g. `-include rte_config.h`.
    let out = std::process::Command::new(env::var("PKG_CONFIG").unwrap_or("pkg-config".into()))
        .args(["--cflags", "libdpdk"])
        .output()
        .map_err(|e| format!("running pkg-config --cflags libdpdk: {e}"))?;
    if !out.status.success() {
        return Err("pkg-config --cflags libdpdk failed".into());
    }
    let flags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    // Bindings first: if libclang is missing this fails, and nothing has been linked yet.
    let mut b = bindgen::Builder::default()
        .header("csrc/shim.h")
        .clang_args(flags.iter().filter(|f| !f.starts_with("-march")))
        .allowlist_function("shim_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_start")
        .allowlist_function("rte_eth_dev_set_link_up")
        .allowlist_function("rte_eth_dev_set_link_down")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_thread_register")
        .allowlist_function("rte_thread_unregister")
        .allowlist_type("shim_port_info")
        // `rte_mbuf` and `rte_mempool` are only handled through pointers: they are declared
        // as opaque types in `src/sys/mod.rs`, not generated.
        .allowlist_recursively(false)
        .wrap_unsafe_ops(true)
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(true);
    for p in &lib.include_paths {
        b = b.clang_arg(format!("-I{}", p.display()));
    }
    // bindgen panics (rather than erring) when it cannot load libclang: catch that too.
    let bindings = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || b.generate()))
        .map_err(|_| format!("bindgen could not load libclang; install it with `{INSTALL}`"))?
        .map_err(|e| {
            format!("bindgen failed on the DPDK headers ({e}); is libclang installed? `{INSTALL}`")
        })?;
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .map_err(|e| format!("writing bindings: {e}"))?;

    let mut cc = cc::Build::new();
    cc.file("csrc/shim.c").warnings(false);
    for f in &flags {
        cc.flag(f);
    }
    cc.try_compile("dpdk_shim")
        .map_err(|e| format!("compiling the C shim failed: {e}"))?;

    // Link DPDK (pkg-config's `--libs`).
    for p in &lib.link_paths {
        println!("cargo:rustc-link-search=native={}", p.display());
    }
    for l in &lib.libs {
        println!("cargo:rustc-link-lib={l}");
    }
    Ok(())
}
