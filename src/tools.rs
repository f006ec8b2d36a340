//! Script tooling shared by the CLI and the admin API: `check` (compile and validate
//! everything) and the routing dry run (`route`, `POST /admin/dry-run`): which DFSPs a payment
//! would go to and the exact request each candidate adapter would send, with every secret of
//! every adapter replaced by [`REDACTED`]. Nothing is stored or sent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rhai::Dynamic;
use serde_json::json;

use crate::executor::{Body, DfspClient};
use crate::ingest::{self, Item};
use crate::payment::Payment;
use crate::route::{Decision, route, routing_ctx};
use crate::script::convert::payment_map;
use crate::script::{Bundle, LoadErrors, engine};

/// Compiles and validates all scripts and adapter configs under `rules_dir` / `adapters_dir`.
pub fn check(rules_dir: &Path, adapters_dir: &Path) -> Result<Bundle, LoadErrors> {
    Bundle::load(Arc::new(engine::build()), rules_dir, adapters_dir)
}

/// A one-payment dry run: the routing decision and each candidate's request.
pub fn dry_run(bundle: &Bundle, input: &serde_json::Value) -> Result<serde_json::Value, String> {
    let payment = payment_from_input(input, &ingest::Limits::default()).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{}: {} ({})", e.field, e.message, e.code))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    dry_run_payment(bundle, &BTreeMap::new(), &payment)
}

/// The payment a dry-run input (the native API's payment fields, plus an optional
/// `sender_id`) would become once received, validated as ingest validates it.
pub fn payment_from_input(
    input: &serde_json::Value,
    limits: &ingest::Limits,
) -> Result<Payment, Vec<ingest::ItemError>> {
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
    let rows = ingest::validate(&[item], limits)?;
    let sender_id = input
        .get("sender_id")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    ingest::received_payment(&rows[0], "dry-run", sender_id, crate::clock::now_ms()).map_err(|e| {
        vec![ingest::ItemError {
            index: 0,
            field: "currency".into(),
            code: "currency_code.invalid".into(),
            message: e.to_string(),
        }]
    })
}

/// The dry run of a payment as it is: routed with `clients`' circuit states and requests in
/// flight (none: every DFSP counts as available). The output never holds a secret value.
pub fn dry_run_payment(
    bundle: &Bundle,
    clients: &BTreeMap<String, Arc<DfspClient>>,
    payment: &Payment,
) -> Result<serde_json::Value, String> {
    let secrets = bundle_secrets(bundle);
    let mut out =
        dry_run_unredacted(bundle, clients, payment).map_err(|e| redact_text(&e, &secrets))?;
    // Scripts may copy any adapter's secret anywhere (a credential in the body, a routing
    // rule's message): whatever holds one is redacted, whichever adapter it belongs to.
    redact(&mut out, &secrets);
    Ok(out)
}

fn dry_run_unredacted(
    bundle: &Bundle,
    clients: &BTreeMap<String, Arc<DfspClient>>,
    payment: &Payment,
) -> Result<serde_json::Value, String> {
    let now = crate::clock::now_ms();
    let map = payment_map(payment);
    let ctx = routing_ctx(bundle, clients, None, now);
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
        // What the executor adds: configured headers and the auth header, values hidden.
        for (name, _) in &adapter.config.headers {
            headers.insert(name.clone(), json!(REDACTED));
        }
        if !matches!(adapter.config.auth, crate::adapter::Auth::None) {
            headers.insert("Authorization".into(), json!(REDACTED));
        }
        for (k, v) in &request.headers {
            headers.insert(k.clone(), json!(v));
        }
        let body = match &request.body {
            None => serde_json::Value::Null,
            Some(Body::Json(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
            Some(Body::Text { text, .. }) => json!(text),
        };
        let request = json!({
            "method": request.method.as_str(),
            "url": format!("{}{}", adapter.config.base_url, request.path),
            "headers": headers,
            "body": body,
        });
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

/// What stands for a secret value in any output.
pub const REDACTED: &str = "***";

/// Every resolved secret of every adapter of the bundle (empty values left out: they hide
/// nothing and would match everywhere).
pub fn bundle_secrets(bundle: &Bundle) -> Vec<String> {
    let mut out: Vec<String> = bundle
        .adapters
        .values()
        .flat_map(|a| a.config.secrets())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    // Longest first, so a secret containing another is hidden whole.
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// `text` with every occurrence of a secret replaced by [`REDACTED`].
pub fn redact_text(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// Replaces every occurrence of a secret in the strings (and object keys) of `v`.
pub fn redact(v: &mut serde_json::Value, secrets: &[String]) {
    match v {
        serde_json::Value::String(text)
            if secrets
                .iter()
                .any(|s| !s.is_empty() && text.contains(s.as_str())) =>
        {
            *text = redact_text(text, secrets);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secrets)),
        serde_json::Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut item) in old {
                redact(&mut item, secrets);
                map.insert(redact_text(&k, secrets), item);
            }
        }
        _ => {}
    }
}
