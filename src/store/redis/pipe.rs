//! A lean pipelined connection to a standalone Redis, for the request path's scripts (the rate
//! limiter's check and lease). A caller appends its encoded command to one buffer and queues
//! its own reply slot, under one lock; one task per connection writes whatever has gathered in
//! one `write` and hands the replies out in order. Next to the `redis` crate's multiplexed
//! connection this drops a channel hop, a boxed future and a combinator parser per command,
//! which is most of what a round trip costs keygate (the Cluster and Sentinel topologies, TLS
//! and Unix sockets keep the crate's connection).
//!
//! Failure: a broken connection fails every command in flight (the caller falls back) and the
//! next command reconnects, at once after a connection that worked, no sooner than [`RETRY`]
//! after one that could not be made. A command unanswered after twice the store timeout ends
//! the connection: a peer that silent is gone.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::resp::{self, Reply};

/// The wait after a connection attempt failed, before the next one (meanwhile calls fail fast).
const RETRY: Duration = Duration::from_millis(200);
/// A write buffer grown past this by a burst is given back.
const KEEP_CAPACITY: usize = 64 << 10;

/// The connection handle (see the module doc). Dropping it ends the connection.
pub(crate) struct Pipe {
    shared: Arc<Shared>,
}

struct Shared {
    host: String,
    port: u16,
    /// `AUTH` and `SELECT`, written first on every connection, and how many replies they get.
    hello: Vec<u8>,
    hello_replies: usize,
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// Commands queued and not yet written.
    out: Vec<u8>,
    /// One reply slot per command queued or written, in order.
    waiting: VecDeque<oneshot::Sender<Result<Reply, Arc<str>>>>,
    /// Bumped whenever a connection ends, so a task of an ended one touches nothing.
    epoch: u64,
    link: Link,
}

enum Link {
    /// No connection: the next command makes one (not before `retry_at`). `why` the last
    /// one ended.
    Down {
        retry_at: Option<Instant>,
        why: Option<Arc<str>>,
    },
    Running {
        wake: Arc<Notify>,
        task: AbortHandle,
    },
    Closed,
}

/// Why a command got no reply (the caller's fallback logs it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PipeError {
    #[error("not connected ({0}); retrying shortly")]
    Down(Arc<str>),
    #[error("connection lost: {0}")]
    Lost(Arc<str>),
    #[error("no reply within twice the store timeout")]
    TimedOut,
}

