//! The release build's profile-guided optimisation: `.cargo/pgo-rustc`, the rustc wrapper that
//! adds the recorded profile to a compilation, run against a stand-in compiler that prints the
//! arguments it was given. The profile is added to optimised x86-64 Linux compilations by the
//! compiler that recorded it, and to nothing else.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recorded() -> String {
    std::fs::read_to_string(root().join(".cargo/keygate.profdata.rustc"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A stand-in `rustc`: `-V` answers `$FAKE_VERSION`, anything else prints the arguments, one
/// per line.
const COMPILER: &str = "#!/bin/sh\nif [ \"$1\" = -V ]; then echo \"$FAKE_VERSION\"; exit 0; fi\nfor a in \"$@\"; do echo \"$a\"; done\n";

/// A stand-in clippy-driver: runs the compiler it is given, as clippy-driver does.
const DRIVER: &str = "#!/bin/sh\nexec \"$@\"\n";

/// An executable script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot make {name} executable: {e}"));
    path
}

/// The wrapper run as cargo runs it, on the stand-in compiler of `version` (behind the
/// stand-in clippy-driver, as `cargo clippy` runs it, when `driver`); (the compiler's
/// arguments, the wrapper's stderr).
fn wrapped_by(
    driver: bool,
    version: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut cmd = Command::new(root().join(".cargo/pgo-rustc"));
    if driver {
        cmd.arg(script(dir.path(), "clippy-driver", DRIVER));
    }
    let out = cmd
        .arg(script(dir.path(), "rustc", COMPILER))
        .args(args)
        .env("FAKE_VERSION", version)
        .env_remove("KEYGATE_PGO")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run .cargo/pgo-rustc: {e}"));
    assert!(out.status.success(), "the wrapper failed: {out:?}");
    let args = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (args, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn wrapped(version: &str, env: &[(&str, &str)], args: &[&str]) -> (Vec<String>, String) {
    wrapped_by(false, version, env, args)
}

const RELEASE: &[&str] = &["--crate-name", "keygate", "-C", "opt-level=3", "src/lib.rs"];

fn profiled(args: &[String]) -> bool {
    let profile = root().join(".cargo/keygate.profdata");
    args.iter()
        .any(|a| a == &format!("-Cprofile-use={}", profile.display()))
}

#[test]
fn the_profile_exists_with_the_compiler_that_recorded_it() {
    assert!(root().join(".cargo/keygate.profdata").is_file());
    assert!(
        recorded().starts_with("rustc "),
        "keygate.profdata.rustc holds {:?}",
        recorded()
    );
}

#[test]
fn an_optimised_build_by_the_recording_compiler_gets_the_profile_and_nothing_else_does() {
    let native = cfg!(all(target_os = "linux", target_arch = "x86_64"));
    let version = recorded();
    let (args, _) = wrapped(&version, &[], RELEASE);
    assert_eq!(profiled(&args), native, "{args:?}");
    if native {
        // The compiler's own arguments come first and unchanged.
        assert_eq!(&args[..RELEASE.len()], RELEASE);
        assert!(args.contains(&"-Cllvm-args=-no-pgo-warn-mismatch".to_owned()));
    }
    let (args, _) = wrapped(
        &version,
        &[],
        &[RELEASE, &["--target", "x86_64-unknown-linux-gnu"]].concat(),
    );
    assert_eq!(profiled(&args), native, "{args:?}");

    /// What, the compiler's arguments, the environment.
    type Case<'a> = (&'a str, Vec<&'a str>, &'a [(&'a str, &'a str)]);
    let mut unprofiled: Vec<Case> = vec![
        (
            "a debug build",
            vec!["--crate-name", "keygate", "-C", "opt-level=0"],
            &[],
        ),
        ("KEYGATE_PGO=0", RELEASE.to_vec(), &[("KEYGATE_PGO", "0")]),
    ];
    // A release build with these arguments added.
    for (what, extra) in [
        (
            "another target",
            &["--target", "aarch64-unknown-linux-gnu"][..],
        ),
        ("another target (=)", &["--target=aarch64-apple-darwin"]),
        ("an instrumented build", &["-Cprofile-generate=/tmp/p"]),
        ("a coverage build", &["-Cinstrument-coverage"]),
        ("a fuzzing build", &["-Zsanitizer=address"]),
    ] {
        unprofiled.push((what, [RELEASE, extra].concat(), &[]));
    }
    for (what, args_in, env) in &unprofiled {
        let (args, _) = wrapped(&version, env, args_in);
        assert!(!profiled(&args), "{what}: {args:?}");
        assert_eq!(&args, args_in, "{what}: the arguments changed");
    }
}

#[test]
fn another_compiler_builds_without_the_profile_and_says_so_once() {
    let (args, err) = wrapped("rustc 0.0.1 (not the recording one)", &[], RELEASE);
    assert!(!profiled(&args), "{args:?}");
    assert_eq!(args, RELEASE);
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        assert!(err.contains("built without its execution profile"), "{err}");
        assert!(err.contains("rustc 0.0.1"), "{err}");
    }
    // Said for keygate's own crate only, not for each dependency.
    let dep = ["--crate-name", "tokio", "-C", "opt-level=3"];
    let (_, err) = wrapped("rustc 0.0.1 (not the recording one)", &[], &dep);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn under_a_workspace_wrapper_the_compiler_is_the_second_argument() {
    // `cargo clippy --release`: pgo-rustc clippy-driver rustc <args>.
    let (args, _) = wrapped_by(true, &recorded(), &[], RELEASE);
    assert_eq!(
        profiled(&args),
        cfg!(all(target_os = "linux", target_arch = "x86_64")),
        "{args:?}"
    );
    assert_eq!(&args[..RELEASE.len()], RELEASE);
}
