#![no_main]
//! Fuzz target `manifest_volumes`: see `pxb_core::backup::fuzz::manifest_volumes`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::manifest_volumes(data));
