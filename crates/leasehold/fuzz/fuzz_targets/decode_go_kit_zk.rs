//! Arbitrary keys and values through the go-kit-zk decoder; see `check_decoder`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    leasehold_fuzz::check_decoder(&leasehold::formats::GoKitZkCodec, input);
});
