//! A small client of the admin API, for `keygate keys --admin-url …`.

use anyhow::{Context, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub struct AdminClient {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// `token` from `name:token` (the server reads an entry the same way), else the whole value.
fn token_part(value: &str) -> &str {
    match value.split_once(':') {
        Some((name, token))
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
        {
            token.trim()
        }
        _ => value,
    }
}

impl AdminClient {
    /// `base` like `http://127.0.0.1:9091`; the token from `KEYGATE_ADMIN_TOKEN`.
    /// The token from `KEYGATE_ADMIN_TOKEN`: the token alone, or `name:token` as written in
    /// `KEYGATE_ADMIN_TOKENS` on the server (the name is the server's; only the token is sent).
    pub fn from_env(base: &str) -> anyhow::Result<AdminClient> {
        let value = std::env::var("KEYGATE_ADMIN_TOKEN")
            .context("KEYGATE_ADMIN_TOKEN must hold an admin token to use --admin-url")?;
        AdminClient::new(base, token_part(value.trim()).to_owned())
    }

    pub fn new(base: &str, token: String) -> anyhow::Result<AdminClient> {
        if !base.starts_with("http://") {
            bail!(
                "--admin-url must be http://host:port (the admin API is served on loopback or a private network)"
            );
        }
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// One call; a non-2xx answer becomes an error carrying the API's message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let method = Method::from_bytes(method.as_bytes())?;
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the admin API answered {status} with a non-JSON body"))?;
        if !status.is_success() {
            bail!(
                "{status}: {}",
                v["error"]["message"].as_str().unwrap_or("request failed")
            );
        }
        Ok(v)
    }

    /// Every page of `GET /v1/keys`.
    pub async fn list_all(&self, query: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            q.push("limit=200".into());
            if let Some(c) = &cursor {
                q.push(format!("cursor={}", encode(c)));
            }
            let page = self
                .call("GET", &format!("/v1/keys?{}", q.join("&")), None)
                .await?;
            out.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(out),
            }
        }
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_variable_takes_either_form() {
        assert_eq!(
            super::token_part("ops:0123456789abcdef"),
            "0123456789abcdef"
        );
        assert_eq!(super::token_part("0123456789abcdef"), "0123456789abcdef");
        assert_eq!(super::token_part("bad name:x"), "bad name:x");
    }
}
