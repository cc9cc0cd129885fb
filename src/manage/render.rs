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

/// A fixed-width table of key metadata, from records as the admin API shows them.
pub fn render_table(views: &[serde_json::Value]) -> String {
    let header = [
        "ID",
        "PREFIX",
        "OWNER",
        "ENV",
        "TYPE",
        "STATE",
        "SCOPES",
        "CREATED",
        "LAST USED",
    ];
    let rows: Vec<[String; 9]> = views
        .iter()
        .map(|v| {
            let f = |name: &str, none: &str| v[name].as_str().unwrap_or(none).to_owned();
            let scopes: Vec<&str> = v["scopes"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            [
                f("id", "-"),
                f("display_prefix", "-"),
                f("owner", "-"),
                f("environment", "-"),
                f("type", "-"),
                f("state", "-"),
                if scopes.is_empty() {
                    "-".into()
                } else {
                    scopes.join(",")
                },
                f("created_at", "-"),
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
