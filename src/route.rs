//! Routing: runs `rules/routing.rhai` `route(payment, ctx)` and turns its answer into a
//! [`Decision`]: an ordered list of DFSP ids (first choice, then fallbacks) or a rejection.
//! It also builds the `ctx.dfsps` view the rules read (availability, currencies, limits).
//! It decides; it does not store or send anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use rhai::{Array, Dynamic, Map};

use crate::executor::DfspClient;
use crate::script::{Adapter, Bundle, ScriptError, map_str, text_of};

/// The scripts in force plus one HTTP client per adapter, swapped together.
#[derive(Debug)]
pub struct Live {
    pub bundle: Arc<Bundle>,
    pub clients: BTreeMap<String, Arc<DfspClient>>,
    /// Adapters whose folder was removed by a reload: nothing is routed or sent to them any
    /// more, but payments already sent there are still followed (polls, callbacks).
    pub retired: BTreeMap<String, (Arc<Adapter>, Arc<DfspClient>)>,
    /// DFSPs an operator paused: kept out of routing (payments wait or take a fallback) until
    /// resumed. Shared by every version, so a reload does not resume them.
    pub paused: Arc<Paused>,
}

/// The DFSPs an operator paused.
#[derive(Debug, Default)]
pub struct Paused(std::sync::RwLock<std::collections::BTreeSet<String>>);

impl Paused {
    pub fn contains(&self, dfsp: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(dfsp)
    }

    /// Returns whether it changed anything.
    pub fn set(&self, dfsp: &str, paused: bool) -> bool {
        let mut set = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if paused {
            set.insert(dfsp.to_string())
        } else {
            set.remove(dfsp)
        }
    }
}

impl Live {
    pub fn new(bundle: Bundle) -> Result<Live, crate::executor::ExecutorError> {
        let mut clients = BTreeMap::new();
        for (id, adapter) in &bundle.adapters {
            clients.insert(
                id.clone(),
                Arc::new(DfspClient::new(adapter.config.clone())?),
            );
        }
        Ok(Live {
            bundle: Arc::new(bundle),
            clients,
            retired: BTreeMap::new(),
            paused: Arc::default(),
        })
    }

