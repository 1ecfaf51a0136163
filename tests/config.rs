//! Every example config compiles; every broken fixture fails with the error
//! (position, key and the start of the message) written in its `# expect:` lines, both through
//! the library and through `outrigger check`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn example_configs_compile() {
    let configs = files("configs");
    assert!(configs.len() >= 3, "{configs:?}");
    for path in configs {
        // The mesh examples name certificates `outrigger certs demo` makes:
        // compile them beside a fresh set.
        let text = std::fs::read_to_string(&path).unwrap();
        let dir;
        let path = if text.contains("mesh-certs/") {
            dir = common::admin::TempDir::new("example-mesh");
            outrigger::tls::demo::write(&dir.path("mesh-certs"), "example.org").unwrap();
            let copy = dir.path(path.file_name().unwrap().to_str().unwrap());
            std::fs::write(&copy, &text).unwrap();
            copy
        } else {
            path
        };
        let snapshot = outrigger::config::load(&path)
            .unwrap_or_else(|e| panic!("{} should compile:\n{e}", path.display()));
        assert!(!snapshot.listeners.is_empty(), "{}", path.display());
    }
}

#[test]
fn demo_config_is_embedded_and_valid() {
    let on_disk =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/demo.toml"))
            .unwrap();
    assert_eq!(on_disk, outrigger::config::DEMO_CONFIG);
}

#[test]
fn invalid_fixtures_fail_with_their_errors() {
    let fixtures = files("configs/invalid");
    assert!(fixtures.len() >= 20, "{} fixtures", fixtures.len());
    for path in fixtures {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no # expect: line",
            path.display()
        );
        let errors = match outrigger::config::compile(&path, &text) {
            Ok(_) => panic!("{} compiled but should fail", path.display()),
            Err(e) => e.0,
        };
        let got: Vec<String> = errors
            .iter()
            .map(|e| {
                let (line, col) = e.position.expect("every error has a position");
                format!("{line}:{col}: {}: {}", e.key, e.message)
            })
            .collect();
        // Each expectation is the start of its error (long lists of valid
        // keys may grow).
        assert_eq!(got.len(), expected.len(), "{}: {got:?}", path.display());
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                g.starts_with(e.as_str()),
                "{}:\n got: {g}\nwant: {e}",
                path.display()
            );
        }
        for e in &errors {
            assert_eq!(e.file, path);
        }
        // The same through the binary: exit 1, and each error on stderr
        // as `error: FILE:LINE:COL: KEY: MESSAGE`.
        let out = outrigger().arg("check").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for e in &expected {
            let line = format!("error: {}:{e}", path.display());
            assert!(
                stderr.lines().any(|l| l.starts_with(&line)),
                "{}: `outrigger check` did not print {line:?}:\n{stderr}",
                path.display()
            );
        }
    }
}

fn outrigger() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outrigger"))
}

#[test]
fn check_exit_codes_and_output() {
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sidecar.toml");
    let out = outrigger().arg("check").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("ok: 2 listener(s), 4 cluster(s)"),
        "{stdout}"
    );
    // `--config FILE`, as `run` takes it, says the same.
    let same = outrigger()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&same.stdout), stdout);

    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/invalid/multiple-errors.toml");
    let out = outrigger().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("error: {}:", bad.display());
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with(&prefix)).count(),
        2,
        "{stderr}"
    );
    assert!(
        stderr.contains(":5:11: listeners.a.cluster: no cluster named \"nope\""),
        "{stderr}"
    );

    let out = outrigger()
        .args(["check", "/nonexistent/outrigger.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn check_warns_about_a_public_admin_address() {
    let dir = std::env::temp_dir().join(format!("outrigger-check-warn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("public-admin.toml");
    std::fs::write(
        &path,
        "[admin]\naddress = \"0.0.0.0:9901\"\n[listeners.db]\naddress = \"127.0.0.1:15432\"\nprotocol = \"tcp\"\ncluster = \"db\"\n[clusters.db]\nendpoints = [\"127.0.0.1:5432\"]\n",
    )
    .unwrap();
    let out = outrigger().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "a warning is not an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:")
            && stderr.contains("admin.address: 0.0.0.0:9901 is not a loopback address"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_with_invalid_config_exits_nonzero_without_binding() {
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/invalid/bad-address.toml");
    let out = outrigger()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners.db.address"));
}

#[test]
fn version_and_help() {
    let out = outrigger().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("outrigger "));
    let out = outrigger().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    for word in ["run", "check", "demo", "--log-level"] {
        assert!(help.contains(word), "{help}");
    }
}

/// A relative `access_log.path` is relative to the config file's directory
/// (as certificates and endpoint files are), and the error names where it
/// looked.
#[test]
fn access_log_path_is_relative_to_the_config() {
    let dir = common::admin::TempDir::new("relative-log");
    std::fs::create_dir(dir.path("logs")).unwrap();
    let text = "[access_log]\npath = \"logs/access.log\"\n[listeners.db]\naddress = \"127.0.0.1:1\"\nprotocol = \"tcp\"\ncluster = \"pg\"\n[clusters.pg]\nendpoints = [\"127.0.0.1:2\"]\n";
    let config = dir.path("config.toml");
    let snapshot = outrigger::config::compile(&config, text).unwrap();
    let target = snapshot.access_log.unwrap().target.to_string();
    assert_eq!(target, dir.path("logs/access.log").display().to_string());
    let missing = text.replace("logs/access.log", "nowhere/access.log");
    let err = outrigger::config::compile(&config, &missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("\"{}\"", dir.path("nowhere/access.log").display())),
        "{err}"
    );
}
