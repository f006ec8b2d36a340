//! The payment state machine: which statuses exist, which moves between them are legal, and
//! the only way to build a change of status ([`Change`]). The store applies changes; it never
//! decides them. This module does no I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::money::Money;

/// Where a payment is in its life. See DESIGN.md "Payment states".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Received,
    Routed,
    Sending,
    Accepted,
    Unknown,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
    Reversed,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Received,
        Status::Routed,
        Status::Sending,
        Status::Accepted,
        Status::Unknown,
        Status::Succeeded,
        Status::Failed,
        Status::Rejected,
        Status::Cancelled,
        Status::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Routed => "routed",
            Status::Sending => "sending",
            Status::Accepted => "accepted",
            Status::Unknown => "unknown",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
            Status::Reversed => "reversed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final statuses never change again (except `succeeded → reversed` from reconciliation).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::Rejected
                | Status::Cancelled
                | Status::Reversed
        )
    }

    /// Whether the payment may have reached a DFSP. Such a payment is never sent again blindly.
    pub fn may_have_reached_dfsp(self) -> bool {
        matches!(
            self,
            Status::Sending | Status::Accepted | Status::Unknown | Status::Succeeded
        )
    }

    /// The legal moves. `sending|unknown → routed` exists only for a send that surely did not
    /// execute (a 429, a refused connection, a DFSP saying it never saw the payment): the
    /// caller must say so with [`NotExecuted`], which is the only way to build that change.
    fn allows(self, to: Status) -> bool {
        use Status::*;
        match self {
            Received => matches!(to, Routed | Rejected | Cancelled | Failed),
            Routed => matches!(to, Sending | Cancelled | Failed | Rejected),
            Sending => matches!(to, Accepted | Succeeded | Failed | Unknown),
            Accepted => matches!(to, Succeeded | Failed | Unknown),
            Unknown => matches!(to, Accepted | Succeeded | Failed),
            Succeeded => matches!(to, Reversed),
            Failed | Rejected | Cancelled | Reversed => false,
        }
    }

    /// G2P Connect view: `rcvd | pdng | succ | rjct`.
    pub fn g2p_connect(self) -> &'static str {
        match self {
            Status::Received => "rcvd",
            Status::Routed | Status::Sending | Status::Accepted | Status::Unknown => "pdng",
            Status::Succeeded => "succ",
            Status::Failed | Status::Rejected | Status::Cancelled | Status::Reversed => "rjct",
        }
    }

    /// Legacy PIL API view. A failed payment reads `REJECTED`, as the spec's status enum has
    /// no failure value of its own (and the OpenG2P module treats REJECTED, ABORTED and
    /// ERROR_OCCURRED alike). `ABORTED` (a cancel, or money that came back) is what that
    /// module matches; the spec's enum misspells it `ABORETED`.
    pub fn legacy_pil(self) -> &'static str {
        match self {
            Status::Received => "RECEIVED",
            Status::Routed | Status::Sending | Status::Accepted | Status::Unknown => "PENDING",
            Status::Succeeded => "COMPLETED",
            Status::Rejected | Status::Failed => "REJECTED",
            Status::Cancelled | Status::Reversed => "ABORTED",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal payment transition {from} → {to}")]
pub struct IllegalTransition {
    pub from: Status,
    pub to: Status,
}

/// Evidence that a send did not execute at the DFSP; required to put a payment back to `routed`.
#[derive(Debug, Clone, Copy)]
pub struct NotExecuted;

/// A payment as stored.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: String,
    pub batch_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub reference_id: String,
    pub payee_fa: Option<String>,
    pub payee_id_type: Option<String>,
    pub payee_id_value: Option<String>,
    pub amount: Money,
    pub payee_name: Option<String>,
    pub note: Option<String>,
    pub meta: Option<serde_json::Value>,
    /// From the payee directory (`payment.attributes` in scripts).
    pub attributes: Option<serde_json::Value>,
    pub status: Status,
    pub dfsp: Option<String>,
    pub fallbacks: Vec<String>,
    pub dfsp_ref: Option<String>,
    pub idempotency_key: Option<String>,
    pub attempts: i64,
    pub polls: i64,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub route_version: Option<String>,
    pub adapter_version: Option<String>,
    pub next_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Payment {
    /// The payee for logs: scheme and provider kept, the identifier masked but for its last
    /// three characters (`mobile:********456@mtn`, `MSISDN:********001`).
    pub fn masked_payee(&self) -> String {
        fn mask(id: &str) -> String {
            let n = id.chars().count();
            let keep = if n > 6 { 3 } else { 0 };
            let tail: String = id.chars().skip(n - keep).collect();
            format!("{}{tail}", "*".repeat(n - keep))
        }
        match (&self.payee_fa, &self.payee_id_type, &self.payee_id_value) {
            (Some(fa), _, _) => match crate::address::FinancialAddress::parse(fa) {
                Ok(a) => format!("{}:{}@{}", a.scheme, mask(&a.id), a.provider),
                Err(_) => mask(fa),
            },
            (None, Some(t), Some(v)) => format!("{t}:{}", mask(v)),
            _ => String::new(),
        }
    }
}

/// One appended history entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub from: Option<Status>,
    pub to: Status,
    pub reason_code: Option<String>,
    pub detail: Option<String>,
    pub route_version: Option<String>,
    pub adapter_version: Option<String>,
}

