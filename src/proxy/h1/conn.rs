//! One connection on the fast path: heads read and parsed, requests answered in order
//! (pipelined ones too), keep-alive between them, the same first-request, idle and head
//! deadlines as the hyper path, and a graceful close at shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::Armed;
use super::body::{FastBody, Returned, Source};
use super::head::{self, Framing, Head};
use super::io::{Reader, Whole, Writer, reunite};
use super::write;
use crate::proxy::body::Inbound;
use crate::proxy::{App, ConnInfo, GateCounters};

/// The listener's limits, as the fast path applies them.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub max_head: usize,
    pub header_read_timeout: Duration,
    pub idle: Duration,
    /// How long a request body may still take after its response was written.
    pub body_read_timeout: Duration,
}

/// How the fast path left a connection.
pub enum Ended {
    Closed,
    /// hyper serves the connection from here: the bytes already read come first. `served`:
    /// requests answered before.
    HandOff {
        io: Whole,
        read: Bytes,
        served: u64,
    },
}

/// The request-head buffer kept between requests at most (larger ones are let go).
const KEEP_OUT: usize = 4096;

/// The most fields whose room the connection's request keeps between requests.
const KEEP_FIELDS: usize = 32;

pub async fn serve(
    app: &Arc<App>,
    (reader, mut writer): (Reader, Writer),
    conn: &ConnInfo,
    settings: Settings,
    first_request_by: Instant,
    closing: &mut watch::Receiver<bool>,
    counters: &GateCounters,
) -> Ended {
    let mut src = Source {
        reader,
        buf: BytesMut::new(),
    };
    let mut out = Vec::new();
    // The connection's one request, filled in place by each head (see `head::parse`).
    let mut req = Request::new(Inbound::default());
    let mut served = 0u64;
    // Until when the next head may take: from accept for the first; for later ones the idle
    // timeout, then `header_read_timeout` from its first byte.
    let mut wait_until = first_request_by;
    // A later head has begun: `header_read_timeout` runs from now on, read off the clock only
    // if the head is not whole yet (most arrive in one read).
    let mut head_begun = false;
    let timer = tokio::time::sleep_until(wait_until);
    tokio::pin!(timer);
    // One shutdown watch for the connection's life, not one registration per idle wait. It
    // ends at the first change (keygate only ever starts closing), and is not polled again.
    let mut watcher = closing.clone();
    let shutdown = watcher.changed();
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;
    let (mut timer_armed, mut shutdown_armed) = (Armed::default(), Armed::default());
    loop {
        let (framing, mut close) = loop {
            if !src.buf.is_empty() {
                match head::parse(&mut src.buf, settings.max_head, &mut req) {
                    Head::Partial => {}
                    Head::Other => return hand_off(src, writer, served),
                    Head::Request { framing, close } => break (framing, close),
                }
            }
            if src.buf.is_empty() && *closing.borrow() {
                return Ended::Closed;
            }
            if std::mem::take(&mut head_begun) {
                wait_until = Instant::now() + settings.header_read_timeout;
            }
            // Re-armed lazily: a deadline that moved later (the next request's idle timeout)
            // is noticed when the timer fires, not registered anew for every request.
            if wait_until < timer.deadline() {
                timer.as_mut().reset(wait_until);
                timer_armed.reset();
            }
            let had = src.buf.len();
            let watch_shutdown = had == 0 && !shutdown_seen;
            let woke = std::future::poll_fn(|cx| {
                // The client's bytes first: when they are here, nothing else is looked at.
                if let Poll::Ready(read) = src.reader.poll_next(cx, &mut src.buf) {
                    return Poll::Ready(Woke::Read(read));
                }
                // The timer and the shutdown watch are polled again only when the waker changed
                // or when they have something to say (see `Armed`), not on every request.
                if (timer.is_elapsed() || !timer_armed.holds(cx))
                    && timer_armed.poll(timer.as_mut(), cx).is_ready()
                {
                    return Poll::Ready(Woke::Timer);
                }
                if watch_shutdown
                    && (!matches!(closing.has_changed(), Ok(false)) || !shutdown_armed.holds(cx))
                    && let Poll::Ready(changed) = shutdown_armed.poll(shutdown.as_mut(), cx)
                {
                    return Poll::Ready(Woke::Shutdown {
                        gone: changed.is_err(),
                    });
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Read(Ok(0) | Err(_)) => return Ended::Closed,
                Woke::Read(Ok(_)) if had == 0 && served > 0 => head_begun = true,
                Woke::Read(Ok(_)) => {}
                Woke::Timer => {
                    if Instant::now() < wait_until {
                        timer.as_mut().reset(wait_until);
                        continue;
                    }
                    let counter = if served == 0 || had > 0 {
                        &counters.timed_out_head
                    } else {
                        &counters.closed_idle
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Ended::Closed;
                }
                Woke::Shutdown { gone } => {
                    shutdown_seen = true;
                    if gone || *closing.borrow() {
                        return Ended::Closed;
                    }
                }
            }
        };
        let head_only = req.method() == Method::HEAD;
        let back = if framing == Framing::Empty {
            *req.body_mut() = Inbound::Fast(FastBody::empty());
            None
        } else {
            let (tx, rx) = oneshot::channel();
            let taken = std::mem::replace(
                &mut src,
                Source {
                    reader: Reader::Taken,
                    buf: BytesMut::new(),
                },
            );
            *req.body_mut() = Inbound::Fast(FastBody::new(taken, framing, tx));
            Some(rx)
        };
        // Inline: at 2.6 KiB the request's state costs an idle connection less than an
        // allocation (of that size, off the allocator's fast path) costs every request.
        let resp = app.handle_h1(&mut req, conn).await;
        // The response's clock reading starts the next wait, unless writing it or reading the
        // request body's rest had to wait (then the clock is read again).
        let mut answered_at = Some(Instant::from_std(resp.1.at));
        served += 1;
        close |= *closing.borrow();
        // Written without a future when the socket takes it all (the usual case); what is
        // left, boxed like the request's state.
        let written = match write::respond_now(&mut writer, &mut out, resp, head_only, &mut close) {
            write::Now::Done(written) => written,
            write::Now::Later(rest) => {
                answered_at = None;
                Box::pin(write::respond_rest(
                    &mut writer,
                    &mut out,
                    rest,
                    settings.idle,
                ))
                .await
            }
        };
        match written {
            Ok(true) if !close => {}
            _ => return Ended::Closed,
        }
        // What is left of the request goes once the response is on its way (its release is
        // no longer between the upstream's answer and the client): an unread body tells `back`
        // so before it is waited for, and the head's bytes are let go before its buffer is.
        head::release(&mut req, KEEP_FIELDS);
        if let Some(back) = back {
            answered_at = None;
            match tokio::time::timeout(settings.body_read_timeout, back).await {
                Ok(Ok(Returned {
                    source,
                    complete: true,
                })) => src = source,
                _ => return Ended::Closed,
            }
        }
        // An idle connection holds no read buffer (it goes back to the thread's spares),
        // and only a small write buffer.
        if src.buf.is_empty() {
            super::spare::give(std::mem::take(&mut src.buf));
        }
        if out.capacity() > KEEP_OUT {
            out = Vec::new();
        }
        // A next head already begun has `header_read_timeout`; none yet, the idle timeout.
        head_begun = false;
        wait_until = answered_at.unwrap_or_else(Instant::now)
            + if src.buf.is_empty() {
                settings.idle
            } else {
                settings.header_read_timeout
            };
    }
}

/// What ended a wait for a head's bytes.
enum Woke {
    Read(std::io::Result<usize>),
    Timer,
    /// keygate began closing; `gone`: the watch's sender is gone (the server with it).
    Shutdown {
        gone: bool,
    },
}

fn hand_off(src: Source, writer: Writer, served: u64) -> Ended {
    match reunite(src.reader, writer) {
        Some(io) => Ended::HandOff {
            io,
            read: src.buf.freeze(),
            served,
        },
        None => Ended::Closed,
    }
}
