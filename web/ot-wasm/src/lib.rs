//! ot-core's client session for the browser, through `wasm-bindgen`.
//!
//! The browser client (`web/client`) keeps no conflict rule of its own: every frame the socket
//! receives goes, as the text it arrived as, into [`StudioSession::receive`], and every local
//! edit into [`StudioSession::edit`]; both run [`ot_core::session::Session`], the same
//! machine the Rust client drives. What comes back is a list of *effects* — frames to send,
//! events for the application, a reconnect to make — as JSON text (see [`effects`] for its
//! shape). JSON text won over `serde-wasm-bindgen` objects in the measurement that
//! `web/bench` makes (BENCHMARKS.md): the socket already hands over strings, and one
//! `JSON.parse` of a short effect list is cheaper than building the same objects field by
//! field across the boundary. [`StudioSession::receive_js`] keeps the other form for that
//! measurement.
//!
//! The free functions [`apply`], [`transform`], [`compose`] and [`invert`] expose ot-core's
//! laws to the TypeScript tests.
//!
//! Time comes in as two numbers, as [`ot_core::session::Now`] wants it: a monotonic clock in
//! milliseconds (`performance.now()`) and the wall clock (`Date.now()`).
//!
//! The crate builds for the host too, so that `cargo test` checks the glue without a browser.

use ot_core::protocol::{decode_server, encode, ClientMsg, Limits};
use ot_core::session::{Effect, Now, Session, SessionError};
use ot_core::sync::UndoConfig;
use ot_core::{Document, Op, OpError, Side};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

pub mod effects;

pub use effects::effects_value;

fn now(mono_ms: f64, epoch_ms: f64) -> Now {
    Now { mono_ms: mono_ms.max(0.0) as u64, epoch_ms: epoch_ms.max(0.0) as u64 }
}

