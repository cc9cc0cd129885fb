//! Each shipped seed profile (`deploy/profiles/*.toml`), end to end: the real `keygate serve`
//! binary running the profile file as shipped (only its listeners, upstream and store pointed
//! here by `KEYGATE__…` overrides), a real upstream, keys made with the real CLI — and every
//! documented behaviour of that seed asserted: status, exact code, body shape, headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::Method;

/// A profile served for a test: the running binary, its overrides (for the CLI too) and where
/// its store lives.
struct Running {
    served: Served,
    envs: Vec<(String, String)>,
    profile: String,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(name: &str, upstream: &Upstream, extra: &[(&str, &str)]) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keys.json");
        let mut envs: Vec<(String, String)> = [
            ("LISTEN__ADDRESS", "\"127.0.0.1:0\"".to_owned()),
            ("OPS__ADDRESS", "\"127.0.0.1:0\"".to_owned()),
            ("UPSTREAM__URL", format!("\"{}\"", upstream.url())),
            ("STORE__PATH", format!("{:?}", store.display().to_string())),
            ("STORE__RELOAD_INTERVAL", "\"50ms\"".to_owned()),
            ("AUDIT__FLUSH_INTERVAL", "\"100ms\"".to_owned()),
            ("LOG__FORMAT", "\"json\"".to_owned()),
            // Cheap hashing keeps a hundred keys quick; the contract does not depend on it.
            ("KEYS__ARGON2_MEMORY_KIB", "8".to_owned()),
            ("KEYS__ARGON2_ITERATIONS", "1".to_owned()),
        ]
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (*k, (*v).to_owned())))
        .map(|(k, v)| (format!("KEYGATE__{k}"), v))
        .collect();
        envs.push(("KEYGATE_ADMIN_TOKENS".into(), String::new()));
        envs.retain(|(k, _)| k != "KEYGATE_ADMIN_TOKENS");
        let profile = format!("{}/deploy/profiles/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let served = Served::start_env(&profile, &envs);
        Running {
            served,
            envs,
            profile,
            store,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.served.addr)
    }

    /// `keygate keys --config <profile> …` on this instance's store; the JSON it printed.
    fn keys(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["keys", "--config", &self.profile];
        all.extend_from_slice(args);
        all.push("--json");
        let out = keygate_env(&all, &self.envs);
        assert!(
            out.status.success(),
            "keys {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A new key (printed once by the CLI) and its id.
    fn create(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["create", "--owner", "acct_1"];
        all.extend_from_slice(args);
        let v = self.keys(&all);
        (
            v["key"].as_str().unwrap().to_owned(),
            v["record"]["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        send(method, &self.url(path), headers, full(body.to_owned())).await
    }
}

fn code_of(r: &Resp) -> String {
    let v = r.json();
    v["error"]["code"]
        .as_str()
        .or(v["code"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn header(r: &Resp, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn zentra() {
    let up = Upstream::start().await;
    let z = Running::start("zentra", &up, &[]);
    let (write, write_id) = z.create(&["--scopes", "write"]);
    let (read, _) = z.create(&["--scopes", "read"]);
    let (admin, _) = z.create(&["--scopes", "admin"]);
    let (pro, _) = z.create(&["--scopes", "write", "--tier", "pro"]);
    let (sandbox, _) = z.create(&["--scopes", "write", "--env", "test"]);
    let (public, _) = z.create(&["--scopes", "write", "--type", "publishable"]);
    let (pinned, _) = z.create(&["--scopes", "write", "--allow-ip", "203.0.113.7"]);
    // "sk_sandbox_… or sk_live_…", "pk_sandbox_… or pk_live_…"
    assert!(write.starts_with("sk_live_") && sandbox.starts_with("sk_sandbox_"));
    assert!(public.starts_with("pk_live_"));

    let bearer = |k: &str| format!("Bearer {k}");
    let get = |k: String, path: &'static str| {
        let z = &z;
        async move {
            z.call(Method::GET, path, &[("authorization", &k)], "")
                .await
        }
    };
    // Bearer authentication.
    let r = get(bearer(&write), "/v1/transfers").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-key-id").as_deref(),
        Some(&*write_id)
    );
    // "unauthorized — Invalid or missing API key": missing, and a well-formed unknown key.
    let r = z.call(Method::GET, "/v1/transfers", &[], "").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "unauthorized")
    );
    assert_eq!(
        header(&r, "www-authenticate").as_deref(),
        Some("Bearer realm=\"api\"")
    );
    assert!(
        !r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Api-Key")
    );
    let unknown = format!("sk_live_{}", "A".repeat(38));
    let fmt = keygate::key::KeyFormat::with_shape(
        &keygate::key::Labels {
            test: "sandbox".into(),
            ..Default::default()
        },
        keygate::key::Shape::default(),
    )
    .unwrap();
    let well_formed = fmt
        .generate(
            keygate::key::KeyType::Secret,
            keygate::key::Environment::Live,
        )
        .unwrap()
        .key;
    let r = get(bearer(&well_formed), "/v1/transfers").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "unauthorized")
    );
    // An X-Api-Key header is not a credential here.
    let r = z
        .call(Method::GET, "/v1/transfers", &[("x-api-key", &write)], "")
        .await;
    assert_eq!(code_of(&r), "unauthorized");
    // "invalid_key — Malformed API key"
    let r = get(bearer(&unknown), "/v1/transfers").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "invalid_key")
    );
    // "wrong_environment — Using sandbox key on live endpoint"
    let r = get(bearer(&sandbox), "/v1/transfers").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "wrong_environment")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sandbox")
    );
    // "Read-only: Only GET requests; Write: POST, PUT, PATCH, DELETE; Admin: Full access
    // including sensitive operations"
    assert_eq!(get(bearer(&read), "/v1/transfers").await.status, 200);
    let r = z
        .call(
            Method::POST,
            "/v1/transfers",
            &[("authorization", &bearer(&read))],
            "{}",
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (403, "insufficient_scope")
    );
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let r = z
            .call(
                m.clone(),
                "/v1/transfers/t_1",
                &[("authorization", &bearer(&write))],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{m}");
    }
    assert_eq!(get(bearer(&write), "/v1/admin/settings").await.status, 403);
    assert_eq!(get(bearer(&admin), "/v1/admin/settings").await.status, 200);
    // "Public key … for specific operations like initializing payments."
    let r = z
        .call(
            Method::POST,
            "/v1/payments/initialize",
            &[("authorization", &bearer(&public))],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200);
    let r = get(bearer(&public), "/v1/transfers").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (403, "key_type_not_allowed")
    );
    // "IP Whitelisting"
    let r = get(bearer(&pinned), "/v1/transfers").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (403, "ip_not_allowed")
    );
    // "Live (Basic) 1,000 requests/minute; Live (Pro) 10,000"
    let r = get(bearer(&write), "/v1/transfers").await;
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("1000"));
    let r = get(bearer(&pro), "/v1/transfers").await;
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("10000"));
    // "expired_key — API key has been revoked"
    z.keys(&["revoke", &write_id]);
    let r = get(bearer(&write), "/v1/transfers").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "expired_key")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    // "Sandbox 100 requests/minute": the sandbox endpoint is the same profile in test mode.
    let s = Running::start("zentra", &up, &[("ENVIRONMENT", "\"test\"")]);
    let (sandbox, _) = s.create(&["--scopes", "write", "--env", "test", "--tier", "pro"]);
    let r = s
        .call(
            Method::GET,
            "/v1/transfers",
            &[("authorization", &bearer(&sandbox))],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("100"));
}

