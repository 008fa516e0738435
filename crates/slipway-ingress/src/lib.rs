//! Slipway's HTTP ingress: it routes each request to a ready instance of the right component,
//! and follows every rollout so that restarts and rebuilds are invisible to clients.
//!
//! Promises:
//! - An app is reached by `Host: <app name>.<base domain>` and at each of its `domains` (a
//!   wildcard domain: at its subdomains too); inside it, App Platform's `ingress.rules`
//!   (longest `match.path.prefix` wins, a rule for the request's host before a rule for all)
//!   choose the service or answer with the rule's redirect, else the services' `routes`, else
//!   the first service takes every path. A rule's (or a service's) CORS policy answers the
//!   preflights of the origins it allows and adds its headers to their answers. An unknown
//!   host gets 404, a component with no ready instance 503, both with a short plain-text
//!   body.
//! - An instance joins its component's pool only when the engine says it is ready
//!   ([`Ingress::add`]); [`Ingress::drain`] takes it out of the pool at once and returns when
//!   the requests in flight to it have finished (or the drain time is up), before the engine
//!   sends its stop signal. [`Ingress::eject`] removes a crashed instance at once.
//! - An instance a connection cannot be made to (refused, reset, timed out) leaves rotation
//!   at once and rejoins only when a background probe connects to it again (and its
//!   component's HTTP health path, when it has one, answers 2xx or 3xx); probes start 100 ms
//!   after the failure and back off to one every 5 s. When every instance of a component is
//!   out, requests still try them. [`Ingress::drain`] and [`Ingress::eject`] work as ever.
//! - Every app's requests are counted cheaply (relaxed atomics of its own, no lock) on both
//!   paths alike; [`Ingress::metrics_text`] gives them in Prometheus's text format and
//!   [`serve_admin`] serves it with `/healthz` on an address of its own, never the ingress's.
//! - Requests go to the ready instance with the fewest requests in flight (round robin among
//!   equals), over kept-alive connections. A request that could not be sent (connection
//!   refused or reset before a byte went out) is sent once more to another instance, when its
//!   body is small enough to have been kept; an idempotent one that a kept connection took
//!   down with it as the instance closed that connection is sent again on a new one.
//! - A response reaches only the client connection that asked for it: connections to
//!   instances belong to one client connection, carry one request at a time, and close on any
//!   framing the ingress cannot follow; no request is pipelined behind another client's.
//! - Every request head meets one strict set of rules (RFC 9112) before either path serves
//!   it; a head that could be read two ways gets 400 and its connection is closed.
//! - Plain HTTP/1.1 requests are parsed in place and their answers relayed over raw
//!   kept-alive connections; a request that is not plain (an upgrade, `Expect`, a chunked or
//!   large body, HTTP/1.0) is served by hyper, which then gives the connection back (HTTP/2
//!   and upgrades stay with hyper).
//! - A client that does not read holds only its own connection, for at most
//!   `client_write_timeout` per write; at most `max_connections` client connections are open.
//! - HTTP/1.1 and HTTP/2 (prior knowledge) from clients; WebSocket and other upgrades are
//!   passed through; `X-Forwarded-For`, `-Proto` and `-Host` are set; request bodies over the
//!   limit get 413; a backend that does not answer in time gets 504.

// Imports point one way: the admin server (`admin`) and the server (`proxy`) -> the lean path
// (`h1`) -> connections to instances (`pipe`) -> framing (`head`, `framing`) and probes of
// instances out of rotation (`probe`); every layer reads the table (`table`), which imports
// only its counters (`metrics`).
mod admin;
pub mod control;
mod framing;
mod h1;
mod head;
mod metrics;
mod pipe;
mod probe;
mod proxy;
mod rules;
mod table;
mod tls;

pub use admin::serve_admin;
pub use metrics::LATENCY_BUCKETS;
pub use pipe::PIPELINE_CONNECTIONS;
pub use proxy::serve;
pub use table::{Health, Ingress, IngressConfig};
pub use tls::{CertificateError, Certificates, Loaded, names_and_expiry, serve_tls};
