//! Hot reload of the scripts while payments flow (and the metrics that show it): a routing
//! change written to disk takes effect within a second and loses nothing; broken edits change
//! nothing and are reported with file, line and column; an adapter folder added or removed
//! adds or retires a DFSP, and payments already sent to a retired one are still followed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, payment, spawn_app, status};

/// Writes like an editor that saves through a temporary file and a rename.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    save(path, &text.replacen(from, to, 1));
}

const ROUTE_FN: &str = "fn route(p, ctx) {";
/// Sends MTN payees through the Mojaloop switch instead.
const MTN_VIA_SWITCH: &str = "fn route(p, ctx) {\n    if p.fa != () && p.fa.provider == \"mtn\" { return \"mojaloop-sdk\"; }";

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits a batch of a few MTN payments every 50 ms until stopped; returns (batch, submitted
/// at) pairs.
fn steady_load(
    app: &Arc<TestApp>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    let app = app.clone();
    tokio::spawn(async move {
        let mut batches = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            let payments = (0..3)
                .map(|i| {
                    payment(
                        &format!("load-{n}-{i}"),
                        &format!("mobile:2567{:08}@mtn", n * 3 + i),
                        "1.00",
                    )
                })
                .collect();
            batches.push((app.submit(&format!("load-{n}"), payments).await, at));
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        batches
    })
}

#[tokio::test]
async fn a_routing_change_under_load_takes_effect_within_a_second_and_loses_nothing() {
    let app = Arc::new(spawn_app().await);
    let rules = app.dir.path().join("rules/routing.rhai");
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&app, stop.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;

    edit(&rules, ROUTE_FN, MTN_VIA_SWITCH);
    let written = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A broken edit under the same load: nothing changes, the problem is reported.
    edit(
        &rules,
        "fn route(p, ctx) {",
        "fn route(p, ctx) {\n    let x = ;",
    );
    let reloader = app.app.state.reloader.clone();
    wait_for(
        "the broken edit to be refused",
        Duration::from_secs(5),
        || reloader.status().refused >= 1,
    )
    .await;
    let broken_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let batches = load.await.expect("load");

    let status_now = reloader.status();
    assert_eq!(status_now.applied, 1, "{status_now:?}");
    let problem = &status_now.problems[0];
    assert!(problem.file.ends_with("routing.rhai"), "{problem:?}");
    let broken_line = std::fs::read_to_string(&rules)
        .expect("rules")
        .lines()
        .position(|l| l.contains("let x = ;"))
        .expect("the broken line")
        + 1;
    assert_eq!(
        (problem.line, problem.column),
        (broken_line, 13),
        "{problem:?}"
    );

    let mut total = 0;
    let stats_before_wait = batches.len();
    assert!(
        stats_before_wait > 20,
        "the load kept going: {stats_before_wait} batches"
    );
    for (batch, at) in &batches {
        let all = app.wait_final(batch).await;
        for (reference, p) in &all {
            total += 1;
            assert_eq!(status(p), "succeeded", "{reference}: {p}");
            let id = p["id"].as_str().expect("id");
            assert_eq!(app.sim.simulator.stats().executed.get(id), Some(&1), "{p}");
            // Everything submitted a second after the change went the new way, also while
            // the broken edit was on disk.
            if *at > written + Duration::from_secs(1) {
                assert_eq!(
                    p["dfsp"],
                    "mojaloop-sdk",
                    "{reference} at {:?}: {p}",
                    *at - written
                );
            }
            if *at < written {
                assert_eq!(p["dfsp"], "mtn-momo", "{reference}: {p}");
            }
            if *at > broken_at {
                assert_eq!(p["dfsp"], "mojaloop-sdk", "{reference}: {p}");
            }
        }
    }
    assert_eq!(total, batches.len() * 3, "no payment lost");
}

#[tokio::test]
async fn broken_adapters_fixtures_configs_and_secrets_are_refused_whole() {
    let app = spawn_app().await;
    let reloader = app.app.state.reloader.clone();
    let dir = app.dir.path().to_path_buf();
    let before = app
        .app
        .state
        .live
        .load()
        .bundle
        .adapter("mtn-momo")
        .expect("mtn")
        .script
        .version
        .clone();
    let mtn = dir.join("adapters/mtn-momo");
    let script = std::fs::read_to_string(mtn.join("adapter.rhai")).expect("script");
    let config = std::fs::read_to_string(mtn.join("adapter.toml")).expect("config");

    let mut refused = 0;
    let mut expect_refusal = async |what: &str, file_end: &str| {
        refused += 1;
        let n = refused;
        wait_for(what, Duration::from_secs(5), || {
            reloader.status().refused >= n
        })
        .await;
        let st = reloader.status();
        assert!(
            st.problems.iter().any(|p| p.file.ends_with(file_end)),
            "{what}: {:?}",
            st.problems
        );
        st
    };

    // A required function missing.
    save(
        &mtn.join("adapter.rhai"),
        &script.replace("fn parse_response(p, r)", "fn parse_answer(p, r)"),
    );
    let st = expect_refusal("a missing function", "adapter.rhai").await;
    assert!(st.problems[0].message.contains("parse_response"), "{st:?}");
    // A fixture that no longer holds.
    save(
        &mtn.join("adapter.rhai"),
        &script.replace(
            "/disbursement/v1_0/transfer\"",
            "/disbursement/v2_0/transfer\"",
        ),
    );
    let st = expect_refusal("a failing fixture", ".json").await;
    assert!(st.problems[0].message.contains("fixture"), "{st:?}");
    save(&mtn.join("adapter.rhai"), &script);
    // An adapter.toml error, with its line and column.
    save(
        &mtn.join("adapter.toml"),
        &config.replace("max_in_flight = 32", "max_in_flight = \"many\""),
    );
    let st = expect_refusal("a config error", "adapter.toml").await;
    assert!(st.problems[0].line > 1, "{st:?}");
    // A secret reference that does not resolve.
    save(
        &mtn.join("adapter.toml"),
        &config.replace(
            "client_secret = \"${MTN_API_KEY:-pil-sim-key}\"",
            "client_secret = \"${PIL_TEST_NO_SUCH_SECRET}\"",
        ),
    );
    let st = expect_refusal("an unresolved secret", "adapter.toml").await;
    assert!(
        st.problems[0].message.contains("PIL_TEST_NO_SUCH_SECRET"),
        "{st:?}"
    );

    // Through all of it the last good version kept running and paying.
    let now = app
        .app
        .state
        .live
        .load()
        .bundle
        .adapter("mtn-momo")
        .expect("mtn")
        .script
        .version
        .clone();
    assert_eq!(now, before);
    assert_eq!(reloader.status().applied, 0);
    let batch = app
        .submit(
            "still-paying",
            vec![payment("p", "mobile:256700000001@mtn", "5")],
        )
        .await;
    let all = app.wait_final(&batch).await;
    assert_eq!(status(&all["p"]), "succeeded");
    assert_eq!(all["p"]["dfsp"], "mtn-momo");

    // Putting the good file back is a change like any other, and it is applied.
    save(&mtn.join("adapter.toml"), &config);
    wait_for("the repaired version", Duration::from_secs(5), || {
        reloader.status().problems.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_new_adapter_folder_adds_a_dfsp_and_a_removed_one_is_still_followed() {
    let app = spawn_app().await;
    let reloader = app.app.state.reloader.clone();
    let adapters = app.dir.path().join("adapters");
    let rules = app.dir.path().join("rules/routing.rhai");

    // A second MTN account as its own DFSP, and the rules sending MTN payees to it.
    let second = adapters.join("mtn-momo-2");
    std::fs::create_dir_all(second.join("tests")).expect("mkdir");
    std::fs::copy(
        adapters.join("mtn-momo/adapter.rhai"),
        second.join("adapter.rhai"),
    )
    .expect("copy");
    let config = std::fs::read_to_string(adapters.join("mtn-momo/adapter.toml")).expect("toml");
    save(
        &second.join("adapter.toml"),
        &config.replace("id = \"mtn-momo\"", "id = \"mtn-momo-2\""),
    );
    for entry in std::fs::read_dir(adapters.join("mtn-momo/tests")).expect("tests") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), second.join("tests").join(entry.file_name())).expect("copy");
    }
    edit(
        &rules,
        ROUTE_FN,
        "fn route(p, ctx) {\n    if p.fa != () && p.fa.provider == \"mtn\" { return \"mtn-momo-2\"; }",
    );
    wait_for("the new DFSP", Duration::from_secs(5), || {
        app.app
            .state
            .live
            .load()
            .bundle
            .adapter("mtn-momo-2")
            .is_some()
    })
    .await;
    assert!(
        reloader.status().problems.is_empty(),
        "{:?}",
        reloader.status()
    );

    // 453: the DFSP keeps it pending, so PIL follows it in `accepted`.
    let batch = app
        .submit(
            "via-second",
            vec![payment("pending", "mobile:46733123453@mtn", "5")],
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(10), |p| status(p) == "accepted")
        .await;
    let pending = &all["pending"];
    assert_eq!(pending["dfsp"], "mtn-momo-2", "{pending}");
    let id = pending["id"].as_str().expect("id").to_string();

    // The folder goes away, and the rules stop naming it.
    edit(
        &rules,
        "    if p.fa != () && p.fa.provider == \"mtn\" { return \"mtn-momo-2\"; }\n",
        "",
    );
    std::fs::remove_dir_all(&second).expect("rm");
    wait_for("the DFSP to be retired", Duration::from_secs(5), || {
        app.app.state.live.load().retired.contains_key("mtn-momo-2")
    })
    .await;
    let batch = app
        .submit(
            "after-removal",
            vec![payment("new", "mobile:256700000009@mtn", "5")],
        )
        .await;
    let done = app.wait_final(&batch).await;
    assert_eq!(done["new"]["dfsp"], "mtn-momo");

    // The payment sent before is still followed: its callback is applied.
    let r = app
        .http
        .put(format!("{}/callbacks/mtn-momo-2/transfer/{id}", app.url))
        .json(&json!({"amount": "5", "currency": "KES", "externalId": id, "status": "SUCCESSFUL"}))
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"result": "applied"})
    );
    let (_, full) = app.get(&format!("/api/v1/payments/{id}")).await;
    assert_eq!(status(&full), "succeeded", "{full}");
}

