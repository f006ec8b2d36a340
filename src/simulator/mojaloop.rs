//! Fake Mojaloop SDK scheme adapter outbound API (synchronous `POST /transfers`, continued
//! with `PUT /transfers/{id}` when party or quote acceptance is not automatic).

use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::{Chaos, Simulator, Trigger, bump, json_response, lock, sleep_ms, trigger};

#[derive(Default)]
pub(super) struct MojaState {
    /// transferId -> outcome.
    transfers: HashMap<String, Outcome>,
    /// homeTransactionIds already answered 429 by the 474 trigger.
    throttled: HashSet<String>,
}

enum Outcome {
    Committed {
        completed: String,
    },
    Aborted,
    /// Stopped for the caller to accept the party (or the quote); nothing executed yet.
    Waiting {
        quote: bool,
        request: Map<String, Value>,
        home: String,
        payee: String,
    },
}

const ID_TYPES: [&str; 10] = [
    "MSISDN",
    "EMAIL",
    "PERSONAL_ID",
    "BUSINESS",
    "DEVICE",
    "ACCOUNT_ID",
    "IBAN",
    "ALIAS",
    "CONSENT",
    "THIRD_PARTY_LINK",
];

pub(super) fn routes() -> Router<Simulator> {
    Router::new().route("/transfers", post(submit)).route(
        "/transfers/{transfer_id}",
        get(status).put(continue_transfer),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"statusCode": code, "message": message}))
}

/// `^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$`
fn valid_amount(s: &str) -> bool {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let int_ok =
        int == "0" || (!int.is_empty() && int.len() <= 18 && !int.starts_with('0') && digits(int));
    let frac_ok = frac.is_none_or(|f| (1..=4).contains(&f.len()) && digits(f) && !f.ends_with('0'));
    int_ok && frac_ok
}

/// Validate a transferRequest; returns the request object, homeTransactionId and payee id.
fn validate(body: &[u8]) -> Result<(Map<String, Value>, String, String), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let Value::Object(req) = v else {
        return Err("request body must be a JSON object".to_owned());
    };
    let string = |obj: &Map<String, Value>, key: &str| -> Result<String, String> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(format!(
                "should have required property '{key}' as a non-empty string"
            )),
        }
    };
    let home = string(&req, "homeTransactionId")?;
    let mut payee = String::new();
    for side in ["from", "to"] {
        let Some(Value::Object(party)) = req.get(side) else {
            return Err(format!(
                "should have required property '{side}' as an object"
            ));
        };
        let id_type = string(party, "idType").map_err(|e| format!("{side}: {e}"))?;
        if !ID_TYPES.contains(&id_type.as_str()) {
            return Err(format!(
                "{side}.idType should be equal to one of the allowed values"
            ));
        }
        let id_value = string(party, "idValue").map_err(|e| format!("{side}: {e}"))?;
        if side == "to" {
            payee = id_value;
        }
    }
    if !matches!(string(&req, "amountType")?.as_str(), "SEND" | "RECEIVE") {
        return Err("amountType should be equal to one of the allowed values".to_owned());
    }
    let currency = string(&req, "currency")?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("currency should be a 3-letter ISO 4217 code".to_owned());
    }
    if !valid_amount(&string(&req, "amount")?) {
        return Err(
            "amount should match pattern \"^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$\""
                .to_owned(),
        );
    }
    if !matches!(
        string(&req, "transactionType")?.as_str(),
        "TRANSFER" | "DEPOSIT" | "PAYMENT"
    ) {
        return Err("transactionType should be equal to one of the allowed values".to_owned());
    }
    for key in ["note", "subScenario"] {
        if req.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("{key} should be a string"));
        }
    }
    Ok((req, home, payee))
}

fn error_description(code: &str) -> &'static str {
    match code {
        "2001" => "Internal server error",
        "3204" => "Party not found",
        "3303" => "Transfer expired",
        "4000" => "Generic payer error",
        "4001" => "Payer FSP insufficient liquidity",
        "5100" => "Generic payee error",
        "5104" => "Transaction request rejected",
        _ => "Transfer failed",
    }
}

async fn submit(State(sim): State<Simulator>, body: Bytes) -> Response {
    let resp = handle_submit(&sim, &body).await;
    sim.latency().await;
    resp
}

