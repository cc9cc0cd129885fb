//! Request parsing shared by the key-management APIs: bodies (capped), JSON, query strings,
//! durations.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use crate::error::api::ApiError;
use crate::policy::path::percent_decode;
use crate::time::Timestamp;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

pub async fn read_body<B>(req: Request<B>) -> Result<Bytes, ApiError>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_BODY} bytes"),
        )),
        Err(_) => Err(ApiError::bad_request("could not read the request body")),
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Query parameters, percent-decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: &str) -> Result<Query, ApiError> {
        let mut out = Vec::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            match (k, v) {
                (Some(k), Some(v)) => out.push((k, v)),
                _ => return Err(ApiError::bad_request("malformed query string")),
            }
        }
        Ok(Query(out))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!("limit: 1–{max}"))),
            },
        }
    }

    /// RFC 3339 or unix seconds.
    pub fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map(Timestamp::from_unix).or_else(|_| {
                    serde_json::from_value::<Timestamp>(serde_json::Value::String(v.to_owned()))
                        .map_err(|_| {
                            ApiError::bad_request(format!("{name}: RFC 3339 time or unix seconds"))
                        })
                })
            })
            .transpose()
    }
}

/// A duration as whole seconds or a human string (`"24h"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Secs {
    Seconds(u64),
    Text(String),
}

impl Secs {
    /// At most 100 years.
    pub fn duration(self) -> Result<Duration, ApiError> {
        const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let d = match self {
            Secs::Seconds(s) => Duration::from_secs(s),
            Secs::Text(t) => humantime::parse_duration(&t)
                .map_err(|e| ApiError::bad_request(format!("{t:?} is not a duration: {e}")))?,
        };
        if d > MAX {
            return Err(ApiError::bad_request("durations are limited to 100 years"));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse("owner=acct%5F1&since=2026-01-01T00%3A00%3A00Z&x").unwrap();
        assert_eq!(q.get("owner"), Some("acct_1"));
        assert_eq!(
            q.time("since").unwrap().map(Timestamp::unix),
            Some(1_767_225_600)
        );
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("limit=0").unwrap().limit(5, 10).is_err());
    }
}
