//! Fuzzes the policy parsers (tier profiles, packs, denylists, risk profiles, the list of
//! programs that run programs): any text gives a
//! value or a list of problems, never a panic. Run with `cargo +nightly fuzz run parse` from
//! `policy-profiles/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = loong_profiles::parse_tier(text, "fuzz");
    let _ = loong_profiles::pack::parse_pack(text, "fuzz");
    let _ = loong_profiles::pack::parse_denylist(text, "fuzz");
    let _ = loong_profiles::risk::parse_risk(text, "fuzz");
    let _ = loong_profiles::exec::parse_runners(text, "fuzz");
    let _ = loong_profiles::check(text, "fuzz");
});
