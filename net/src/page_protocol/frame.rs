//! Frame boundaries: reading a frame header and splitting whole frames off
//! the front of a byte stream.
//!
//! A header's length is checked against its direction's maximum before
//! anything waits for, or buffers, the body it announces; so no frame makes
//! a reader hold more than [`REQUEST_FRAME_BYTES_MAX`] or
//! [`RESPONSE_FRAME_BYTES_MAX`] bytes. Whether the body is right is the
//! codec's question, asked only of whole frames.

use std::marker::PhantomData;

use super::{
    BodyError, ClientFrame, FRAME_HEADER_BYTES, FrameError, REQUEST_FRAME_BYTES_MAX,
    RESPONSE_FRAME_BYTES_MAX, ServerFrame,
};

/// Which way frames travel, which fixes the largest one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: handshakes and requests.
    ToServer,
    /// Server to client: answers.
    ToClient,
}

impl Direction {
    /// The largest frame that travels this way.
    pub fn frame_bytes_max(self) -> u32 {
        match self {
            Direction::ToServer => REQUEST_FRAME_BYTES_MAX,
            Direction::ToClient => RESPONSE_FRAME_BYTES_MAX,
        }
    }
}

/// A frame's 16-byte header, its length checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's bytes, header included (16 up to the direction's
    /// maximum).
    pub length: u32,
    /// The kind byte (not yet checked).
    pub kind: u8,
    /// The request id.
    pub request_id: u64,
}

impl FrameHeader {
    /// The header at the front of `bytes`: `Ok(None)` while fewer than 16
    /// bytes are there, an error when its length is out of bounds for
    /// `direction`.
    pub fn peek(bytes: &[u8], direction: Direction) -> Result<Option<FrameHeader>, FrameError> {
        let Some(header) = bytes.first_chunk::<16>() else {
            return Ok(None);
        };
        let [l0, l1, l2, l3, kind, _, _, _, id @ ..] = *header;
        let length = u32::from_le_bytes([l0, l1, l2, l3]);
        let request_id = u64::from_le_bytes(id);
        let max = direction.frame_bytes_max();
        if length < FRAME_HEADER_BYTES || length > max {
            return Err(FrameError::Length {
                length,
                max,
                kind,
                request_id,
            });
        }
        Ok(Some(FrameHeader {
            length,
            kind,
            request_id,
        }))
    }

    /// The frame's length as an index.
    pub fn frame_len(self) -> usize {
        self.length as usize
    }
}

/// The first whole frame at the front of `bytes`, `Ok(None)` while it is
/// incomplete.
pub(super) fn split_raw(bytes: &[u8], direction: Direction) -> Result<Option<&[u8]>, FrameError> {
    let Some(header) = FrameHeader::peek(bytes, direction)? else {
        return Ok(None);
    };
    Ok(bytes.get(..header.frame_len()))
}

/// A frame one direction carries: what a [`FrameDecoder`] yields.
pub trait Frame: Sized {
    /// The direction these frames travel.
    const DIRECTION: Direction;

    /// Decodes exactly one whole frame.
    fn decode(frame: &[u8]) -> Result<Self, FrameError>;

    /// Appends the frame's bytes to `out` (left as it was on an error).
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), BodyError>;

    /// Decodes the first frame at the front of `bytes`: the frame and the
    /// bytes it took, or `Ok(None)` while it is incomplete. After a
    /// [`FrameError::Body`] error, the next frame starts `frame_bytes` on.
    fn split(bytes: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        match split_raw(bytes, Self::DIRECTION)? {
            None => Ok(None),
            Some(frame) => Self::decode(frame).map(|decoded| Some((decoded, frame.len()))),
        }
    }
}

impl Frame for ClientFrame {
    const DIRECTION: Direction = Direction::ToServer;

    fn decode(frame: &[u8]) -> Result<ClientFrame, FrameError> {
        ClientFrame::decode(frame)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        ClientFrame::encode(self, out)
    }
}

impl Frame for ServerFrame {
    const DIRECTION: Direction = Direction::ToClient;

    fn decode(frame: &[u8]) -> Result<ServerFrame, FrameError> {
        ServerFrame::decode(frame)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        ServerFrame::encode(self, out)
    }
}

/// Splits frames of one direction off a stream fed in arbitrary pieces.
///
/// A bad body is reported once and skipped (the stream goes on); a bad
/// length is reported on every later call, since nothing after it can be
/// framed. The buffer holds at most the unconsumed input: at most one
/// frame's worth beyond what the caller feeds before asking again.
pub struct FrameDecoder<F> {
    buf: Vec<u8>,
    // Invariant: start <= buf.len(); bytes before it are consumed.
    start: usize,
    broken: Option<FrameError>,
    frames: PhantomData<F>,
}

impl<F: Frame> Default for FrameDecoder<F> {
    fn default() -> FrameDecoder<F> {
        FrameDecoder::new()
    }
}

impl<F: Frame> FrameDecoder<F> {
    /// An empty decoder.
    pub fn new() -> FrameDecoder<F> {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            broken: None,
            frames: PhantomData,
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes the frame at the front needs to be whole: the
    /// rest of the header, then the rest of the frame (0 when a whole frame
    /// or an error is waiting).
    pub fn wanted(&self) -> usize {
        let rest = self.buf.get(self.start..).unwrap_or_default();
        let need = match FrameHeader::peek(rest, F::DIRECTION) {
            Ok(None) => FRAME_HEADER_BYTES as usize,
            Ok(Some(header)) => header.frame_len(),
            Err(_) => return 0,
        };
        need.saturating_sub(rest.len())
    }

    /// The next whole frame, `Ok(None)` until one is whole.
    pub fn next_frame(&mut self) -> Result<Option<F>, FrameError> {
        if let Some(error) = &self.broken {
            return Err(error.clone());
        }
        let rest = self.buf.get(self.start..).unwrap_or_default();
        let frame = match split_raw(rest, F::DIRECTION) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.compact();
                return Ok(None);
            }
            Err(error) => {
                self.broken = Some(error.clone());
                return Err(error);
            }
        };
        let taken = frame.len();
        let decoded = F::decode(frame);
        // The frame is consumed whether or not its body decoded: its end is known.
        self.start += taken;
        decoded.map(Some)
    }

    /// Moves the unconsumed tail to the front once it is the smaller part,
    /// so the buffer never grows past what is unconsumed plus one feed.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}
