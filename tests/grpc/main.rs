//! End-to-end tests: a real server on an ephemeral loopback port, called
//! through real tonic clients.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly: a broken fixture should stop the test"
)]

mod bad_input;
mod callers;
mod cli;
mod decision_log;
mod decisions;
mod examples;
mod feedback;
mod forget;
mod gateway;
mod geo;
mod harness;
mod http;
mod integrity;
mod malformed;
mod nginx;
mod observe;
mod parity;
mod redis;
mod reload;
mod replay;
mod service;
