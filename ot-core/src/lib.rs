//! # ot-core
//!
//! The one implementation of the studio's collaboration semantics: the project document, its
//! four operations, and the operational-transformation functions that let people edit the same
//! project at once. Pure: no IO, no async, no clock, no randomness. The sequencer, the Rust
//! client, the simulator and the fuzzer all run this code.
//!
//! # Layout
//!
//! - [`doc`]: the [`Document`] of PROTOCOL §5.1 (entities found by id through a persistent hash
//!   map; O(1) clones), its exact JSON form, and [`Document::check_invariants`].
//! - [`op`]: the [`Op`]s of PROTOCOL §5.2 and their wire form, with annotations.
//! - [`apply()`] and [`invert`]: validate and apply a batch atomically, returning it annotated
//!   with what the state held; build the inverse from that.
//! - [`transform()`] and [`compose`]: the conflict rules of PROTOCOL §5.3.
//! - [`sync`]: the sans-IO server and client documents (rebase, exactly-once, optimistic apply,
//!   one op in flight), and each client's undo and redo stacks ([`sync::ClientDoc::undo`]).
//! - [`protocol`]: the protocol's rules, shared by server and clients: the socket messages of
//!   PROTOCOL §3 and their limits; [`protocol::close`], the close codes and what a client does
//!   on each; [`protocol::ids`], the id rule; [`protocol::token`], the token claims, their one
//!   builder, and roles.
//! - [`session`]: the sans-IO client protocol machine (reconnect with `since`, resend, reload,
//!   stop on a close that says so, presence, transport, clock) over [`sync`]'s client document,
//!   with time given in milliseconds, and [`session::backoff`] for seeded reconnect delays.
//!   Builds for `wasm32-unknown-unknown`, so a browser can run the same client as the Rust one.
//!
//! # Guarantees
//!
//! - `apply` is atomic: a batch applies whole or not at all, and never panics on any op.
//! - `transform` is total and satisfies TP1: for concurrent `a` and `b`,
//!   `S·b·transform(a,b,Later)` equals `S·a·transform(b,a,Earlier)`; its results keep their
//!   annotations exact.
//! - `apply(S, a)` then `apply(invert(a))` restores `S` exactly; `compose(a, b)` equals `a` then `b`.
//! - Undo right after a local edit restores the document; n undos then n redos change nothing;
//!   an undo never reverts what someone else wrote after the edit it undoes.
//!
//! ```
//! use ot_core::{apply, transform, Document, Op, Side};
//! use serde_json::json;
//!
//! let base = Document::new();
//! let a = Op::batch_from_value(json!({"type":"insert","target":"track","id":"t1","index":0,"value":{"name":"Drums"}})).unwrap();
//! let b = Op::batch_from_value(json!({"type":"insert","target":"track","id":"t2","index":0,"value":{"name":"Bass"}})).unwrap();
//! let (mut left, mut right) = (base.clone(), base.clone());
//! let a = apply(&mut left, &a).unwrap();
//! let b = apply(&mut right, &b).unwrap();
//! // b was sequenced first; a, later, goes first at the same index.
//! apply(&mut right, &transform(a.clone(), &b, Side::Later)).unwrap();
//! apply(&mut left, &transform(b, &a, Side::Earlier)).unwrap();
//! assert_eq!(left, right);
//! assert_eq!(&*left.tracks()[0], "t1");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod doc;
pub mod error;
pub mod op;
pub mod protocol;
pub mod session;
pub mod sync;
pub mod transform;

pub use apply::{apply, invert};
pub use doc::{Document, Entity, EntityKind, Id, IdList, ListKey, PropMap, Props};
pub use error::{OpError, StateError};
pub use op::{Delete, Insert, Loc, Move, Op, Prev, Target, Update};
pub use transform::{compose, independent, transform, update_commutes, Side};
