//! Fake sponsor bank taking ISO 20022 bulk credit transfers: a `pain.001.001.09` payment file
//! uploaded by `POST /bank/v1/payment-files` is answered `202` with a `pain.002.001.10` status
//! report (group status `ACTC`), processed in the background and, once every transaction is
//! decided, reported by one pain.002 `POST`ed to the upload's `X-Callback-URL`;
//! `GET /bank/v1/payment-files/{MsgId}/status[?endToEndId=..]` answers the current report.
//!
//! Auth: an OAuth2 client-credentials token from `POST /bank/v1/oauth/token` (Basic client
//! id:secret, lifetime `token_ttl_s`) sent as a Bearer token on every business call (`401`
//! `{"error":"invalid_token"}` otherwise); tokens can be revoked mid-run through
//! `POST /_sim/bank/tokens/revoke`. A file failing validation (XML, namespace, mandatory fields,
//! `NbOfTxs`/`CtrlSum`, amounts, duplicate `EndToEndId`) is refused whole: `400`, group status
//! `RJCT` reason `FF01`, nothing stored. A file whose `MsgId` was already accepted is answered
//! `409` with that file's current report and never executed again. Submissions and executions
//! are counted per `EndToEndId`.
//!
//! Triggers (see [`super::trigger`]), by the creditor account (`CdtrAcct/Id/Othr/Id` or `IBAN`):
//! - `RJCT`, not executed: 475 `AC01`, 476 `AM04`, 457 `AM21`, 456 `AC06`, 451 `AG01`;
//! - 453 stays `ACSP` forever (the callback does not wait for it); 454 `ACCC` a second late;
//! - 470: the file is processed at once but the upload is answered only after `hang_ms` (the
//!   callback still comes); 471 the transaction is left out of the callback report; 472 the
//!   report is sent twice; 473 the report is sent before the 202;
//! - any other account, other trigger suffixes included, is credited (`ACCC`).
//!
//! Random chaos (`failure_rate` 500, `rate_429` 429, `timeout_rate` late answer; loss and
//! duplication of the callback) is drawn per file, only for files without any trigger.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use rust_decimal::Decimal;
use serde_json::json;

use super::{Chaos, Expected, Simulator, Trigger, bump, json_response, lock, sleep_ms, trigger};

/// Credentials the simulator accepts (HTTP Basic on the token endpoint).
const CLIENT_ID: &str = "pil-sim-bank-client";
const CLIENT_SECRET: &str = "pil-sim-bank-secret";

const PAIN001_NS: &str = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09";
const PAIN002_NS: &str = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.10";
const PAIN001_NAME: &str = "pain.001.001.09";

/// `OrgnlMsgId` of a rejection report when the file's own `MsgId` could not be read.
const UNKNOWN_MSG_ID: &str = "NOTPROVIDED";
/// Deepest element nesting accepted in an uploaded file.
const MAX_DEPTH: usize = 64;
/// How much later a 454 (slow success) transaction is credited.
const SLOW_MS: u64 = 1000;

#[derive(Default)]
pub(super) struct BankState {
    /// Access token -> expiry.
    tokens: HashMap<String, Instant>,
    /// Accepted files by `MsgId`.
    files: HashMap<String, PaymentFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxStatus {
    /// `ACSP`: accepted, settlement in process.
    Pending,
    /// `ACCC`: the creditor's account was credited.
    Credited,
    /// `RJCT` with this reason code.
    Rejected(&'static str),
}

impl TxStatus {
    fn code(self) -> &'static str {
        match self {
            Self::Pending => "ACSP",
            Self::Credited => "ACCC",
            Self::Rejected(_) => "RJCT",
        }
    }
}

struct Tx {
    end_to_end_id: String,
    amount: Decimal,
    currency: String,
    trigger: Option<Trigger>,
    status: TxStatus,
}

/// One `PmtInf` of a file.
struct Block {
    pmt_inf_id: String,
    txs: Vec<Tx>,
}

struct PaymentFile {
    msg_id: String,
    callback: Option<String>,
    blocks: Vec<Block>,
}

impl PaymentFile {
    fn txs(&self) -> impl Iterator<Item = &Tx> {
        self.blocks.iter().flat_map(|b| b.txs.iter())
    }

