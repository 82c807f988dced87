//! Gives the shared library an ELF SONAME, so that programs linked against it record
//! `libminigpt_med.so.0` (the ABI major) and keep working across compatible upgrades.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(os.as_str(), "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly") {
        // Keep in step with ABI_VERSION in src/lib.rs (the SONAME number is the ABI major).
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libminigpt_med.so.0");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
