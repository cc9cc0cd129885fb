//! A lean pipelined connection to a standalone Redis, for the request path's scripts (the rate
//! limiter's check and lease). A caller appends its encoded command to one buffer and queues
//! its own reply slot, under one lock; one task per connection writes whatever has gathered in
//! one `write` and hands the replies out in order. Next to the `redis` crate's multiplexed
//! connection this drops a channel hop, a boxed future and a combinator parser per command,
//! which is most of what a round trip costs keygate (the Cluster and Sentinel topologies, TLS
//! and Unix sockets keep the crate's connection).
//!
//! Failure: a broken connection fails every command in flight (the caller falls back). The next
//! command reconnects at once after a connection that answered; after one that never did, or
//! one left hanging (a command unanswered for the store timeout, twice that on a new
//! connection), not before [`RETRY`], doubling up to [`MAX_RETRY`] while failures go on, and
//! meanwhile commands fail fast. One timer per connection watches the oldest command's wait
//! (a timer per command would cost every check a timer-wheel insertion, and often a wake-up of
//! the runtime's driver, a syscall); it finds the connection hung also when the callers all
//! gave up first (clients that went away): nothing keeps queueing behind it. The connection
//! names itself `keygate-limiter`.

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

/// The wait after a connection that never answered, before the next attempt (meanwhile calls
/// fail fast and fall back); it doubles with each such connection in a row, up to [`MAX_RETRY`].
const RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// A write buffer grown past this by a burst is given back.
const KEEP_CAPACITY: usize = 64 << 10;
/// Unparsed reply bytes held at most: the scripts' replies are a few dozen bytes.
const MAX_PENDING: usize = 1 << 20;
/// Why a connection that stopped answering was ended.
const HUNG: &str = "no reply within the store timeout";
/// How the connection shows in `CLIENT LIST`.
const CLIENT_NAME: &[u8] = b"keygate-limiter";

/// Where a command's reply (or why there is none) goes.
type Slot = oneshot::Sender<Result<Reply, Arc<str>>>;

/// The connection handle (see the module doc). Dropping it ends the connection.
pub(crate) struct Pipe {
    shared: Arc<Shared>,
}

struct Shared {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    db: i64,
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// Commands queued and not yet written.
    out: Vec<u8>,
    /// One reply slot per command queued or written, in order, with the deadline of its wait
    /// (see [`State::wait`], taken when it was queued).
    waiting: VecDeque<(Instant, Slot)>,
    /// Bumped whenever a connection ends, so a task of an ended one touches nothing.
    epoch: u64,
    /// The current connection has answered a command.
    answered: bool,
    /// The deadline the watchdog sleeps until; `None` while nothing waits (it sleeps until a
    /// command is queued). A command due before it wakes it.
    watch_until: Option<Instant>,
    /// Connections in a row that ended without answering anything.
    failures: u32,
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
        /// Wakes the idle watchdog (see [`Shared::watch`]).
        watch: Arc<Notify>,
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
    #[error("no reply within the store timeout")]
    TimedOut,
}

impl Pipe {
    /// A pipe to `info`'s server, or `None` for what it does not speak (TLS, Unix sockets).
    pub(crate) fn new(info: &redis::ConnectionInfo, timeout: Duration) -> Option<Pipe> {
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        Some(Pipe {
            shared: Arc::new(Shared {
                host: host.clone(),
                port: *port,
                user: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
                db: settings.db(),
                timeout,
                state: Mutex::new(State {
                    out: Vec::new(),
                    waiting: VecDeque::new(),
                    epoch: 0,
                    answered: false,
                    watch_until: None,
                    failures: 0,
                    link: Link::Down {
                        retry_at: None,
                        why: None,
                    },
                }),
            }),
        })
    }

