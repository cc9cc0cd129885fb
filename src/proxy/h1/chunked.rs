//! The chunked request body, decoded strictly: hex sizes without overflow, CRLF everywhere
//! (a bare LF is refused), extensions and trailers bounded and dropped. Trailers are never
//! forwarded: the upstream request's chunked encoding is keygate's own.

use bytes::{Bytes, BytesMut};

/// Chunk extensions and trailers together, at most (per body).
const MAX_SIDE_BYTES: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size { value: u64, digits: u8 },
    SizeSpace { value: u64 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    Trailer { line: usize },
    TrailerLf { line: usize },
    Done,
}

/// What the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer is used up: read more.
    More,
    /// The last chunk and its trailers are through.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug)]
pub struct Decoder {
    state: State,
    side: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            side: 0,
        }
    }
}

impl Decoder {
    /// Decodes from the front of `buf`, consuming what it uses; the bytes after the body stay.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Malformed> {
        let mut used = 0;
        let result = loop {
            if self.state == State::Done {
                break Ok(Step::Done);
            }
            if let State::Data { remaining } = self.state {
                let _ = buf.split_to(used);
                used = 0;
                if buf.is_empty() {
                    break Ok(Step::More);
                }
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let rest = remaining - n as u64;
                self.state = if rest == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: rest }
                };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            let Some(&b) = buf.get(used) else {
                break Ok(Step::More);
            };
            used += 1;
            self.state = self.next(b)?;
        };
        let _ = buf.split_to(used);
        result
    }

    fn next(&mut self, b: u8) -> Result<State, Malformed> {
        let side = |this: &mut Self| {
            this.side += 1;
            if this.side > MAX_SIDE_BYTES {
                Err(Malformed)
            } else {
                Ok(())
            }
        };
        Ok(match (self.state, b) {
            (State::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(Malformed);
                }
                let d = u64::from((b as char).to_digit(16).ok_or(Malformed)?);
                State::Size {
                    value: value << 4 | d,
                    digits: digits + 1,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(Malformed),
            (State::Size { value, .. } | State::SizeSpace { value }, b' ' | b'\t') => {
                State::SizeSpace { value }
            }
            (State::Size { value, .. } | State::SizeSpace { value }, b';') => {
                side(self)?;
                State::Extension { value }
            }
            (
                State::Size { value, .. } | State::SizeSpace { value } | State::Extension { value },
                b'\r',
            ) => State::SizeLf { value },
            (State::Extension { .. }, b'\n') => return Err(Malformed),
            (State::Extension { value }, _) => {
                side(self)?;
                State::Extension { value }
            }
            (State::SizeLf { value: 0 }, b'\n') => State::Trailer { line: 0 },
            (State::SizeLf { value }, b'\n') => State::Data { remaining: value },
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size {
                value: 0,
                digits: 0,
            },
            (State::Trailer { line }, b'\r') => State::TrailerLf { line },
            (State::Trailer { .. }, b'\n') => return Err(Malformed),
            (State::Trailer { line }, _) => {
                side(self)?;
                State::Trailer { line: line + 1 }
            }
            (State::TrailerLf { line: 0 }, b'\n') => State::Done,
            (State::TrailerLf { .. }, b'\n') => State::Trailer { line: 0 },
            _ => return Err(Malformed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes: the data, and what follows the body.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), Malformed> {
        let (mut d, mut buf, mut out) = (Decoder::default(), BytesMut::new(), Vec::new());
        let mut fed = input.chunks(piece);
        loop {
            match d.step(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::Done => {
                    let mut rest = buf.to_vec();
                    fed.for_each(|p| rest.extend_from_slice(p));
                    return Ok((out, rest));
                }
                Step::More => match fed.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Err(Malformed),
                },
            }
        }
    }

    #[test]
    fn well_formed_bodies_decode_in_any_pieces() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (data, rest) = decode(body, piece).unwrap();
            assert_eq!(data, b"hello 0123456789");
            assert_eq!(rest, b"NEXT");
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap().0, b"");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"1;a\nb\r\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n\n",
            b"5\r\nhel",
        ] {
            assert_eq!(decode(bad, 1), Err(Malformed), "{bad:?}");
        }
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIDE_BYTES + 1));
        assert_eq!(decode(long_ext.as_bytes(), 4096), Err(Malformed));
    }
}
