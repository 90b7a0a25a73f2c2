#![no_main]
//! Fuzz target `summary`: see `pxb_core::backup::fuzz::summary`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::summary(data));