/// Columns a change may set besides the status. `None` leaves a column as it is.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub dfsp: Option<Option<String>>,
    pub fallbacks: Option<Vec<String>>,
    pub dfsp_ref: Option<String>,
    pub idempotency_key: Option<Option<String>>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub route_version: Option<String>,
    pub adapter_version: Option<String>,
    pub next_at: Option<i64>,
    pub lease_until: Option<i64>,
    /// The instance that holds the payment in `sending`: on its restart, such payments are
    /// known to have lost their answer at once (no wait for the lease to end).
    pub lease_owner: Option<String>,
    pub add_attempt: bool,
    pub add_poll: bool,
}

/// A record of one HTTP exchange with a DFSP, written with the change it caused.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub dfsp: String,
    /// `submit` (the payment itself), `status` (a status query) or `continue` (a request moving
    /// the same transfer on, e.g. accepting a Mojaloop party or quote).
    pub kind: &'static str,
    pub idempotency_key: Option<String>,
    pub method: String,
    pub url: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub http_status: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
}

/// A validated change of one payment: applied by the store only if the payment is still in
/// `expect` (optimistic concurrency), so a cancel, a callback and a worker racing on the same
/// payment cannot both win.
#[derive(Debug, Clone)]
pub struct Change {
    pub payment_id: String,
    pub expect: Status,
    pub to: Status,
    pub events: Vec<Event>,
    pub fields: Fields,
    pub attempt: Option<Attempt>,
}

impl Change {
    /// Starts a change at the payment's current status; add steps with [`Change::step`].
    pub fn from(payment: &Payment) -> Change {
        Change::at(&payment.id, payment.status)
    }

    pub fn at(payment_id: &str, status: Status) -> Change {
        Change {
            payment_id: payment_id.to_string(),
            expect: status,
            to: status,
            events: Vec::new(),
            fields: Fields::default(),
            attempt: None,
        }
    }

    /// Moves to `to`, appending an event; rejects an illegal move.
    pub fn step(
        mut self,
        to: Status,
        reason_code: Option<&str>,
        detail: Option<String>,
    ) -> Result<Change, IllegalTransition> {
        if !self.to.allows(to) {
            return Err(IllegalTransition { from: self.to, to });
        }
        self.push_event(to, reason_code, detail);
        Ok(self)
    }

    /// Puts a payment whose send surely did not execute back to `routed` (retry or fallback).
    pub fn back_to_routed(
        mut self,
        _proof: NotExecuted,
        reason_code: &str,
        detail: Option<String>,
    ) -> Result<Change, IllegalTransition> {
        if !matches!(self.to, Status::Sending | Status::Unknown) {
            return Err(IllegalTransition {
                from: self.to,
                to: Status::Routed,
            });
        }
        self.push_event(Status::Routed, Some(reason_code), detail);
        Ok(self)
    }

