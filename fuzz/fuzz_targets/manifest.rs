#![no_main]
//! Fuzz target `manifest`: see `pxb_core::backup::fuzz::manifest`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::manifest(data));
