//! Prometheus metrics (`GET /metrics`, text exposition by the `prometheus-client` crate): what
//! the flow counts as it goes (DFSP requests with their latency and outcome, callbacks, script
//! reloads) and, read at each scrape, payments by status and DFSP, the dispatch queue and each
//! DFSP's requests in flight and circuit. One registry per application, so tests can run several
//! side by side. It observes; it never changes anything.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::route::Live;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub dfsp: String,
    /// submit | status | continue
    pub kind: String,
    /// The HTTP status class (2xx, 4xx, ...), `not_sent` or `no_response`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub dfsp: String,
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    pub dfsp: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PaymentLabels {
    pub status: String,
    pub dfsp: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DfspLabels {
    pub dfsp: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    callbacks: Family<CallbackLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    script_problems: Gauge,
    payments: Family<PaymentLabels, Gauge>,
    queue_depth: Gauge,
    in_flight: Family<DfspLabels, Gauge>,
    circuit_open: Family<DfspLabels, Gauge>,
    /// Scrapes are serialised: the gauges are reset and refilled for each.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pil");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "dfsp_requests",
            "Requests sent to DFSPs, by kind and outcome",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "dfsp_request_duration_seconds",
            "DFSP request latency, from sending to the answer (or its absence)",
            latency.clone(),
        );
        let callbacks = Family::<CallbackLabels, Counter>::default();
        registry.register(
            "callbacks",
            "DFSP callbacks received, by what they did",
            callbacks.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "script_reloads",
            "Changed script folders checked: applied or refused",
            reloads.clone(),
        );
        let script_problems = Gauge::default();
        registry.register(
            "script_problems",
            "Problems of the last refused script change (0: the folders are in force)",
            script_problems.clone(),
        );
        let payments = Family::<PaymentLabels, Gauge>::default();
        registry.register("payments", "Payments by status and DFSP", payments.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "dispatch_queue_depth",
            "Payments received or routed and not yet sent",
            queue_depth.clone(),
        );
        let in_flight = Family::<DfspLabels, Gauge>::default();
        registry.register(
            "dfsp_in_flight",
            "Requests in flight per DFSP",
            in_flight.clone(),
        );
        let circuit_open = Family::<DfspLabels, Gauge>::default();
        registry.register(
            "dfsp_circuit_open",
            "1 while a DFSP's circuit is open (kept out of routing)",
            circuit_open.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            callbacks,
            reloads,
            script_problems,
            payments,
            queue_depth,
            in_flight,
            circuit_open,
            scrape: Mutex::new(()),
        }
    }

    /// One request that really left for a DFSP (however many payments it carried), and
    /// how long it took.
    pub fn request(&self, dfsp: &str, kind: &str, sent: &crate::executor::Sent, millis: i64) {
        self.requests
            .get_or_create(&RequestLabels {
                dfsp: dfsp.to_string(),
                kind: kind.to_string(),
                outcome: sent.outcome_class(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                dfsp: dfsp.to_string(),
                kind: kind.to_string(),
            })
            .observe(millis.max(0) as f64 / 1000.0);
    }

    pub fn callback(&self, dfsp: &str, result: &str) {
        self.callbacks
            .get_or_create(&CallbackLabels {
                dfsp: dfsp.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn reload(&self, applied: bool, problems: usize) {
        let outcome = if applied { "applied" } else { "refused" };
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.script_problems.set(problems as i64);
    }

    /// The exposition text: the counters, and the gauges read now from the store and `live`.
    pub async fn render(&self, store: &dyn Store, live: &Live) -> Result<String, StoreError> {
        let counts = store.status_counts_by_dfsp().await?;
        let _one = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.payments.clear();
        let mut queued = 0;
        for (status, dfsp, n) in counts {
            if matches!(
                status,
                crate::payment::Status::Received | crate::payment::Status::Routed
            ) {
                queued += n;
            }
            self.payments
                .get_or_create(&PaymentLabels {
                    status: status.as_str().to_string(),
                    dfsp: dfsp.unwrap_or_default(),
                })
                .set(n);
        }
        self.queue_depth.set(queued);
        self.in_flight.clear();
        self.circuit_open.clear();
        let now = crate::clock::now_ms();
        for (id, client) in &live.clients {
            let labels = DfspLabels { dfsp: id.clone() };
            self.in_flight
                .get_or_create(&labels)
                .set(client.in_flight() as i64);
            let open = client.circuit(now) == crate::executor::Circuit::Open;
            self.circuit_open
                .get_or_create(&labels)
                .set(i64::from(open));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        Ok(text)
    }
}