#[tokio::test]
async fn metrics_count_payments_requests_callbacks_and_reloads() {
    let app = spawn_app().await;
    let batch = app
        .submit(
            "metrics",
            vec![
                payment("a", "mobile:256700000001@mtn", "2"),
                payment("b", "mobile:256700000002@mtn", "3"),
                payment("c", "mobile:46733123476@mtn", "4"),
            ],
        )
        .await;
    app.wait_final(&batch).await;
    // A broken edit, refused.
    let rules = app.dir.path().join("rules/routing.rhai");
    edit(&rules, ROUTE_FN, "fn route(p, ctx) {\n    let = 1;");
    let reloader = app.app.state.reloader.clone();
    wait_for("the refusal", Duration::from_secs(5), || {
        reloader.status().refused >= 1
    })
    .await;

    let r = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers()
    );
    let text = r.text().await.expect("text");
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    assert_eq!(
        value("pil_payments{status=\"succeeded\",dfsp=\"mtn-momo\"}"),
        2.0
    );
    assert_eq!(
        value("pil_payments{status=\"failed\",dfsp=\"mtn-momo\"}"),
        1.0
    );
    assert_eq!(value("pil_dispatch_queue_depth "), 0.0);
    assert_eq!(
        value("pil_dfsp_requests_total{dfsp=\"mtn-momo\",kind=\"submit\",outcome=\"2xx\"}"),
        3.0
    );
    assert_eq!(
        value("pil_dfsp_request_duration_seconds_count{dfsp=\"mtn-momo\",kind=\"submit\"}"),
        3.0
    );
    assert!(value("pil_callbacks_total{dfsp=\"mtn-momo\",result=\"applied\"}") >= 1.0);
    assert_eq!(value("pil_script_reloads_total{outcome=\"refused\"}"), 1.0);
    assert_eq!(value("pil_script_problems "), 1.0);
    assert_eq!(value("pil_dfsp_in_flight{dfsp=\"mtn-momo\"}"), 0.0);
    assert_eq!(value("pil_dfsp_circuit_open{dfsp=\"mtn-momo\"}"), 0.0);
}

