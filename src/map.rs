//! Calls to an adapter's script contract and the typed results: `build_request`,
//! `build_status_request` (payment → [`DfspRequest`]) and `build_batch_request` (payments →
//! one bulk request), `parse_response`, `parse_status_response` and `parse_callback` (DFSP
//! message → [`Outcome`]) and `parse_batch_response` (bulk answer → [`BatchOutcome`]). Everything a
//! script returns is checked here; a malformed result is a [`ScriptError`] for that payment.
//! No I/O happens here.

use rhai::{Dynamic, Map};

use crate::executor::{Body, DfspRequest, DfspResponse};
use crate::script::convert::{json_to_dynamic, str_or_unit, write_json};
use crate::script::{Adapter, ScriptError, map_str, text_of};

/// The status a DFSP message reports, as scripts return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Accepted,
    Succeeded,
    Failed,
    Pending,
    Unknown,
}

/// What a script made of a DFSP response or callback.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Reported,
    pub dfsp_ref: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    /// The DFSP surely did not execute the payment (so a retry or a fallback DFSP is safe).
    pub not_executed: bool,
    /// Worth retrying on the same DFSP later (e.g. 429); only meaningful with `not_executed`.
    pub retry: bool,
    /// A request that moves the same transfer on (e.g. Mojaloop's `PUT /transfers/{id}`
    /// accepting the party or the quote). Never a new submission: it names a transfer the DFSP
    /// already holds. The poller sends it and reads the answer with `parse_status_response`.
    pub next: Option<DfspRequest>,
}

/// What a script made of the answer to a bulk request: one outcome for every payment it
/// carried, except those the answer names on their own.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub all: Outcome,
    /// Payment id → its own outcome.
    pub items: std::collections::HashMap<String, Outcome>,
}

impl BatchOutcome {
    pub fn for_payment(&self, id: &str) -> &Outcome {
        self.items.get(id).unwrap_or(&self.all)
    }
}

/// How a callback names its payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackMatch {
    PaymentId(String),
    DfspRef(String),
    ReferenceId(String),
}

