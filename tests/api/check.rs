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

fn pil_route(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pil"))
        .arg("route")
        .arg(file)
        .env("PIL_RULES_DIR", repo().join("rules"))
        .env("PIL_ADAPTERS_DIR", repo().join("adapters"))
        .output()
        .expect("run pil route")
}

#[test]
fn route_dry_run_shows_the_decision_and_requests_without_secrets() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("payment.json");
    std::fs::write(
        &file,
        r#"{"reference_id": "r1", "payee_fa": "mobile:256772123456@mtn", "amount": "150.00", "currency": "KES", "payee_name": "Jane"}"#,
    )
    .expect("write");
    let out = pil_route(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    assert_eq!(
        v["decision"]["dfsps"],
        serde_json::json!(["mtn-momo", "mojaloop-sdk"])
    );
    let mtn = &v["candidates"][0]["request"];
    assert!(
        mtn["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/disbursement/v1_0/transfer")),
        "{v}"
    );
    assert_eq!(mtn["body"]["amount"], "150");
    assert_eq!(mtn["headers"]["Ocp-Apim-Subscription-Key"], "***");
    assert_eq!(mtn["headers"]["Authorization"], "***");
    // The configured (default) secrets appear nowhere in the output.
    for secret in ["pil-sim-subscription", "pil-sim-key", "pil-sim-user"] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }
    let ml = &v["candidates"][1]["request"];
    assert_eq!(ml["body"]["amount"], "150");
    assert_eq!(ml["body"]["to"]["idValue"], "256772123456");

    // A payment no rule serves is rejected with the rule's reason.
    std::fs::write(
        &file,
        r#"{"payee_fa": "mobile:1@nobank", "amount": "1", "currency": "KES"}"#,
    )
    .expect("write");
    let out = pil_route(&file);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["decision"]["reject"], "payee_fa.unroutable");
}

fn pil_test(dir: &std::path::Path, adapter: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pil"));
    cmd.arg("test").arg("--path").arg(dir);
    if let Some(a) = adapter {
        cmd.arg(a);
    }
    cmd.env_remove("PIL_RULES_DIR")
        .env_remove("PIL_ADAPTERS_DIR")
        .output()
        .expect("run pil test")
}

#[test]
fn every_shipped_adapter_has_fixtures_and_they_pass() {
    let out = pil_test(&repo(), None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    for entry in std::fs::read_dir(repo().join("adapters")).expect("adapters") {
        let id = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        assert!(
            stdout.contains(&format!("ok   {id}/")),
            "adapter {id} has no passing fixture:\n{stdout}"
        );
    }
}

#[test]
fn a_fixture_that_no_longer_matches_fails_with_a_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    install_scripts(dir.path(), "http://127.0.0.1:9");
    let fixture = dir
        .path()
        .join("adapters/mtn-momo/tests/request_mobile.json");
    let text = std::fs::read_to_string(&fixture).expect("read");
    std::fs::write(
        &fixture,
        text.replace("\"amount\": \"1500.5\"", "\"amount\": \"1500.50\""),
    )
    .expect("write");
    let out = pil_test(dir.path(), Some("mtn-momo"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("body.amount: expected \"1500.50\", got \"1500.5\""),
        "{stdout}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");
    let out = pil_test(dir.path(), Some("no-such-adapter"));
    assert!(!out.status.success());
}

#[test]
fn the_worked_example_adapter_passes_check_and_its_fixtures() {
    let example = repo().join("examples/paystack");
    let out = pil_check(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pil_test(&example, Some("paystack"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("6 fixture(s), 0 failed"), "{stdout}");
}
