#![no_main]
//! Fuzz target `config`: see `pxb_core::backup::fuzz::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::config(data));
