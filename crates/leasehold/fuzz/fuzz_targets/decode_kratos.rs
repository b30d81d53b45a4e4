//! Feeds arbitrary keys and values to the kratos decoder: it must return, never panic,
//! and what it decodes must belong to the service asked for.
#![no_main]

use leasehold::codec::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (key, value) = split_key_value(input);
    let service = leasehold::ServiceName::new("svc").expect("valid name");
    if let Ok(instance) = leasehold::formats::KratosCodec::new().decode(&service, &key, value) {
        assert_eq!(instance.service(), &service);
    }
});

/// The first byte says how many of the following bytes are the key (lossily UTF-8);
/// the rest is the value.
fn split_key_value(input: &[u8]) -> (String, &[u8]) {
    let Some((&len, rest)) = input.split_first() else {
        return (String::new(), input);
    };
    let (key, value) = rest.split_at(usize::from(len).min(rest.len()));
    (String::from_utf8_lossy(key).into_owned(), value)
}
