//! Integration tests: real redis-server processes on loopback, the proxy in-process, real clients.

#[path = "../common/admin.rs"]
mod admin;
#[path = "../common/setup.rs"]
mod setup;
#[macro_use]
mod harness;

mod auth;
mod badinput;
mod cli;
mod consistency;
mod failover;
mod identity;
mod limits;
mod mock;
mod observability;
mod pinned;
mod protocol;
mod regressions;
mod relay;
mod reload;
mod routing;
mod session;
mod tls;
mod topology;
