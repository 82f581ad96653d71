//! Integration tests for event-gateway: the real binary against a private `redis-server` (or its
//! embedded broker), driven over HTTP and read through a third-party SSE parser. Each module
//! covers one area of docs/protocol.md and reads as its specification.

mod common;

mod auth;
mod cluster;
mod compression;
mod compression_clients;
mod console;
mod embedded;
mod hardening;
mod health;
mod history;
mod limits;
mod openapi;
mod policy;
mod priority;
mod publish;
mod redis_restart;
mod replay;
mod replicas;
mod resilience;
mod shutdown;
mod slow_clients;
mod startup;
mod stream;
mod websocket;
mod websocket_clients;
