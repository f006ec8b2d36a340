//! The admin API: tokens with roles (401/403), script management (validate, write, history,
//! rollback, reload) with every change checked before a byte is written and in force when the
//! call returns, the audit log, dry runs, and no secret in any response.

use std::path::Path;

use pil::config::{AdminToken, Role, Settings};
use pil::script_files::sha256_hex;
use pil::simulator::SimConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, payment, spawn_with, status};

const VIEWER: &str = "viewer-token-7c1d0e";
const OPERATOR: &str = "operator-token-42aa91";
const EDITOR: &str = "editor-token-e0b5f3";
const LEGACY: &str = "legacy-plaintext-token";

const ROUTE_FN: &str = "fn route(p, ctx) {";
/// Sends MTN payees through the Mojaloop switch instead.
const MTN_VIA_SWITCH: &str = "fn route(p, ctx) {\n    if p.fa != () && p.fa.provider == \"mtn\" { return \"mojaloop-sdk\"; }";

fn with_tokens(s: &mut Settings) {
    for (name, token, roles) in [
        ("viewer", VIEWER, vec![Role::Viewer]),
        ("operator", OPERATOR, vec![Role::Operator]),
        ("editor", EDITOR, vec![Role::Editor]),
    ] {
        s.admin_tokens.insert(
            name.into(),
            AdminToken {
                sha256: sha256_hex(token.as_bytes()),
                roles,
            },
        );
    }
    s.admin_token = Some(LEGACY.into());
    // Only the admin API reloads here: what is in force after a call is its doing.
    s.watch_scripts = false;
}

async fn admin_app() -> TestApp {
    spawn_with(SimConfig::default(), |s, _| with_tokens(s)).await
}

