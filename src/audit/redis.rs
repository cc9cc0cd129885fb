//! The audit trail and usage counters in Redis, over the key store's connection:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:audit` | stream | audit events, field `e` = the event JSON, capped with `MAXLEN ~` |
//! | `{p}:usage:<key id>:<hour>` | hash | `<minute>:<status class>` → requests (expires after 26 h) |

use crate::store::{RedisStore, StoreError};

fn stream(store: &RedisStore) -> String {
    store.keys().tagged("audit")
}

fn usage_key(store: &RedisStore, id: &str, hour: u64) -> String {
    store.keys().tagged(&format!("usage:{id}:{hour}"))
}

/// Appends audit events (JSON) to the capped stream.
pub(super) async fn append(
    store: &RedisStore,
    events: &[String],
    max_len: u64,
) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    for e in events {
        pipe.cmd("XADD")
            .arg(stream(store))
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("e")
            .arg(e)
            .ignore();
    }
    // All or nothing: a retried batch must not leave half of itself behind.
    pipe.atomic();
    store.write_pipe(pipe).await
}

/// The newest audit event (JSON), if any.
pub(super) async fn last(store: &RedisStore) -> Result<Option<String>, StoreError> {
    let entries: Vec<(String, Vec<String>)> = store
        .query(
            redis::cmd("XREVRANGE")
                .arg(stream(store))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .clone(),
        )
        .await?;
    Ok(entries
        .into_iter()
        .next()
        .and_then(|(_, f)| f.into_iter().nth(1)))
}

/// Audit events (JSON) in stored order, between two unix-millisecond bounds.
pub(super) async fn read(
    store: &RedisStore,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<String>, StoreError> {
    let entries: Vec<(String, Vec<String>)> = store
        .query(
            redis::cmd("XRANGE")
                .arg(stream(store))
                .arg(from_ms)
                .arg(to_ms)
                .clone(),
        )
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let mut it = fields.into_iter();
            while let Some(name) = it.next() {
                let value = it.next()?;
                if name == "e" {
                    return Some(value);
                }
            }
            None
        })
        .collect())
}

/// Adds per-minute request counts: `(key id, minute start, counts by status class)`.
pub(super) async fn usage_add(
    store: &RedisStore,
    batch: &[(String, u64, [u64; 5])],
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (id, minute, counts) in batch {
        let key = usage_key(store, id, minute / 3600 * 3600);
        for (class, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg(format!("{minute}:{}", class + 1))
                .arg(*n)
                .ignore();
        }
        pipe.cmd("EXPIRE").arg(&key).arg(26 * 3600).ignore();
    }
    // One flush is seen whole or not at all by readers.
    pipe.atomic();
    store.write_pipe(pipe).await
}

/// Per-minute counts of `id` for the hours starting at `hours` (unix seconds).
pub(super) async fn usage_read(
    store: &RedisStore,
    id: &str,
    hours: &[u64],
) -> Result<Vec<(u64, [u64; 5])>, StoreError> {
    let mut pipe = redis::pipe();
    for h in hours {
        pipe.cmd("HGETALL").arg(usage_key(store, id, *h));
    }
    let maps: Vec<std::collections::HashMap<String, u64>> = store
        .run(|mut c| async move { pipe.query_async(&mut c).await })
        .await?;
    let mut out: std::collections::BTreeMap<u64, [u64; 5]> = std::collections::BTreeMap::new();
    for (field, n) in maps.into_iter().flatten() {
        let Some((minute, class)) = field.split_once(':') else {
            continue;
        };
        if let (Ok(m), Ok(c @ 1..=5)) = (minute.parse::<u64>(), class.parse::<usize>()) {
            out.entry(m).or_default()[c - 1] += n;
        }
    }
    Ok(out.into_iter().collect())
}
