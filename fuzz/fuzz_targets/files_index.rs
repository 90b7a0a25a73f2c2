#![no_main]
//! Fuzz target `files_index`: see `pxb_core::backup::fuzz::files_index`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::files_index(data));
