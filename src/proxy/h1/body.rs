//! The request body on the fast path: decoded from the connection's read half, which it holds
//! while the body streams and hands back to the connection when the body ends (complete, so
//! the next request can be read) or is dropped or fails (incomplete: the connection closes,
//! and no unread byte is ever parsed as a request).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

use super::chunked::{Decoder, Step};
use super::head::Framing;
use super::io::Reader;
use crate::proxy::body::BodyError;

/// The read half and what has been read from it but not used.
pub struct Source {
    pub reader: Reader,
    pub buf: BytesMut,
}

/// The source given back, and whether the body was read to its end.
pub struct Returned {
    pub source: Source,
    pub complete: bool,
}

enum Decode {
    Length(u64),
    Chunked(Decoder),
}

pub struct FastBody {
    source: Option<Source>,
    decode: Decode,
    back: Option<oneshot::Sender<Returned>>,
}

impl FastBody {
    /// `framing` is never `Empty` here (an empty body keeps the source with the connection).
    pub fn new(source: Source, framing: Framing, back: oneshot::Sender<Returned>) -> Self {
        let decode = match framing {
            Framing::Chunked => Decode::Chunked(Decoder::default()),
            Framing::Length(n) => Decode::Length(n),
            Framing::Empty => Decode::Length(0),
        };
        FastBody {
            source: Some(source),
            decode,
            back: Some(back),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        FastBody {
            source: None,
            decode: Decode::Length(0),
            back: None,
        }
    }

    fn give_back(&mut self, complete: bool) {
        if let (Some(source), Some(back)) = (self.source.take(), self.back.take()) {
            let _ = back.send(Returned { source, complete });
        }
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.give_back(false);
        Poll::Ready(Some(Err(BodyError::Malformed)))
    }
}

impl http_body::Body for FastBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(src) = this.source.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.decode {
                Decode::Length(0) => {
                    this.give_back(true);
                    return Poll::Ready(None);
                }
                Decode::Length(remaining) if !src.buf.is_empty() => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(src.buf.len());
                    let data = src.buf.split_to(n).freeze();
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        this.give_back(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::Length(_) => {}
                Decode::Chunked(d) => match d.step(&mut src.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        this.give_back(true);
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(_) => return this.fail(),
                },
            }
            match src.reader.poll_read(cx, &mut src.buf) {
                Poll::Ready(Ok(0) | Err(_)) => return this.fail(), // cut short
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_none() || matches!(self.decode, Decode::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) if self.source.is_some() => SizeHint::with_exact(n),
            Decode::Length(_) => SizeHint::with_exact(0),
            Decode::Chunked(_) => SizeHint::default(),
        }
    }
}

impl Drop for FastBody {
    fn drop(&mut self) {
        let complete = matches!(self.decode, Decode::Length(0));
        self.give_back(complete);
    }
}
