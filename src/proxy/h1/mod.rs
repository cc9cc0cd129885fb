//! keygate's own HTTP/1.1 server path, for the common case: a plain request head parsed once
//! with `httparse` ([`head`]), its body streamed with framing keygate has validated
//! ([`chunked`], [`body`]), the pipeline run on that one parse, and the response written with
//! its head in one buffer ([`write`]). Anything else — HTTP/2 (prior knowledge or TLS ALPN
//! `h2`), HTTP/1.0, upgrades, `CONNECT`, `Expect`, absolute targets, ambiguous framing and
//! every malformed head — goes to hyper at a request boundary, with the bytes already read
//! replayed ([`io::Prefixed`]), so hyper answers it exactly as it does with the fast path off
//! (`listen.http1 = "hyper"`).

mod body;
pub mod chunked;
pub mod client;
mod conn;
pub mod head;
pub mod io;
pub mod spare;
mod upconn;
mod write;

pub use body::FastBody;
pub use conn::{Ended, Settings, serve};

/// The waker a timer or watch was last polled with and left pending: while the task's waker is
/// the same, that registration stands, so a connection's idle timer, shutdown watch and
/// response deadline are not polled again on every request — only when the waker changed
/// ([`Armed::holds`]) or they have something to say (the caller's check).
#[derive(Default)]
pub(crate) struct Armed(Option<std::task::Waker>);

impl Armed {
    /// Whether the registration holds `cx`'s waker.
    pub fn holds(&self, cx: &std::task::Context<'_>) -> bool {
        self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// Polls `f`, keeping `cx`'s waker while it is pending.
    pub fn poll<F: std::future::Future + ?Sized>(
        &mut self,
        f: std::pin::Pin<&mut F>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let polled = f.poll(cx);
        if polled.is_ready() {
            self.0 = None;
        } else if !self.holds(cx) {
            self.0 = Some(cx.waker().clone());
        }
        polled
    }

    /// The registration may be gone (the timer was reset): the next wait polls again.
    pub fn reset(&mut self) {
        self.0 = None;
    }
}

/// One header line, `name: value`, as every head keygate writes has them (requests upstream,
/// responses, the stamp's fields).
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `content-length: n`, the line every head keygate frames by length carries.
pub fn content_length(out: &mut Vec<u8>, n: u64) {
    field(
        out,
        b"content-length",
        itoa::Buffer::new().format(n).as_bytes(),
    );
}
