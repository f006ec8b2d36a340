//! The ISO 20022 sponsor bank end to end: the real app, the `iso20022-bank` adapter and the
//! simulator's bank over loopback HTTP. Payments claimed together go out as one pain.001 file;
//! every file PIL uploads is validated with `xmllint --schema` against the real
//! pain.001.001.09 XSD; statuses come back as pain.002 reports (answers, callbacks, lookups).
//! The simulator's execution counts (by EndToEndId) prove nothing was paid twice.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use pil::simulator::SimConfig;
use serde_json::Value;

use crate::helpers::{Exchange, TestApp, payment, recorded_app, repo, status};

const XSD: &str = "specs/pain.001.001.09.xsd";

fn bank(account: &str) -> String {
    format!("account:{account}@bank")
}

fn id(p: &Value) -> &str {
    p["id"].as_str().expect("id")
}

/// The EndToEndId PIL gives a payment: its id without hyphens.
fn e2e(p: &Value) -> String {
    id(p).replace('-', "")
}

/// Validates `xml` against the pain.001.001.09 XSD with xmllint; the error names what failed.
fn xmllint(xml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pain001.xml");
    std::fs::write(&file, xml).expect("write");
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(repo().join(XSD))
        .arg(&file)
        .output()
        .expect("xmllint is needed (Debian: apt-get install libxml2-utils; .ci/run installs it)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The pain.001 files PIL uploaded, as the recorder saw them.
fn uploads(seen: &[Exchange]) -> Vec<&Exchange> {
    seen.iter()
        .filter(|e| e.method == "POST" && e.path == "/bank/v1/payment-files")
        .collect()
}

fn count(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// Every payment was executed at most once; those that succeeded exactly once.
fn assert_paid_at_most_once(app: &TestApp, all: &BTreeMap<String, Value>) {
    let stats = app.sim.simulator.stats();
    for (reference, p) in all {
        let executed = count(&stats.executed, &e2e(p));
        let want = u64::from(status(p) == "succeeded");
        assert_eq!(executed, want, "{reference} executed {executed} times: {p}");
    }
}

async fn full(app: &TestApp, p: &Value) -> Value {
    app.get(&format!("/api/v1/payments/{}", id(p))).await.1
}

#[test]
fn xmllint_checks_the_schema_for_real() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("adapters/iso20022-bank/tests/batch_file.json"))
            .expect("fixture"),
    )
    .expect("json");
    let good = fixture["expect_batch_request"]["body"]
        .as_str()
        .expect("body");
    xmllint(good).expect("the adapter's fixture file is a valid pain.001.001.09");
    // Without the mandatory GrpHdr/MsgId the same file must be refused.
    let start = good.find("<MsgId>").expect("MsgId");
    let end = good.find("</MsgId>").expect("/MsgId") + "</MsgId>".len();
    let broken = format!("{}{}", &good[..start], &good[end..]);
    let err = xmllint(&broken).expect_err("a file without MsgId is invalid");
    assert!(err.contains("MsgId") || err.contains("CreDtTm"), "{err}");
}