    fn has(&self, t: Trigger) -> bool {
        self.txs().any(|tx| tx.trigger == Some(t))
    }

    /// `ACSP` while any transaction is undecided, else `ACCC`, `RJCT` or `PART` (mixed).
    fn group_status(&self) -> &'static str {
        let (mut credited, mut rejected) = (false, false);
        for tx in self.txs() {
            match tx.status {
                TxStatus::Pending => return "ACSP",
                TxStatus::Credited => credited = true,
                TxStatus::Rejected(_) => rejected = true,
            }
        }
        match (credited, rejected) {
            (true, true) => "PART",
            (false, true) => "RJCT",
            _ => "ACCC",
        }
    }
}

/// The reason code a trigger rejects a transaction with.
fn rejection(t: Trigger) -> Option<&'static str> {
    match t {
        Trigger::PayeeNotFound => Some("AC01"),
        Trigger::NotEnoughFunds => Some("AM04"),
        Trigger::NotAllowed => Some("AM21"),
        Trigger::PayeeNotAllowed => Some("AC06"),
        Trigger::ApprovalRejected => Some("AG01"),
        _ => None,
    }
}

fn reason_text(code: &str) -> &'static str {
    match code {
        "AC01" => "Creditor account number is incorrect or unknown.",
        "AM04" => "Insufficient funds on the debtor account.",
        "AM21" => "Transaction amount exceeds the agreed limit.",
        "AC06" => "Creditor account is blocked.",
        "AG01" => "Transaction forbidden on this account.",
        _ => "Transaction rejected.",
    }
}

/// What PIL should end with for a creditor account at this bank.
pub(super) fn expected(t: Trigger) -> Expected {
    if t == Trigger::PendingForever {
        return Expected::Pending;
    }
    rejection(t).map_or(Expected::Succeeded, Expected::Failed)
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/bank/v1/oauth/token", post(token))
        .route("/bank/v1/payment-files", post(upload))
        .route("/bank/v1/payment-files/{msg_id}/status", get(status))
        .route("/_sim/bank/tokens/revoke", post(revoke_tokens))
}

// ---------------------------------------------------------------------------------------------
// Reading pain.001

/// An XML element: namespace, local name, attributes (local names), children, text.
struct Node {
    ns: String,
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    /// Children with this local name in the parent's namespace.
    fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children
            .iter()
            .filter(move |c| c.name == name && c.ns == self.ns)
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.name == name && c.ns == self.ns)
    }

    fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |n, p| n.child(p))
    }

    /// Trimmed text at `path`; `None` when the element is missing or blank.
    fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path)
            .map(|n| n.text.trim())
            .filter(|t| !t.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn open_node(ns: String, e: &BytesStart) -> Result<Node, String> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute: {err}"))?;
        if a.key.as_namespace_binding().is_some() {
            continue;
        }
        let value = a
            .unescape_value()
            .map_err(|err| format!("bad attribute value: {err}"))?;
        attrs.push((
            String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(Node {
        ns,
        name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

fn close_node(stack: &mut [Node], root: &mut Option<Node>, node: Node) -> Result<(), String> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None if root.is_some() => return Err("more than one root element".into()),
        None => *root = Some(node),
    }
    Ok(())
}

fn push_text(stack: &mut [Node], text: &str) -> Result<(), String> {
    match stack.last_mut() {
        Some(node) => node.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err("text outside the root element".into()),
    }
    Ok(())
}

/// A well-formed document as a tree; DTDs (and so entity declarations) are refused.
fn parse_xml(text: &str) -> Result<Node, String> {
    let mut reader = quick_xml::NsReader::from_str(text);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let (ns, event) = match reader.read_resolved_event() {
            Ok((ResolveResult::Bound(ns), event)) => {
                (String::from_utf8_lossy(ns.as_ref()).into_owned(), event)
            }
            Ok((_, event)) => (String::new(), event),
            Err(e) => return Err(format!("not well-formed XML: {e}")),
        };
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_DEPTH}"));
                }
                stack.push(open_node(ns, &e)?);
            }
            Event::Empty(e) => close_node(&mut stack, &mut root, open_node(ns, &e)?)?,
            Event::End(_) => {
                let node = stack.pop().ok_or("unbalanced end tag")?;
                close_node(&mut stack, &mut root, node)?;
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("bad text: {e}"))?;
                let s = quick_xml::escape::unescape(&s).map_err(|e| format!("bad text: {e}"))?;
                push_text(&mut stack, &s)?;
            }
            Event::GeneralRef(r) => {
                let name = r.decode().map_err(|e| format!("bad reference: {e}"))?;
                let reference = format!("&{name};");
                let s = quick_xml::escape::unescape(&reference)
                    .map_err(|_| format!("unknown entity {reference}"))?;
                push_text(&mut stack, &s)?;
            }
            Event::CData(t) => push_text(&mut stack, &String::from_utf8_lossy(&t))?,
            Event::DocType(_) => return Err("DTDs are not accepted".into()),
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

