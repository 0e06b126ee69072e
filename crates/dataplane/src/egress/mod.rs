//! Import listeners: a local port per import, and for each client connection a tunnel to one of
//! the import's sources.
//!
//! - [`listeners`]: one listener per import, in step with the snapshots.
//! - [`client`]: serving one client connection: decide, open a tunnel, relay, revoke.
//! - [`sources`]: which sources to try in which order, and whether egress policy allows each.
//! - [`dial`]: reaching a peer over its link or at its gateways, warm or new, and asking for the
//!   tunnel.
//! - [`explain`]: the decision a connection would get, on both sides, without making one.

mod client;
mod dial;
mod explain;
mod listeners;
mod sources;

pub(crate) use client::Egress;
pub(crate) use dial::Dialer;
pub use explain::ExplainError;
pub(crate) use listeners::run_import_listeners;
