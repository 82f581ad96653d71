//! event-gateway: a real-time event gateway. Backends publish JSON events to Redis (or over
//! HTTP); each replica subscribes to the org channels its clients need, authenticates
//! Server-Sent-Events clients with JWT, filters every event by role and tenancy, and streams
//! the matching ones, with durable history for resume.
//!
//! Reading order: `settings` and `telemetry` (start-up), `event` (the boundary), `auth` and
//! `policy` (who sees what), `cursor` (resume positions per org), `broker` (Redis or embedded: where events come from), `hub` (local
//! fan-out), `session` (opening a stream, paged replay, live), `sse` (its framing), `routes` and
//! `error` (the HTTP edge), `startup` (wiring).

pub mod auth;
pub mod broker;
pub mod clock;
pub mod cursor;
pub mod error;
pub mod event;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod routes;
pub mod session;
pub mod settings;
pub mod shutdown;
pub mod sse;
pub mod startup;
pub mod telemetry;
pub mod websocket;
pub mod wire;
