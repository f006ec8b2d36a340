//! Script tooling shared by the CLI: `check` (compile and validate everything) and the routing
//! dry run (`route`): which DFSPs a payment would go to and the exact request each candidate
//! adapter would send, with secrets redacted. Nothing is stored or sent.

use std::path::Path;
use std::sync::Arc;

use rhai::Dynamic;
use serde_json::json;

use crate::executor::Body;
use crate::ingest::{self, Item};
use crate::route::{Decision, route, routing_ctx};
use crate::script::convert::payment_map;
use crate::script::{Bundle, LoadErrors, engine};

/// Compiles and validates all scripts and adapter configs under `rules_dir` / `adapters_dir`.
pub fn check(rules_dir: &Path, adapters_dir: &Path) -> Result<Bundle, LoadErrors> {
    Bundle::load(Arc::new(engine::build()), rules_dir, adapters_dir)
}

/// A one-payment dry run: the routing decision and each candidate's request.
pub fn dry_run(bundle: &Bundle, input: &serde_json::Value) -> Result<serde_json::Value, String> {
    let g = |k: &str| input.get(k).cloned();
    let item = Item {
        reference_id: g("reference_id").or(Some(json!("dry-run"))),
        payee_fa: g("payee_fa"),
        payee_id_type: g("payee_id_type"),
        payee_id_value: g("payee_id_value"),
        amount: g("amount"),
        currency: g("currency"),
        payee_name: g("payee_name"),
        note: g("note"),
        meta: g("meta"),
    };
    let rows = ingest::validate(&[item], &ingest::Limits::default()).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{}: {} ({})", e.field, e.message, e.code))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let now = crate::clock::now_ms();
    let sender_id = input
        .get("sender_id")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let payment =
        ingest::received_payment(&rows[0], "dry-run", sender_id, now).map_err(|e| e.to_string())?;
    let map = payment_map(&payment);
    let ctx = routing_ctx(bundle, &Default::default(), None, now);
    let decision = route(
        bundle,
        Dynamic::from_map(map.clone()),
        ctx,
        Some(&payment.amount),
    )
    .map_err(|e| e.to_string())?;
    let ids = match decision {
        Decision::Reject { code, message } => {
            return Ok(
                json!({"routing_version": bundle.routing.version, "decision": {"reject": code, "message": message}}),
            );
        }
        Decision::Dfsps(ids) => ids,
    };
    let mut candidates = Vec::new();
    for id in &ids {
        let Some(adapter) = bundle.adapter(id) else {
            continue;
        };
        let key = "00000000-0000-4000-8000-000000000000";
        let ctx = adapter.request_ctx(
            now,
            1,
            Some(key),
            Some(format!("http://<public_url>/callbacks/{id}")),
        );
        let mut pmap = map.clone();
        pmap.insert("idempotency_key".into(), key.into());
        pmap.insert("dfsp".into(), id.clone().into());
        let request = match adapter.build_request(
            &bundle.engine,
            crate::script::convert::shared(pmap),
            ctx,
        ) {
            Ok(r) => r,
            Err(e) => {
                candidates.push(json!({"dfsp": id, "error": e.to_string()}));
                continue;
            }
        };
        let mut headers = serde_json::Map::new();
        for (name, _) in &adapter.config.headers {
            headers.insert(name.clone(), json!("<redacted>"));
        }
        if !matches!(adapter.config.auth, crate::adapter::Auth::None) {
            headers.insert("Authorization".into(), json!("<redacted>"));
        }
        for (k, v) in &request.headers {
            headers.insert(k.clone(), json!(v));
        }
        let body = match &request.body {
            None => serde_json::Value::Null,
            Some(Body::Json(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
            Some(Body::Text { text, .. }) => json!(text),
        };
        let mut request = json!({
            "method": request.method.as_str(),
            "url": format!("{}{}", adapter.config.base_url, request.path),
            "headers": headers,
            "body": body,
        });
        // Scripts may copy a `[secrets]` value into the request (a credential in the body).
        redact(&mut request, &adapter.config.secrets());
        candidates.push(json!({
            "dfsp": id,
            "adapter_version": adapter.script.version,
            "request": request,
        }));
    }
    Ok(json!({
        "routing_version": bundle.routing.version,
        "decision": {"dfsps": ids},
        "candidates": candidates,
    }))
}

/// Replaces every occurrence of a secret value in the strings of `v` with `<redacted>`.
fn redact(v: &mut serde_json::Value, secrets: &[&str]) {
    match v {
        serde_json::Value::String(text) => {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if text.contains(secret) {
                    *text = text.replace(secret, "<redacted>");
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secrets)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|i| redact(i, secrets)),
        _ => {}
    }
}
