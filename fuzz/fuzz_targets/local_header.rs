#![no_main]
//! Fuzz target `local_header`: see `pxb_core::backup::fuzz::local_header`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::local_header(data));