/// Why a file is refused (`FF01`), with its `MsgId` when it could be read.
#[derive(Debug)]
struct Refusal {
    msg_id: Option<String>,
    reason: String,
}

/// A validated file, before it is stored.
struct ParsedFile {
    msg_id: String,
    nb_of_txs: usize,
    blocks: Vec<Block>,
}

/// `Max35Text`-like identifiers: present, not blank, at most `max` characters.
fn identifier<'a>(value: Option<&'a str>, what: &str, max: usize) -> Result<&'a str, String> {
    let v = value.ok_or_else(|| format!("missing {what}"))?;
    if v.chars().count() > max {
        return Err(format!("{what} longer than {max} characters"));
    }
    Ok(v)
}

fn digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// `Max15NumericText`.
fn count(value: Option<&str>, what: &str) -> Result<usize, String> {
    let v = value.ok_or_else(|| format!("missing {what}"))?;
    if v.is_empty() || v.len() > 15 || !digits(v) {
        return Err(format!("{what} must be 1 to 15 digits"));
    }
    v.parse().map_err(|_| format!("{what} out of range"))
}

/// A plain decimal as ISO 20022 amounts are written: digits, optionally a point and more digits
/// (no sign, no exponent, no bare point).
fn plain_decimal(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !int.is_empty() && digits(int) && digits(frac) && !(s.contains('.') && frac.is_empty())
}

/// An ISO 20022 amount: at most 18 digits of which at most 5 after the point, above zero.
fn amount(v: &str, what: &str) -> Result<Decimal, String> {
    let unsigned = v.strip_prefix('-').unwrap_or(v);
    if !plain_decimal(unsigned) {
        return Err(format!("{what} \"{v}\" is not a decimal number"));
    }
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if frac.len() > 5 {
        return Err(format!("{what} {v} has more than 5 fraction digits"));
    }
    if int.trim_start_matches('0').len() + frac.len() > 18 {
        return Err(format!("{what} {v} has more than 18 digits"));
    }
    let d = Decimal::from_str(unsigned).map_err(|_| format!("{what} {v} is not a decimal"))?;
    if unsigned.len() != v.len() || d <= Decimal::ZERO {
        return Err(format!("{what} must be greater than zero"));
    }
    Ok(d)
}

/// An optional `CtrlSum` that, when present, must equal `sum`.
fn check_ctrl_sum(node: &Node, sum: Decimal, what: &str) -> Result<(), String> {
    let Some(text) = node.text_at(&["CtrlSum"]) else {
        return Ok(());
    };
    let declared = Some(text)
        .filter(|t| plain_decimal(t))
        .and_then(|t| Decimal::from_str(t).ok())
        .ok_or_else(|| format!("{what} \"{text}\" is not a decimal number"))?;
    if declared != sum {
        return Err(format!("{what} {declared} but the amounts add up to {sum}"));
    }
    Ok(())
}