    /// Sends the command `write` appends and waits for its reply (an error reply is a reply):
    /// at most the store timeout on a connection that answers, twice that on a new one (the
    /// connection, then the command).
    pub(crate) async fn call(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<Reply, PipeError> {
        let reply = {
            let mut s = self.shared.lock();
            let epoch = s.epoch;
            let now = Instant::now();
            match &s.link {
                Link::Running { .. } => {
                    if s.waiting
                        .front()
                        .is_some_and(|(deadline, _)| now > *deadline)
                    {
                        // Hung, found before the watchdog woke: nothing queues behind it.
                        s.end(epoch, Arc::from(HUNG), true);
                        return Err(PipeError::TimedOut);
                    }
                }
                Link::Down { retry_at, why } => {
                    if let Some(t) = retry_at
                        && now < *t
                    {
                        let why = why.clone().unwrap_or_else(|| Arc::from("connecting"));
                        return Err(PipeError::Down(why));
                    }
                    let wake = Arc::new(Notify::new());
                    let watch = Arc::new(Notify::new());
                    let task = tokio::spawn(Arc::clone(&self.shared).run(
                        epoch,
                        Arc::clone(&wake),
                        Arc::clone(&watch),
                    ));
                    s.link = Link::Running {
                        wake,
                        watch,
                        task: task.abort_handle(),
                    };
                }
                Link::Closed => return Err(PipeError::Lost(Arc::from("shut down"))),
            }
            write(&mut s.out);
            let (tx, rx) = oneshot::channel();
            let deadline = now + s.wait(self.shared.timeout);
            s.waiting.push_back((deadline, tx));
            let wake_watch = s.watch_until.is_none_or(|at| deadline < at);
            if wake_watch {
                s.watch_until = Some(deadline);
            }
            if let Link::Running { wake, watch, .. } = &s.link {
                wake.notify_one();
                if wake_watch {
                    watch.notify_one();
                }
            }
            rx
        };
        match reply.await {
            Ok(Ok(reply)) => Ok(reply),
            // Ended by the watchdog: a server that silent is hung (or the network is).
            Ok(Err(why)) if *why == *HUNG => Err(PipeError::TimedOut),
            Ok(Err(why)) => Err(PipeError::Lost(why)),
            Err(_) => Err(PipeError::Lost(Arc::from("shut down"))),
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.shared
            .lock()
            .retire(Arc::from("shut down"), Link::Closed);
    }
}

impl State {
    /// Ends the current connection: its task stops, its commands fail with `why`, and `next`
    /// says what the next command finds.
    fn retire(&mut self, why: Arc<str>, next: Link) {
        if let Link::Running { task, .. } = &self.link {
            task.abort();
        }
        self.epoch += 1;
        self.answered = false;
        for (_, slot) in self.waiting.drain(..) {
            drop(slot.send(Err(Arc::clone(&why))));
        }
        self.out.clear();
        self.watch_until = None;
        self.link = next;
    }

    /// How long a command may wait for its reply: the store timeout on a connection that has
    /// answered, twice that on a new one (the connection, then the command).
    fn wait(&self, timeout: Duration) -> Duration {
        match self.answered {
            true => timeout,
            false => timeout * 2,
        }
    }

    /// Ends connection `epoch` (if it is still the current one): its commands fail with `why`.
    /// The next command reconnects at once after a connection that answered and did not hang,
    /// else after a wait that grows with each failure in a row.
    fn end(&mut self, epoch: u64, why: Arc<str>, hung: bool) {
        if self.epoch != epoch || matches!(self.link, Link::Closed) {
            return;
        }
        let retry_at = if self.answered && !hung {
            self.failures = 0;
            None
        } else {
            self.failures = self.failures.saturating_add(1);
            let backoff = RETRY.saturating_mul(1 << (self.failures - 1).min(4));
            Some(Instant::now() + backoff.min(MAX_RETRY))
        };
        let why_now = Some(Arc::clone(&why));
        self.retire(
            why,
            Link::Down {
                retry_at,
                why: why_now,
            },
        );
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`State::end`], under the lock.
    fn end(&self, epoch: u64, why: Arc<str>, hung: bool) {
        self.lock().end(epoch, why, hung);
    }

    async fn run(self: Arc<Self>, epoch: u64, wake: Arc<Notify>, watch: Arc<Notify>) {
        // Callers have no timer of their own: should this task end any other way (a panic),
        // its commands still fail rather than wait for ever.
        struct Ends<'a>(&'a Shared, u64);
        impl Drop for Ends<'_> {
            fn drop(&mut self) {
                // Ended abnormally: retried after the backoff, not at once.
                self.0
                    .end(self.1, Arc::from("the connection's task ended"), true);
            }
        }
        let _ends = Ends(&self, epoch);
        let error = self.serve(epoch, &wake, &watch).await;
        tracing::debug!(error = %error, "redis limiter connection ended");
        // The watchdog's verdict, or the system's (a connection the OS timed out, ETIMEDOUT, is
        // as good as hung): retried after the backoff. Commands in flight fail either way.
        let hung = error.kind() == std::io::ErrorKind::TimedOut;
        self.end(epoch, Arc::from(error.to_string()), hung);
    }