fn to_js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A failure of the glue, as text (a `JsError` exists only inside a JavaScript engine, so the
/// logic below returns text and the exported wrappers turn it into an exception).
type Text<T> = Result<T, String>;

fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Parses one op or an array of ops, within the protocol's default limits (the server refuses
/// anything beyond them, so the client refuses it first, before applying it locally). Nesting
/// is bounded as the server bounds a whole frame before building anything from it.
fn parse_ops(ops_json: &str) -> Result<Vec<Op>, OpError> {
    let value: Value =
        serde_json::from_str(ops_json).map_err(|e| OpError::Malformed { reason: format!("not JSON: {e}") })?;
    if ot_core::protocol::value_depth(&value) > Limits::default().frame_depth() {
        return Err(OpError::Malformed { reason: "nested too deep".into() });
    }
    let ops = Op::batch_from_value(value)?;
    Limits::default().check_ops(&ops).map_err(|e| OpError::Malformed { reason: e.to_string() })?;
    Ok(ops)
}

/// One client's session with a room: the local document, the op in flight and the buffer,
/// presence, the transport and the server clock. See the crate docs.
#[wasm_bindgen]
pub struct StudioSession {
    inner: Session,
}

#[wasm_bindgen]
impl StudioSession {
    /// A session for connection id `pk` (PartySocket's `_pk`, also the op id prefix).
    #[wasm_bindgen(constructor)]
    pub fn new(pk: &str) -> StudioSession {
        StudioSession { inner: Session::new(pk) }
    }

    /// Op ids become `{prefix}:{n}` (see `Session::set_op_id_prefix`): a client that may reuse
    /// a saved connection id sets a prefix with a random part before it connects.
    #[wasm_bindgen(js_name = setOpIdPrefix)]
    pub fn set_op_id_prefix(&mut self, prefix: String) {
        self.inner.set_op_id_prefix(prefix);
    }

    /// The connection id.
    #[wasm_bindgen(getter)]
    pub fn pk(&self) -> String {
        self.inner.pk().to_string()
    }

    /// The `since` to connect with, or `undefined` when the next connect must load the full
    /// state (first connect, or a reload is due).
    #[wasm_bindgen(getter)]
    pub fn since(&self) -> Option<f64> {
        self.inner.since().map(|v| v as f64)
    }

    /// The last version the server confirmed (`undefined` before the first `init`).
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> Option<f64> {
        self.inner.version().map(|v| v as f64)
    }

    /// Whether `init` arrived on the current socket.
    #[wasm_bindgen(getter)]
    pub fn live(&self) -> bool {
        self.inner.is_live()
    }

    /// Local edits not yet acknowledged.
    #[wasm_bindgen(getter, js_name = pendingEdits)]
    pub fn pending_edits(&self) -> usize {
        self.inner.pending_edits()
    }

    /// This connection's id as the server named it.
    #[wasm_bindgen(getter, js_name = yourId)]
    pub fn your_id(&self) -> Option<String> {
        self.inner.your_id().map(str::to_string)
    }

    /// A new socket opened: wait for its `init`.
    #[wasm_bindgen(js_name = onOpen)]
    pub fn on_open(&mut self) {
        self.inner.on_open();
    }

    /// The socket closed or failed without a close code from the server.
    #[wasm_bindgen(js_name = onClose)]
    pub fn on_close(&mut self) {
        self.inner.on_close();
    }

    /// The server closed the socket: returns JSON `{"action": "retry"|"stop", "close": name or
    /// null, "event": the `disconnected` event}`.
    #[wasm_bindgen(js_name = onServerClose)]
    pub fn on_server_close(&mut self, code: u16, reason: &str) -> String {
        let c = self.inner.on_server_close(code, reason);
        let action = match c.action {
            ot_core::protocol::CloseAction::Retry => "retry",
            ot_core::protocol::CloseAction::Stop => "stop",
        };
        json!({
            "action": action,
            "close": c.close.map(|c| format!("{c:?}")),
            "event": effects::event_value(&c.event()),
        })
        .to_string()
    }

    /// Takes one frame as received from the socket and returns the effects as JSON text.
    /// A frame that is not a server message of the protocol is reported as a `protocolError`
    /// event and changes nothing.
    pub fn receive(&mut self, frame: &str, mono_ms: f64, epoch_ms: f64) -> String {
        self.receive_value(frame, now(mono_ms, epoch_ms)).to_string()
    }

    /// As [`StudioSession::receive`], with the effects as JavaScript objects built by
    /// `serde-wasm-bindgen` (kept to measure the two forms against each other).
    #[wasm_bindgen(js_name = receiveJs)]
    pub fn receive_js(&mut self, frame: &str, mono_ms: f64, epoch_ms: f64) -> Result<JsValue, JsError> {
        let v = self.receive_value(frame, now(mono_ms, epoch_ms));
        serde_wasm_bindgen::to_value(&v).map_err(to_js_error)
    }

    /// Applies a local edit (one op or an array, as JSON text) optimistically and returns the
    /// effects (the frame to send when nothing is in flight). Throws, changing nothing, when
    /// the edit does not apply to the local document or is over a limit.
    pub fn edit(&mut self, ops_json: &str, mono_ms: f64, epoch_ms: f64) -> Result<String, JsError> {
        self.edit_text(ops_json, now(mono_ms, epoch_ms)).map_err(to_js_error)
    }

    /// Takes back this client's latest edit (its undo step, kept transformed over everything
    /// since, so it never reverts anyone else's work) as a new local edit. Returns JSON
    /// `{"applied": bool, "skipped": n, "effects": [...]}`: `skipped` counts steps that no
    /// longer meant anything (their entity deleted, their value overwritten) and were passed
    /// over.
    pub fn undo(&mut self, mono_ms: f64, epoch_ms: f64) -> Result<String, JsError> {
        self.undo_text(false, now(mono_ms, epoch_ms)).map_err(to_js_error)
    }

    /// Puts back what the latest undo took back; as [`StudioSession::undo`].
    pub fn redo(&mut self, mono_ms: f64, epoch_ms: f64) -> Result<String, JsError> {
        self.undo_text(true, now(mono_ms, epoch_ms)).map_err(to_js_error)
    }

    /// Whether there is a step to undo.
    #[wasm_bindgen(getter, js_name = canUndo)]
    pub fn can_undo(&self) -> bool {
        self.inner.can_undo()
    }

    /// Whether there is a step to redo.
    #[wasm_bindgen(getter, js_name = canRedo)]
    pub fn can_redo(&self) -> bool {
        self.inner.can_redo()
    }

    /// Starts a gesture: every edit until [`StudioSession::end_group`] is one undo step.
    #[wasm_bindgen(js_name = beginGroup)]
    pub fn begin_group(&mut self) {
        self.inner.begin_group();
    }

    /// Ends the gesture [`StudioSession::begin_group`] started.
    #[wasm_bindgen(js_name = endGroup)]
    pub fn end_group(&mut self) {
        self.inner.end_group();
    }

    /// Sets the capture window (edits closer together than `capture_ms` merge into one undo
    /// step; 500 by default) and the most steps kept (100 by default).
    #[wasm_bindgen(js_name = setUndoConfig)]
    pub fn set_undo_config(&mut self, capture_ms: f64, max_steps: usize) {
        self.inner.set_undo_config(UndoConfig { capture_ms: capture_ms.max(0.0) as u64, max_steps });
    }

    /// The frame that takes or refreshes a soft lock (PROTOCOL §7) on `target` (`track`,
    /// `clip` or `marker`) `id` for `ttl_ms` (the server's default, 10 s, when absent). Locks
    /// are advisory: they never stop an edit.
    pub fn lock(&self, target: &str, id: &str, ttl_ms: Option<f64>) -> Result<String, JsError> {
        self.lock_text(target, id, ttl_ms, false).map_err(to_js_error)
    }

    /// The frame that releases a soft lock.
    pub fn unlock(&self, target: &str, id: &str) -> Result<String, JsError> {
        self.lock_text(target, id, None, true).map_err(to_js_error)
    }

    /// The room's lock table as a JSON array of `{"target","id","userId","name","color",
    /// "expiresAt"}`.
    #[wasm_bindgen(js_name = locksJson)]
    pub fn locks_json(&self) -> String {
        serde_json::to_string(&**self.inner.locks()).unwrap_or_else(|_| "[]".into())
    }

    /// The frame for a cursor move; `selection_json` is a JSON array of entity ids or empty.
    pub fn cursor(&self, x: f64, y: f64, selection_json: &str) -> Result<String, JsError> {
        self.cursor_text(x, y, selection_json).map_err(to_js_error)
    }

    /// The frame for play / pause / seek; the local transport changes at once.
    #[wasm_bindgen(js_name = setTransport)]
    pub fn set_transport(&mut self, playing: bool, position: f64, mono_ms: f64, epoch_ms: f64) -> String {
        encode(&self.inner.set_transport(playing, position.max(0.0), now(mono_ms, epoch_ms)))
    }

    /// The frame for a ping (its pong gives a clock sample).
    pub fn ping(&mut self, mono_ms: f64, epoch_ms: f64) -> String {
        encode(&self.inner.ping(now(mono_ms, epoch_ms)))
    }

    /// The op in flight again as a frame (a deliberate duplicate, for tests of exactly-once).
    pub fn duplicate(&self) -> Option<String> {
        self.inner.duplicate().map(|m: ClientMsg| encode(&m))
    }

    /// The local document (server state plus pending edits) in PROTOCOL §5.1's JSON form, with
    /// the confirmed version; `undefined` before the first `init`.
    #[wasm_bindgen(js_name = stateJson)]
    pub fn state_json(&self) -> Option<String> {
        let doc = self.inner.doc()?;
        let v = self.inner.version().unwrap_or(0);
        serde_json::to_string(&doc.state(v)).ok()
    }

    /// Everyone in the room (this connection included) as a JSON array of presence objects.
    #[wasm_bindgen(js_name = usersJson)]
    pub fn users_json(&self) -> String {
        serde_json::to_string(&self.inner.users().values().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
    }

    /// The transport as last heard or set, as JSON `{"playing","position","serverTime"}`, or
    /// `undefined`.
    #[wasm_bindgen(js_name = transportJson)]
    pub fn transport_json(&self) -> Option<String> {
        self.inner.transport().and_then(|t| serde_json::to_string(t).ok())
    }

    /// The server's clock now, by the best estimate (milliseconds since the epoch).
    #[wasm_bindgen(js_name = serverTime)]
    pub fn server_time(&self, mono_ms: f64, epoch_ms: f64) -> f64 {
        self.inner.server_time_ms(now(mono_ms, epoch_ms)) as f64
    }

    /// Server time minus local time, in milliseconds, by the best sample (0 without one).
    #[wasm_bindgen(js_name = clockOffset)]
    pub fn clock_offset(&self) -> f64 {
        self.inner.clock().map_or(0.0, |c| c.offset_ms as f64)
    }

    /// The playhead now, in seconds: the transport's position run on by the server clock
    /// estimate while playing.
    pub fn playhead(&self, mono_ms: f64, epoch_ms: f64) -> f64 {
        let n = now(mono_ms, epoch_ms);
        self.inner.transport().map_or(0.0, |t| t.position_at(self.inner.server_time_ms(n)))
    }
}

impl StudioSession {
    /// [`StudioSession::edit`] with the time as a [`Now`] and the failure as text.
    pub fn edit_text(&mut self, ops_json: &str, now: Now) -> Text<String> {
        let ops = parse_ops(ops_json).map_err(text_err)?;
        let effects = self.inner.submit(&ops, now).map_err(text_err)?;
        Ok(effects_value(&effects).to_string())
    }

    /// [`StudioSession::undo`] (or redo) with the time as a [`Now`] and the failure as text.
    pub fn undo_text(&mut self, redo: bool, now: Now) -> Text<String> {
        let (outcome, effects) = if redo { self.inner.redo(now) } else { self.inner.undo(now) }.map_err(text_err)?;
        Ok(json!({
            "applied": outcome.applied.is_some(),
            "skipped": outcome.skipped_empty,
            "effects": effects_value(&effects),
        })
        .to_string())
    }

    /// [`StudioSession::lock`] (or unlock) with the failure as text.
    pub fn lock_text(&self, target: &str, id: &str, ttl_ms: Option<f64>, unlock: bool) -> Text<String> {
        let kind = ot_core::EntityKind::from_name(target)
            .ok_or_else(|| format!("a lock's target is track, clip or marker, not {target:?}"))?;
        if unlock {
            return Ok(encode(&self.inner.unlock(kind, id)));
        }
        let ttl = match ttl_ms {
            Some(t) if !(t.is_finite() && t > 0.0) => return Err("a lock's ttl is a positive number of ms".into()),
            Some(t) => Some(t.ceil() as u64),
            None => None,
        };
        Ok(encode(&self.inner.lock(kind, id, ttl)))
    }

    /// [`StudioSession::cursor`] with the failure as text.
    pub fn cursor_text(&self, x: f64, y: f64, selection_json: &str) -> Text<String> {
        let selection = if selection_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str::<Vec<String>>(selection_json).map_err(text_err)?)
        };
        if !x.is_finite() || !y.is_finite() {
            return Err("a cursor's x and y must be finite numbers".into());
        }
        let msg = self.inner.cursor(x, y, selection);
        Limits::default().check_client(&msg).map_err(text_err)?;
        Ok(encode(&msg))
    }

    /// [`StudioSession::receive`] with the time as a [`Now`].
    pub fn receive_text(&mut self, frame: &str, now: Now) -> String {
        self.receive_value(frame, now).to_string()
    }

    /// The session underneath (read-only), for tests.
    pub fn session(&self) -> &Session {
        &self.inner
    }

    fn receive_value(&mut self, frame: &str, now: Now) -> Value {
        let msg = match decode_server(frame) {
            Ok(m) => m,
            Err(e) => return json!([{"event": {"type": "protocolError", "message": e.to_string()}}]),
        };
        match self.inner.handle(msg, now) {
            Ok(effects) => effects_value(&effects),
            Err(SessionError::BeforeInit { got }) => {
                json!([{"event": {"type": "protocolError", "message": format!("`{got}` arrived before `init`")}}])
            }
            Err(e) => {
                // `init` without a usable state: load the full state again.
                let effects = [Effect::Reconnect { reload: true }];
                let mut v = effects_value(&effects);
                if let Value::Array(a) = &mut v {
                    a.insert(0, json!({"event": {"type": "protocolError", "message": e.to_string()}}));
                }
                v
            }
        }
    }
}