#[tokio::test]
async fn bank_files_reach_the_expected_final_states() {
    let (app, rec, _) = recorded_app(SimConfig::default(), "iso20022-bank", |_| None).await;
    let cases: Vec<(&str, &str, &str, &str, Option<&str>)> = vec![
        ("ok-1", "100200300401", "1250.50", "succeeded", Some("ACCC")),
        ("ok-2", "100200300402", "300", "succeeded", Some("ACCC")),
        (
            "ok-cents",
            "100200300403",
            "0.05",
            "succeeded",
            Some("ACCC"),
        ),
        ("no-account", "46733123475", "10", "failed", Some("AC01")),
        ("no-funds", "46733123476", "10", "failed", Some("AM04")),
        ("over-limit", "46733123457", "10", "failed", Some("AM21")),
        ("blocked", "46733123456", "10", "failed", Some("AC06")),
        ("forbidden", "46733123451", "10", "failed", Some("AG01")),
        ("slow", "46733123454", "10", "succeeded", Some("ACCC")),
        (
            "report-lost",
            "46733123471",
            "10",
            "succeeded",
            Some("ACCC"),
        ),
        (
            "report-twice",
            "46733123472",
            "10",
            "succeeded",
            Some("ACCC"),
        ),
    ];
    let batch = app
        .submit(
            "iso-mixed",
            cases
                .iter()
                .map(|(r, acct, amount, _, _)| payment(r, &bank(acct), amount))
                .collect(),
        )
        .await;
    let all = app.wait_final(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, _, _, want, code) in &cases {
        let p = &all[*reference];
        assert_eq!(status(p), *want, "{reference}: {p}");
        assert_eq!(p["dfsp"], "iso20022-bank", "{reference}: {p}");
        if let Some(code) = code {
            assert_eq!(p["reason_code"], *code, "{reference}: {p}");
        }
        assert_eq!(
            count(&stats.submissions, &e2e(p)),
            1,
            "{reference} went to the bank once"
        );
    }
    assert_paid_at_most_once(&app, &all);

    // Bulk: fewer files than payments, each a valid pain.001.001.09 whose transactions are
    // exactly PIL's payments, keyed by EndToEndId.
    let seen = rec.seen.lock().expect("lock").clone();
    let files = uploads(&seen);
    assert!(
        !files.is_empty() && files.len() < cases.len(),
        "{} files",
        files.len()
    );
    let mut in_files = Vec::new();
    for f in &files {
        xmllint(&f.text).unwrap_or_else(|e| panic!("invalid pain.001: {e}\n{}", f.text));
        assert_eq!(f.status, 202, "{}", f.response_text);
        assert!(f.headers.contains_key("x-callback-url"), "{:?}", f.headers);
        for part in f.text.split("<EndToEndId>").skip(1) {
            in_files.push(part.split('<').next().unwrap_or_default().to_string());
        }
    }
    let mut expected: Vec<String> = all.values().map(e2e).collect();
    expected.sort();
    in_files.sort();
    assert_eq!(in_files, expected, "every payment in exactly one file");

    // A payment's story: one file per payment group, the file's MsgId as idempotency key and
    // dfsp_ref, the status from the bank's report.
    let ok = full(&app, &all["ok-1"]).await;
    let steps: Vec<&str> = ok["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["to"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        steps,
        ["received", "routed", "sending", "accepted", "succeeded"],
        "{ok}"
    );
    let key = ok["dispatch_attempts"][0]["idempotency_key"]
        .as_str()
        .expect("key");
    assert_eq!(ok["dfsp_ref"], key, "{ok}");
    assert!(
        files
            .iter()
            .any(|f| f.text.contains(&format!("<MsgId>{key}</MsgId>")))
    );

    // The lost report was made good by looking the file up.
    let lost = full(&app, &all["report-lost"]).await;
    let kinds: Vec<&str> = lost["dispatch_attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or_default())
        .collect();
    assert!(kinds.contains(&"status"), "{lost}");
    assert!(stats.status_queries >= 1);
}

#[tokio::test]
async fn a_timed_out_upload_is_looked_up_never_resent() {
    // The bank decides the file at once but answers the upload after PIL's timeout, and its
    // report callback comes far later: only looking the file up can settle the payments.
    let sim = SimConfig {
        callback_delay_ms: 60_000,
        ..SimConfig::default()
    };
    let app = crate::helpers::spawn_with(sim, |_, _| {}).await;
    let batch = app
        .submit(
            "iso-timeout",
            vec![
                payment("hangs", &bank("46733123470"), "10"),
                payment("with-it-1", &bank("100200300411"), "20"),
                payment("with-it-2", &bank("100200300412"), "30"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, p) in &all {
        assert_eq!(status(p), "succeeded", "{reference}: {p}");
        assert_eq!(count(&stats.submissions, &e2e(p)), 1, "{reference}");
        let story = full(&app, p).await;
        let steps: Vec<&str> = story["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|e| e["to"].as_str().unwrap_or_default())
            .collect();
        assert!(steps.contains(&"unknown"), "{reference}: {story}");
    }
    assert!(app.sim.simulator.stats().status_queries >= 1);
    assert_eq!(app.sim.simulator.stats().callbacks_sent, 0);
    assert_paid_at_most_once(&app, &all);
}

#[tokio::test]
async fn a_report_before_the_answer_and_tokens_revoked_mid_run_pay_nobody_twice() {
    let app = crate::helpers::spawn_with(SimConfig::default(), |_, _| {}).await;
    let first = app
        .submit(
            "iso-early",
            vec![
                payment("early", &bank("46733123473"), "10"),
                payment("early-peer", &bank("100200300421"), "20"),
            ],
        )
        .await;
    let first = app.wait_final(&first).await;
    for (reference, p) in &first {
        assert_eq!(status(p), "succeeded", "{reference}: {p}");
    }
    let issued = app.sim.simulator.stats().tokens_issued;
    assert!(issued >= 1);
    // Every token the bank gave out stops working; the next files need a new one.
    let revoke = app
        .http
        .post(format!("{}/_sim/bank/tokens/revoke", app.sim.base_url()))
        .send()
        .await
        .expect("revoke");
    assert!(revoke.status().is_success());
    let second = app
        .submit(
            "iso-after-revoke",
            (0..6)
                .map(|i| payment(&format!("r{i}"), &bank(&format!("10020030043{i}")), "5"))
                .collect(),
        )
        .await;
    let second = app.wait_final(&second).await;
    for (reference, p) in &second {
        assert_eq!(status(p), "succeeded", "{reference}: {p}");
    }
    assert!(app.sim.simulator.stats().tokens_issued > issued);
    let mut all = first;
    all.extend(second);
    assert_paid_at_most_once(&app, &all);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more was executed after everything was final.
    assert_paid_at_most_once(&app, &all);
}
