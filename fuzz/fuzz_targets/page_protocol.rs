//! Fuzz target: arbitrary bytes as a stream of page-protocol frames, read
//! as client frames (what a server decodes) and as server frames (what a
//! client decodes).
//!
//! The input's first byte picks the piece size the rest is fed to the
//! stream decoder in. Each direction is decoded twice: by splitting whole
//! frames off the front of the bytes, and through `FrameDecoder` fed piece
//! by piece; both must yield the same frames and errors, skipping a frame
//! whose body was refused and stopping at a length out of bounds. Every
//! frame that decodes must re-encode to exactly its bytes (the encoding is
//! canonical), and those bytes must decode to it again. Nothing may panic,
//! hang or allocate past a frame's maximum; errors are expected.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use quire_net::page_protocol::{ClientFrame, Frame, FrameDecoder, FrameError, ServerFrame};

fuzz_target!(|input: &[u8]| {
    let [piece_selector, stream @ ..] = input else {
        return;
    };
    let piece = 1 + usize::from(*piece_selector) * 97;
    check::<ClientFrame>(stream, piece);
    check::<ServerFrame>(stream, piece);
});

fn check<F: Frame + PartialEq + Debug>(stream: &[u8], piece: usize) {
    let split = split_all::<F>(stream);
    let mut decoder = FrameDecoder::<F>::new();
    let mut fed = Vec::new();
    'pieces: for chunk in stream.chunks(piece) {
        decoder.feed(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => fed.push(Ok(frame)),
                Ok(None) => break,
                Err(error) => {
                    let fatal = !error.boundary_known();
                    fed.push(Err(error));
                    if fatal {
                        break 'pieces;
                    }
                }
            }
        }
    }
    assert_eq!(fed, split, "fed in pieces of {piece} bytes");
}

/// Every frame at the front of `stream`, in turn, until a length error or
/// an incomplete frame.
fn split_all<F: Frame + PartialEq + Debug>(stream: &[u8]) -> Vec<Result<F, FrameError>> {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        let taken = match F::split(rest) {
            Ok(None) => break,
            Ok(Some((frame, taken))) => {
                let bytes = rest.get(..taken).expect("split took what it had");
                let mut again = Vec::new();
                frame
                    .encode(&mut again)
                    .expect("a decoded frame re-encodes");
                assert_eq!(again, bytes, "the encoding is canonical");
                assert_eq!(
                    F::decode(&again).as_ref(),
                    Ok(&frame),
                    "decode(encode(decode(x)))"
                );
                out.push(Ok(frame));
                taken
            }
            Err(error) => {
                let skip = match &error {
                    FrameError::Body { frame_bytes, .. } => Some(*frame_bytes as usize),
                    FrameError::Length { .. } => None,
                };
                assert_eq!(skip.is_some(), error.boundary_known());
                out.push(Err(error));
                match skip {
                    Some(n) => n,
                    None => break,
                }
            }
        };
        rest = rest
            .get(taken..)
            .expect("a refused body lies whole in the stream");
    }
    out
}