fn side(name: &str) -> Text<Side> {
    match name {
        "earlier" => Ok(Side::Earlier),
        "later" => Ok(Side::Later),
        other => Err(format!("side must be \"earlier\" or \"later\", not {other:?}")),
    }
}

fn ops_json(ops: &[Op]) -> String {
    Value::Array(ops.iter().map(Op::to_value).collect()).to_string()
}

/// The logic of the exported free functions, with failures as text.
pub mod text {
    use super::*;

    /// See [`crate::apply`].
    pub fn apply(state_json: &str, ops_json_text: &str) -> Text<String> {
        let state: Value = serde_json::from_str(state_json).map_err(text_err)?;
        let (mut doc, version) = Document::from_state_value(&state).map_err(text_err)?;
        let ops = parse_ops(ops_json_text).map_err(text_err)?;
        let applied = ot_core::apply(&mut doc, &ops).map_err(text_err)?;
        let applied: Vec<Value> = applied.iter().map(Op::to_value).collect();
        Ok(json!({"state": doc.state(version), "applied": applied}).to_string())
    }

    /// See [`crate::transform`].
    pub fn transform(a_json: &str, b_json: &str, side_name: &str) -> Text<String> {
        let a = parse_ops(a_json).map_err(text_err)?;
        let b = parse_ops(b_json).map_err(text_err)?;
        Ok(ops_json(&ot_core::transform(a, &b, side(side_name)?)))
    }

