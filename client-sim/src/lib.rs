//! # client-sim
//!
//! The Rust client library for the studio collaboration server (the `sequencer`), and a stress
//! simulator built on it that proves every replica converges under load and faults.
//!
//! A [`Client`] connects to a room by either socket path of PROTOCOL §1, holds ot-core's
//! client document (optimistic local apply, one op in flight, a composed buffer behind it),
//! and keeps it in step with the server: it reconnects with backoff and seeded jitter, rejoins
//! with `since`, resends the op in flight with its original `opId`, reloads the state (and
//! reports what it dropped) after `version_too_old` or a rejected op, and estimates the
//! server's clock from `pong`. Given several servers of one room
//! ([`ClientConfig::with_urls`]), it moves on to the next when the one in use stops answering
//! (see [`client`], "Failover").
//!
//! When the server closes the socket, the close code decides ([`ot_core::protocol::CloseAction`]):
//! 4001, 4400 and 4009 (replaced by a newer connection with the same `_pk`) stop the client and
//! are reported as a fatal [`Event::Disconnected`] and in [`Snapshot::stopped_by`]; every other
//! code is retried after the backoff.
//!
//! # Layout
//!
//! - [`session`]: the sans-IO core, which is ot-core's [`ot_core::session`] (re-exported here;
//!   it builds for wasm32, so a browser can run it too). A [`Session`] takes server messages,
//!   close codes and local edits, with time as [`Now`] milliseconds, and answers with
//!   [`Effect`]s (send this, tell the application that, reconnect). All protocol and state
//!   logic lives there and is unit-tested without sockets. The protocol's rules it follows
//!   (close codes, ids, roles, token claims) are [`ot_core::protocol`]'s.
//! - [`client`]: the async shell. One task owns the socket and the session, and turns its
//!   clocks into [`Now`]; the [`Client`] handle sends it commands over a bounded channel;
//!   [`Events`] and [`Snapshot`] report back.
//! - [`backoff`] (ot-core's [`ot_core::session::backoff`], re-exported), [`endpoint`],
//!   [`http`], [`canon`]: seeded reconnect delays, URLs, a minimal HTTP GET for the JSON API,
//!   and canonical JSON with a first-difference finder.
//! - [`workload`]: a seeded generator of realistic edits, valid against a given document.
//! - [`stats`]: HDR histograms and counters, and the human and JSON reports.
//! - [`relay`]: a bare broadcast relay (receive a frame, forward it to the room), the
//!   baseline the sequencer is measured against.
//! - [`sim`]: the simulator: many clients in many rooms, faults, quiescence, the verdict.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use client_sim::{Client, ClientConfig, Event};
//! use ot_core::Op;
//! use serde_json::json;
//!
//! # async fn demo(token: String) -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::new("ws://127.0.0.1:1999", "demo", token, "my-connection-id");
//! let (client, mut events) = Client::connect(config)?;
//! client.ready(Duration::from_secs(5)).await?;
//!
//! // Edit: applied locally at once, sent when the server acknowledged the previous op.
//! let op = Op::batch_from_value(json!({"type":"insert","target":"track","id":"t1","index":0,
//!                                      "value":{"name":"Drums","clips":[]}}))?;
//! client.submit(op).await?;
//! client.cursor(120.0, 48.0).await?;
//!
//! while let Some(e) = events.recv().await {
//!     match e.event {
//!         Event::Acked { version, latency, .. } => {
//!             println!("acked at version {version} after {latency:?}");
//!             break;
//!         }
//!         Event::Remote { user_id, ops, .. } => println!("{user_id} did {} ops", ops.len()),
//!         Event::Dropped { reason, ops } => eprintln!("{} local ops dropped: {reason:?}", ops.len()),
//!         _ => {}
//!     }
//! }
//! let doc = client.document().expect("loaded after ready");
//! assert_eq!(doc.tracks().len(), 1);
//! client.close().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use ot_core::session::backoff;
pub mod canon;
pub mod client;
pub mod endpoint;
pub mod http;
pub mod relay;
pub use ot_core::session;
pub mod sim;
pub mod stats;
pub mod workload;

pub use backoff::{Backoff, BackoffConfig};
pub use client::{Client, ClientConfig, ClientError, Events, LockGuard, Snapshot, Stamped};
pub use endpoint::{BaseUrl, UrlForm};
pub use session::{Effect, Event, Now, ReloadReason, ServerClose, Session};