/// One admin call: status, parsed body and the raw body.
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, String) {
    let mut req = app.http.request(method, format!("{}{path}", app.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let (s, v, _) = call(app, Method::GET, path, Some(token), None).await;
    (s, v)
}

async fn send(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> (u16, Value) {
    let (s, v, _) = call(app, method, path, Some(token), Some(&body)).await;
    (s, v)
}

async fn import_directory(app: &TestApp, token: &str) -> u16 {
    app.http
        .post(format!("{}/admin/directory", app.url))
        .bearer_auth(token)
        .body("id_type,id_value,fa\nPHONE,1,mobile:1@mtn\n")
        .send()
        .await
        .expect("import")
        .status()
        .as_u16()
}

fn routing_path(app: &TestApp) -> std::path::PathBuf {
    app.dir.path().join("rules/routing.rhai")
}

fn routing_version(app: &TestApp) -> String {
    app.app.state.live.load().bundle.routing.version.clone()
}

/// Submits one payment and waits for it to end; returns it.
async fn pay(app: &TestApp, batch: &str, fa: &str) -> Value {
    let id = app.submit(batch, vec![payment(batch, fa, "10.00")]).await;
    app.wait_final(&id).await.remove(batch).expect("payment")
}

#[tokio::test]
async fn each_role_can_do_exactly_what_it_should() {
    let app = admin_app().await;
    let original = std::fs::read_to_string(routing_path(&app)).expect("rules");
    let edited = original.replacen(ROUTE_FN, MTN_VIA_SWITCH, 1);
    let file = "/admin/scripts/file/rules/routing.rhai";
    let write = json!({"content": edited});
    let validate = json!({"path": "rules/routing.rhai", "content": edited});
    let rollback = json!({"version_id": 1});
    let dry = json!({"payment": {"payee_fa": "mobile:256700000001@mtn", "amount": "5", "currency": "KES"}});

    // No token, an unknown token: 401, whatever the endpoint.
    for (method, path) in [
        (Method::GET, "/admin/scripts"),
        (Method::GET, file),
        (Method::PUT, file),
        (Method::POST, "/admin/scripts/reload"),
        (Method::GET, "/admin/audit"),
    ] {
        let (s, body, _) = call(&app, method.clone(), path, None, Some(&write)).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let (s, _, _) = call(&app, method, path, Some("not-a-token"), Some(&write)).await;
        assert_eq!(s, 401, "{path}");
    }

    // Every role reads.
    for token in [VIEWER, OPERATOR, EDITOR] {
        for path in [
            "/admin/scripts",
            "/admin/scripts/status",
            file,
            "/admin/scripts/history/rules/routing.rhai",
            "/admin/audit",
        ] {
            let (s, body) = get(&app, path, token).await;
            assert_eq!(s, 200, "{token} {path}: {body}");
        }
        let (s, body) = send(&app, Method::POST, "/admin/dry-run", token, dry.clone()).await;
        assert_eq!(s, 200, "{token}: {body}");
    }

    // Viewers and operators change no script; the 403 names the role needed.
    for token in [VIEWER, OPERATOR] {
        for (method, path, body) in [
            (Method::POST, "/admin/scripts/validate", &validate),
            (Method::PUT, file, &write),
            (
                Method::POST,
                "/admin/scripts/rollback/rules/routing.rhai",
                &rollback,
            ),
            (Method::POST, "/admin/scripts/reload", &json!({})),
        ] {
            let (s, err) = send(&app, method, path, token, body.clone()).await;
            assert_eq!(s, 403, "{token} {path}: {err}");
            assert_eq!(err["error"]["code"], "forbidden");
            assert!(
                err["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("editor")),
                "{err}"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(routing_path(&app)).expect("rules"),
        original,
        "nothing was written"
    );

    // The directory import is an operation: operators (and the old plaintext token) only.
    assert_eq!(import_directory(&app, VIEWER).await, 403);
    assert_eq!(import_directory(&app, EDITOR).await, 403);
    assert_eq!(import_directory(&app, OPERATOR).await, 200);
    assert_eq!(import_directory(&app, LEGACY).await, 200);
    // The plaintext token opens nothing else.
    let (s, err) = get(&app, "/admin/scripts", LEGACY).await;
    assert_eq!(s, 403, "{err}");

    // Editors change scripts.
    let (s, body) = send(
        &app,
        Method::POST,
        "/admin/scripts/validate",
        EDITOR,
        validate,
    )
    .await;
    assert_eq!((s, &body["valid"]), (200, &json!(true)), "{body}");
    let (s, body) = send(&app, Method::PUT, file, EDITOR, write).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = send(
        &app,
        Method::POST,
        "/admin/scripts/reload",
        EDITOR,
        json!({}),
    )
    .await;
    assert_eq!(
        (s, body["outcome"].as_str()),
        (200, Some("applied")),
        "{body}"
    );

    // The audit log names each actor.
    let (_, audit) = get(&app, "/admin/audit", VIEWER).await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_string(),
                e["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("editor", "scripts.reload"),
            ("editor", "script.write"),
            ("admin_token", "directory.import"),
            ("operator", "directory.import"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[tokio::test]
async fn invalid_writes_change_nothing_on_disk_or_in_force() {
    let app = admin_app().await;
    let rules = routing_path(&app);
    let original = std::fs::read(&rules).expect("rules");
    let version = routing_version(&app);
    let file = "/admin/scripts/file/rules/routing.rhai";

    // A syntax error: refused with its place, relative to the folders.
    let broken = String::from_utf8(original.clone()).expect("text").replacen(
        ROUTE_FN,
        "fn route(p, ctx) {\n    let x = ;",
        1,
    );
    let broken_line = broken
        .lines()
        .position(|l| l.contains("let x = ;"))
        .expect("line")
        + 1;
    let (s, err) = send(&app, Method::PUT, file, EDITOR, json!({"content": broken})).await;
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (422, Some("script_invalid")),
        "{err}"
    );
    let problem = &err["error"]["details"]["problems"][0];
    assert_eq!(problem["file"], "rules/routing.rhai", "{err}");
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(broken_line as u64), Some(13))
    );
    // The same verdict from validate, which writes nothing either.
    let (s, verdict) = send(
        &app,
        Method::POST,
        "/admin/scripts/validate",
        EDITOR,
        json!({"path": "rules/routing.rhai", "content": broken}),
    )
    .await;
    assert_eq!((s, &verdict["valid"]), (200, &json!(false)), "{verdict}");
    assert_eq!(verdict["problems"][0]["file"], "rules/routing.rhai");
    assert!(
        !verdict.to_string().contains("pil-proposal"),
        "no temporary path: {verdict}"
    );

    // A required function gone.
    let renamed = String::from_utf8(original.clone()).expect("text").replacen(
        "fn route(p, ctx)",
        "fn routes(p, ctx)",
        1,
    );
    let (s, err) = send(&app, Method::PUT, file, EDITOR, json!({"content": renamed})).await;
    assert_eq!(s, 422, "{err}");
    assert!(err.to_string().contains("route/2"), "{err}");

    // A fixture that does not hold: the new file is not created.
    let fixture = json!({
        "name": "wrong on purpose",
        "callback": {"method": "POST", "path": "/transfer/0190d6a2-0000-7000-8000-000000000001",
                     "body": {"status": "FAILED", "reason": "NOT_ENOUGH_FUNDS"}},
        "expect": {"status": "succeeded"}
    });
    let (s, err) = send(
        &app,
        Method::PUT,
        "/admin/scripts/file/adapters/mtn-momo/tests/wrong.json",
        EDITOR,
        json!({"content": fixture.to_string()}),
    )
    .await;
    assert_eq!(s, 422, "{err}");
    assert_eq!(
        err["error"]["details"]["problems"][0]["file"], "adapters/mtn-momo/tests/wrong.json",
        "{err}"
    );
    assert!(
        !app.dir
            .path()
            .join("adapters/mtn-momo/tests/wrong.json")
            .exists()
    );

    // An edit based on another version: 409, nothing written.
    let edited =
        String::from_utf8(original.clone())
            .expect("text")
            .replacen(ROUTE_FN, MTN_VIA_SWITCH, 1);
    let (s, err) = send(
        &app,
        Method::PUT,
        file,
        EDITOR,
        json!({"content": edited, "base_hash": sha256_hex(b"some other version")}),
    )
    .await;
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (409, Some("script_changed")),
        "{err}"
    );
    assert_eq!(
        err["error"]["details"]["current_hash"],
        sha256_hex(&original)
    );

    // Nothing changed on disk, nothing was reloaded, nothing recorded.
    assert_eq!(std::fs::read(&rules).expect("rules"), original);
    assert_eq!(routing_version(&app), version);
    let st = app.app.state.reloader.status();
    assert_eq!((st.applied, st.refused), (0, 0), "{st:?}");
    let (_, audit) = get(&app, "/admin/audit", VIEWER).await;
    assert_eq!(audit["entries"], json!([]));
    let (_, history) = get(&app, "/admin/scripts/history/rules/routing.rhai", VIEWER).await;
    assert_eq!(history["versions"], json!([]));
    assert_eq!(history["current_hash"], sha256_hex(&original));
    let p = pay(&app, "after-refusals", "mobile:256700000001@mtn").await;
    assert_eq!(p["dfsp"], "mtn-momo", "{p}");
}

#[tokio::test]
async fn a_routing_write_is_in_force_when_it_returns_and_history_rolls_it_back() {
    let app = admin_app().await;
    let rules = routing_path(&app);
    let original = std::fs::read(&rules).expect("rules");
    let file = "/admin/scripts/file/rules/routing.rhai";

    let (s, current) = get(&app, file, VIEWER).await;
    assert_eq!(s, 200);
    assert_eq!(current["hash"], sha256_hex(&original));
    assert_eq!(
        current["content"].as_str().map(str::as_bytes),
        Some(&original[..])
    );
    let listed = get(&app, "/admin/scripts", VIEWER).await.1;
    let entry = listed["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "rules/routing.rhai")
        .cloned()
        .expect("listed");
    assert_eq!(entry["hash"], sha256_hex(&original));
    assert_eq!(entry["size"], original.len());

    // Write, based on the version read: in force when the call returns.
    let edited =
        current["content"]
            .as_str()
            .expect("content")
            .replacen(ROUTE_FN, MTN_VIA_SWITCH, 1);
    let (s, written) = send(
        &app,
        Method::PUT,
        file,
        EDITOR,
        json!({"content": edited, "base_hash": current["hash"]}),
    )
    .await;
    assert_eq!(s, 200, "{written}");
    assert_eq!(written["hash"], sha256_hex(edited.as_bytes()));
    assert_eq!(written["reload"]["outcome"], "applied", "{written}");
    assert_eq!(written["reload"]["status"]["in_force"], true, "{written}");
    assert_eq!(std::fs::read(&rules).expect("rules"), edited.as_bytes());
    assert_eq!(routing_version(&app), sha256_hex(edited.as_bytes())[..12]);
    let p = pay(&app, "after-write", "mobile:256700000001@mtn").await;
    assert_eq!(
        (status(&p), &p["dfsp"]),
        ("succeeded", &json!("mojaloop-sdk")),
        "{p}"
    );

    // History: the write, and the bytes it replaced (found on disk, never recorded before).
    let (_, history) = get(&app, "/admin/scripts/history/rules/routing.rhai", VIEWER).await;
    let versions = history["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2, "{history}");
    assert_eq!(versions[0]["actor"], "editor");
    assert_eq!(versions[0]["hash"], sha256_hex(edited.as_bytes()));
    assert_eq!(versions[0]["id"], written["version_id"]);
    let diff = versions[0]["diff"].as_str().expect("diff");
    assert!(
        diff.contains("\n+    if p.fa != () && p.fa.provider == \"mtn\""),
        "{diff}"
    );
    assert!(diff.starts_with("--- rules/routing.rhai@"), "{diff}");
    assert_eq!(versions[1]["actor"], "(disk)");
    assert_eq!(versions[1]["hash"], sha256_hex(&original));
    assert!(
        versions[1]["diff"]
            .as_str()
            .is_some_and(|d| d.contains("+fn route(p, ctx) {")),
        "{history}"
    );
    // Paged.
    let (_, page) = get(
        &app,
        "/admin/scripts/history/rules/routing.rhai?limit=1",
        VIEWER,
    )
    .await;
    assert_eq!(page["versions"].as_array().map(Vec::len), Some(1));
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let (_, older) = get(
        &app,
        &format!("/admin/scripts/history/rules/routing.rhai?limit=1&cursor={cursor}"),
        VIEWER,
    )
    .await;
    assert_eq!(older["versions"][0]["id"], versions[1]["id"]);
    assert_eq!(older["next_cursor"], Value::Null);

    // Rollback: exactly the old bytes, in force at once, recorded as a new version.
    let (s, rolled) = send(
        &app,
        Method::POST,
        "/admin/scripts/rollback/rules/routing.rhai",
        EDITOR,
        json!({"version_id": versions[1]["id"]}),
    )
    .await;
    assert_eq!(s, 200, "{rolled}");
    assert_eq!(rolled["reload"]["outcome"], "applied");
    assert_eq!(
        std::fs::read(&rules).expect("rules"),
        original,
        "the exact bytes"
    );
    assert_eq!(routing_version(&app), sha256_hex(&original)[..12]);
    let p = pay(&app, "after-rollback", "mobile:256700000002@mtn").await;
    assert_eq!(p["dfsp"], "mtn-momo", "{p}");
    let (_, history) = get(&app, "/admin/scripts/history/rules/routing.rhai", VIEWER).await;
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(3));
    assert_eq!(history["versions"][0]["hash"], sha256_hex(&original));
    assert_eq!(history["current_hash"], sha256_hex(&original));

    // A version of another file is not this file's.
    let (s, _) = send(
        &app,
        Method::POST,
        "/admin/scripts/rollback/rules/other.rhai",
        EDITOR,
        json!({"version_id": versions[1]["id"]}),
    )
    .await;
    assert_eq!(s, 404);

    // The audit log: each change with who, what, and the hashes before and after.
    let (_, audit) = get(&app, "/admin/audit", VIEWER).await;
    let entries = audit["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{audit}");
    let (rollback, write) = (&entries[0], &entries[1]);
    assert_eq!(
        (&rollback["actor"], &rollback["action"], &rollback["target"]),
        (
            &json!("editor"),
            &json!("script.rollback"),
            &json!("rules/routing.rhai")
        )
    );
    assert_eq!(rollback["before_hash"], sha256_hex(edited.as_bytes()));
    assert_eq!(rollback["after_hash"], sha256_hex(&original));
    assert_eq!(rollback["detail"]["restored_version"], versions[1]["id"]);
    assert_eq!(write["action"], "script.write");
    assert_eq!(write["before_hash"], sha256_hex(&original));
    assert_eq!(write["after_hash"], sha256_hex(edited.as_bytes()));
    assert_eq!(write["detail"]["version_id"], written["version_id"]);
    assert!(write["at"].as_i64().is_some_and(|t| t > 0));
    let (_, first) = get(&app, "/admin/audit?limit=1", VIEWER).await;
    assert_eq!(first["entries"][0]["id"], rollback["id"]);
    let cursor = first["next_cursor"].as_str().expect("cursor");
    let (_, next) = get(
        &app,
        &format!("/admin/audit?limit=1&cursor={cursor}"),
        VIEWER,
    )
    .await;
    assert_eq!(next["entries"][0]["id"], write["id"]);
}

#[tokio::test]
async fn a_new_adapter_is_written_with_its_files_in_one_step() {
    let app = admin_app().await;
    let mtn = app.dir.path().join("adapters/mtn-momo");
    let toml = std::fs::read_to_string(mtn.join("adapter.toml"))
        .expect("toml")
        .replace("id = \"mtn-momo\"", "id = \"acme-pay\"");
    let script = std::fs::read_to_string(mtn.join("adapter.rhai")).expect("script");

    // Alone, its config is no adapter: refused, and no folder is left behind.
    let path = "/admin/scripts/file/adapters/acme-pay/adapter.toml";
    let (s, err) = send(&app, Method::PUT, path, EDITOR, json!({"content": toml})).await;
    assert_eq!(s, 422, "{err}");
    assert!(!app.dir.path().join("adapters/acme-pay").exists());

    let (s, written) = send(
        &app,
        Method::PUT,
        path,
        EDITOR,
        json!({"content": toml, "also": [{"path": "adapters/acme-pay/adapter.rhai", "content": script}]}),
    )
    .await;
    assert_eq!(s, 200, "{written}");
    assert_eq!(written["files"].as_array().map(Vec::len), Some(2));
    assert!(
        app.app
            .state
            .live
            .load()
            .bundle
            .adapter("acme-pay")
            .is_some()
    );
    assert_eq!(
        std::fs::read_to_string(app.dir.path().join("adapters/acme-pay/adapter.rhai"))
            .expect("rhai"),
        script
    );
}

#[tokio::test]
async fn paths_outside_the_scripts_folders_are_refused() {
    let app = admin_app().await;
    for path in [
        "../pil.db",
        "/etc/passwd",
        "rules/../../pil.toml",
        "adapters/mtn-momo/../../rules/routing.rhai",
        "rules\\routing.rhai",
        "rules/.routing.rhai",
        "adapters/.git/config.toml",
        "pil.toml",
        "rules/notes.txt",
    ] {
        let (s, err) = send(
            &app,
            Method::POST,
            "/admin/scripts/validate",
            EDITOR,
            json!({"path": path, "content": "x"}),
        )
        .await;
        assert_eq!(
            (s, err["error"]["code"].as_str()),
            (400, Some("invalid_path")),
            "{path}: {err}"
        );
    }
    // Encoded separators reach the handler as one path: still refused.
    let (s, err) = get(&app, "/admin/scripts/file/rules%2F..%2F..%2Fpil.db", VIEWER).await;
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (400, Some("invalid_path")),
        "{err}"
    );
    let (s, err, _) = call(
        &app,
        Method::PUT,
        "/admin/scripts/file/rules%2F..%2Fescape.rhai",
        Some(EDITOR),
        Some(&json!({"content": "fn route(p, ctx) { \"x\" }"})),
    )
    .await;
    assert_eq!(s, 400, "{err}");
    assert!(!app.dir.path().join("escape.rhai").exists());

    // Symlinks out of the folders: not listed, not read, not written through.
    let outside = tempfile::tempdir().expect("outside");
    let secret_file = outside.path().join("outside.rhai");
    std::fs::write(&secret_file, "outside content").expect("write");
    symlink(&secret_file, &app.dir.path().join("rules/leak.rhai"));
    symlink(outside.path(), &app.dir.path().join("adapters/elsewhere"));
    let (s, _) = get(&app, "/admin/scripts/file/rules/leak.rhai", VIEWER).await;
    assert_eq!(s, 400);
    for path in ["rules/leak.rhai", "adapters/elsewhere/adapter.toml"] {
        let (s, err) = send(
            &app,
            Method::PUT,
            &format!("/admin/scripts/file/{path}"),
            EDITOR,
            json!({"content": "x"}),
        )
        .await;
        assert_eq!(
            (s, err["error"]["code"].as_str()),
            (400, Some("invalid_path")),
            "{path}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&secret_file).expect("read"),
        "outside content"
    );
    assert!(!outside.path().join("adapter.toml").exists());
    let (_, listed) = get(&app, "/admin/scripts", VIEWER).await;
    let text = listed.to_string();
    assert!(
        !text.contains("leak.rhai") && !text.contains("elsewhere"),
        "{text}"
    );
}

fn symlink(target: &Path, link: &Path) {
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link).expect("symlink");
    #[cfg(not(unix))]
    let _ = (target, link);
}

#[tokio::test]
async fn dry_runs_by_payment_and_by_stored_payment_id() {
    let app = admin_app().await;
    let (s, out) = send(
        &app,
        Method::POST,
        "/admin/dry-run",
        VIEWER,
        json!({"payment": {"reference_id": "dry-1", "payee_fa": "mobile:256772123456@mtn", "amount": "150.00", "currency": "KES"}}),
    )
    .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(
        out["decision"]["dfsps"],
        json!(["mtn-momo", "mojaloop-sdk"])
    );
    let mtn = &out["candidates"][0]["request"];
    assert!(
        mtn["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/disbursement/v1_0/transfer")),
        "{out}"
    );
    assert_eq!(mtn["body"]["amount"], "150");
    assert_eq!(mtn["headers"]["Authorization"], "***");
    assert_eq!(mtn["headers"]["Ocp-Apim-Subscription-Key"], "***");

    // A stored payment, as it was when received.
    let batch = app
        .submit(
            "dry",
            vec![payment("stored-1", "account:12345@mojaloop", "75.50")],
        )
        .await;
    let stored = app
        .wait_final(&batch)
        .await
        .remove("stored-1")
        .expect("payment");
    let id = stored["id"].as_str().expect("id");
    let (s, out) = send(
        &app,
        Method::POST,
        "/admin/dry-run",
        VIEWER,
        json!({"payment_id": id}),
    )
    .await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["decision"]["dfsps"], json!(["mojaloop-sdk"]));
    let ml = &out["candidates"][0]["request"];
    assert_eq!(ml["body"]["amount"], "75.5", "{out}");
    assert_eq!(ml["body"]["to"]["idValue"], "12345", "{out}");
    assert!(
        out.to_string().contains(id),
        "the stored payment's id is used: {out}"
    );

    // Neither, both, unknown, invalid.
    let (s, _) = send(&app, Method::POST, "/admin/dry-run", VIEWER, json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = send(
        &app,
        Method::POST,
        "/admin/dry-run",
        VIEWER,
        json!({"payment_id": id, "payment": {}}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = send(
        &app,
        Method::POST,
        "/admin/dry-run",
        VIEWER,
        json!({"payment_id": "nope"}),
    )
    .await;
    assert_eq!(s, 404);
    let (s, err) = send(
        &app,
        Method::POST,
        "/admin/dry-run",
        VIEWER,
        json!({"payment": {"payee_fa": "mobile:1@mtn", "amount": "1.001", "currency": "KES"}}),
    )
    .await;
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (422, Some("validation_failed")),
        "{err}"
    );
}

#[tokio::test]
async fn no_admin_response_ever_holds_a_secret() {
    // A secret only this test knows, given to adapters as a `file:` reference (a mounted
    // secret), so no process-wide environment is touched.
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret_path = secret_dir.path().join("secret");
    std::fs::write(&secret_path, &secret).expect("write secret");
    let reference = format!("file:{}", secret_path.display());
    let app = {
        let reference = reference.clone();
        spawn_with(SimConfig::default(), move |s, dir| {
            with_tokens(s);
            // Nothing is sent: the payments stay stored for the dry run by id.
            s.dispatch = false;
            let point = |file: &str, key: &str| {
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path).expect("read");
                let text = text
                    .lines()
                    .map(|l| {
                        if l.starts_with(key) {
                            format!("{key} = \"{reference}\"")
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                std::fs::write(&path, text).expect("write");
            };
            // A script secret the M-Pesa script copies into its request body, a configured
            // header and an auth credential.
            point("adapters/mpesa-b2c/adapter.toml", "security_credential");
            point(
                "adapters/mtn-momo/adapter.toml",
                "Ocp-Apim-Subscription-Key",
            );
            point("adapters/gsma-mmapi/adapter.toml", "client_secret");
        })
        .await
    };
    let mpesa = app
        .app
        .state
        .live
        .load()
        .bundle
        .adapter("mpesa-b2c")
        .cloned()
        .expect("mpesa");
    assert!(
        mpesa.config.secrets().contains(&secret.as_str()),
        "the secret is in force"
    );

    let batch = app
        .submit(
            "secret",
            vec![payment("s-1", "mobile:254708374149@mpesa", "1500")],
        )
        .await;
    let payment_id = app.payments(&batch).await["s-1"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    // A fixture whose diff would show the request, secret included.
    let leaky_fixture = json!({
        "name": "shows the credential in its diff",
        "payment": {"reference_id": "m-1", "payee_fa": "mobile:254708374149@mpesa", "amount": "1500", "currency": "KES"},
        "expect_request": {"method": "POST", "path": "/mpesa/b2c/v3/paymentrequest",
                           "body": {"SecurityCredential": "something else"}}
    })
    .to_string();
    let routing = std::fs::read_to_string(routing_path(&app)).expect("rules");
    let edited = routing.replacen(ROUTE_FN, MTN_VIA_SWITCH, 1);

    let mut bodies: Vec<(String, u16, String)> = Vec::new();
    let mut record = |what: &str, (s, _, text): (u16, Value, String)| {
        bodies.push((what.to_string(), s, text));
    };
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/admin/scripts".into(), None),
        (Method::GET, "/admin/scripts/status".into(), None),
        (
            Method::GET,
            "/admin/scripts/file/adapters/mpesa-b2c/adapter.toml".into(),
            None,
        ),
        (
            Method::GET,
            "/admin/scripts/file/adapters/mtn-momo/adapter.toml".into(),
            None,
        ),
        (
            Method::POST,
            "/admin/scripts/validate".into(),
            Some(json!({"path": "adapters/mpesa-b2c/tests/leak.json", "content": leaky_fixture})),
        ),
        (
            Method::PUT,
            "/admin/scripts/file/adapters/mpesa-b2c/tests/leak.json".into(),
            Some(json!({"content": leaky_fixture})),
        ),
        (
            Method::PUT,
            "/admin/scripts/file/rules/routing.rhai".into(),
            Some(json!({"content": edited})),
        ),
        (
            Method::GET,
            "/admin/scripts/history/rules/routing.rhai".into(),
            None,
        ),
        (
            Method::POST,
            "/admin/scripts/rollback/rules/routing.rhai".into(),
            Some(json!({"version_id": 1})),
        ),
        (Method::POST, "/admin/scripts/reload".into(), None),
        (
            Method::POST,
            "/admin/dry-run".into(),
            Some(
                json!({"payment": {"payee_fa": "mobile:254708374149@mpesa", "amount": "1500", "currency": "KES"}}),
            ),
        ),
        (
            Method::POST,
            "/admin/dry-run".into(),
            Some(json!({"payment_id": payment_id})),
        ),
        (
            Method::POST,
            "/admin/dry-run".into(),
            Some(
                json!({"payment": {"payee_fa": "mobile:256772123456@mtn", "amount": "10", "currency": "KES"}}),
            ),
        ),
        (
            Method::POST,
            "/admin/dry-run".into(),
            Some(
                json!({"payment": {"payee_fa": "mobile:256772123456@gsma", "amount": "10", "currency": "KES"}}),
            ),
        ),
        (Method::GET, "/admin/dfsps".into(), None),
        (Method::GET, "/admin/audit".into(), None),
    ];
    for (method, path, body) in &calls {
        let r = call(&app, method.clone(), path, Some(EDITOR), body.as_ref()).await;
        record(&format!("{method} {path}"), r);
    }
    // A refused reload of a leaky fixture written behind the API's back: its problems are in
    // the reload answer and in the status.
    std::fs::write(
        app.dir.path().join("adapters/mpesa-b2c/tests/leak.json"),
        &leaky_fixture,
    )
    .expect("write");
    let r = call(
        &app,
        Method::POST,
        "/admin/scripts/reload",
        Some(EDITOR),
        None,
    )
    .await;
    assert_eq!(r.1["outcome"], "refused", "{}", r.2);
    assert!(
        r.2.contains("adapters/mpesa-b2c/tests/leak.json"),
        "{}",
        r.2
    );
    record("POST /admin/scripts/reload (refused)", r);
    let r = call(
        &app,
        Method::GET,
        "/admin/scripts/status",
        Some(VIEWER),
        None,
    )
    .await;
    assert!(
        !r.1["problems"].as_array().is_none_or(Vec::is_empty),
        "{}",
        r.2
    );
    record("GET /admin/scripts/status (refused)", r);

    let mut statuses = Vec::new();
    for (what, s, text) in &bodies {
        assert!(
            !text.contains(&secret),
            "{what} returned the secret: {text}"
        );
        statuses.push((what.as_str(), *s));
    }
    // The calls did what they do (the secret test is not passing on errors alone).
    let expect = [
        200, 200, 200, 200, 200, 422, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200,
    ];
    assert_eq!(
        statuses
            .iter()
            .map(|(_, s)| *s)
            .take(expect.len())
            .collect::<Vec<_>>(),
        expect,
        "{statuses:?}"
    );
    let validate = &bodies[4].2;
    assert!(
        validate.contains("\"valid\":false") && validate.contains("***"),
        "{validate}"
    );
    let dry = &bodies[10].2;
    assert!(dry.contains("\"SecurityCredential\":\"***\""), "{dry}");
}

#[test]
fn pil_hash_token_prints_the_digest_of_stdin() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pil"))
        .arg("hash-token")
        // No configuration is needed (nor read).
        .env("PIL_CONFIG", "/nonexistent/pil.toml")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run pil");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{EDITOR}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sha256_hex(EDITOR.as_bytes())
    );
}

#[tokio::test]
async fn the_admin_endpoints_are_in_the_openapi_document() {
    let app = admin_app().await;
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, 200);
    for (path, method) in [
        ("/admin/audit", "get"),
        ("/admin/scripts", "get"),
        ("/admin/scripts/status", "get"),
        ("/admin/scripts/file/{path}", "get"),
        ("/admin/scripts/file/{path}", "put"),
        ("/admin/scripts/validate", "post"),
        ("/admin/scripts/history/{path}", "get"),
        ("/admin/scripts/rollback/{path}", "post"),
        ("/admin/scripts/reload", "post"),
        ("/admin/dry-run", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert_eq!(op["tags"], json!(["admin"]), "{path} {method}");
        assert!(
            op["security"][0]["admin_token"].is_array(),
            "{path} {method}: {op}"
        );
    }
}

#[tokio::test]
async fn operators_pause_resume_and_cancel_and_only_operators() {
    let app = admin_app().await;
    // Anyone with a token reads the DFSPs and their health.
    let (code, dfsps) = get(&app, "/admin/dfsps", VIEWER).await;
    assert_eq!(code, 200, "{dfsps}");
    let mtn = dfsps
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["id"] == "mtn-momo")
        .expect("mtn-momo")
        .clone();
    assert_eq!(mtn["paused"], false);
    assert_eq!(mtn["circuit"], "closed");
    // adapter.toml sets 32 in flight and no max_staged: 8 staged per slot.
    assert_eq!(
        (&mtn["max_in_flight"], &mtn["max_staged"]),
        (&json!(32), &json!(256))
    );
    assert_eq!(mtn["staged"], 0);
    assert!(mtn["health"]["recent_error_rate"].is_number(), "{mtn}");
    assert_eq!(
        call(&app, Method::GET, "/admin/dfsps", None, None).await.0,
        401
    );

    // Only operators act.
    for (who, token) in [("viewer", VIEWER), ("editor", EDITOR)] {
        for path in [
            "/admin/dfsps/mtn-momo/pause",
            "/admin/dfsps/mtn-momo/resume",
            "/admin/batches/x/pause",
            "/admin/batches/x/resume",
            "/admin/payments/x/cancel",
        ] {
            let (code, body) = send(&app, Method::POST, path, token, json!({})).await;
            assert_eq!(code, 403, "{who} {path}: {body}");
        }
    }
    let (code, _) = send(
        &app,
        Method::POST,
        "/admin/dfsps/nobank/pause",
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 404);

    // A paused DFSP gets nothing: MTN payees take the switch.
    let (code, view) = send(
        &app,
        Method::POST,
        "/admin/dfsps/mtn-momo/pause",
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["paused"], true);
    let batch = app
        .submit(
            "while-paused",
            vec![payment("p", "mobile:256700000001@mtn", "5")],
        )
        .await;
    let all = app.wait_final(&batch).await;
    assert_eq!(all["p"]["dfsp"], "mojaloop-sdk", "{}", all["p"]);
    let (_, view) = send(
        &app,
        Method::POST,
        "/admin/dfsps/mtn-momo/resume",
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(view["paused"], false);

    // A held batch: M-Pesa paused first so nothing leaves before the hold.
    send(
        &app,
        Method::POST,
        "/admin/dfsps/mpesa-b2c/pause",
        OPERATOR,
        json!({}),
    )
    .await;
    let held = app
        .submit(
            "held",
            vec![
                payment("h1", "mobile:254700000201@mpesa", "50"),
                payment("h2", "mobile:254700000202@mpesa", "50"),
            ],
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, hold) = send(
        &app,
        Method::POST,
        &format!("/admin/batches/{held}/pause"),
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{hold}");
    assert_eq!(hold["held"], true);
    // One of them is cancelled while it waits; the other goes once the batch resumes.
    let waiting = app.payments(&held).await;
    let h1 = waiting["h1"]["id"].as_str().expect("id").to_string();
    let (code, cancelled) = send(
        &app,
        Method::POST,
        &format!("/admin/payments/{h1}/cancel"),
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(status(&cancelled), "cancelled");
    send(
        &app,
        Method::POST,
        "/admin/dfsps/mpesa-b2c/resume",
        OPERATOR,
        json!({}),
    )
    .await;
    let (code, _) = send(
        &app,
        Method::POST,
        &format!("/admin/batches/{held}/resume"),
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 200);
    let done = app.wait_final(&held).await;
    assert_eq!(status(&done["h1"]), "cancelled");
    assert_eq!(status(&done["h2"]), "succeeded");
    // Cancelling a paid payment is refused.
    let h2 = done["h2"]["id"].as_str().expect("id");
    let (code, _) = send(
        &app,
        Method::POST,
        &format!("/admin/payments/{h2}/cancel"),
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 409);

    // Every change is in the audit log, by the operator.
    let (_, audit) = get(&app, "/admin/audit", VIEWER).await;
    let text = audit.to_string();
    for action in [
        "dfsp.pause",
        "dfsp.resume",
        "batch.pause",
        "batch.resume",
        "payment.cancel",
    ] {
        assert!(text.contains(action), "{action} missing from {audit}");
    }
    assert!(text.contains("\"operator\""), "{audit}");
}

#[tokio::test]
async fn failed_payments_are_retried_as_new_payments_never_twice_at_once() {
    let app = admin_app().await;
    // Below M-Pesa's minimum: the DFSP fails them (Result code 2). One succeeds.
    let batch = app
        .submit(
            "to-retry",
            vec![
                payment("small-1", "mobile:254700000301@mpesa", "5"),
                payment("small-2", "mobile:254700000302@mpesa", "5"),
                payment("fine", "mobile:254700000303@mpesa", "50"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    assert_eq!(status(&all["small-1"]), "failed");
    assert_eq!(status(&all["fine"]), "succeeded");
    let failed_id = all["small-1"]["id"].as_str().expect("id").to_string();
    let fine_id = all["fine"]["id"].as_str().expect("id").to_string();

    let retry = |id: &str| format!("/admin/payments/{id}/retry");
    assert_eq!(
        send(&app, Method::POST, &retry(&failed_id), VIEWER, json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        send(&app, Method::POST, &retry(&failed_id), EDITOR, json!({}))
            .await
            .0,
        403
    );
    let (code, body) = send(&app, Method::POST, &retry(&fine_id), OPERATOR, json!({})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("not_retryable")),
        "{body}"
    );

    // While its retry waits (M-Pesa paused), a second retry is refused.
    send(
        &app,
        Method::POST,
        "/admin/dfsps/mpesa-b2c/pause",
        OPERATOR,
        json!({}),
    )
    .await;
    let (code, first) = send(&app, Method::POST, &retry(&failed_id), OPERATOR, json!({})).await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["payments"][0]["reference_id"], "small-1#retry1");
    assert_eq!(first["payments"][0]["retry_of"], failed_id.as_str());
    let (code, again) = send(&app, Method::POST, &retry(&failed_id), OPERATOR, json!({})).await;
    assert_eq!(
        (code, again["error"]["code"].as_str()),
        (409, Some("already_retried")),
        "{again}"
    );
    send(
        &app,
        Method::POST,
        "/admin/dfsps/mpesa-b2c/resume",
        OPERATOR,
        json!({}),
    )
    .await;
    let retry_batch = first["batch"].as_str().expect("batch").to_string();
    let retried = app.wait_final(&retry_batch).await;
    let r1 = &retried["small-1#retry1"];
    assert_eq!(status(r1), "failed", "{r1}");
    assert_eq!(r1["meta"]["retry_of"], failed_id.as_str(), "{r1}");
    assert_eq!(r1["amount"], "5.00");
    // The original never changes.
    let (_, original) = app.get(&format!("/api/v1/payments/{failed_id}")).await;
    assert_eq!(status(&original), "failed");

    // Every failed payment of a batch at once; the earlier retry failed, so small-1 may go again.
    let (code, all_failed) = send(
        &app,
        Method::POST,
        &format!("/admin/batches/{batch}/retry-failed"),
        OPERATOR,
        json!({}),
    )
    .await;
    assert_eq!(code, 201, "{all_failed}");
    let refs: Vec<&str> = all_failed["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| p["reference_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(refs, ["small-1#retry2", "small-2#retry1"]);
    let (_, audit) = get(&app, "/admin/audit", VIEWER).await;
    assert_eq!(
        audit.to_string().matches("payment.retry").count(),
        3,
        "{audit}"
    );
}