impl Pipe {
    /// A pipe to `info`'s server, or `None` for what it does not speak (TLS, Unix sockets).
    pub(crate) fn new(info: &redis::ConnectionInfo, timeout: Duration) -> Option<Pipe> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        let (mut hello, mut hello_replies) = (Vec::new(), 0);
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => {
                    resp::command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()])
                }
                None => resp::command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            hello_replies += 1;
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            resp::command(&mut hello, &[b"SELECT", db.as_bytes()]);
            hello_replies += 1;
        }
        Some(Pipe {
            shared: Arc::new(Shared {
                host: host.clone(),
                port: *port,
                hello,
                hello_replies,
                timeout,
                state: Mutex::new(State {
                    out: Vec::new(),
                    waiting: VecDeque::new(),
                    epoch: 0,
                    link: Link::Down {
                        retry_at: None,
                        why: None,
                    },
                }),
            }),
        })
    }

    /// Sends the command `write` appends and waits for its reply (an error reply is a reply).
    pub(crate) async fn call(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<Reply, PipeError> {
        let (reply, epoch) = {
            let mut s = self.shared.lock();
            let epoch = s.epoch;
            match &s.link {
                Link::Running { .. } => {}
                Link::Down { retry_at, why } => {
                    if let Some(t) = retry_at
                        && Instant::now() < *t
                    {
                        let why = why.clone().unwrap_or_else(|| Arc::from("connecting"));
                        return Err(PipeError::Down(why));
                    }
                    let wake = Arc::new(Notify::new());
                    let task = tokio::spawn(Arc::clone(&self.shared).run(epoch, Arc::clone(&wake)));
                    s.link = Link::Running {
                        wake,
                        task: task.abort_handle(),
                    };
                }
                Link::Closed => return Err(PipeError::Lost(Arc::from("shut down"))),
            }
            write(&mut s.out);
            let (tx, rx) = oneshot::channel();
            s.waiting.push_back(tx);
            if let Link::Running { wake, .. } = &s.link {
                wake.notify_one();
            }
            (rx, epoch)
        };
        match tokio::time::timeout(self.shared.timeout * 2, reply).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(why))) => Err(PipeError::Lost(why)),
            Ok(Err(_)) => Err(PipeError::Lost(Arc::from("shut down"))),
            Err(_) => {
                let why = Arc::from("a reply took longer than twice the store timeout");
                self.shared.end(epoch, None, why);
                Err(PipeError::TimedOut)
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        if let Link::Running { task, .. } = &s.link {
            task.abort();
        }
        s.link = Link::Closed;
        s.epoch += 1;
        s.waiting.clear();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends connection `epoch` (if it is still the current one): its commands fail with `why`,
    /// the next command reconnects (not before `retry_at`).
    fn end(&self, epoch: u64, retry_at: Option<Instant>, why: Arc<str>) {
        let mut s = self.lock();
        if s.epoch != epoch || matches!(s.link, Link::Closed) {
            return;
        }
        if let Link::Running { task, .. } = &s.link {
            task.abort();
        }
        s.epoch += 1;
        for slot in s.waiting.drain(..) {
            drop(slot.send(Err(Arc::clone(&why))));
        }
        s.out.clear();
        s.link = Link::Down {
            retry_at,
            why: Some(why),
        };
    }

    async fn run(self: Arc<Self>, epoch: u64, wake: Arc<Notify>) {
        let (error, connected) = self.serve(epoch, &wake).await;
        tracing::debug!(error = %error, connected, "redis limiter connection ended");
        let retry_at = (!connected).then(|| Instant::now() + RETRY.min(self.timeout));
        self.end(epoch, retry_at, Arc::from(error.to_string()));
    }

    /// Connects and serves until the connection fails: the error, and whether it was made.
    async fn serve(&self, epoch: u64, wake: &Notify) -> (std::io::Error, bool) {
        let mut buf = Vec::with_capacity(4096);
        let stream = match tokio::time::timeout(self.timeout, self.connect(&mut buf)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return (e, false),
            Err(_) => return (std::io::ErrorKind::TimedOut.into(), false),
        };
        let (mut rd, mut wr) = stream.into_split();
        let ended = tokio::select! {
            r = self.write_loop(&mut wr, epoch, wake) => r,
            r = self.read_loop(&mut rd, buf, epoch) => r,
        };
        let Err(error) = ended;
        (error, true)
    }

    /// A connection that passed the `AUTH` / `SELECT` preamble; `buf` keeps what came after.
    async fn connect(&self, buf: &mut Vec<u8>) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        if self.hello_replies == 0 {
            return Ok(stream);
        }
        stream.write_all(&self.hello).await?;
        for _ in 0..self.hello_replies {
            let reply = loop {
                if let Some((reply, used)) = resp::parse(buf).map_err(std::io::Error::other)? {
                    buf.drain(..used);
                    break reply;
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            };
            if let Reply::Error(e) = reply {
                // The server's words (e.g. WRONGPASS); they never repeat the password.
                return Err(std::io::Error::other(format!(
                    "redis refused the preamble: {e}"
                )));
            }
        }
        Ok(stream)
    }

    async fn write_loop(
        &self,
        wr: &mut OwnedWriteHalf,
        epoch: u64,
        wake: &Notify,
    ) -> std::io::Result<Infallible> {
        let mut spare = Vec::with_capacity(4096);
        loop {
            {
                let mut s = self.lock();
                if s.epoch != epoch {
                    return Err(std::io::ErrorKind::ConnectionAborted.into());
                }
                std::mem::swap(&mut s.out, &mut spare);
            }
            if spare.is_empty() {
                // A command queued since the swap left a permit: this returns at once.
                wake.notified().await;
                continue;
            }
            wr.write_all(&spare).await?;
            spare.clear();
            if spare.capacity() > KEEP_CAPACITY {
                spare = Vec::with_capacity(4096);
            }
        }
    }

    async fn read_loop(
        &self,
        rd: &mut OwnedReadHalf,
        mut buf: Vec<u8>,
        epoch: u64,
    ) -> std::io::Result<Infallible> {
        loop {
            let mut start = 0;
            while let Some((reply, used)) =
                resp::parse(&buf[start..]).map_err(std::io::Error::other)?
            {
                start += used;
                let slot = {
                    let mut s = self.lock();
                    if s.epoch != epoch {
                        return Err(std::io::ErrorKind::ConnectionAborted.into());
                    }
                    s.waiting.pop_front()
                };
                match slot {
                    // A caller that gave up has dropped its receiver; the reply is discarded.
                    Some(slot) => drop(slot.send(Ok(reply))),
                    None => return Err(std::io::Error::other("a reply nobody asked for")),
                }
            }
            buf.drain(..start);
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            if rd.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
