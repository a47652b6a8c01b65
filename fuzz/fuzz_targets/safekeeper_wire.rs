//! Fuzz target: arbitrary bytes as a stream of safekeeper protocol frames
//! (`quire_safekeeper::wire`).
//!
//! Frames are split off the front until one does not decode or more bytes
//! are needed. Every message that decodes re-encodes to bytes that decode
//! to the same message and length (decode(encode(decode(x))) ==
//! decode(x)), and to exactly the frame it came from (the encoding is
//! canonical); a frame cut anywhere short waits for more bytes. Seeds are
//! every message kind as the project encodes it (`fuzz/seeds/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_safekeeper::wire::Message;

fuzz_target!(|input: &[u8]| {
    let mut rest = input;
    while let Ok(Some((message, used))) = Message::decode(rest) {
        assert!(used >= 5 && used <= rest.len());
        let frame = &rest[..used];
        let encoded = message.encode();
        assert_eq!(
            Message::decode(&encoded),
            Ok(Some((message.clone(), encoded.len())))
        );
        assert_eq!(encoded, frame, "the encoding is canonical");
        // Any cut of a whole frame only waits.
        for cut in [0, 1, 4, 5, used / 2, used - 1] {
            assert_eq!(Message::decode(&frame[..cut.min(used - 1)]), Ok(None));
        }
        let _ = message.into_response();
        rest = &rest[used..];
    }
});
