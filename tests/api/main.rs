//! One integration-test binary: the real router and dispatcher against a real SQLite database
//! and the DFSP simulator, over loopback HTTP.

mod admin;
mod batches;
mod check;
mod crash;
mod flow;
mod g2p;
mod gsma;
mod helpers;
mod iso;
mod legacy;
mod mojaloop;
mod mpesa;
mod ops;
mod reload;
mod sandbox;
mod spec;
mod store;
