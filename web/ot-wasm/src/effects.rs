//! The JSON shape of the session's effects, as the TypeScript client reads them.
//!
//! An effect list is a JSON array; each element is one of
//!
//! - `{"send": "<frame>"}`: send this text frame on the socket;
//! - `{"reconnect": {"reload": bool}}`: close the socket and connect again (`reload`: without
//!   `since`, to load the full state);
//! - `{"event": {"type": ..., ...}}`: tell the application; the event types and fields are
//!   those of [`ot_core::session::Event`] in camelCase (`ready`, `sent`, `acked`, `remote`,
//!   `dropped`, `serverError`, `userJoined`, `userLeft`, `cursor`, `transport`, `locks`,
//!   `locked`, `clock`, `disconnected`), plus `protocolError` for a frame the session could not take.
//!
//! `web/client/src/types.ts` declares the same shape for TypeScript.

use ot_core::protocol::encode;
use ot_core::session::{Effect, Event, ReloadReason};
use ot_core::Op;
use serde_json::{json, Value};

fn ops_value(ops: &[Op]) -> Value {
    Value::Array(ops.iter().map(Op::to_value).collect())
}

fn reason_name(r: ReloadReason) -> String {
    match r {
        ReloadReason::VersionTooOld => "version_too_old".into(),
        ReloadReason::Rejected(code) => code.as_str().into(),
        ReloadReason::Gap => "gap".into(),
        ReloadReason::Diverged => "diverged".into(),
        ReloadReason::StateOnRejoin => "state_on_rejoin".into(),
    }
}

/// One event as a JSON object with its `type`.
pub fn event_value(e: &Event) -> Value {
    match e {
        Event::Ready { version, your_id, reloaded, caught_up } => json!({
            "type": "ready", "version": version, "yourId": your_id, "reloaded": reloaded, "caughtUp": caught_up,
        }),
        Event::Sent { op_id, resend } => json!({"type": "sent", "opId": op_id, "resend": resend}),
        Event::Acked { op_id, version, latency } => {
            json!({"type": "acked", "opId": op_id, "version": version, "latencyMs": latency.as_millis() as u64})
        }
        Event::Remote { user_id, op_id, version, ops } => json!({
            "type": "remote", "userId": user_id, "opId": op_id, "version": version, "ops": ops_value(ops),
        }),
        Event::Dropped { reason, ops } => {
            json!({"type": "dropped", "reason": reason_name(*reason), "ops": ops_value(ops)})
        }
        Event::ServerError { code, message, op_id } => {
            json!({"type": "serverError", "code": code.as_str(), "message": message, "opId": op_id})
        }
        Event::UserJoined(p) => json!({"type": "userJoined", "user": p}),
        Event::UserLeft { user_id } => json!({"type": "userLeft", "userId": user_id}),
        Event::Cursor { user_id, x, y } => json!({"type": "cursor", "userId": user_id, "x": x, "y": y}),
        Event::Transport(t) => json!({
            "type": "transport", "playing": t.playing, "position": t.position, "serverTime": t.server_time,
        }),
        Event::Locks(locks) => json!({"type": "locks", "locks": locks}),
        Event::Locked { message, locked_by } => json!({"type": "locked", "message": message, "lockedBy": locked_by}),
        Event::Clock { offset_ms, rtt } => {
            json!({"type": "clock", "offsetMs": offset_ms, "rttMs": rtt.as_millis() as u64})
        }
        Event::Disconnected { reason, fatal, close } => json!({
            "type": "disconnected", "reason": reason, "fatal": fatal,
            "close": close.map(|c| c.code()),
        }),
    }
}

/// The effects as one JSON array (see the module docs).
pub fn effects_value(effects: &[Effect]) -> Value {
    Value::Array(
        effects
            .iter()
            .map(|e| match e {
                Effect::Send(msg) => json!({"send": encode(msg)}),
                Effect::Event(ev) => json!({"event": event_value(ev)}),
                Effect::Reconnect { reload } => json!({"reconnect": {"reload": reload}}),
            })
            .collect(),
    )
}
