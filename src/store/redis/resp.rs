//! RESP2, the little of it the hot path needs: a script call written as an array of bulk
//! strings, and replies read into [`Reply`]. Redis is a trusted peer, but a reply is still
//! bounded (nesting, lengths) so a confused or hostile server ends the connection, never the
//! process.

use smallvec::SmallVec;

/// Deepest nesting of arrays read (the scripts here answer arrays of arrays).
const MAX_DEPTH: usize = 8;
/// Longest bulk string or array read; anything larger is a protocol error.
const MAX_LEN: i64 = 16 << 20;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    /// `None`: the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// An array of `W`-long arrays of non-negative integers (what the limiter's scripts
    /// answer), or `None` for anything else. Rows of a check's few counters need no allocation.
    pub(crate) fn rows<const W: usize>(&self) -> Option<SmallVec<[[u64; W]; 2]>> {
        let Reply::Array(Some(rows)) = self else {
            return None;
        };
        rows.iter()
            .map(|row| match row {
                Reply::Array(Some(cells)) if cells.len() == W => {
                    let mut out = [0u64; W];
                    for (o, c) in out.iter_mut().zip(cells) {
                        *o = match c {
                            Reply::Int(n) => u64::try_from(*n).ok()?,
                            _ => return None,
                        };
                    }
                    Some(out)
                }
                _ => None,
            })
            .collect()
    }

    /// The reply of the `redis` crate's connection, as one of ours (the topologies the lean
    /// connection does not serve).
    pub(crate) fn from_value(v: redis::Value) -> Option<Reply> {
        use redis::Value;
        Some(match v {
            Value::Nil => Reply::Bulk(None),
            Value::Int(n) => Reply::Int(n),
            Value::BulkString(b) => Reply::Bulk(Some(b)),
            Value::Array(items) | Value::Set(items) => Reply::Array(Some(
                items
                    .into_iter()
                    .map(Reply::from_value)
                    .collect::<Option<_>>()?,
            )),
            Value::SimpleString(s) => Reply::Simple(s.into_bytes()),
            Value::Okay => Reply::Simple(b"OK".to_vec()),
            _ => return None,
        })
    }
}

/// A reply Redis should never send: the connection is dropped.
#[derive(Debug, thiserror::Error)]
#[error("redis protocol error: {0}")]
pub(crate) struct ProtocolError(&'static str);

/// The first complete reply in `buf` and the bytes it took, or `None` when more must be read.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some((kind, line, mut next)) = line(buf, at)? else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' => Reply::Simple(line.to_vec()),
        b'-' => Reply::Error(String::from_utf8_lossy(line).into_owned()),
        b':' => Reply::Int(int(line)?),
        b'$' => match int(line)? {
            -1 => Reply::Bulk(None),
            n @ 0..=MAX_LEN => {
                let n = n as usize;
                let Some(end) = next.checked_add(n + 2).filter(|&e| e <= buf.len()) else {
                    return Ok(None);
                };
                if &buf[next + n..end] != b"\r\n" {
                    return Err(ProtocolError("bulk string without its CRLF"));
                }
                let bulk = buf[next..next + n].to_vec();
                next = end;
                Reply::Bulk(Some(bulk))
            }
            _ => return Err(ProtocolError("bulk string length out of range")),
        },
        b'*' => match int(line)? {
            -1 => Reply::Array(None),
            n @ 0..=MAX_LEN => {
                if depth == MAX_DEPTH {
                    return Err(ProtocolError("arrays nested too deep"));
                }
                let mut items = Vec::with_capacity((n as usize).min(16));
                for _ in 0..n {
                    let Some((item, after)) = parse_at(buf, next, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    next = after;
                }
                Reply::Array(Some(items))
            }
            _ => return Err(ProtocolError("array length out of range")),
        },
        _ => return Err(ProtocolError("unknown reply type")),
    };
    Ok(Some((reply, next)))
}

/// A line: its type byte, the rest of it, and where the next line starts.
type Line<'a> = (u8, &'a [u8], usize);

/// The line starting at `at`, or `None` when it has not all arrived.
fn line(buf: &[u8], at: usize) -> Result<Option<Line<'_>>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or_default();
    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > 64 << 10 {
            return Err(ProtocolError("line too long"));
        }
        return Ok(None);
    };
    if lf < 2 || rest[lf - 1] != b'\r' {
        return Err(ProtocolError("line without its type or CRLF"));
    }
    Ok(Some((rest[0], &rest[1..lf - 1], at + lf + 1)))
}

/// A decimal integer, optionally negative; nothing else.
fn int(digits: &[u8]) -> Result<i64, ProtocolError> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError("bad integer"));
    }
    let n = digits
        .iter()
        .try_fold(0i64, |n, &d| {
            n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
        .ok_or(ProtocolError("integer overflow"))?;
    Ok(if negative { -n } else { n })
}

/// A command being written: an array of bulk strings.
pub(crate) fn command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    array(out, parts.len());
    for p in parts {
        bulk(out, p);
    }
}

fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(b.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// One of keygate's Lua scripts: its text (for `EVAL` when Redis lacks it) and its digest.
pub(crate) struct Lua {
    code: &'static str,
    script: redis::Script,
}

impl Lua {
    pub(crate) fn new(code: &'static str) -> Self {
        Lua {
            code,
            script: redis::Script::new(code),
        }
    }
}

/// A call of one of keygate's Lua scripts: its keys, then its arguments, kept as raw bytes so
/// the call can be written by the lean connection or handed to the `redis` crate.
pub(crate) struct ScriptCall {
    script: &'static Lua,
    data: Vec<u8>,
    /// End of each part in `data`; the first `keys` parts are keys.
    ends: SmallVec<[usize; 12]>,
    keys: usize,
}

impl ScriptCall {
    pub(crate) fn new(script: &'static Lua) -> Self {
        ScriptCall {
            script,
            data: Vec::with_capacity(128),
            ends: SmallVec::new(),
            keys: 0,
        }
    }

    /// Adds a key, which `write` appends straight into the call (no string of its own); every
    /// key comes before the first argument.
    pub(crate) fn key_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        debug_assert_eq!(self.keys, self.ends.len(), "a key after an argument");
        self.keys += 1;
        write(&mut self.data);
        self.ends.push(self.data.len());
        self
    }

    pub(crate) fn arg(&mut self, arg: impl Arg) -> &mut Self {
        arg.write(&mut self.data);
        self.ends.push(self.data.len());
        self
    }

    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let p = &self.data[start..end];
            start = end;
            p
        })
    }

    /// `EVALSHA` (`full: false`) or `EVAL` with the script's text, appended to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>, full: bool) {
        array(out, 3 + self.ends.len());
        if full {
            bulk(out, b"EVAL");
            bulk(out, self.script.code.as_bytes());
        } else {
            bulk(out, b"EVALSHA");
            bulk(out, self.script.script.get_hash().as_bytes());
        }
        bulk(out, itoa::Buffer::new().format(self.keys).as_bytes());
        for p in self.parts() {
            bulk(out, p);
        }
    }

    /// The same call for the `redis` crate (which loads the script when Redis lacks it).
    pub(crate) fn invocation(&self) -> redis::ScriptInvocation<'static> {
        let mut inv = self.script.script.prepare_invoke();
        for (i, p) in self.parts().enumerate() {
            if i < self.keys {
                inv.key(p);
            } else {
                inv.arg(p);
            }
        }
        inv
    }
}

/// A script argument: written as its decimal or string bytes.
pub(crate) trait Arg {
    fn write(self, out: &mut Vec<u8>);
}

impl Arg for &str {
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(self).as_bytes());
            }
        }
    )*};
}
int_arg!(u8, u32, u64);

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Reply {
        let (reply, used) = parse(input).unwrap().unwrap();
        assert_eq!(used, input.len(), "{input:?}");
        reply
    }

    #[test]
    fn reads_each_kind_of_reply() {
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple(b"OK".to_vec()));
        assert_eq!(
            whole(b"-NOSCRIPT No matching script\r\n"),
            Reply::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(whole(b":-42\r\n"), Reply::Int(-42));
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(
            whole(b"$4\r\na\r\nb\r\n"),
            Reply::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(whole(b"*-1\r\n"), Reply::Array(None));
        let rows = whole(b"*2\r\n*2\r\n:1\r\n:9\r\n*2\r\n:0\r\n:7\r\n");
        assert_eq!(rows.rows::<2>().as_deref(), Some(&[[1, 9], [0, 7]][..]));
        assert_eq!(rows.rows::<3>(), None, "wrong width");
        assert_eq!(whole(b"*1\r\n*1\r\n:-1\r\n").rows::<1>(), None, "negative");
    }

    #[test]
    fn a_reply_cut_anywhere_asks_for_more_and_two_replies_come_apart() {
        let two = b"*2\r\n$3\r\nabc\r\n:5\r\n+OK\r\n";
        let first = two.len() - 5;
        for cut in 0..first {
            assert!(parse(&two[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (reply, used) = parse(two).unwrap().unwrap();
        assert_eq!(used, first);
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Int(5)
            ]))
        );
        assert_eq!(whole(&two[used..]), Reply::Simple(b"OK".to_vec()));
    }

    #[test]
    fn refuses_what_redis_never_sends() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b":\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"*-5\r\n",
            b"+OK\n",
            b"\r\n",
            b"$99999999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        let ok = "*1\r\n".repeat(MAX_DEPTH) + ":1\r\n";
        assert!(parse(ok.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn writes_a_script_call_as_redis_reads_it() {
        static S: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new("return 1"));
        let mut call = ScriptCall::new(&S);
        call.key_with(|out| out.extend_from_slice(b"{p}:a"))
            .arg("f")
            .arg(10u64);
        let mut out = Vec::new();
        call.write(&mut out, false);
        let expected = format!(
            "*6\r\n$7\r\nEVALSHA\r\n$40\r\n{}\r\n$1\r\n1\r\n$5\r\n{{p}}:a\r\n$1\r\nf\r\n$2\r\n10\r\n",
            S.script.get_hash()
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let mut out = Vec::new();
        call.write(&mut out, true);
        assert!(out.starts_with(b"*6\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n"));
    }
}