    /// The next version: `bundle` with clients carried over from `self` where an adapter's
    /// configuration (file and resolved secrets) is unchanged, so tokens, circuit states and
    /// requests in flight survive a script edit; changed ones get a new client. Adapters that
    /// disappeared are kept as retired.
    pub fn next(&self, bundle: Bundle) -> Result<Live, crate::executor::ExecutorError> {
        let mut clients = BTreeMap::new();
        for (id, adapter) in &bundle.adapters {
            let kept = self
                .clients
                .get(id)
                .or_else(|| self.retired.get(id).map(|(_, c)| c))
                .filter(|c| c.config().fingerprint == adapter.config.fingerprint);
            let client = match kept {
                Some(c) => c.clone(),
                None => Arc::new(DfspClient::new(adapter.config.clone())?),
            };
            clients.insert(id.clone(), client);
        }
        let mut retired: BTreeMap<String, (Arc<Adapter>, Arc<DfspClient>)> = self
            .retired
            .iter()
            .filter(|(id, _)| !bundle.adapters.contains_key(*id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        for (id, adapter) in &self.bundle.adapters {
            if !bundle.adapters.contains_key(id)
                && let Some(client) = self.clients.get(id)
            {
                retired.insert(id.clone(), (adapter.clone(), client.clone()));
            }
        }
        Ok(Live {
            bundle: Arc::new(bundle),
            clients,
            retired,
            paused: self.paused.clone(),
        })
    }

    /// The adapter and client that follow a payment sent to `dfsp`, retired or not.
    pub fn follower(&self, dfsp: &str) -> Option<(&Arc<Adapter>, &Arc<DfspClient>)> {
        match (self.bundle.adapter(dfsp), self.clients.get(dfsp)) {
            (Some(a), Some(c)) => Some((a, c)),
            _ => self.retired.get(dfsp).map(|(a, c)| (a, c)),
        }
    }

    /// `ctx` for `route`, with this process's circuit states and requests in flight.
    pub fn routing_ctx(&self, now: i64) -> Dynamic {
        routing_ctx(&self.bundle, &self.clients, Some(&self.paused), now)
    }

    /// The candidates neither paused nor with an open circuit, in order. Empty when every one
    /// is down: the payment then waits rather than being rejected for a passing outage.
    pub fn available(&self, ids: &[String], now: i64) -> Vec<String> {
        ids.iter()
            .filter(|id| !self.paused.contains(id))
            .filter(|id| self.clients.get(*id).is_none_or(|c| c.available(now)))
            .cloned()
            .collect()
    }
}

/// `ctx` for `route`: `#{now, dfsps: #{<id>: #{available, paused, circuit, in_flight,
/// max_in_flight, currencies, max_amount, name}}}`. A DFSP without a client (a dry run) counts
/// as available.
pub fn routing_ctx(
    bundle: &Bundle,
    clients: &BTreeMap<String, Arc<DfspClient>>,
    paused: Option<&Paused>,
    now: i64,
) -> Dynamic {
    let mut dfsps = Map::new();
    for (id, adapter) in &bundle.adapters {
        let caps = &adapter.config.capabilities;
        let client = clients.get(id);
        let in_flight = client.map_or(0, |c| c.in_flight());
        let circuit = client.map_or(crate::executor::Circuit::Closed, |c| c.circuit(now));
        let is_paused = paused.is_some_and(|p| p.contains(id));
        let mut d = Map::new();
        d.insert(
            "available".into(),
            Dynamic::from_bool(circuit != crate::executor::Circuit::Open && !is_paused),
        );
        d.insert("paused".into(), Dynamic::from_bool(is_paused));
        d.insert("circuit".into(), circuit.as_str().into());
        d.insert("name".into(), adapter.config.name.clone().into());
        d.insert("in_flight".into(), Dynamic::from_int(in_flight as i64));
        d.insert(
            "max_in_flight".into(),
            Dynamic::from_int(adapter.config.max_in_flight as i64),
        );
        d.insert(
            "currencies".into(),
            Dynamic::from_array(
                caps.currencies
                    .iter()
                    .map(|c| Dynamic::from(c.clone()))
                    .collect::<Array>(),
            ),
        );
        d.insert(
            "max_amount".into(),
            caps.max_amount.map_or(Dynamic::UNIT, Dynamic::from_decimal),
        );
        d.insert(
            "whole_amounts".into(),
            Dynamic::from_bool(caps.whole_amounts),
        );
        dfsps.insert(id.as_str().into(), crate::script::convert::shared(d));
    }
    let mut ctx = Map::new();
    ctx.insert("now".into(), Dynamic::from_int(now));
    ctx.insert("dfsps".into(), crate::script::convert::shared(dfsps));
    crate::script::convert::shared(ctx)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// First choice, then fallbacks, in order. Never empty.
    Dfsps(Vec<String>),
    Reject {
        code: String,
        message: String,
    },
}

/// Runs the routing rules for one payment (given as its script map), then keeps only the
/// candidates whose capabilities take its `amount` (see [`capable`]); without an amount (a
/// payability check by payee only) the capabilities are not checked.
pub fn route(
    bundle: &Bundle,
    payment: Dynamic,
    ctx: Dynamic,
    amount: Option<&crate::money::Money>,
) -> Result<Decision, ScriptError> {
    let script = &bundle.routing;
    let out = script.call(&bundle.engine, "route", (payment, ctx))?;
    let fail = |message: String| ScriptError {
        file: script.file.clone(),
        line: 1,
        column: 1,
        message,
    };
    let ids: Vec<String> = if out.is_string() {
        vec![text_of(&out)]
    } else if out.is_array() {
        let arr = out
            .read_lock::<Array>()
            .ok_or_else(|| fail("route: array is locked".into()))?;
        arr.iter().map(text_of).collect()
    } else if out.is_map() {
        let map = out
            .read_lock::<Map>()
            .ok_or_else(|| fail("route: map is locked".into()))?;
        let code = map_str(&map, "reject")
            .ok_or_else(|| fail("route: a map result must have 'reject' (a reason code)".into()))?;
        return Ok(Decision::Reject {
            message: map_str(&map, "message").unwrap_or_else(|| code.clone()),
            code,
        });
    } else {
        return Err(fail(format!(
            "route must return a DFSP id, an array of ids or #{{reject, message}}; got {}",
            out.type_name()
        )));
    };
    if ids.is_empty() {
        return Err(fail("route returned no DFSP".into()));
    }
    if let Some(unknown) = ids
        .iter()
        .find(|id| !bundle.adapters.contains_key(id.as_str()))
    {
        return Err(fail(format!("route returned unknown DFSP '{unknown}'")));
    }
    Ok(match amount {
        Some(amount) => capable(bundle, ids, amount),
        None => Decision::Dfsps(ids),
    })
}

/// Keeps the candidates whose `adapter.toml` capabilities take this payment (currency, maximum
/// amount, whole units only), in order. Generic checks live here rather than in every routing
/// script. When none is left, the rejection names the reason if every candidate refused for
/// the same one that has its own code (`amount.not_whole`), else `dfsp.unavailable`.
pub fn capable(bundle: &Bundle, ids: Vec<String>, amount: &crate::money::Money) -> Decision {
    let mut refused = Vec::new();
    // Whether every refusal so far is a fractional amount (then that is the reason to give).
    let mut all_not_whole = true;
    let kept: Vec<String> = ids
        .into_iter()
        .filter(|id| {
            let Some(adapter) = bundle.adapter(id) else {
                refused.push(format!("{id}: not loaded"));
                all_not_whole = false;
                return false;
            };
            let caps = &adapter.config.capabilities;
            let currency = amount.currency().code();
            if !caps.currencies.is_empty() && !caps.currencies.iter().any(|c| c == currency) {
                refused.push(format!("{id}: does not pay {currency}"));
                all_not_whole = false;
                return false;
            }
            if let Some(max) = caps.max_amount
                && amount.to_decimal() > max
            {
                refused.push(format!("{id}: above its maximum {max}"));
                all_not_whole = false;
                return false;
            }
            if caps.whole_amounts && !amount.to_decimal().fract().is_zero() {
                refused.push(format!("{id}: takes whole amounts of {currency} only"));
                return false;
            }
            true
        })
        .collect();
    if kept.is_empty() {
        let code = if all_not_whole {
            "amount.not_whole"
        } else {
            "dfsp.unavailable"
        };
        Decision::Reject {
            code: code.into(),
            message: format!(
                "no routed DFSP can take this payment ({})",
                refused.join("; ")
            ),
        }
    } else {
        Decision::Dfsps(kept)
    }
}
