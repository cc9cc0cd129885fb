//! `keygate init`: a minimal, loopback-bound configuration to start from, instead of copying the
//! full example. Never overwrites a file unless asked.

use std::path::Path;

/// The file `keygate init` writes; `{upstream}` is replaced.
const TEMPLATE: &str = r#"# keygate configuration, written by `keygate init`. Every setting, with its default, is in
# sidecar.toml.example and the README; relative paths are taken from this file's folder.

[listen]
# Where clients connect. Loopback only: use "0.0.0.0:8080" (or ":8080") to accept others.
address = "127.0.0.1:8080"

[upstream]
# The API keygate protects.
url = "{upstream}"

[store]
# Key records (hashes only, never plaintext keys), next to this file.
path = "keys.json"

[ops]
# /healthz, /readyz and /metrics.
address = "127.0.0.1:9090"
"#;

/// Writes the minimal configuration to `path`; refuses an existing file unless `force`.
pub fn write_config(path: &Path, upstream: &str, force: bool) -> anyhow::Result<()> {
    let url = url_checked(upstream)?;
    if path.exists() && !force {
        anyhow::bail!("{} exists; pass --force to replace it", path.display());
    }
    std::fs::write(path, TEMPLATE.replace("{upstream}", &url))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let shown = path.display();
    println!("wrote {shown}");
    println!("next:");
    println!("  keygate keys --config {shown} create --owner acct_1 --scopes all");
    println!("  keygate serve --config {shown}");
    Ok(())
}

/// The upstream URL as the configuration will read it, or why not.
fn url_checked(upstream: &str) -> anyhow::Result<String> {
    let text = TEMPLATE.replace("{upstream}", upstream);
    crate::config::Config::from_toml(&text, Vec::new(), |_| None)
        .map_err(|e| anyhow::anyhow!("--upstream {upstream:?}: {e}"))?;
    Ok(upstream.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_is_a_valid_loopback_config() {
        let text = super::TEMPLATE.replace("{upstream}", "http://127.0.0.1:3000");
        let c = crate::config::Config::from_toml(&text, Vec::new(), |_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.listen.address.ip().is_loopback());
        assert!(c.ops.address.ip().is_loopback());
        assert!(super::url_checked("not a url").is_err());
    }
}
