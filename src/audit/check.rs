//! `keygate audit verify`: reads the stored trail and checks its hash chains.

use super::{Event, Sink, verify};
use crate::config::Config;

/// `keygate audit verify`: checks the stored trail's hash chains and prints the report; false
/// when it was tampered with (or cannot be read).
pub async fn verify_trail(cfg: &Config) -> bool {
    let sink = match Sink::for_store_config(&cfg.audit, &cfg.store) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    let lines = match sink.read_lines(None, None).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: reading {}: {e}", sink.describe());
            return false;
        }
    };
    let mut events = Vec::with_capacity(lines.len());
    let mut unreadable = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Event>(line) {
            Ok(e) => events.push(e),
            Err(_) => unreadable.push(format!("entry {}: not an audit event (edited?)", i + 1)),
        }
    }
    let mut v = verify(&events);
    v.problems.extend(unreadable);
    println!(
        "{}: {} events in {} chains",
        sink.describe(),
        v.events,
        v.chains
    );
    if v.truncated_chains > 0 {
        println!(
            "{} chains start after their first event (older events rotated or trimmed away)",
            v.truncated_chains
        );
    }
    if v.problems.is_empty() {
        println!("ok: no event was edited, removed or reordered");
        true
    } else {
        for p in &v.problems {
            println!("TAMPERED: {p}");
        }
        false
    }
}