fn parse_transaction(
    tx: &Node,
    position: usize,
    pmt_inf_id: &str,
    seen: &mut HashSet<String>,
) -> Result<Tx, String> {
    let end_to_end_id = identifier(
        tx.text_at(&["PmtId", "EndToEndId"]),
        &format!("PmtId/EndToEndId in transaction {position} of PmtInf {pmt_inf_id}"),
        35,
    )?
    .to_owned();
    let e2e = &end_to_end_id;
    if !seen.insert(end_to_end_id.clone()) {
        return Err(format!("duplicate EndToEndId {e2e}"));
    }
    let instd = tx
        .at(&["Amt", "InstdAmt"])
        .ok_or_else(|| format!("missing Amt/InstdAmt for EndToEndId {e2e}"))?;
    let text = instd.text.trim();
    if text.is_empty() {
        return Err(format!("empty Amt/InstdAmt for EndToEndId {e2e}"));
    }
    let amount = amount(text, &format!("InstdAmt of {e2e}"))?;
    let currency = instd
        .attr("Ccy")
        .map(str::trim)
        .ok_or_else(|| format!("missing InstdAmt/@Ccy for EndToEndId {e2e}"))?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "Ccy \"{currency}\" of {e2e} is not a currency code"
        ));
    }
    let account = identifier(
        tx.text_at(&["CdtrAcct", "Id", "Othr", "Id"])
            .or_else(|| tx.text_at(&["CdtrAcct", "Id", "IBAN"])),
        &format!("CdtrAcct/Id (Othr/Id or IBAN) for EndToEndId {e2e}"),
        34,
    )?;
    if let Some(name) = tx.text_at(&["Cdtr", "Nm"])
        && name.chars().count() > 140
    {
        return Err(format!("Cdtr/Nm of {e2e} longer than 140 characters"));
    }
    Ok(Tx {
        trigger: trigger(account),
        end_to_end_id,
        amount,
        currency: currency.to_owned(),
        status: TxStatus::Pending,
    })
}

fn parse_block(pmt: &Node, seen: &mut HashSet<String>) -> Result<(Block, Decimal), String> {
    let pmt_inf_id = identifier(pmt.text_at(&["PmtInfId"]), "PmtInf/PmtInfId", 35)?.to_owned();
    let mut txs = Vec::new();
    let mut sum = Decimal::ZERO;
    for (i, tx) in pmt.children("CdtTrfTxInf").enumerate() {
        let tx = parse_transaction(tx, i + 1, &pmt_inf_id, seen)?;
        sum = sum
            .checked_add(tx.amount)
            .ok_or("the amounts add up beyond the decimal range")?;
        txs.push(tx);
    }
    if txs.is_empty() {
        return Err(format!("PmtInf {pmt_inf_id} has no CdtTrfTxInf"));
    }
    if pmt.child("NbOfTxs").is_some() {
        let n = count(pmt.text_at(&["NbOfTxs"]), "PmtInf/NbOfTxs")?;
        if n != txs.len() {
            return Err(format!(
                "PmtInf {pmt_inf_id} NbOfTxs {n} but it holds {} transactions",
                txs.len()
            ));
        }
    }
    check_ctrl_sum(pmt, sum, &format!("PmtInf {pmt_inf_id} CtrlSum"))?;
    Ok((Block { pmt_inf_id, txs }, sum))
}