#[tokio::test]
async fn zaropay() {
    let up = Upstream::start().await;
    let z = Running::start("zaropay", &up, &[]);
    let (key, id) = z.create(&[]);
    let (public, _) = z.create(&["--type", "publishable"]);
    let (pinned, _) = z.create(&["--allow-ip", "203.0.113.7"]);
    // "zp_<env>_sk_<keyId>_<secret>: keyId 16 hex, secret 48 hex; zp_<env>_pk_<keyId>"
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let rest = key.strip_prefix("zp_live_sk_").unwrap();
    let (key_id, secret) = rest.split_once('_').unwrap();
    assert!(key_id.len() == 16 && hex(key_id) && secret.len() == 48 && hex(secret));
    let pk = public.strip_prefix("zp_live_pk_").unwrap();
    assert!(pk.len() == 16 && hex(pk));
    // The key id in the key is the record's (and the one the upstream sees).
    assert_eq!(id, format!("key_{key_id}"));
    // "Only an argon2 hash of the secret is stored server-side."
    let stored = std::fs::read_to_string(&z.store).unwrap();
    assert!(!stored.contains(secret) && !stored.contains(&key));
    {
        use sha2::{Digest, Sha256};
        let sha = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert!(
            !stored.contains(&sha),
            "no fast hash of the secret key is stored"
        );
        assert!(stored.contains("$argon2id$"));
    }

    let api = |k: &str| vec![("x-api-key", k.to_owned())];
    let call = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let z = &z;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            z.call(Method::GET, path, &h, "").await
        }
    };
    // "Authenticate every request with your secret API key in the X-Api-Key header"
    let r = call(api(&key), "/v1/deposits").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-auth-key-id").as_deref(), Some(&*id));
    // "On success you get RateLimit-Limit and RateLimit-Remaining headers"
    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("120"));
    assert!(header(&r, "ratelimit-remaining").is_some());
    assert!(header(&r, "x-ratelimit-limit").is_none());
    // "An Authorization: Bearer … header on these routes is … rejected with 401."
    for path in ["/v1/deposit-addresses", "/v1/deposits", "/v1/webhooks"] {
        let r = call(vec![("authorization", format!("Bearer {key}"))], path).await;
        assert_eq!(
            (r.status.as_u16(), code_of(&r).as_str()),
            (401, "INVALID_API_KEY"),
            "{path}"
        );
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("X-Api-Key")
        );
        // Where Bearer is not accepted, no WWW-Authenticate: Bearer challenge.
        assert!(header(&r, "www-authenticate").is_none());
    }
    // "A missing or malformed key returns 401 with code INVALID_API_KEY."
    let r = call(vec![], "/v1/deposits").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "INVALID_API_KEY")
    );
    assert!(
        !r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let r = call(api("zp_live_sk_nothex"), "/v1/deposits").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "INVALID_API_KEY")
    );
    // A known key id with a wrong secret is not that key.
    let forged = format!("zp_live_sk_{key_id}_{}", "0".repeat(48));
    let r = call(api(&forged), "/v1/deposits").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "INVALID_API_KEY")
    );
    assert_eq!(call(api(&key), "/v1/deposits").await.status, 200);
    // "403 IP_NOT_ALLOWED. The error message echoes the IP ZaroPay saw"
    let r = call(api(&pinned), "/v1/deposits").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (403, "IP_NOT_ALLOWED")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );
    // "Per-key 120 req/min … 429 Too Many Requests with a Retry-After header (seconds)"
    let (counted, _) = z.create(&[]);
    for i in 0..120 {
        assert_eq!(
            call(api(&counted), "/v1/deposits").await.status,
            200,
            "request {i}"
        );
    }
    let r = call(api(&counted), "/v1/deposits").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (429, "RATE_LIMITED")
    );
    assert!(header(&r, "retry-after").unwrap().parse::<u64>().unwrap() <= 60);
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("0"));
    // "Per-IP 600 req/min DoS floor across all /v1 traffic": 130 requests so far from here
    // (those refused before the key was known count too).
    let fresh: Vec<String> = (0..5).map(|_| z.create(&[]).0).collect();
    let mut ok = 0;
    let mut limited = None;
    'outer: for k in &fresh {
        for _ in 0..110 {
            let r = call(api(k), "/v1/deposits").await;
            if r.status == 429 {
                limited = Some(r);
                break 'outer;
            }
            ok += 1;
        }
    }
    let limited = limited.expect("the per-IP floor never applied");
    assert_eq!(code_of(&limited), "RATE_LIMITED");
    assert_eq!(ok, 600 - 130, "exactly the floor of 600 passed");

    // "The environment is baked into the key … cross-checked on every request, so a test key
    // can never be replayed as live (or vice versa)": a live-looking key imported with a test
    // record is refused on the test instance.
    let t = Running::start("zaropay", &up, &[("ENVIRONMENT", "\"test\"")]);
    let imported = "zp_live_sk_a1b2c3d4e5f60718_0123456789abcdef0123456789abcdef0123456789abcdef";
    let file = t._dir.path().join("import.jsonl");
    std::fs::write(
        &file,
        format!("{{\"key\":\"{imported}\",\"owner\":\"acct_1\",\"env\":\"test\"}}\n"),
    )
    .unwrap();
    let out = keygate_env(
        &[
            "keys",
            "--config",
            &t.profile,
            "import",
            file.to_str().unwrap(),
        ],
        &t.envs,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = t
        .call(Method::GET, "/v1/deposits", &[("x-api-key", imported)], "")
        .await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "WRONG_ENVIRONMENT")
    );
}

