//! Build script: `BERTH_SYSTEM_TESTS=1` at build time turns on `cfg(berth_system_tests)`, so
//! the system tests (real dockerd, pebble, knotd, registry, Chromium) run; without it they are
//! marked ignored and `cargo test` reports them as such instead of as passes.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(berth_system_tests)");
    println!("cargo::rerun-if-env-changed=BERTH_SYSTEM_TESTS");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("BERTH_SYSTEM_TESTS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=berth_system_tests");
    }
}