impl Adapter {
    fn fail(&self, message: impl Into<String>) -> ScriptError {
        ScriptError {
            file: self.script.file.clone(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }

    pub fn build_request(
        &self,
        engine: &rhai::Engine,
        payment: Dynamic,
        ctx: Dynamic,
    ) -> Result<DfspRequest, ScriptError> {
        let out = self.script.call(engine, "build_request", (payment, ctx))?;
        self.request_from(out, "build_request")
    }

    /// `None` when the script says the payment cannot be looked up (it returned `()`).
    pub fn build_status_request(
        &self,
        engine: &rhai::Engine,
        payment: Dynamic,
        ctx: Dynamic,
    ) -> Result<Option<DfspRequest>, ScriptError> {
        let out = self
            .script
            .call(engine, "build_status_request", (payment, ctx))?;
        if out.is_unit() {
            return Ok(None);
        }
        self.request_from(out, "build_status_request").map(Some)
    }

    pub fn parse_response(
        &self,
        engine: &rhai::Engine,
        payment: Dynamic,
        response: &DfspResponse,
    ) -> Result<Outcome, ScriptError> {
        let out = self
            .script
            .call(engine, "parse_response", (payment, response_map(response)))?;
        self.outcome_from(&out, "parse_response")
    }

    pub fn parse_status_response(
        &self,
        engine: &rhai::Engine,
        payment: Dynamic,
        response: &DfspResponse,
    ) -> Result<Outcome, ScriptError> {
        let out = self.script.call(
            engine,
            "parse_status_response",
            (payment, response_map(response)),
        )?;
        self.outcome_from(&out, "parse_status_response")
    }

    /// One bulk request for `payments` (an array of payment maps), which share `ctx`.
    pub fn build_batch_request(
        &self,
        engine: &rhai::Engine,
        payments: rhai::Array,
        ctx: Dynamic,
    ) -> Result<DfspRequest, ScriptError> {
        let out = self
            .script
            .call(engine, "build_batch_request", (payments, ctx))?;
        self.request_from(out, "build_batch_request")
    }

    /// The script returns one outcome map for the whole request; its optional `items` list
    /// holds outcomes of single payments (each with `payment_id`) that differ from it.
    pub fn parse_batch_response(
        &self,
        engine: &rhai::Engine,
        payments: rhai::Array,
        response: &DfspResponse,
    ) -> Result<BatchOutcome, ScriptError> {
        const FUNC: &str = "parse_batch_response";
        let out = self
            .script
            .call(engine, FUNC, (payments, response_map(response)))?;
        let all = self.outcome_from(&out, FUNC)?;
        let mut items = std::collections::HashMap::new();
        let listed = out
            .read_lock::<Map>()
            .and_then(|m| m.get("items").cloned())
            .filter(|i| !i.is_unit());
        if let Some(list) = listed {
            let list = list
                .try_cast::<rhai::Array>()
                .ok_or_else(|| self.fail(format!("{FUNC}: 'items' must be an array")))?;
            for item in list {
                let id = item
                    .read_lock::<Map>()
                    .and_then(|m| map_str(&m, "payment_id"))
                    .ok_or_else(|| self.fail(format!("{FUNC}: every item needs a 'payment_id'")))?;
                items.insert(id, self.outcome_from(&item, FUNC)?);
            }
        }
        Ok(BatchOutcome { all, items })
    }

    /// Empty when the script ignores the callback (returned `()`). A callback may report on
    /// many payments (a bank's status report for a whole file): the script then returns an
    /// array of reports, each with its own `match`.
    pub fn parse_callback(
        &self,
        engine: &rhai::Engine,
        request: Dynamic,
    ) -> Result<Vec<(CallbackMatch, Outcome)>, ScriptError> {
        let out = self.script.call(engine, "parse_callback", (request,))?;
        if out.is_unit() {
            return Ok(Vec::new());
        }
        if out.is_array() {
            let list = out.cast::<rhai::Array>();
            return list
                .iter()
                .filter(|r| !r.is_unit())
                .map(|r| self.callback_report(r))
                .collect();
        }
        Ok(vec![self.callback_report(&out)?])
    }

    fn callback_report(&self, out: &Dynamic) -> Result<(CallbackMatch, Outcome), ScriptError> {
        let map = out
            .read_lock::<Map>()
            .ok_or_else(|| self.fail("parse_callback must return a map, an array of maps or ()"))?
            .clone();
        let m = map
            .get("match")
            .and_then(|m| m.read_lock::<Map>().map(|m| m.clone()))
            .ok_or_else(|| {
                self.fail("parse_callback: 'match' must be a map with payment_id, dfsp_ref or reference_id")
            })?;
        let matcher = if let Some(id) = map_str(&m, "payment_id") {
            CallbackMatch::PaymentId(id)
        } else if let Some(r) = map_str(&m, "dfsp_ref") {
            CallbackMatch::DfspRef(r)
        } else if let Some(r) = map_str(&m, "reference_id") {
            CallbackMatch::ReferenceId(r)
        } else {
            return Err(self
                .fail("parse_callback: 'match' needs one of payment_id, dfsp_ref, reference_id"));
        };
        Ok((matcher, self.outcome_from(out, "parse_callback")?))
    }

    fn request_from(&self, out: Dynamic, func: &str) -> Result<DfspRequest, ScriptError> {
        let type_name = out.type_name();
        let map = out
            .flatten()
            .try_cast::<Map>()
            .ok_or_else(|| self.fail(format!("{func} must return a map, got {type_name}")))?;
        let method = map_str(&map, "method").unwrap_or_else(|| "POST".into());
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| self.fail(format!("{func}: invalid method '{method}'")))?;
        let path = map_str(&map, "path")
            .ok_or_else(|| self.fail(format!("{func}: 'path' is required")))?;
        let mut headers = Vec::new();
        if let Some(h) = map.get("headers").filter(|h| !h.is_unit()) {
            let h = h
                .read_lock::<Map>()
                .ok_or_else(|| self.fail(format!("{func}: 'headers' must be a map")))?;
            headers.reserve(h.len());
            for (k, v) in h.iter() {
                headers.push((k.as_str().to_owned(), text_of(v)));
            }
        }
        let body = match map.get("body") {
            None => None,
            Some(b) if b.is_unit() => None,
            Some(b) if b.is_string() => Some(Body::Text {
                content_type: map_str(&map, "content_type")
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
                text: text_of(b),
            }),
            Some(b) => {
                let mut text = String::with_capacity(512);
                write_json(b, &mut text).map_err(|e| self.fail(format!("{func}: body: {e}")))?;
                Some(Body::Json(text))
            }
        };
        Ok(DfspRequest {
            method,
            path,
            headers,
            body,
            idempotency_key: map_str(&map, "idempotency_key"),
        })
    }

    fn outcome_from(&self, out: &Dynamic, func: &str) -> Result<Outcome, ScriptError> {
        let map = out.read_lock::<Map>().ok_or_else(|| {
            self.fail(format!("{func} must return a map, got {}", out.type_name()))
        })?;
        let status = map_str(&map, "status")
            .ok_or_else(|| self.fail(format!("{func}: 'status' is required")))?;
        let status = match status.as_str() {
            "accepted" => Reported::Accepted,
            "succeeded" => Reported::Succeeded,
            "failed" => Reported::Failed,
            "pending" => Reported::Pending,
            "unknown" => Reported::Unknown,
            other => {
                return Err(self.fail(format!(
                    "{func}: status '{other}' is not one of accepted, succeeded, failed, pending, unknown"
                )));
            }
        };
        let flag = |key: &str| -> Result<bool, ScriptError> {
            match map.get(key) {
                None => Ok(false),
                Some(v) if v.is_unit() => Ok(false),
                Some(v) => v
                    .as_bool()
                    .map_err(|_| self.fail(format!("{func}: '{key}' must be true or false"))),
            }
        };
        let next = match map.get("next") {
            None => None,
            Some(n) if n.is_unit() => None,
            Some(n) => Some(self.request_from(n.clone(), &format!("{func}: next"))?),
        };
        Ok(Outcome {
            status,
            dfsp_ref: map_str(&map, "dfsp_ref"),
            reason_code: map_str(&map, "reason_code"),
            reason: map_str(&map, "reason"),
            not_executed: flag("not_executed")?,
            retry: flag("retry")?,
            next,
        })
    }
}

/// A DFSP response or callback as scripts see it: `#{status, headers, body}`, the body parsed
/// when it is JSON, a string otherwise, `()` when empty.
pub fn response_map(r: &DfspResponse) -> Dynamic {
    let mut m = Map::new();
    m.insert("status".into(), Dynamic::from_int(i64::from(r.status)));
    m.insert("headers".into(), headers_map(r.headers.iter()));
    m.insert("body".into(), body_dynamic(&r.body));
    Dynamic::from_map(m)
}

fn headers_map<'a>(headers: impl Iterator<Item = (&'a String, &'a String)>) -> Dynamic {
    Dynamic::from_map(
        headers
            .map(|(k, v)| (k.to_ascii_lowercase().into(), v.clone().into()))
            .collect::<Map>(),
    )
}

pub fn body_dynamic(body: &[u8]) -> Dynamic {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Dynamic::UNIT;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => json_to_dynamic(&v),
        Err(_) => str_or_unit(Some(&String::from_utf8_lossy(body))),
    }
}