/// Validates a pain.001.001.09 upload.
fn parse_payment_file(body: &[u8]) -> Result<ParsedFile, Refusal> {
    let anonymous = |reason: String| Refusal {
        msg_id: None,
        reason,
    };
    let text = std::str::from_utf8(body).map_err(|_| anonymous("the file is not UTF-8".into()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = parse_xml(text).map_err(anonymous)?;
    if doc.name != "Document" || doc.ns != PAIN001_NS {
        return Err(anonymous(format!(
            "the root must be Document in namespace {PAIN001_NS}"
        )));
    }
    let init = doc
        .child("CstmrCdtTrfInitn")
        .ok_or_else(|| anonymous("missing CstmrCdtTrfInitn".into()))?;
    let msg_id = identifier(init.text_at(&["GrpHdr", "MsgId"]), "GrpHdr/MsgId", 35)
        .map_err(anonymous)?
        .to_owned();
    let refuse = |reason: String| Refusal {
        msg_id: Some(msg_id.clone()),
        reason,
    };
    let grp_hdr = init
        .child("GrpHdr")
        .ok_or_else(|| refuse("missing GrpHdr".into()))?;
    let nb_of_txs = count(grp_hdr.text_at(&["NbOfTxs"]), "GrpHdr/NbOfTxs").map_err(refuse)?;
    let mut seen = HashSet::new();
    let mut blocks = Vec::new();
    let mut sum = Decimal::ZERO;
    for pmt in init.children("PmtInf") {
        let (block, block_sum) = parse_block(pmt, &mut seen).map_err(refuse)?;
        sum = sum
            .checked_add(block_sum)
            .ok_or_else(|| refuse("the amounts add up beyond the decimal range".into()))?;
        blocks.push(block);
    }
    if blocks.is_empty() {
        return Err(refuse("missing PmtInf".into()));
    }
    if nb_of_txs != seen.len() {
        return Err(refuse(format!(
            "GrpHdr/NbOfTxs {nb_of_txs} but the file holds {} transactions",
            seen.len()
        )));
    }
    check_ctrl_sum(grp_hdr, sum, "GrpHdr/CtrlSum").map_err(refuse)?;
    Ok(ParsedFile {
        msg_id,
        nb_of_txs,
        blocks,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing pain.002

fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A new report id: "PSR" and 32 hex digits (35 characters, `Max35Text`).
fn report_id() -> String {
    format!("PSR{}", uuid::Uuid::new_v4().simple())
}

fn line(out: &mut String, depth: usize, s: &str) {
    for _ in 0..depth {
        out.push_str("  ");
    }
    out.push_str(s);
    out.push('\n');
}

fn leaf(out: &mut String, depth: usize, name: &str, text: &str) {
    line(out, depth, &format!("<{name}>{}</{name}>", escape(text)));
}

/// `StsRsnInf{Rsn{Cd}, AddtlInf}`; `AddtlInf` is `Max105Text`.
fn reason(out: &mut String, depth: usize, code: &str, info: &str) {
    let info: String = info.chars().take(105).collect();
    line(out, depth, "<StsRsnInf>");
    line(
        out,
        depth + 1,
        &format!("<Rsn><Cd>{}</Cd></Rsn>", escape(code)),
    );
    leaf(out, depth + 1, "AddtlInf", &info);
    line(out, depth, "</StsRsnInf>");
}

/// The document up to the end of `OrgnlGrpInfAndSts`.
fn report_head(
    orgnl_msg_id: &str,
    orgnl_nb_of_txs: Option<usize>,
    grp_sts: &str,
    refusal: Option<&str>,
) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    line(&mut out, 0, &format!("<Document xmlns=\"{PAIN002_NS}\">"));
    line(&mut out, 1, "<CstmrPmtStsRpt>");
    line(&mut out, 2, "<GrpHdr>");
    leaf(&mut out, 3, "MsgId", &report_id());
    leaf(&mut out, 3, "CreDtTm", &now_iso());
    line(&mut out, 2, "</GrpHdr>");
    line(&mut out, 2, "<OrgnlGrpInfAndSts>");
    leaf(&mut out, 3, "OrgnlMsgId", orgnl_msg_id);
    leaf(&mut out, 3, "OrgnlMsgNmId", PAIN001_NAME);
    if let Some(n) = orgnl_nb_of_txs {
        leaf(&mut out, 3, "OrgnlNbOfTxs", &n.to_string());
    }
    leaf(&mut out, 3, "GrpSts", grp_sts);
    if let Some(info) = refusal {
        reason(&mut out, 3, "FF01", info);
    }
    line(&mut out, 2, "</OrgnlGrpInfAndSts>");
    out
}

fn report_tail(mut out: String) -> String {
    line(&mut out, 1, "</CstmrPmtStsRpt>");
    line(&mut out, 0, "</Document>");
    out
}

/// The answer to an accepted upload: group status `ACTC`, no transactions.
fn acceptance_report(msg_id: &str, nb_of_txs: usize) -> String {
    report_tail(report_head(msg_id, Some(nb_of_txs), "ACTC", None))
}

/// The answer to a refused upload: group status `RJCT`, reason `FF01`.
fn refusal_report(refusal: &Refusal) -> String {
    let msg_id = refusal.msg_id.as_deref().unwrap_or(UNKNOWN_MSG_ID);
    report_tail(report_head(msg_id, None, "RJCT", Some(&refusal.reason)))
}

/// The current status of a file's transactions (those `include` keeps; `PmtInf`s left
/// without any are omitted). The group status always describes the whole file.
fn status_report(file: &PaymentFile, include: impl Fn(&Tx) -> bool) -> String {
    let nb = file.txs().count();
    let mut out = report_head(&file.msg_id, Some(nb), file.group_status(), None);
    for block in &file.blocks {
        let txs: Vec<&Tx> = block.txs.iter().filter(|t| include(t)).collect();
        if txs.is_empty() {
            continue;
        }
        line(&mut out, 2, "<OrgnlPmtInfAndSts>");
        leaf(&mut out, 3, "OrgnlPmtInfId", &block.pmt_inf_id);
        for tx in txs {
            line(&mut out, 3, "<TxInfAndSts>");
            leaf(&mut out, 4, "OrgnlEndToEndId", &tx.end_to_end_id);
            leaf(&mut out, 4, "TxSts", tx.status.code());
            if let TxStatus::Rejected(code) = tx.status {
                reason(&mut out, 4, code, reason_text(code));
            }
            line(&mut out, 4, "<OrgnlTxRef>");
            line(
                &mut out,
                5,
                &format!(
                    "<Amt><InstdAmt Ccy=\"{}\">{}</InstdAmt></Amt>",
                    escape(tx.currency.as_str()),
                    tx.amount
                ),
            );
            line(&mut out, 4, "</OrgnlTxRef>");
            line(&mut out, 3, "</TxInfAndSts>");
        }
        line(&mut out, 2, "</OrgnlPmtInfAndSts>");
    }
    report_tail(out)
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Some(rest)` when `value` starts with `scheme ` (scheme case-insensitive).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

async fn token(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = issue_token(&sim, &headers, &body);
    sim.latency().await;
    resp
}

/// OAuth2 client credentials (RFC 6749 §4.4).
fn issue_token(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Response {
    let credentials = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| strip_scheme(v, "Basic"))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
    let expected = format!("{CLIENT_ID}:{CLIENT_SECRET}");
    if credentials.as_deref() != Some(expected.as_bytes()) {
        return json_response(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let form = String::from_utf8_lossy(body);
    if !form
        .split('&')
        .any(|kv| kv.trim() == "grant_type=client_credentials")
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type"}),
        );
    }
    let ttl = sim.config().token_ttl_s;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let now = Instant::now();
    {
        let mut st = lock(&sim.inner.bank);
        st.tokens.retain(|_, exp| *exp > now);
        st.tokens
            .insert(token.clone(), now + Duration::from_secs(ttl));
    }
    sim.with_stats(|s| s.tokens_issued += 1);
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl}),
    )
}

/// Whether the request carries a valid, unexpired Bearer token.
fn token_valid(sim: &Simulator, headers: &HeaderMap) -> bool {
    let token = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| strip_scheme(v, "Bearer"))
        .unwrap_or("");
    lock(&sim.inner.bank)
        .tokens
        .get(token)
        .is_some_and(|exp| *exp > Instant::now())
}

/// `401 {"error":"invalid_token"}`: missing, unknown, expired or revoked token.
fn invalid_token() -> Response {
    let mut resp = json_response(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"}));
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    resp
}

/// Revokes every token issued so far: the next business call with one of them gets 401.
async fn revoke_tokens(State(sim): State<Simulator>) -> StatusCode {
    lock(&sim.inner.bank).tokens.clear();
    StatusCode::NO_CONTENT
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, json!({"error": code, "message": message}))
}

async fn upload(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = handle_upload(&sim, &headers, &body).await;
    sim.latency().await;
    resp
}

async fn handle_upload(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Response {
    let cfg = sim.config();
    if !token_valid(sim, headers) {
        return invalid_token();
    }
    if let Some(ct) = header_str(headers, header::CONTENT_TYPE.as_str()) {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/xml" && media != "text/xml" {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Payment files are sent as application/xml.",
            );
        }
    }
    let callback = match header_str(headers, "x-callback-url").map(str::trim) {
        None | Some("") => None,
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url.to_owned())
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_callback_url",
                "X-Callback-URL must be an http(s) URL.",
            );
        }
    };
    let parsed = match parse_payment_file(body) {
        Ok(p) => p,
        Err(refusal) => return xml_response(StatusCode::BAD_REQUEST, refusal_report(&refusal)),
    };
    sim.with_stats(|s| {
        for tx in parsed.blocks.iter().flat_map(|b| b.txs.iter()) {
            bump(&mut s.submissions, &tx.end_to_end_id);
        }
    });
    let first_trigger = parsed
        .blocks
        .iter()
        .flat_map(|b| b.txs.iter())
        .find_map(|t| t.trigger);
    let chaos = sim.chaos(first_trigger, &cfg);
    let msg_id = parsed.msg_id.clone();
    let (hang, report_first) = {
        let mut st = lock(&sim.inner.bank);
        if let Some(original) = st.files.get(&msg_id) {
            return xml_response(StatusCode::CONFLICT, status_report(original, |_| true));
        }
        match chaos {
            Chaos::Throttle429 => {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "Too many requests; try again later.",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
            Chaos::Fail500 => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "The file could not be processed; nothing was executed.",
                );
            }
            Chaos::None | Chaos::Timeout => {}
        }
        let file = PaymentFile {
            msg_id: msg_id.clone(),
            callback,
            blocks: parsed.blocks,
        };
        let flags = (
            file.has(Trigger::Timeout) || chaos == Chaos::Timeout,
            file.has(Trigger::CallbackBeforeResponse),
        );
        st.files.insert(msg_id.clone(), file);
        flags
    };

    let accepted = xml_response(
        StatusCode::ACCEPTED,
        acceptance_report(&msg_id, parsed.nb_of_txs),
    );
    let generation = sim.generation();
    let delay = cfg.latency_ms + cfg.callback_delay_ms;
    if hang {
        // Decided now, reported by callback as usual; the answer comes too late.
        settle(sim, &msg_id, false);
        tokio::spawn(process(sim.clone(), msg_id, delay, generation));
        sleep_ms(cfg.hang_ms).await;
    } else if report_first {
        // Spawned so a client disconnect cannot stop it; awaited so the report precedes the 202.
        let task = process(sim.clone(), msg_id, cfg.callback_delay_ms, generation);
        if let Err(e) = tokio::spawn(task).await {
            tracing::warn!(error = %e, "simulator bank processing task failed");
        }
    } else {
        tokio::spawn(process(sim.clone(), msg_id, delay, generation));
    }
    accepted
}

/// Decides the file's undecided transactions, the 454 ones (`slow`) or the others; 453 ones
/// stay undecided. Each credited transaction is counted as executed, once.
fn settle(sim: &Simulator, msg_id: &str, slow: bool) {
    let executed: Vec<String> = {
        let mut st = lock(&sim.inner.bank);
        let Some(file) = st.files.get_mut(msg_id) else {
            return;
        };
        let mut executed = Vec::new();
        for tx in file.blocks.iter_mut().flat_map(|b| b.txs.iter_mut()) {
            if tx.status != TxStatus::Pending
                || tx.trigger == Some(Trigger::PendingForever)
                || (tx.trigger == Some(Trigger::SlowSuccess)) != slow
            {
                continue;
            }
            match tx.trigger.and_then(rejection) {
                Some(code) => tx.status = TxStatus::Rejected(code),
                None => {
                    tx.status = TxStatus::Credited;
                    executed.push(tx.end_to_end_id.clone());
                }
            }
        }
        executed
    };
    if !executed.is_empty() {
        sim.with_stats(|s| {
            for e2e in &executed {
                bump(&mut s.executed, e2e);
            }
        });
    }
}

/// Background processing: after `delay_ms` decide the file (454 ones a second later), then
/// send the report.
async fn process(sim: Simulator, msg_id: String, delay_ms: u64, generation: u64) {
    sleep_ms(delay_ms).await;
    if sim.generation() != generation {
        return;
    }
    settle(&sim, &msg_id, false);
    let slow = lock(&sim.inner.bank)
        .files
        .get(&msg_id)
        .is_some_and(|f| f.has(Trigger::SlowSuccess));
    if slow {
        sleep_ms(SLOW_MS).await;
        if sim.generation() != generation {
            return;
        }
        settle(&sim, &msg_id, true);
    }
    send_report(&sim, &msg_id).await;
}

/// POSTs the file's report to its callback URL: 471 transactions left out (and counted lost),
/// twice when a 472 is in the file, the loss/duplicate knobs for files without triggers.
async fn send_report(sim: &Simulator, msg_id: &str) {
    let (url, body, lost, copies) = {
        let st = lock(&sim.inner.bank);
        let Some(file) = st.files.get(msg_id) else {
            return;
        };
        let Some(url) = file.callback.clone() else {
            return;
        };
        let lost = file
            .txs()
            .filter(|t| t.trigger == Some(Trigger::CallbackLost))
            .count();
        let body = (lost < file.txs().count())
            .then(|| status_report(file, |t| t.trigger != Some(Trigger::CallbackLost)));
        let copies = if file.has(Trigger::CallbackDuplicated) {
            Some(2)
        } else if file.txs().any(|t| t.trigger.is_some()) {
            Some(1)
        } else {
            None
        };
        (url, body, lost, copies)
    };
    if lost > 0 {
        sim.with_stats(|s| s.callbacks_lost += lost as u64);
    }
    let Some(body) = body else {
        return;
    };
    let copies = copies.unwrap_or_else(|| sim.callback_copies(None));
    for _ in 0..copies {
        sim.with_stats(|s| s.callbacks_sent += 1);
        let sent = sim
            .inner
            .client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/xml")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if !r.status().is_success() => {
                tracing::warn!(%url, status = %r.status(), "bank callback rejected by receiver");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%url, error = %e, "bank callback delivery failed"),
        }
    }
}

/// `GET /bank/v1/payment-files/{MsgId}/status[?endToEndId=..]`.
async fn status(
    State(sim): State<Simulator>,
    Path(msg_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    sim.with_stats(|s| s.status_queries += 1);
    let resp = if token_valid(&sim, &headers) {
        current_report(&sim, &msg_id, query.get("endToEndId").map(String::as_str))
    } else {
        invalid_token()
    };
    sim.latency().await;
    resp
}

/// The file's current report, whole or restricted to one transaction; 404 when unknown.
fn current_report(sim: &Simulator, msg_id: &str, end_to_end_id: Option<&str>) -> Response {
    let st = lock(&sim.inner.bank);
    let Some(file) = st.files.get(msg_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No payment file with this MsgId.",
        );
    };
    match end_to_end_id {
        None => xml_response(StatusCode::OK, status_report(file, |_| true)),
        Some(e2e) if file.txs().any(|t| t.end_to_end_id == e2e) => xml_response(
            StatusCode::OK,
            status_report(file, |t| t.end_to_end_id == e2e),
        ),
        Some(_) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No transaction with this EndToEndId in the payment file.",
        ),
    }
}
