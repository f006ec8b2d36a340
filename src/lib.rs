//! PIL: a payment interoperability layer for G2P cash programmes. See DESIGN.md for the flow:
//! ingest → route → map → send → follow → report.

pub mod adapter;
pub mod address;
pub mod api;
pub mod clock;
pub mod config;
pub mod demo;
pub mod directory;
pub mod dispatch;
pub mod executor;
pub mod fixtures;
pub mod follow;
pub mod ingest;
pub mod jws;
pub mod map;
pub mod metrics;
pub mod money;
pub mod payment;
pub mod reload;
pub mod report;
pub mod route;
pub mod script;
pub mod script_files;
pub mod simulator;
pub mod startup;
pub mod store;
pub mod tools;