async fn handle_submit(sim: &Simulator, body: &[u8]) -> Response {
    let (mut req, home, payee) = match validate(body) {
        Ok(v) => v,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "3100", &msg),
    };
    sim.with_stats(|s| bump(&mut s.submissions, &home));
    let cfg = sim.config();
    let trig = trigger(&payee);
    let chaos = sim.chaos(trig, &cfg);
    match trig {
        Some(Trigger::NotAllowed) => {
            return error(
                StatusCode::BAD_REQUEST,
                "3100",
                "Transfer not allowed for this payee",
            );
        }
        Some(Trigger::InvalidCurrency) => {
            return error(
                StatusCode::BAD_REQUEST,
                "3100",
                "Invalid currency for this payee",
            );
        }
        _ => {}
    }
    let throttle_once = trig == Some(Trigger::RateLimitedOnce)
        && lock(&sim.inner.mojaloop).throttled.insert(home.clone());
    if throttle_once || chaos == Chaos::Throttle429 {
        return error(StatusCode::TOO_MANY_REQUESTS, "429", "Too many requests");
    }

    let transfer_id = uuid::Uuid::new_v4().to_string();
    req.insert("transferId".to_owned(), json!(transfer_id));
    if !cfg.mojaloop_auto_accept_party || !cfg.mojaloop_auto_accept_quotes {
        return wait_for(
            sim,
            transfer_id,
            req,
            home,
            payee,
            cfg.mojaloop_auto_accept_party,
        );
    }
    execute(sim, transfer_id, req, &home, &payee, chaos).await
}

/// Stops the transfer at party (or quote) acceptance, as the SDK does without auto-accept.
fn wait_for(
    sim: &Simulator,
    transfer_id: String,
    mut req: Map<String, Value>,
    home: String,
    payee: String,
    quote: bool,
) -> Response {
    let state = if quote {
        req.insert(
            "quoteResponse".to_owned(),
            json!({"body": {"transferAmount": {"amount": req.get("amount"), "currency": req.get("currency")},
                            "payeeFspFee": {"amount": "0", "currency": req.get("currency")}}}),
        );
        "WAITING_FOR_QUOTE_ACCEPTANCE"
    } else {
        if let Some(Value::Object(to)) = req.get_mut("to") {
            to.entry("displayName").or_insert(json!("Simulated Payee"));
            to.insert("fspId".to_owned(), json!("payeefsp"));
        }
        "WAITING_FOR_PARTY_ACCEPTANCE"
    };
    req.insert("currentState".to_owned(), json!(state));
    lock(&sim.inner.mojaloop).transfers.insert(
        transfer_id,
        Outcome::Waiting {
            quote,
            request: req.clone(),
            home,
            payee,
        },
    );
    json_response(StatusCode::OK, Value::Object(req))
}

/// Executes (or fails) a transfer whose party and quote are accepted.
async fn execute(
    sim: &Simulator,
    transfer_id: String,
    mut req: Map<String, Value>,
    home: &str,
    payee: &str,
    chaos: Chaos,
) -> Response {
    let cfg = sim.config();
    let trig = trigger(payee);
    req.insert("transferId".to_owned(), json!(transfer_id));
    let error_code = trig
        .and_then(Trigger::mojaloop_error)
        .or((chaos == Chaos::Fail500).then_some("2001"));
    if let Some(code) = error_code {
        lock(&sim.inner.mojaloop)
            .transfers
            .insert(transfer_id, Outcome::Aborted);
        req.insert("currentState".to_owned(), json!("ERROR_OCCURRED"));
        req.insert(
            "lastError".to_owned(),
            json!({"httpStatusCode": 500, "mojaloopError": {"errorInformation": {
                "errorCode": code, "errorDescription": error_description(code)}}}),
        );
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"statusCode": "500", "message": error_description(code), "transferState": req}),
        );
    }

    let completed = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    lock(&sim.inner.mojaloop).transfers.insert(
        transfer_id,
        Outcome::Committed {
            completed: completed.clone(),
        },
    );
    sim.with_stats(|s| bump(&mut s.executed, home));
    req.insert("currentState".to_owned(), json!("COMPLETED"));
    req.insert(
        "fulfil".to_owned(),
        json!({"body": {"transferState": "COMMITTED", "completedTimestamp": completed}}),
    );
    if trig == Some(Trigger::Timeout) || chaos == Chaos::Timeout {
        sleep_ms(cfg.hang_ms).await;
    }
    json_response(StatusCode::OK, Value::Object(req))
}

