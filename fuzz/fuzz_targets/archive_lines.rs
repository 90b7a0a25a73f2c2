#![no_main]
//! Fuzz target `archive_lines`: see `pxb_core::backup::fuzz::archive_lines`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::archive_lines(data));
