//! Where a setting is written in a configuration file, so a problem can point at it
//! (`sidecar.toml:17:1: listen.address: …`). A scan of table headers and keys, enough for the
//! files people write (inline tables are found at the key that opens them).

/// `(line, column)`, 1-based, where `setting` (`environment`, `listen.address`,
/// `routes[2].scope`, `listen` for a whole section) is written in `text`.
pub(super) fn locate(text: &str, setting: &str) -> Option<(usize, usize)> {
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut inside: Option<(usize, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let col = line.len() - trimmed.len() + 1;
        if let Some(rest) = trimmed.strip_prefix("[[") {
            let name = rest.split("]]").next()?.trim().to_owned();
            let i = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{i}]");
            *i += 1;
        } else if let Some(rest) = trimmed.strip_prefix('[') {
            table = rest.split(']').next()?.trim().to_owned();
        } else if let Some((key, _)) = trimmed.split_once('=') {
            let key = key.trim().trim_matches('"');
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            let path = if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            };
            if path == setting {
                return Some((n + 1, col));
            }
            // An inline table or array opened here holds the setting.
            if setting.starts_with(&format!("{path}.")) || setting.starts_with(&format!("{path}["))
            {
                inside.get_or_insert((n + 1, col));
            }
            continue;
        } else {
            continue;
        }
        if table == setting {
            inside.get_or_insert((n + 1, col));
        }
    }
    inside
}

/// The setting a problem is about: its text up to the first `": "`, when that is a path.
pub(super) fn setting_of(problem: &str) -> Option<&str> {
    let (head, _) = problem.split_once(": ")?;
    let is_path = !head.is_empty()
        && head
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'));
    is_path.then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_sections_and_array_entries() {
        let text = "environment = \"x\"\n[listen]\n  address = \"nowhere\"\n\n[[routes]]\nname = \"a\"\n\
                    [[routes]]\nname = \"b\"\nscope = 5\n[rate_limits.tiers]\npro = { limit = 0 }\n";
        assert_eq!(locate(text, "environment"), Some((1, 1)));
        assert_eq!(locate(text, "listen.address"), Some((3, 3)));
        assert_eq!(locate(text, "listen"), Some((2, 1)));
        assert_eq!(locate(text, "routes[1].scope"), Some((9, 1)));
        assert_eq!(locate(text, "routes[0]"), Some((5, 1)));
        assert_eq!(locate(text, "rate_limits.tiers.pro.limit"), Some((11, 1)));
        assert_eq!(locate(text, "store.path"), None);
        assert_eq!(setting_of("routes[1].scope: bad"), Some("routes[1].scope"));
        assert_eq!(setting_of("not valid TOML: x"), None);
    }
}