#[tokio::test]
async fn zynta() {
    let up = Upstream::start().await;
    let z = Running::start("zynta", &up, &[]);
    let (all, _) = z.create(&["--scopes", "all"]);
    let (reader, _) = z.create(&["--scopes", "quotes:read,recipients:write"]);
    let (public, _) = z.create(&["--scopes", "all", "--type", "publishable"]);
    let (pinned, _) = z.create(&["--scopes", "all", "--allow-ip", "10.9.9.0/24"]);
    let (ng_ke, _) = z.create(&["--scopes", "all", "--restrict", "country=NG,KE"]);
    assert!(all.starts_with("sk_live_") && public.starts_with("pk_live_"));
    let call = |method: Method, path: &'static str, key: &str, body: &'static str| {
        let (z, key) = (&z, key.to_owned());
        async move { z.call(method, path, &[("x-api-key", &key)], body).await }
    };
    // "Pass your secret key in the x-api-key header"; "The all scope grants full access."
    let r = call(
        Method::POST,
        "/api/v1/quotes",
        &all,
        r#"{"destinationCountry":"GH"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = z
        .call(
            Method::GET,
            "/api/v1/quotes",
            &[("authorization", &format!("Bearer {all}"))],
            "",
        )
        .await;
    assert_eq!(r.status, 401, "Authorization is not Zynta's carrier");
    // Flat bodies: {"code","message"}, nothing else.
    let body = r.json();
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    // "If your key lacks the required scope … 403 Forbidden … indicating which scope is needed"
    assert_eq!(
        call(Method::GET, "/api/v1/quotes", &reader, "")
            .await
            .status,
        200
    );
    let r = call(
        Method::POST,
        "/api/v1/quotes",
        &reader,
        r#"{"destinationCountry":"NG"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "forbidden");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("quotes:write")
    );
    let r = call(Method::GET, "/api/v1/transfers", &reader, "").await;
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("transfers:read")
    );
    // ":write" covers ":read".
    assert_eq!(
        call(Method::GET, "/api/v1/recipients", &reader, "")
            .await
            .status,
        200
    );
    // Publishable keys identify an account, they do not authenticate API calls.
    let r = call(Method::GET, "/api/v1/quotes", &public, "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["code"].as_str()),
        (403, Some("forbidden"))
    );
    // The IP allowlist body, exactly.
    let r = call(Method::GET, "/api/v1/quotes", &pinned, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        serde_json::json!({"code": "forbidden", "message": "Request origin IP is not in the API key allowlist."})
    );
    // Country restrictions: "If a request targets a country not in the key's allowed list,
    // the API returns a 403".
    let body = r#"{"recipientId":"r_1","destinationCountry":"KE","amount":10}"#;
    let r = call(Method::POST, "/api/v1/quotes", &ng_ke, body).await;
    assert_eq!(r.status, 200);
    // The body read for the check is forwarded byte for byte.
    let sha = {
        use sha2::{Digest, Sha256};
        Sha256::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(r.json()["body_sha256"], sha);
    let r = call(
        Method::POST,
        "/api/v1/transfers/offramp",
        &ng_ke,
        r#"{"destinationCountry":"ng"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "country codes compare without case");
    let r = call(
        Method::POST,
        "/api/v1/quotes",
        &ng_ke,
        r#"{"destinationCountry":"GH"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "forbidden");
    assert!(r.json()["message"].as_str().unwrap().contains("GH"));
    let r = call(Method::POST, "/api/v1/quotes", &ng_ke, r#"{"amount":10}"#).await;
    assert_eq!(r.status, 403, "a restricted key must name the country");
    let r = call(Method::POST, "/api/v1/quotes", &ng_ke, "not json").await;
    assert_eq!(
        r.status, 400,
        "fail closed on a body that cannot be checked"
    );
    // Reads do not carry a country: a restricted key reads freely.
    assert_eq!(
        call(Method::GET, "/api/v1/quotes", &ng_ke, "").await.status,
        200
    );
}

#[tokio::test]
async fn zendfi() {
    let up = Upstream::start().await;
    let z = Running::start("zendfi", &up, &[]);
    let (full, full_id) = z.create(&[]);
    let (second, _) = z.create(&[]);
    let (reader, _) = z.create(&["--scopes", "payments_read"]);
    let other = {
        let v = z.keys(&["create", "--owner", "acct_2"]);
        v["key"].as_str().unwrap().to_owned()
    };
    let (live, _) = z.create(&["--env", "live"]);
    // "zfi_test_ … zfi_live_": the mode in the prefix, a hex body.
    let body = full.strip_prefix("zfi_test_").unwrap();
    assert!(body.len() == 48 + 8 && body.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(live.starts_with("zfi_live_"));
    // "full_access — All operations (default)"
    let shown = z.keys(&["show", &full_id]);
    assert_eq!(shown["scopes"], serde_json::json!(["full_access"]));

    let call = |method: Method, path: &'static str, key: &str| {
        let (z, key) = (&z, format!("Bearer {key}"));
        async move { z.call(method, path, &[("authorization", &key)], "{}").await }
    };
    // "Rate limit headers are included in every response: X-RateLimit-Limit, -Remaining,
    // -Reset (unix time)"
    let r = call(Method::GET, "/api/v1/payments", &full).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("200"));
    let reset: u64 = header(&r, "x-ratelimit-reset").unwrap().parse().unwrap();
    let now = keygate::time::Timestamp::now().unix();
    assert!(reset > now && reset <= now + 3600);
    assert!(header(&r, "ratelimit-limit").is_none());
    // A read-only key: "can call GET /payments and GET /payments/:id but will receive a 403
    // Forbidden if it tries to create a payment" — and the 403 carries the headers too.
    assert_eq!(
        call(Method::GET, "/api/v1/payments", &reader).await.status,
        200
    );
    assert_eq!(
        call(Method::GET, "/api/v1/payments/pay_1", &reader)
            .await
            .status,
        200
    );
    let r = call(Method::POST, "/api/v1/payments", &reader).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (403, "insufficient_scope")
    );
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("50"));
    // "All other endpoints 100 requests per hour"
    let r = call(Method::GET, "/api/v1/merchants/me", &full).await;
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("100"));
    // "Test keys cannot access live data and vice versa."
    let r = call(Method::GET, "/api/v1/payments", &live).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "wrong_environment")
    );
    // "rate-limited per merchant": two keys of one merchant share "payment creation 50/h".
    for i in 0..50 {
        let key = if i % 2 == 0 { &full } else { &second };
        let r = call(Method::POST, "/api/v1/payments", key).await;
        assert_eq!(r.status, 200, "creation {i}");
    }
    let r = call(Method::POST, "/api/v1/payments", &second).await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (429, "rate_limited")
    );
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("0"));
    // Another merchant is not affected.
    assert_eq!(
        call(Method::POST, "/api/v1/payments", &other).await.status,
        200
    );
    // "Key usage (timestamp, endpoint, IP address, response status)" in the audit trail.
    let audit = z.store.with_extension("json.audit.jsonl");
    assert_eventually!(
        std::fs::read_to_string(&audit).is_ok_and(|t| t
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| e["action"] == "key.used"
                && e["route"] == "create-payment"
                && e["statuses"]["429"] == 1
                && e["client_ips"][0] == "127.0.0.1")),
        Duration::from_secs(5),
        "no key.used event with the exact statuses"
    );
}

