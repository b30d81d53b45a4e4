//! What every decoder fuzz target checks, in one place.

use leasehold::codec::Codec;

/// Feeds `input` to `codec` as a key and a value: decoding must return, never panic, and
/// what it decodes must belong to the service asked for.
///
/// The first byte of `input` says how many of the following bytes are the key (lossily
/// UTF-8); the rest is the value.
pub fn check_decoder(codec: &dyn Codec, input: &[u8]) {
    let (key, value) = match input.split_first() {
        Some((&len, rest)) => {
            let (key, value) = rest.split_at(usize::from(len).min(rest.len()));
            (String::from_utf8_lossy(key).into_owned(), value)
        }
        None => (String::new(), input),
    };
    let service = leasehold::ServiceName::new("svc").expect("valid name");
    if let Ok(instance) = codec.decode(&service, &key, value) {
        assert_eq!(instance.service(), &service);
    }
}
