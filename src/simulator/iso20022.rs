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
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use rust_decimal::Decimal;
use serde_json::json;

use super::{
    Chaos, Expected, Simulator, Trigger, bearer, bump, header_str, issue_bearer, json_response,
    lock, refuse_client_credentials, sleep_ms, trigger,
};

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

async fn token(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = issue_token(&sim, &headers, &body);
    sim.latency().await;
    resp
}

/// OAuth2 client credentials (RFC 6749 §4.4).
fn issue_token(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(refused) = refuse_client_credentials(headers, body, CLIENT_ID, CLIENT_SECRET) {
        return refused;
    }
    let ttl = sim.config().token_ttl_s;
    let resp = issue_bearer(&mut lock(&sim.inner.bank).tokens, ttl);
    sim.with_stats(|s| s.tokens_issued += 1);
    resp
}

/// Whether the request carries a valid, unexpired Bearer token.
fn token_valid(sim: &Simulator, headers: &HeaderMap) -> bool {
    let token = bearer(headers);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::collections::BTreeMap;

    use super::super::{
        Dfsp, SimConfig, expected_outcome,
        test_support::{serve, start},
    };
    use super::*;
    use serde_json::Value;
    use tokio::sync::mpsc;

    /// A callback receiver: its URL and the XML bodies POSTed to it (`application/xml` only).
    async fn receiver() -> (
        String,
        mpsc::UnboundedReceiver<String>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/cb",
            post(move |headers: HeaderMap, body: String| {
                let tx = tx.clone();
                async move {
                    assert_eq!(
                        header_str(&headers, "content-type"),
                        Some("application/xml")
                    );
                    let _ = tx.send(body);
                    StatusCode::OK
                }
            }),
        );
        let (base, task) = serve(app).await;
        (format!("{base}/cb"), rx, task)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> Node {
        let body = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("callback in time")
            .expect("callback");
        report(&body)
    }

    async fn get_token(http: &reqwest::Client, base: &str) -> String {
        let r = http
            .post(format!("{base}/bank/v1/oauth/token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["token_type"], "Bearer");
        assert!(v["expires_in"].is_u64(), "{v}");
        v["access_token"].as_str().expect("token").to_owned()
    }

    /// A (creditor account, amount, EndToEndId) transaction.
    type T<'a> = (&'a str, &'a str, &'a str);

    /// A valid pain.001.001.09 file; accounts starting with a letter are written as IBANs.
    fn pain001(msg_id: &str, blocks: &[(&str, &[T])]) -> String {
        let all = blocks.iter().flat_map(|(_, txs)| txs.iter());
        let n = all.clone().count();
        let sum: Decimal = all
            .map(|(_, a, _)| Decimal::from_str(a).expect("amount"))
            .sum();
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Document xmlns=\"{PAIN001_NS}\"><CstmrCdtTrfInitn>\n\
             <GrpHdr><MsgId>{msg_id}</MsgId><CreDtTm>2025-01-02T10:00:00</CreDtTm>\
             <NbOfTxs>{n}</NbOfTxs><CtrlSum>{sum}</CtrlSum><InitgPty><Nm>PIL</Nm></InitgPty></GrpHdr>\n"
        );
        for (id, txs) in blocks {
            x.push_str(&format!(
                "<PmtInf><PmtInfId>{id}</PmtInfId><PmtMtd>TRF</PmtMtd>\
                 <ReqdExctnDt><Dt>2025-01-02</Dt></ReqdExctnDt><Dbtr><Nm>Ministry</Nm></Dbtr>\
                 <DbtrAcct><Id><Othr><Id>9000</Id></Othr></Id></DbtrAcct>\
                 <DbtrAgt><FinInstnId><BICFI>SIMBKEN1</BICFI></FinInstnId></DbtrAgt>\n"
            ));
            for (account, amount, e2e) in *txs {
                let acct = if account.starts_with(|c: char| c.is_ascii_alphabetic()) {
                    format!("<IBAN>{account}</IBAN>")
                } else {
                    format!("<Othr><Id>{account}</Id></Othr>")
                };
                x.push_str(&format!(
                    "<CdtTrfTxInf><PmtId><EndToEndId>{e2e}</EndToEndId></PmtId>\
                     <Amt><InstdAmt Ccy=\"KES\">{amount}</InstdAmt></Amt>\
                     <Cdtr><Nm>Jane &amp; Co</Nm></Cdtr><CdtrAcct><Id>{acct}</Id></CdtrAcct>\
                     <RmtInf><Ustrd>G2P</Ustrd></RmtInf></CdtTrfTxInf>\n"
                ));
            }
            x.push_str("</PmtInf>\n");
        }
        x.push_str("</CstmrCdtTrfInitn></Document>\n");
        x
    }

    async fn upload(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        xml: &str,
        callback: Option<&str>,
    ) -> (u16, String) {
        let mut req = http
            .post(format!("{base}/bank/v1/payment-files"))
            .bearer_auth(token)
            .header("Content-Type", "application/xml")
            .body(xml.to_owned());
        if let Some(cb) = callback {
            req = req.header("X-Callback-URL", cb);
        }
        let r = req.send().await.expect("upload");
        let code = r.status().as_u16();
        (code, r.text().await.expect("body"))
    }

    async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> (u16, String) {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// A pain.002 `CstmrPmtStsRpt`, its header checked.
    fn report(xml: &str) -> Node {
        let doc = parse_xml(xml).expect("well-formed report");
        assert_eq!(
            (doc.name.as_str(), doc.ns.as_str()),
            ("Document", PAIN002_NS)
        );
        let rpt = doc.children.into_iter().next().expect("CstmrPmtStsRpt");
        assert_eq!(rpt.name, "CstmrPmtStsRpt");
        let id = rpt.text_at(&["GrpHdr", "MsgId"]).expect("MsgId");
        assert!(id.len() <= 35, "{id}");
        assert!(rpt.text_at(&["GrpHdr", "CreDtTm"]).is_some());
        assert_eq!(
            rpt.text_at(&["OrgnlGrpInfAndSts", "OrgnlMsgNmId"]),
            Some(PAIN001_NAME)
        );
        rpt
    }

    fn group(rpt: &Node, field: &str) -> String {
        rpt.text_at(&["OrgnlGrpInfAndSts", field])
            .unwrap_or_default()
            .to_owned()
    }

    /// EndToEndId -> (PmtInfId, TxSts, reason code, amount, currency).
    fn txs(rpt: &Node) -> BTreeMap<String, (String, String, String, String, String)> {
        let mut out = BTreeMap::new();
        for pmt in rpt.children("OrgnlPmtInfAndSts") {
            let pmt_id = pmt.text_at(&["OrgnlPmtInfId"]).expect("OrgnlPmtInfId");
            for tx in pmt.children("TxInfAndSts") {
                let amt = tx.at(&["OrgnlTxRef", "Amt", "InstdAmt"]).expect("amount");
                let e2e = tx.text_at(&["OrgnlEndToEndId"]).expect("e2e").to_owned();
                let row = (
                    pmt_id.to_owned(),
                    tx.text_at(&["TxSts"]).expect("TxSts").to_owned(),
                    tx.text_at(&["StsRsnInf", "Rsn", "Cd"])
                        .unwrap_or_default()
                        .to_owned(),
                    amt.text.clone(),
                    amt.attr("Ccy").unwrap_or_default().to_owned(),
                );
                if let Some(rsn) = tx.text_at(&["StsRsnInf", "Rsn", "Cd"]) {
                    assert_eq!(
                        tx.text_at(&["StsRsnInf", "AddtlInf"]),
                        Some(reason_text(rsn))
                    );
                }
                assert!(out.insert(e2e, row).is_none(), "one entry per transaction");
            }
        }
        out
    }

    fn sts(map: &BTreeMap<String, (String, String, String, String, String)>) -> Vec<String> {
        map.iter()
            .map(|(e2e, (_, s, r, _, _))| {
                format!("{e2e}:{s}{}{r}", if r.is_empty() { "" } else { "/" })
            })
            .collect()
    }

    #[test]
    fn expected_outcomes() {
        let e = |p: &str| expected_outcome(Dfsp::Iso20022Bank, p);
        assert_eq!(e("46733123000"), Expected::Succeeded);
        assert_eq!(e("DE89370400440532013000"), Expected::Succeeded);
        assert_eq!(e("46733123475"), Expected::Failed("AC01"));
        assert_eq!(e("46733123476"), Expected::Failed("AM04"));
        assert_eq!(e("46733123457"), Expected::Failed("AM21"));
        assert_eq!(e("46733123456"), Expected::Failed("AC06"));
        assert_eq!(e("46733123451"), Expected::Failed("AG01"));
        assert_eq!(e("46733123453"), Expected::Pending);
        for s in ["450", "454", "470", "471", "472", "473", "474"] {
            assert_eq!(e(&format!("46733123{s}")), Expected::Succeeded, "{s}");
        }
    }

    #[test]
    fn amounts_and_hostile_xml() {
        for ok in ["1", "0.5", "10.50", "12345.12345", "999999999999999999"] {
            assert!(amount(ok, "a").is_ok(), "{ok}");
        }
        for bad in [
            "0",
            "0.00",
            "-1",
            "1.123456",
            "1e3",
            ".5",
            "5.",
            "",
            "1,5",
            "+1",
            "1000000000000000000",
        ] {
            assert!(amount(bad, "a").is_err(), "{bad}");
        }
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>"#;
        assert!(parse_xml(xxe).is_err());
        assert!(parse_xml("<a><b></a>").is_err());
        assert!(parse_xml("<a/><b/>").is_err());
        assert!(parse_xml("<a/>junk").is_err());
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(parse_xml(&deep).is_err());
        let n = parse_xml("<p:a xmlns:p=\"urn:x\"><p:b k=\"&lt;v&gt;\">1 &amp; &#50;</p:b></p:a>")
            .expect("ok");
        let b = n.child("b").expect("b");
        assert_eq!((b.text.as_str(), b.attr("k")), ("1 & 2", Some("<v>")));
    }

    #[tokio::test]
    async fn mixed_file_callback_lookups_and_reused_msg_id() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let b1: &[T] = &[
            ("DE89370400440532013000", "10.50", "e-ok"),
            ("46733123475", "1", "e-475"),
            ("46733123476", "2", "e-476"),
            ("46733123457", "3", "e-457"),
        ];
        let b2: &[T] = &[
            ("46733123456", "4", "e-456"),
            ("46733123451", "5", "e-451"),
            ("46733123453", "6", "e-453"),
            ("46733123454", "7.25", "e-454"),
            ("46733123000", "8", "e-plain"),
        ];
        let file = pain001("FILE-1", &[("B1", b1), ("B2", b2)]);
        let (code, body) = upload(&http, &base, &token, &file, Some(&cb)).await;
        assert_eq!(code, 202, "{body}");
        let ack = report(&body);
        assert_eq!(group(&ack, "OrgnlMsgId"), "FILE-1");
        assert_eq!(group(&ack, "GrpSts"), "ACTC");
        assert_eq!(group(&ack, "OrgnlNbOfTxs"), "9");
        assert!(ack.child("OrgnlPmtInfAndSts").is_none());

        // Before the slow one is decided.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = "/bank/v1/payment-files/FILE-1/status";
        let (code, body) = get(&http, &base, &token, &format!("{path}?endToEndId=e-454")).await;
        assert_eq!(code, 200);
        let one = report(&body);
        assert_eq!(sts(&txs(&one)), ["e-454:ACSP"]);
        assert_eq!(group(&one, "GrpSts"), "ACSP");
        assert!(rx.try_recv().is_err(), "no report before all are decided");

        let cbr = next(&mut rx).await;
        assert_eq!(group(&cbr, "OrgnlMsgId"), "FILE-1");
        assert_eq!(group(&cbr, "OrgnlNbOfTxs"), "9");
        assert_eq!(group(&cbr, "GrpSts"), "ACSP", "453 is still pending");
        assert!(cbr.at(&["OrgnlGrpInfAndSts", "StsRsnInf"]).is_none());
        let t = txs(&cbr);
        assert_eq!(
            sts(&t),
            [
                "e-451:RJCT/AG01",
                "e-453:ACSP",
                "e-454:ACCC",
                "e-456:RJCT/AC06",
                "e-457:RJCT/AM21",
                "e-475:RJCT/AC01",
                "e-476:RJCT/AM04",
                "e-ok:ACCC",
                "e-plain:ACCC",
            ]
        );
        assert_eq!(t["e-ok"].0, "B1");
        assert_eq!(t["e-454"].0, "B2");
        assert_eq!(
            (t["e-ok"].3.as_str(), t["e-ok"].4.as_str()),
            ("10.50", "KES")
        );
        assert_eq!(t["e-454"].3, "7.25");

        let (code, body) = get(&http, &base, &token, path).await;
        assert_eq!(code, 200);
        assert_eq!(txs(&report(&body)), t);
        let (code, body) = get(&http, &base, &token, &format!("{path}?endToEndId=e-476")).await;
        assert_eq!(code, 200);
        let one = report(&body);
        assert_eq!(sts(&txs(&one)), ["e-476:RJCT/AM04"]);
        assert_eq!(one.children("OrgnlPmtInfAndSts").count(), 1);
        let (code, _) = get(&http, &base, &token, &format!("{path}?endToEndId=nope")).await;
        assert_eq!(code, 404);
        let (code, body) = get(&http, &base, &token, "/bank/v1/payment-files/NOPE/status").await;
        assert_eq!(code, 404);
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"], "not_found");

        // The same MsgId again: 409 with the original's statuses, never executed again.
        let (code, body) = upload(&http, &base, &token, &file, Some(&cb)).await;
        assert_eq!(code, 409);
        let dup = report(&body);
        assert_eq!(group(&dup, "OrgnlMsgId"), "FILE-1");
        assert_eq!(txs(&dup), t);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "no second report");

        let stats = sim.simulator.stats();
        for e2e in ["e-ok", "e-454", "e-plain"] {
            assert_eq!(stats.executed.get(e2e), Some(&1), "{e2e}");
        }
        assert_eq!(stats.executed.len(), 3);
        for e2e in t.keys() {
            assert_eq!(stats.submissions.get(e2e), Some(&2), "{e2e}");
        }
        assert_eq!(stats.callbacks_sent, 1);
        assert_eq!(stats.status_queries, 5);
        assert_eq!(stats.tokens_issued, 1);
    }

    #[tokio::test]
    async fn group_status_summarises_final_transactions() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let token = get_token(&http, &base).await;
        let files: [(&str, &[T], &str); 3] = [
            ("G-ACCC", &[("1", "1", "g1"), ("2", "2", "g2")], "ACCC"),
            (
                "G-RJCT",
                &[("46733123475", "1", "g3"), ("46733123476", "2", "g4")],
                "RJCT",
            ),
            (
                "G-PART",
                &[("3", "1", "g5"), ("46733123451", "2", "g6")],
                "PART",
            ),
        ];
        for (msg_id, txs, _) in files {
            let (code, _) =
                upload(&http, &base, &token, &pain001(msg_id, &[("P", txs)]), None).await;
            assert_eq!(code, 202);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (msg_id, _, grp_sts) in files {
            let path = format!("/bank/v1/payment-files/{msg_id}/status");
            let (code, body) = get(&http, &base, &token, &path).await;
            assert_eq!(code, 200);
            assert_eq!(group(&report(&body), "GrpSts"), grp_sts, "{msg_id}");
        }
        assert_eq!(
            sim.simulator.stats().callbacks_sent,
            0,
            "no callback URL, no report"
        );
    }

    #[tokio::test]
    async fn bad_files_are_refused_whole_with_ff01() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let good = pain001(
            "BAD-1",
            &[("P1", &[("1", "10.50", "bad-1"), ("2", "5", "bad-2")])],
        );
        let ns03 = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03";
        let cases: Vec<(String, &str)> = vec![
            (
                good.replace("<NbOfTxs>2</NbOfTxs>", "<NbOfTxs>3</NbOfTxs>"),
                "NbOfTxs 3",
            ),
            (
                good.replace("<CtrlSum>15.50</CtrlSum>", "<CtrlSum>16</CtrlSum>"),
                "CtrlSum 16",
            ),
            (
                good.replacen("<PmtMtd>", "<NbOfTxs>1</NbOfTxs><PmtMtd>", 1),
                "PmtInf P1 NbOfTxs 1",
            ),
            (
                good.replace("<EndToEndId>bad-2</EndToEndId>", ""),
                "EndToEndId",
            ),
            (good.replace("bad-2", "bad-1"), "duplicate EndToEndId bad-1"),
            (
                good.replace("</CstmrCdtTrfInitn></Document>", ""),
                "ends inside",
            ),
            (good.replace("</Cdtr>", "</Dbtr>"), "well-formed"),
            (good.replace(PAIN001_NS, ns03), "namespace"),
            (
                good.replace(">5</InstdAmt>", ">0</InstdAmt>"),
                "greater than zero",
            ),
            (
                good.replace(">5</InstdAmt>", ">-5</InstdAmt>"),
                "greater than zero",
            ),
            (
                good.replace(">5</InstdAmt>", ">5.000001</InstdAmt>"),
                "fraction digits",
            ),
            (
                good.replace(">5</InstdAmt>", ">5,00</InstdAmt>"),
                "not a decimal",
            ),
            (good.replacen(" Ccy=\"KES\"", "", 1), "Ccy"),
            (good.replacen("<Othr><Id>2</Id></Othr>", "", 1), "CdtrAcct"),
            (
                good.replacen("<Amt><InstdAmt", "<Amt><EqvtAmt", 1)
                    .replacen("</InstdAmt></Amt>", "</EqvtAmt></Amt>", 1),
                "InstdAmt",
            ),
            (
                good.replace(
                    "<MsgId>BAD-1</MsgId>",
                    "<MsgId>0123456789012345678901234567890123456</MsgId>",
                ),
                "longer than 35",
            ),
        ];
        for (xml, why) in &cases {
            let (code, body) = upload(&http, &base, &token, xml, Some(&cb)).await;
            assert_eq!(code, 400, "{why}: {body}");
            let rpt = report(&body);
            assert_eq!(group(&rpt, "GrpSts"), "RJCT", "{why}");
            assert_eq!(
                rpt.text_at(&["OrgnlGrpInfAndSts", "StsRsnInf", "Rsn", "Cd"]),
                Some("FF01"),
                "{why}"
            );
            let info = rpt
                .text_at(&["OrgnlGrpInfAndSts", "StsRsnInf", "AddtlInf"])
                .unwrap_or_default();
            assert!(info.contains(why), "{why}: {info}");
            assert!(info.chars().count() <= 105);
            assert!(rpt.child("OrgnlPmtInfAndSts").is_none());
        }
        // A byte order mark is fine; the file is still refused for its NbOfTxs.
        let (code, body) = upload(
            &http,
            &base,
            &token,
            &format!("\u{feff}{}", cases[0].0),
            None,
        )
        .await;
        assert_eq!(code, 400);
        assert!(body.contains("NbOfTxs 3"), "{body}");
        // Without a readable MsgId.
        let (code, body) = upload(&http, &base, &token, "not xml at all", None).await;
        assert_eq!(code, 400);
        assert_eq!(group(&report(&body), "OrgnlMsgId"), UNKNOWN_MSG_ID);
        let (_, body) = upload(&http, &base, &token, &cases[7].0, None).await;
        assert_eq!(group(&report(&body), "OrgnlMsgId"), UNKNOWN_MSG_ID);
        let (_, body) = upload(&http, &base, &token, &cases[0].0, None).await;
        assert_eq!(group(&report(&body), "OrgnlMsgId"), "BAD-1");

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "no report for a refused file");
        let stats = sim.simulator.stats();
        assert!(stats.submissions.is_empty() && stats.executed.is_empty());
        let (code, _) = get(&http, &base, &token, "/bank/v1/payment-files/BAD-1/status").await;
        assert_eq!(code, 404, "nothing stored");

        // The corrected file under the same MsgId is accepted.
        let (code, _) = upload(&http, &base, &token, &good, Some(&cb)).await;
        assert_eq!(code, 202);
        let rpt = next(&mut rx).await;
        assert_eq!(group(&rpt, "GrpSts"), "ACCC");
        assert_eq!(sts(&txs(&rpt)), ["bad-1:ACCC", "bad-2:ACCC"]);
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("bad-1"), Some(&1));
        assert_eq!(stats.submissions.get("bad-1"), Some(&1));
    }

    #[tokio::test]
    async fn tokens_expire_and_can_be_revoked() {
        let (sim, http) = start(SimConfig {
            token_ttl_s: 0,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let file = pain001("TOK-1", &[("P", &[("1", "1", "tok-1")])]);
        let r = http
            .post(format!("{base}/bank/v1/oauth/token"))
            .basic_auth(CLIENT_ID, Some("wrong"))
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 401);
        let r = http
            .post(format!("{base}/bank/v1/oauth/token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .body("grant_type=password")
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 400);

        let invalid = |code: u16, body: &str| {
            assert_eq!(code, 401, "{body}");
            let v: Value = serde_json::from_str(body).expect("json");
            assert_eq!(v, json!({"error": "invalid_token"}));
        };
        // Expired at once (ttl 0).
        let expired = get_token(&http, &base).await;
        let (code, body) = upload(&http, &base, &expired, &file, None).await;
        invalid(code, &body);
        // Missing or unknown.
        let r = http
            .post(format!("{base}/bank/v1/payment-files"))
            .body(file.clone())
            .send()
            .await
            .expect("send");
        let code = r.status().as_u16();
        invalid(code, &r.text().await.expect("body"));
        let (code, body) = get(&http, &base, "nope", "/bank/v1/payment-files/TOK-1/status").await;
        invalid(code, &body);

        sim.simulator.set_config(SimConfig::default());
        let token = get_token(&http, &base).await;
        let (code, _) = upload(&http, &base, &token, &file, None).await;
        assert_eq!(code, 202);
        let r = http
            .post(format!("{base}/_sim/bank/tokens/revoke"))
            .send()
            .await
            .expect("revoke");
        assert_eq!(r.status(), 204);
        let (code, body) = get(&http, &base, &token, "/bank/v1/payment-files/TOK-1/status").await;
        invalid(code, &body);
        let token = get_token(&http, &base).await;
        let (code, _) = get(&http, &base, &token, "/bank/v1/payment-files/TOK-1/status").await;
        assert_eq!(code, 200);

        let r = http
            .post(format!("{base}/bank/v1/payment-files"))
            .bearer_auth(&token)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 415);

        let stats = sim.simulator.stats();
        assert_eq!(stats.tokens_issued, 3);
        assert_eq!(stats.submissions.get("tok-1"), Some(&1));
    }

    #[tokio::test]
    async fn callback_lost_duplicated_and_before_response() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;

        // 471: left out of the report, still credited and visible by polling.
        let file = pain001(
            "CB-471",
            &[("P", &[("1", "1", "c-ok"), ("46733123471", "2", "c-471")])],
        );
        let (code, _) = upload(&http, &base, &token, &file, Some(&cb)).await;
        assert_eq!(code, 202);
        let rpt = next(&mut rx).await;
        assert_eq!(sts(&txs(&rpt)), ["c-ok:ACCC"]);
        assert_eq!(group(&rpt, "OrgnlNbOfTxs"), "2");
        assert_eq!(group(&rpt, "GrpSts"), "ACCC");
        let path = "/bank/v1/payment-files/CB-471/status?endToEndId=c-471";
        let (_, body) = get(&http, &base, &token, path).await;
        assert_eq!(sts(&txs(&report(&body))), ["c-471:ACCC"]);

        // A file holding only lost transactions sends no report.
        let file = pain001("CB-471B", &[("P", &[("46733123471", "2", "c-471b")])]);
        let (code, _) = upload(&http, &base, &token, &file, Some(&cb)).await;
        assert_eq!(code, 202);

        // 472: the same report twice.
        let file = pain001("CB-472", &[("P", &[("46733123472", "3", "c-472")])]);
        let (code, _) = upload(&http, &base, &token, &file, Some(&cb)).await;
        assert_eq!(code, 202);
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("report");
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("report");
        assert_eq!(first, second);
        assert_eq!(sts(&txs(&report(&first))), ["c-472:ACCC"]);

        // 473: the report arrives before the 202.
        let file = pain001("CB-473", &[("P", &[("46733123473", "4", "c-473")])]);
        let (code, _) = upload(&http, &base, &token, &file, Some(&cb)).await;
        assert_eq!(code, 202);
        let early = rx.try_recv().expect("report before the answer");
        assert_eq!(group(&report(&early), "OrgnlMsgId"), "CB-473");

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err());
        let stats = sim.simulator.stats();
        assert_eq!(stats.callbacks_sent, 4);
        assert_eq!(stats.callbacks_lost, 2);
        for e2e in ["c-ok", "c-471", "c-471b", "c-472", "c-473"] {
            assert_eq!(stats.executed.get(e2e), Some(&1), "{e2e}");
        }
    }

    #[tokio::test]
    async fn timeout_processes_at_once_and_answers_late() {
        let (sim, http) = start(SimConfig {
            hang_ms: 800,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let file = pain001(
            "TO-1",
            &[("P", &[("46733123470", "1", "t-470"), ("5", "2", "t-ok")])],
        );
        let req = {
            let (http, base, token, cb) = (http.clone(), base.clone(), token.clone(), cb.clone());
            tokio::spawn(async move { upload(&http, &base, &token, &file, Some(&cb)).await })
        };
        let rpt = next(&mut rx).await;
        assert!(
            !req.is_finished(),
            "the report comes before the late answer"
        );
        assert_eq!(sts(&txs(&rpt)), ["t-470:ACCC", "t-ok:ACCC"]);
        let (_, body) = get(&http, &base, &token, "/bank/v1/payment-files/TO-1/status").await;
        assert_eq!(group(&report(&body), "GrpSts"), "ACCC");
        assert_eq!(sim.simulator.stats().executed.get("t-470"), Some(&1));
        let (code, body) = req.await.expect("join");
        assert_eq!(code, 202);
        assert_eq!(group(&report(&body), "GrpSts"), "ACTC");
        assert_eq!(sim.simulator.stats().executed.get("t-470"), Some(&1));
    }

    #[tokio::test]
    async fn random_chaos_only_for_files_without_triggers() {
        let (sim, http) = start(SimConfig {
            failure_rate: 1.0,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let token = get_token(&http, &base).await;
        let file = pain001("CH-1", &[("P", &[("1", "1", "ch-1")])]);
        let (code, _) = upload(&http, &base, &token, &file, None).await;
        assert_eq!(code, 500);
        let (code, _) = get(&http, &base, &token, "/bank/v1/payment-files/CH-1/status").await;
        assert_eq!(code, 404, "nothing stored");
        // A file with a trigger is never hit by chaos.
        let triggered = pain001("CH-2", &[("P", &[("46733123454", "1", "ch-2")])]);
        let (code, _) = upload(&http, &base, &token, &triggered, None).await;
        assert_eq!(code, 202);

        sim.simulator.set_config(SimConfig {
            rate_429: 1.0,
            ..SimConfig::default()
        });
        let r = http
            .post(format!("{base}/bank/v1/payment-files"))
            .bearer_auth(&token)
            .body(file.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 429);
        assert_eq!(header_str(r.headers(), "retry-after"), Some("1"));

        sim.simulator.set_config(SimConfig::default());
        let (code, _) = upload(&http, &base, &token, &file, None).await;
        assert_eq!(code, 202);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stats = sim.simulator.stats();
        assert_eq!(stats.submissions.get("ch-1"), Some(&3));
        assert_eq!(stats.executed.get("ch-1"), Some(&1));
    }
}
