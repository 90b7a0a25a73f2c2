#![no_main]
//! Fuzz target `resources_archive`: see `pxb_core::backup::fuzz::resources_archive`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pxb_core::backup::fuzz::resources_archive(data));
