//! Integration tests: real redis-server processes on loopback, the proxy in-process, real clients.

// Shared with the packaging tests (`common/`), the macro first: modules see only macros declared above them.
#[path = "../common/wait.rs"]
#[macro_use]
mod wait;
#[path = "../common/admin.rs"]
mod admin;
#[path = "../common/cluster.rs"]
mod cluster;
#[path = "../common/history.rs"]
mod history;
#[path = "../common/relay.rs"]
mod relay;
#[path = "../common/scenario.rs"]
mod scenario;
#[path = "../common/shards.rs"]
mod shards;
#[path = "../common/sites.rs"]
mod sites;

mod harness;

mod auth;
mod badinput;
mod chaos;
mod cli;
// `cluster` is the harness of replicated primaries; these are the tests in front of a Redis Cluster
// (their names still contain `cluster::`).
mod consistency;
mod cursor;
mod datacenters;
mod external;
mod failover;
mod frozen;
mod hedge;
mod identity;
mod limits;
mod mock;
mod observability;
mod pinned;
mod protocol;
#[path = "cluster.rs"]
mod redis_cluster;
mod regressions;
mod reload;
mod routing;
mod scripts;
mod session;
mod sync;
mod tls;
mod tools;
mod topology;
mod zones;