/// `PUT /transfers/{id}` with `{"acceptParty": bool}` or `{"acceptQuote": bool}`.
async fn continue_transfer(
    State(sim): State<Simulator>,
    Path(transfer_id): Path<String>,
    body: Bytes,
) -> Response {
    let resp = handle_continue(&sim, transfer_id, &body).await;
    sim.latency().await;
    resp
}

async fn handle_continue(sim: &Simulator, transfer_id: String, body: &[u8]) -> Response {
    let Ok(Value::Object(cont)) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "3100",
            "body must be a JSON object",
        );
    };
    let waiting = lock(&sim.inner.mojaloop).transfers.remove(&transfer_id);
    let Some(Outcome::Waiting {
        quote,
        request,
        home,
        payee,
    }) = waiting
    else {
        // Put back whatever was there: only a waiting transfer can be continued.
        if let Some(o) = waiting {
            lock(&sim.inner.mojaloop).transfers.insert(transfer_id, o);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "3100",
                "transfer is not waiting for acceptance",
            );
        }
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "3208",
            "Transfer ID not found",
        );
    };
    let key = if quote { "acceptQuote" } else { "acceptParty" };
    let Some(accept) = cont.get(key).and_then(Value::as_bool) else {
        let stage = Outcome::Waiting {
            quote,
            request,
            home,
            payee,
        };
        lock(&sim.inner.mojaloop)
            .transfers
            .insert(transfer_id, stage);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "3100",
            &format!("expected {{\"{key}\": true|false}}"),
        );
    };
    if !accept {
        lock(&sim.inner.mojaloop)
            .transfers
            .insert(transfer_id.clone(), Outcome::Aborted);
        let mut req = request;
        req.insert("currentState".to_owned(), json!("ERROR_OCCURRED"));
        return json_response(StatusCode::OK, Value::Object(req));
    }
    let cfg = sim.config();
    if !quote && !cfg.mojaloop_auto_accept_quotes {
        return wait_for(sim, transfer_id, request, home, payee, true);
    }
    let chaos = sim.chaos(trigger(&payee), &cfg);
    execute(sim, transfer_id, request, &home, &payee, chaos).await
}

async fn status(State(sim): State<Simulator>, Path(transfer_id): Path<String>) -> Response {
    sim.with_stats(|s| s.status_queries += 1);
    let body = match lock(&sim.inner.mojaloop).transfers.get(&transfer_id) {
        Some(Outcome::Committed { completed }) => Some(json!({
            "transferId": transfer_id, "currentState": "COMPLETED",
            "fulfil": {"body": {"transferState": "COMMITTED", "completedTimestamp": completed}}})),
        Some(Outcome::Aborted) => Some(json!({
            "transferId": transfer_id, "currentState": "ERROR_OCCURRED",
            "fulfil": {"body": {"transferState": "ABORTED"}}})),
        Some(Outcome::Waiting { quote, .. }) => Some(json!({
            "transferId": transfer_id,
            "currentState": if *quote { "WAITING_FOR_QUOTE_ACCEPTANCE" } else { "WAITING_FOR_PARTY_ACCEPTANCE" },
            "fulfil": {}})),
        None => None,
    };
    let resp = match body {
        Some(b) => json_response(StatusCode::OK, b),
        None => error(StatusCode::NOT_FOUND, "3208", "Transfer ID not found"),
    };
    sim.latency().await;
    resp
}

#[cfg(test)]
mod tests {
    use super::super::{SimConfig, spawn};
    use super::*;

    fn request(home: &str, payee: &str, amount: &str) -> Value {
        json!({"homeTransactionId": home,
               "from": {"idType": "MSISDN", "idValue": "1234567", "displayName": "G2P programme"},
               "to": {"idType": "MSISDN", "idValue": payee},
               "amountType": "SEND", "currency": "XOF", "amount": amount,
               "transactionType": "TRANSFER", "note": "cash"})
    }

