//! The audit trail and usage counters in Redis, over the key store's connection:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:audit` | stream | audit events, field `e` = the event JSON, capped with `MAXLEN ~` |
//! | `{p}:usage:<key id>:<hour>` | hash | `<minute>:<status class>` → requests (expires after 26 h) |

use std::collections::HashMap;

use crate::store::{RedisStore, StoreError};

/// Appends audit events (JSON) to this process's capped stream: one writer's chain stays in one
/// stream, so each chain verifies wherever the streams are.
pub(super) async fn append(
    store: &RedisStore,
    events: &[String],
    max_len: u64,
) -> Result<(), StoreError> {
    let (stream, _) = store.audit_streams().await?;
    let mut pipe = redis::pipe();
    for e in events {
        pipe.cmd("XADD")
            .arg(&stream)
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

type Entries = Vec<(String, Vec<String>)>;

/// The newest audit event (JSON) of this process's stream, if any.
pub(super) async fn last(store: &RedisStore) -> Result<Option<String>, StoreError> {
    let (stream, _) = store.audit_streams().await?;
    let entries: Entries = store
        .query(
            redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .clone(),
        )
        .await?;
    Ok(entries.into_iter().next().and_then(event_of))
}

fn event_of((_, fields): (String, Vec<String>)) -> Option<String> {
    let mut it = fields.into_iter();
    while let Some(name) = it.next() {
        let value = it.next()?;
        if name == "e" {
            return Some(value);
        }
    }
    None
}

/// A stream entry id's order: `<ms>-<seq>`.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Audit events (JSON) between two unix-millisecond bounds, every stream merged in entry order
/// (each stream's own order kept, so every chain reads in order).
pub(super) async fn read(
    store: &RedisStore,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<String>, StoreError> {
    let (_, streams) = store.audit_streams().await?;
    let per_stream = futures_util::future::try_join_all(streams.iter().map(|s| {
        store.query::<Entries>(redis::cmd("XRANGE").arg(s).arg(from_ms).arg(to_ms).clone())
    }))
    .await?;
    // (entry order, stream, position in it) → the entry: a stable merge.
    type Placed = ((u64, u64), usize, usize);
    let mut all: Vec<(Placed, (String, Vec<String>))> = Vec::new();
    for (si, entries) in per_stream.into_iter().enumerate() {
        for (i, e) in entries.into_iter().enumerate() {
            all.push(((entry_order(&e.0), si, i), e));
        }
    }
    all.sort_by_key(|(placed, _)| *placed);
    Ok(all.into_iter().filter_map(|(_, e)| event_of(e)).collect())
}

/// Adds per-minute request counts: `(key id, minute start, counts by status class)`, one
/// atomic batch per shard.
pub(super) async fn usage_add(
    store: &RedisStore,
    batch: &[(String, u64, [u64; 5])],
) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut pipes: HashMap<String, redis::Pipeline> = HashMap::new();
    for (id, minute, counts) in batch {
        let hour = minute / 3600 * 3600;
        let (key, _) = store.by_id(id, &format!("usage:{id}:{hour}")).await?;
        // The shard's tag: every key of one pipeline is in one slot.
        let tag = key.split('}').next().unwrap_or_default().to_owned();
        let pipe = pipes.entry(tag).or_insert_with(|| {
            let mut p = redis::pipe();
            p.atomic();
            p
        });
        for (class, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg(format!("{minute}:{}", class + 1))
                .arg(*n)
                .ignore();
        }
        pipe.cmd("EXPIRE").arg(&key).arg(26 * 3600).ignore();
    }
    futures_util::future::try_join_all(pipes.into_values().map(|p| store.write_pipe(p)))
        .await
        .map(|_| ())
}

/// Per-minute counts of `id` for the hours starting at `hours` (unix seconds), from its
/// shard and (after a migration) the single-slot counters.
pub(super) async fn usage_read(
    store: &RedisStore,
    id: &str,
    hours: &[u64],
) -> Result<Vec<(u64, [u64; 5])>, StoreError> {
    let mut names: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    for h in hours {
        let (key, single) = store.by_id(id, &format!("usage:{id}:{h}")).await?;
        names[0].push(key);
        names[1].extend(single);
    }
    let mut maps: Vec<HashMap<String, u64>> = Vec::new();
    for keys in names.into_iter().filter(|k| !k.is_empty()) {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HGETALL").arg(k);
        }
        let got: Vec<HashMap<String, u64>> = store
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        maps.extend(got);
    }
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
