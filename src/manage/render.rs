//! The CLI's human output: a freshly issued key, and tables of key metadata (from records as
//! the admin API shows them, so the store and `--admin-url` print the same way).

use std::fmt::Write as _;

/// Human output for a freshly issued key; `view` is the record as the admin API shows it.
pub fn render_new_key(key: &str, view: &serde_json::Value, verb: &str) -> String {
    let field = |name: &str| view[name].as_str().unwrap_or("-").to_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{verb} {} ({}) for {}: {} {} key",
        field("id"),
        field("display_prefix"),
        field("owner"),
        field("environment"),
        field("type"),
    );
    if let Some(scopes) = view["scopes"].as_array().filter(|s| !s.is_empty()) {
        let scopes: Vec<&str> = scopes.iter().filter_map(|s| s.as_str()).collect();
        let _ = writeln!(out, "scopes:  {}", scopes.join(", "));
    }
    if let Some(t) = view["expires_at"].as_str() {
        let _ = writeln!(out, "expires: {t}");
    }
    let _ = writeln!(
        out,
        "\nThis is the only time the key is shown. Store it now:\n\n    {key}\n"
    );
    out
}

/// The key's state for people: `rotating (until …)` for a rotated key in its grace period.
fn state_text(v: &serde_json::Value) -> String {
    let state = v["state"].as_str().unwrap_or("-");
    match (state, v["rotated_to"].as_str(), v["expires_at"].as_str()) {
        ("active", Some(_), Some(until)) => format!("rotating (until {until})"),
        _ => state.to_owned(),
    }
}

fn list(v: &serde_json::Value, name: &str) -> String {
    let items: Vec<String> = v[name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `tier:pro`, `100/60s`, or `-` (the configured default applies).
fn limit_text(v: &serde_json::Value) -> String {
    let l = &v["rate_limit"];
    match (
        l["tier"].as_str(),
        l["limit"].as_u64(),
        l["window_secs"].as_u64(),
    ) {
        (Some(tier), _, _) => format!("tier:{tier}"),
        (None, Some(n), Some(w)) => format!("{n}/{w}s"),
        _ => "-".into(),
    }
}

/// A fixed-width table of key metadata, from records as the admin API shows them.
pub fn render_table(views: &[serde_json::Value]) -> String {
    let header = [
        "ID",
        "PREFIX",
        "NAME",
        "OWNER",
        "ENV",
        "TYPE",
        "STATE",
        "SCOPES",
        "ALLOWED IPS",
        "LIMIT",
        "EXPIRES",
        "LAST USED",
    ];
    let rows: Vec<[String; 12]> = views
        .iter()
        .map(|v| {
            let f = |name: &str, none: &str| v[name].as_str().unwrap_or(none).to_owned();
            [
                f("id", "-"),
                f("display_prefix", "-"),
                f("name", "-"),
                f("owner", "-"),
                f("environment", "-"),
                f("type", "-"),
                state_text(v),
                list(v, "scopes"),
                list(v, "ip_allowlist"),
                limit_text(v),
                f("expires_at", "never"),
                f("last_used_at", "never"),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// One key in detail (`keys show`): every field, one per line.
pub fn render_detail(v: &serde_json::Value) -> String {
    let f = |name: &str, none: &str| v[name].as_str().unwrap_or(none).to_owned();
    let restrictions = v["restrictions"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, vals)| format!("{k}={}", list(&serde_json::json!({ "v": vals }), "v")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    let metadata = v["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, val)| format!("{k}={}", val.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    let rows = [
        ("id", f("id", "-")),
        ("prefix", f("display_prefix", "-")),
        ("name", f("name", "-")),
        ("owner", f("owner", "-")),
        ("environment", f("environment", "-")),
        ("type", f("type", "-")),
        ("state", state_text(v)),
        ("scopes", list(v, "scopes")),
        ("allowed ips", list(v, "ip_allowlist")),
        ("rate limit", limit_text(v)),
        ("restrictions", restrictions),
        ("created", f("created_at", "-")),
        ("expires", f("expires_at", "never")),
        ("revoked", f("revoked_at", "-")),
        ("last used", f("last_used_at", "never")),
        ("rotated from", f("rotated_from", "-")),
        ("rotated to", f("rotated_to", "-")),
        ("metadata", metadata),
    ];
    let mut out = String::new();
    for (k, val) in rows {
        let _ = writeln!(out, "{k:<13} {val}");
    }
    out
}
