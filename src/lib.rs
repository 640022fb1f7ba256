//! stepgate: a policy decision point for risk-based step-up authentication.
//!
//! The decision path, one module per step: [`server`] (the doors, behind
//! [`access`]: who may ask) → [`engine`] (orchestration) → [`signals`] (with the
//! [`store`]) → [`policy`] (Cedar on the assurance ladder) → [`record`]
//! (metrics and the decision log).

pub mod access;
pub mod admission;
pub mod app;
pub mod config;
pub mod decision;
pub mod engine;
pub mod fault;
pub mod geo;
pub mod identifiers;
pub mod loadtest;
pub mod metrics;
pub mod policy;
pub mod pseudonym;
pub mod record;
pub mod replay;
pub mod reporting;
pub mod server;
pub mod signals;
pub mod store;
pub mod suites;
pub mod watch;