    fn push_event(&mut self, to: Status, reason_code: Option<&str>, detail: Option<String>) {
        self.events.push(Event {
            from: Some(self.to),
            to,
            reason_code: reason_code.map(str::to_string),
            detail,
            route_version: self.fields.route_version.clone(),
            adapter_version: self.fields.adapter_version.clone(),
        });
        self.to = to;
    }

    pub fn with(mut self, f: impl FnOnce(&mut Fields)) -> Change {
        f(&mut self.fields);
        self
    }

    pub fn with_attempt(mut self, attempt: Attempt) -> Change {
        self.attempt = Some(attempt);
        self
    }

    pub fn changes_status(&self) -> bool {
        !self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_never_move_except_reversal() {
        for from in Status::ALL.into_iter().filter(|s| s.is_final()) {
            for to in Status::ALL {
                let legal = from == Status::Succeeded && to == Status::Reversed;
                assert_eq!(from.allows(to), legal, "{from} → {to}");
            }
        }
    }

    #[test]
    fn sending_cannot_be_cancelled_or_resent() {
        assert!(!Status::Sending.allows(Status::Cancelled));
        assert!(!Status::Sending.allows(Status::Sending));
        assert!(!Status::Unknown.allows(Status::Sending));
        assert!(!Status::Accepted.allows(Status::Cancelled));
    }

    #[test]
    fn change_records_each_step_and_rejects_illegal_ones() {
        let c = Change::at("p1", Status::Received)
            .step(Status::Routed, Some("routed"), None)
            .and_then(|c| c.step(Status::Sending, None, None))
            .expect("legal path");
        assert_eq!(c.expect, Status::Received);
        assert_eq!(c.to, Status::Sending);
        assert_eq!(c.events.len(), 2);
        assert_eq!(c.events[1].from, Some(Status::Routed));

        let err = Change::at("p1", Status::Received)
            .step(Status::Succeeded, None, None)
            .unwrap_err();
        assert_eq!(err.from, Status::Received);
        assert_eq!(err.to, Status::Succeeded);
    }

    #[test]
    fn back_to_routed_only_from_sending_or_unknown() {
        assert!(
            Change::at("p", Status::Sending)
                .back_to_routed(NotExecuted, "retry", None)
                .is_ok()
        );
        assert!(
            Change::at("p", Status::Unknown)
                .back_to_routed(NotExecuted, "fallback", None)
                .is_ok()
        );
        assert!(
            Change::at("p", Status::Accepted)
                .back_to_routed(NotExecuted, "x", None)
                .is_err()
        );
        assert!(
            Change::at("p", Status::Succeeded)
                .back_to_routed(NotExecuted, "x", None)
                .is_err()
        );
    }

    #[test]
    fn external_views() {
        assert_eq!(Status::Accepted.g2p_connect(), "pdng");
        assert_eq!(Status::Succeeded.legacy_pil(), "COMPLETED");
        assert_eq!(Status::parse("unknown"), Some(Status::Unknown));
        assert_eq!(Status::parse("bogus"), None);
    }

    #[test]
    fn payees_are_masked_for_logs() {
        use crate::ingest::{self, Item};
        let payment = |fa: Option<&str>, id: Option<(&str, &str)>| {
            let item = Item {
                reference_id: Some(serde_json::json!("r")),
                payee_fa: fa.map(|f| serde_json::json!(f)),
                payee_id_type: id.map(|(t, _)| serde_json::json!(t)),
                payee_id_value: id.map(|(_, v)| serde_json::json!(v)),
                amount: Some(serde_json::json!("1")),
                currency: Some(serde_json::json!("KES")),
                payee_name: None,
                note: None,
                meta: None,
            };
            let rows = ingest::validate(&[item], &ingest::Limits::default()).expect("valid");
            ingest::received_payment(&rows[0], "b", "s", 0).expect("payment")
        };
        assert_eq!(
            payment(Some("mobile:256772123456@mtn"), None).masked_payee(),
            "mobile:*********456@mtn"
        );
        assert_eq!(
            payment(None, Some(("MSISDN", "256700000001"))).masked_payee(),
            "MSISDN:*********001"
        );
        assert_eq!(
            payment(Some("account:1234@bank"), None).masked_payee(),
            "account:****@bank"
        );
    }
}