/// ZendFi's key management API, with the merchant's own key, on the proxy port.
#[tokio::test]
async fn zendfi_self_service() {
    let up = Upstream::start().await;
    let z = Running::start("zendfi", &up, &[]);
    let (manager, manager_id) = z.create(&["--scopes", "keys_manage,payments_read"]);
    let (reader, _) = z.create(&["--scopes", "payments_read"]);
    let (_, live_id) = z.create(&["--env", "live"]);
    let (_, stranger_id) = {
        let v = z.keys(&["create", "--owner", "acct_2"]);
        (
            v["key"].as_str().unwrap().to_owned(),
            v["record"]["id"].as_str().unwrap().to_owned(),
        )
    };
    let bearer = |k: &str| format!("Bearer {k}");
    let api = |method: Method, path: String, key: String, body: &'static str| {
        let z = &z;
        async move {
            z.call(method, &path, &[("authorization", &bearer(&key))], body)
                .await
        }
    };
    let hits = up.hits();

    // List: "all API keys for the authenticated merchant … only metadata", exactly ZendFi's
    // fields, test and live.
    let r = api(Method::GET, "/api/v1/keys".into(), manager.clone(), "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let list = r.json();
    let items = list.as_array().expect("a bare array");
    assert_eq!(
        items.len(),
        3,
        "the merchant's three keys, not acct_2's: {list}"
    );
    for k in items {
        let mut fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["created_at", "id", "is_active", "last_used_at", "mode"]
        );
    }
    assert!(
        items
            .iter()
            .any(|k| k["id"] == live_id && k["mode"] == "live")
    );
    assert!(items.iter().all(|k| k["id"] != stranger_id));
    assert!(
        !list.to_string().contains("zfi_"),
        "no key material in a listing"
    );
    // Ratelimit headers on the API's answers too.
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("30"));

    // Create: {"mode":"test"} -> {"key","id","mode","created_at"}, the key shown once.
    let r = api(
        Method::POST,
        "/api/v1/keys".into(),
        manager.clone(),
        r#"{"mode":"test"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    let mut fields: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["created_at", "id", "key", "mode"]);
    let new_key = created["key"].as_str().unwrap().to_owned();
    let new_id = created["id"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("zfi_test_"));
    // It works at once, with the creator's scopes (never more).
    let r = api(Method::GET, "/api/v1/payments".into(), new_key.clone(), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-scopes").as_deref(),
        Some("keys_manage,payments_read")
    );
    // Rotate: the documented shape; "The old key stops working immediately".
    let r = api(
        Method::POST,
        format!("/api/v1/keys/{new_id}/rotate"),
        manager.clone(),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rotated = r.json();
    let mut fields: Vec<&str> = rotated
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "created_at",
            "mode",
            "new_key",
            "new_key_id",
            "old_key_deactivated",
            "old_key_id"
        ]
    );
    assert_eq!(rotated["old_key_id"], *new_id);
    assert_eq!(rotated["old_key_deactivated"], true);
    let r = api(Method::GET, "/api/v1/payments".into(), new_key.clone(), "").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (401, "expired_key")
    );
    let newer = rotated["new_key"].as_str().unwrap().to_owned();
    assert_eq!(
        api(Method::GET, "/api/v1/payments".into(), newer.clone(), "")
            .await
            .status,
        200
    );
    // Revoke.
    let newer_id = rotated["new_key_id"].as_str().unwrap().to_owned();
    let r = api(
        Method::POST,
        format!("/api/v1/keys/{newer_id}/revoke"),
        manager.clone(),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["is_active"], false);
    assert_eq!(
        api(Method::GET, "/api/v1/payments".into(), newer, "")
            .await
            .status,
        401
    );

    // Another merchant's key does not exist here: 404, not 403.
    for (m, path) in [
        (Method::GET, format!("/api/v1/keys/{stranger_id}")),
        (Method::POST, format!("/api/v1/keys/{stranger_id}/rotate")),
        (Method::POST, format!("/api/v1/keys/{stranger_id}/revoke")),
        (Method::GET, "/api/v1/keys/key_doesnotexist".to_owned()),
    ] {
        let r = api(m, path.clone(), manager.clone(), "").await;
        assert_eq!(r.status, 404, "{path}");
    }
    // No escalation: scopes it does not hold, the live environment, a stronger key's secret.
    let r = api(
        Method::POST,
        "/api/v1/keys".into(),
        manager.clone(),
        r#"{"mode":"test","scopes":["full_access"]}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("full_access")
    );
    let r = api(
        Method::POST,
        "/api/v1/keys".into(),
        manager.clone(),
        r#"{"mode":"live"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let (full, full_id) = z.create(&[]);
    let r = api(
        Method::POST,
        format!("/api/v1/keys/{full_id}/rotate"),
        manager.clone(),
        "",
    )
    .await;
    assert_eq!(
        r.status, 403,
        "a full_access key's successor would be stronger"
    );
    assert_eq!(
        api(Method::GET, "/api/v1/payments".into(), full.clone(), "")
            .await
            .status,
        200
    );
    // A key without keys_manage: 403 naming the scope.
    let r = api(Method::GET, "/api/v1/keys".into(), reader.clone(), "").await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (403, "insufficient_scope")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keys_manage")
    );
    // "Rotate key 5 requests per minute" counts requests: one rotation, one of a stranger's
    // key (404) and one refused (403) so far; two more pass, the next is 429.
    for _ in 0..2 {
        let (_, id) = z.create(&["--scopes", "payments_read"]);
        let r = api(
            Method::POST,
            format!("/api/v1/keys/{id}/rotate"),
            manager.clone(),
            "",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let (_, id) = z.create(&["--scopes", "payments_read"]);
    let r = api(
        Method::POST,
        format!("/api/v1/keys/{id}/rotate"),
        manager.clone(),
        "",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), code_of(&r).as_str()),
        (429, "rate_limited")
    );
    assert!(header(&r, "retry-after").is_some());

    // Never forwarded.
    let payments_calls = 3; // new_key, newer, full: the refused ones never reach it
    assert_eq!(
        up.hits(),
        hits + payments_calls,
        "the key API reached the upstream"
    );
    // The audit trail names the calling key as actor; the store and logs hold no created key.
    let audit = z.store.with_extension("json.audit.jsonl");
    assert_eventually!(
        std::fs::read_to_string(&audit)
            .is_ok_and(|t| t.contains(&format!("\"actor\":\"key:{manager_id}\""))
                && t.contains("\"action\":\"key.rotated\"")),
        Duration::from_secs(5),
        "no audit event with the calling key as actor"
    );
    let stored = std::fs::read_to_string(&z.store).unwrap();
    let logs = z.served.logs.lock().unwrap().join("\n");
    for secret in [&new_key, &manager] {
        let body = &secret["zfi_test_".len()..];
        assert!(
            !stored.contains(body) && !logs.contains(body),
            "key material stored or logged"
        );
    }
}
