#![no_main]
//! Fuzz target `chunk`: see `pxb_core::backup::fuzz::chunk`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::chunk(data));