    /// See [`crate::compose`].
    pub fn compose(a_json: &str, b_json: &str) -> Text<String> {
        let a = parse_ops(a_json).map_err(text_err)?;
        let b = parse_ops(b_json).map_err(text_err)?;
        Ok(ops_json(&ot_core::compose(a, b)))
    }

    /// See [`crate::invert`].
    pub fn invert(applied_json: &str) -> Text<String> {
        let ops = parse_ops(applied_json).map_err(text_err)?;
        Ok(ops_json(&ot_core::invert(&ops)))
    }
}

/// Applies `ops_json` to the state `state_json` (PROTOCOL §5.1 form) and returns JSON
/// `{"state": the new state, "applied": the annotated ops}`; throws on an invalid op, as the
/// server would answer `invalid_op`.
#[wasm_bindgen]
pub fn apply(state_json: &str, ops_json: &str) -> Result<String, JsError> {
    text::apply(state_json, ops_json).map_err(to_js_error)
}

/// `a` transformed over the concurrent `b`; `side` is `"later"` when `a` is sequenced after
/// `b`, `"earlier"` otherwise. Both are annotated op arrays (as `apply` returns them).
#[wasm_bindgen]
pub fn transform(a_json: &str, b_json: &str, side: &str) -> Result<String, JsError> {
    text::transform(a_json, b_json, side).map_err(to_js_error)
}

/// `a` then `b` as one batch.
#[wasm_bindgen]
pub fn compose(a_json: &str, b_json: &str) -> Result<String, JsError> {
    text::compose(a_json, b_json).map_err(to_js_error)
}

/// The inverse of annotated ops (as `apply` returns them): applying it restores the state.
#[wasm_bindgen]
pub fn invert(applied_json: &str) -> Result<String, JsError> {
    text::invert(applied_json).map_err(to_js_error)
}