    /// Connects and serves until the connection fails: why it did.
    async fn serve(&self, epoch: u64, wake: &Notify, watch: &Notify) -> std::io::Error {
        let mut buf = Vec::with_capacity(4096);
        let stream = match tokio::time::timeout(self.timeout, self.connect(&mut buf)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return e,
            Err(_) => {
                return std::io::Error::other("connecting took longer than the store timeout");
            }
        };
        let (mut rd, mut wr) = stream.into_split();
        let ended = tokio::select! {
            r = self.write_loop(&mut wr, epoch, wake) => r,
            r = self.read_loop(&mut rd, buf, epoch) => r,
            r = self.watch(epoch, watch) => r,
        };
        let Err(error) = ended;
        error
    }

    /// A connection past its preamble (`AUTH`, `SELECT`, a name); `buf` keeps what came after.
    async fn connect(&self, buf: &mut Vec<u8>) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        if let Some(password) = &self.password {
            let with_user = match &self.user {
                Some(user) => Some(
                    ask(
                        &mut stream,
                        buf,
                        &[b"AUTH", user.as_bytes(), password.as_bytes()],
                    )
                    .await?,
                ),
                None => None,
            };
            let reply = match with_user {
                // Before Redis 6 `AUTH` takes no user name (the `redis` crate retries so too).
                Some(Reply::Error(e)) if e.contains("wrong number of arguments") => {
                    ask(&mut stream, buf, &[b"AUTH", password.as_bytes()]).await?
                }
                Some(reply) => reply,
                None => ask(&mut stream, buf, &[b"AUTH", password.as_bytes()]).await?,
            };
            if let Reply::Error(e) = reply {
                // Only the error's code: some servers quote the arguments, the password with them.
                let code = e.split_whitespace().next().unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "redis refused the password ({code})"
                )));
            }
        }
        if self.db != 0 {
            let db = self.db.to_string();
            if let Reply::Error(e) = ask(&mut stream, buf, &[b"SELECT", db.as_bytes()]).await? {
                return Err(std::io::Error::other(format!(
                    "redis refused SELECT {db}: {e}"
                )));
            }
        }
        // For operators reading `CLIENT LIST`; a server that forbids it is served all the same.
        ask(&mut stream, buf, &[b"CLIENT", b"SETNAME", CLIENT_NAME]).await?;
        Ok(stream)
    }

    /// Ends the connection as hung (`TimedOut`) when a command has waited past its deadline
    /// ([`State::wait`] from when it was queued). One timer for the connection: it sleeps until
    /// the earliest deadline, and while nothing waits, until a command is queued; [`Pipe::call`]
    /// wakes it then, or for a command due before that deadline.
    async fn watch(&self, epoch: u64, wake: &Notify) -> std::io::Result<Infallible> {
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        loop {
            let deadline = {
                let mut s = self.lock();
                if s.epoch != epoch {
                    return Err(std::io::ErrorKind::ConnectionAborted.into());
                }
                // The earliest of all: one queued on a new connection may wait longer than
                // one queued after it, once the connection has answered.
                s.watch_until = s.waiting.iter().map(|(deadline, _)| *deadline).min();
                s.watch_until
            };
            match deadline {
                Some(at) if at <= Instant::now() => {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, HUNG));
                }
                Some(at) => {
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    tokio::select! {
                        () = timer.as_mut() => {}
                        () = wake.notified() => {}
                    }
                }
                None => wake.notified().await,
            }
        }
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
                    s.answered = true;
                    s.waiting.pop_front().map(|(_, slot)| slot)
                };
                match slot {
                    // A caller that gave up has dropped its receiver; the reply is discarded.
                    Some(slot) => drop(slot.send(Ok(reply))),
                    None => return Err(std::io::Error::other("a reply nobody asked for")),
                }
            }
            buf.drain(..start);
            if buf.len() > MAX_PENDING {
                return Err(std::io::Error::other(
                    "a reply far larger than any script's",
                ));
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            if rd.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// One command of the preamble and its reply.
async fn ask(stream: &mut TcpStream, buf: &mut Vec<u8>, parts: &[&[u8]]) -> std::io::Result<Reply> {
    let mut cmd = Vec::new();
    resp::command(&mut cmd, parts);
    stream.write_all(&cmd).await?;
    loop {
        if let Some((reply, used)) = resp::parse(buf).map_err(std::io::Error::other)? {
            buf.drain(..used);
            return Ok(reply);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
