//! Builds the adversarial probe (`probes/probe.c`) as a static executable, so it runs in a
//! sandbox whatever the sandbox's root holds. Its path reaches the tests as `LOONG_PROBE`.

use std::{env, path::PathBuf};

fn main() {
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("loong-probe");
    let src = "probes/probe.c";
    println!("cargo:rerun-if-changed={src}");
    let cc = cc::Build::new().get_compiler();
    let status = cc
        .to_command()
        .args(["-O1", "-static", "-Wall", "-o"])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => println!("cargo:rustc-env=LOONG_PROBE={}", out.display()),
        // Without a C toolchain (gcc and the static libc) the probe suite reports itself
        // skipped with this reason instead of failing to build the whole test package.
        other => println!("cargo:rustc-env=LOONG_PROBE=unavailable: cannot build {src} ({other:?}); install gcc and libc6-dev"),
    }
}