    #[test]
    fn amount_pattern() {
        for ok in ["0", "5", "5.5", "5.05", "123456789012345678", "1.0001"] {
            assert!(valid_amount(ok), "{ok}");
        }
        for bad in [
            "5.00",
            "5.0",
            "05",
            "",
            "5.",
            ".5",
            "1.12345",
            "1234567890123456789",
            "-1",
            "1e3",
        ] {
            assert!(!valid_amount(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn transfers_end_to_end() {
        let sim = spawn(SimConfig::default(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("spawn");
        let base = sim.base_url();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let post = |body: Value| {
            let http = http.clone();
            let url = format!("{base}/transfers");
            async move {
                let r = http.post(url).json(&body).send().await.expect("send");
                let code = r.status().as_u16();
                (code, r.json::<Value>().await.expect("json"))
            }
        };
        let get = |id: &str| {
            let http = http.clone();
            let url = format!("{base}/transfers/{id}");
            async move {
                let r = http.get(url).send().await.expect("send");
                let code = r.status().as_u16();
                (code, r.json::<Value>().await.expect("json"))
            }
        };

        // Success.
        let (code, v) = post(request("h-ok", "46733123000", "100.5")).await;
        assert_eq!(code, 200);
        assert_eq!(v["currentState"], "COMPLETED");
        assert_eq!(v["fulfil"]["body"]["transferState"], "COMMITTED");
        assert_eq!(v["homeTransactionId"], "h-ok");
        assert_eq!(v["amount"], "100.5");
        let id = v["transferId"].as_str().expect("transferId").to_owned();
        let (code, v) = get(&id).await;
        assert_eq!((code, v["currentState"].as_str()), (200, Some("COMPLETED")));

        // Failure trigger.
        let (code, v) = post(request("h-451", "46733123451", "10")).await;
        assert_eq!(code, 500);
        let state = &v["transferState"];
        assert_eq!(state["currentState"], "ERROR_OCCURRED");
        assert_eq!(
            state["lastError"]["mojaloopError"]["errorInformation"]["errorCode"],
            "5104"
        );
        let id = state["transferId"].as_str().expect("transferId").to_owned();
        let (_, v) = get(&id).await;
        assert_eq!(v["fulfil"]["body"]["transferState"], "ABORTED");
        let (code, v) = get("00000000-0000-0000-0000-000000000000").await;
        assert_eq!((code, v["statusCode"].as_str()), (404, Some("3208")));

        // Invalid amount and 457.
        let (code, v) = post(request("h-bad", "46733123000", "5.00")).await;
        assert_eq!((code, v["statusCode"].as_str()), (400, Some("3100")));
        let (code, v) = post(request("h-457", "46733123457", "5")).await;
        assert_eq!((code, v["statusCode"].as_str()), (400, Some("3100")));
        let mut missing = request("h-missing", "46733123000", "5");
        missing.as_object_mut().expect("object").remove("to");
        let (code, _) = post(missing).await;
        assert_eq!(code, 400);

        // No idempotency: same homeTransactionId twice executes twice.
        for _ in 0..2 {
            let (code, _) = post(request("h-twice", "46733123000", "1")).await;
            assert_eq!(code, 200);
        }
        // 474: first 429, next succeeds.
        let (code, _) = post(request("h-474", "46733123474", "1")).await;
        assert_eq!(code, 429);
        let (code, _) = post(request("h-474", "46733123474", "1")).await;
        assert_eq!(code, 200);

        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("h-twice"), Some(&2));
        assert_eq!(stats.submissions.get("h-twice"), Some(&2));
        assert_eq!(stats.executed.get("h-ok"), Some(&1));
        assert_eq!(stats.executed.get("h-451"), None);
        assert_eq!(stats.executed.get("h-457"), None);
        assert_eq!(stats.submissions.get("h-bad"), None);
        assert_eq!(stats.submissions.get("h-474"), Some(&2));
        assert_eq!(stats.executed.get("h-474"), Some(&1));
        assert_eq!(stats.status_queries, 3);
    }

    #[tokio::test]
    async fn timeout_trigger_executes_then_hangs() {
        let cfg = SimConfig {
            hang_ms: 400,
            ..SimConfig::default()
        };
        let sim = spawn(cfg, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("spawn");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let started = std::time::Instant::now();
        let r = http
            .post(format!("{}/transfers", sim.base_url()))
            .json(&request("h-470", "46733123470", "1"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() >= std::time::Duration::from_millis(400));
        assert_eq!(sim.simulator.stats().executed.get("h-470"), Some(&1));
    }
}