#[tokio::test]
async fn a_kubernetes_style_symlink_swap_of_the_rules_is_picked_up() {
    use std::os::unix::fs::symlink;
    let app = spawn_app().await;
    // The rules folder as a mounted ConfigMap: files are links through `..data` to a
    // timestamped folder, and an update swaps `..data` in one rename.
    let rules = app.dir.path().join("rules");
    let original = std::fs::read_to_string(rules.join("routing.rhai")).expect("read");
    let first = rules.join("..2026_11_28_a");
    std::fs::create_dir(&first).expect("mkdir");
    std::fs::write(first.join("routing.rhai"), &original).expect("write");
    symlink("..2026_11_28_a", rules.join("..data")).expect("link");
    std::fs::remove_file(rules.join("routing.rhai")).expect("rm");
    symlink("..data/routing.rhai", rules.join("routing.rhai")).expect("link");
    let reloader = app.app.state.reloader.clone();
    // Same content through links: nothing to apply.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(reloader.status().applied, 0, "{:?}", reloader.status());

    let second = rules.join("..2026_11_28_b");
    std::fs::create_dir(&second).expect("mkdir");
    std::fs::write(
        second.join("routing.rhai"),
        original.replacen(ROUTE_FN, MTN_VIA_SWITCH, 1),
    )
    .expect("write");
    symlink("..2026_11_28_b", rules.join("..data_tmp")).expect("link");
    std::fs::rename(rules.join("..data_tmp"), rules.join("..data")).expect("swap");
    wait_for("the swapped rules", Duration::from_secs(5), || {
        reloader.status().applied == 1
    })
    .await;
    let batch = app
        .submit(
            "after-swap",
            vec![payment("p", "mobile:256700000001@mtn", "5")],
        )
        .await;
    assert_eq!(app.wait_final(&batch).await["p"]["dfsp"], "mojaloop-sdk");
}
