//! `pil check` against the shipped scripts and broken copies.

use std::process::Command;

use crate::helpers::{install_scripts, repo};

fn pil_check(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pil"))
        .arg("check")
        .arg(dir)
        .env_remove("PIL_RULES_DIR")
        .env_remove("PIL_ADAPTERS_DIR")
        .output()
        .expect("run pil check")
}

#[test]
fn shipped_scripts_pass() {
    let out = pil_check(&repo());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("adapters/mtn-momo"), "{stdout}");
    assert!(stdout.contains("adapters/mojaloop-sdk"), "{stdout}");
}

#[test]
fn broken_scripts_fail_with_file_line_col() {
    let dir = tempfile::tempdir().expect("tmp");
    install_scripts(dir.path(), "http://127.0.0.1:9");
    let routing = dir.path().join("rules/routing.rhai");
    std::fs::write(&routing, "fn route(p, ctx) {\n    let x = ;\n}\n").expect("write");
    let adapter = dir.path().join("adapters/mtn-momo/adapter.rhai");
    std::fs::write(&adapter, "fn build_request(p, ctx) { #{} }\n").expect("write");
    let out = pil_check(dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routing.rhai:2:"), "{stderr}");
    assert!(stderr.contains("parse_response/2"), "{stderr}");
    let toml = dir.path().join("adapters/mojaloop-sdk/adapter.toml");
    std::fs::write(&toml, "id = \"mojaloop-sdk\"\nbase_url = 5\n").expect("write");
    let out = pil_check(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adapter.toml:2:"), "{stderr}");
}
