//! # fuzz
//!
//! The fuzz bodies for `ot-core`, as a plain library. Each body takes arbitrary bytes, turns
//! them into a document and operations (normalizing, never rejecting: see [`source`]), drives
//! `ot-core`, and panics with a readable scenario when a law is broken. The cargo-fuzz targets
//! in `fuzz/fuzz/` are a few lines calling these; `tests/corpus.rs` replays the checked-in
//! corpus through them on stable, and `tests/regressions.rs` keeps every minimized failure as
//! an ordinary test.
//!
//! # Layout
//!
//! - [`source`]: arbitrary bytes read as a stream of choices.
//! - [`gen`]: a small document from bytes, and op JSON for a document (mostly valid ops, some
//!   invalid or damaged ones).
//! - [`apply_ops`], [`tp1_pair`], [`decode_message`]: the ot-core bodies.
//! - [`store_reload`]: deep and wide edits through the server's decode, limits, sequencing,
//!   store encoding and reload.
//!
//! # Running
//!
//! ```text
//! cargo +nightly fuzz run apply_ops -- -max_total_time=600   # from fuzz/
//! cargo test -p fuzz                                         # replay the corpus on stable
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod gen;
pub mod source;
mod store_reload;

pub use store_reload::store_reload;

use ot_core::protocol::{decode_client, decode_server, ClientMsg, ServerMsg};
use ot_core::{apply, invert, transform, Document, Op, Side};
use serde_json::Value;

use crate::gen::Fresh;
use crate::source::Source;

/// How many batches [`apply_ops`] applies to one document at most.
pub const MAX_STEPS: usize = 8;

/// The nesting limit [`decode_message`] gives `decode_client` (the sequencer's default order of
/// magnitude).
pub const MAX_DEPTH: usize = 32;

/// The JSON of a batch, for failure messages.
pub fn show(ops: &[Op]) -> String {
    serde_json::to_string(&ops.iter().map(Op::to_value).collect::<Vec<_>>()).unwrap_or_default()
}

/// The JSON state of a document, for failure messages.
pub fn show_doc(doc: &Document) -> String {
    doc.to_state_value(0).to_string()
}

fn assert_invariants(doc: &Document, context: &dyn Fn() -> String) {
    if let Err(e) = doc.check_invariants() {
        panic!("invariant broken: {e}\n{}", context());
    }
}

/// Body (a): arbitrary op JSON applied to an arbitrary document, batch after batch.
///
/// Checks after every step: `apply` does not panic; a failing batch leaves the document exactly
/// as it was (no half-applied batch); `check_invariants` holds; a successful batch is undone
/// exactly by applying `invert` of its annotated form; that annotated form (what the server
/// broadcasts) survives a wire round trip unchanged; and so does the state JSON.
pub fn apply_ops(data: &[u8]) {
    let mut src = Source::new(data);
    let mut doc = gen::document(&mut src);
    assert_invariants(&doc, &|| format!("generated document {}", show_doc(&doc)));
    let mut fresh = Fresh::default();
    for step in 0..MAX_STEPS {
        if step > 0 && src.is_empty() {
            break;
        }
        // Each op is generated for the state after the ones before it (when they apply), so a
        // batch is usually valid up to a damaged or invalid op somewhere in it.
        let mut scratch = doc.clone();
        let mut items = Vec::new();
        for _ in 0..1 + src.below(4) {
            let v = gen::op_value(&mut src, &scratch, &mut fresh, true);
            if let Ok(op) = Op::from_value(v.clone()) {
                // Errors are expected here: the scratch copy only steers the next op's choices.
                let _ = apply(&mut scratch, std::slice::from_ref(&op));
            }
            items.push(v);
        }
        let wire = if items.len() == 1 && src.coin() { items.remove(0) } else { Value::Array(items) };
        let Ok(ops) = Op::batch_from_value(wire.clone()) else { continue };
        let before = doc.clone();
        let scenario = || format!("state {}\nbatch {wire}", show_doc(&before));
        match apply(&mut doc, &ops) {
            Err(e) => {
                if doc != before {
                    panic!("failed batch ({e}) changed the document to {}\n{}", show_doc(&doc), scenario());
                }
            }
            Ok(annotated) => {
                assert_invariants(&doc, &scenario);
                // The state JSON (what `init` sends) loads back into the same document.
                match Document::from_state_value(&doc.to_state_value(1)) {
                    Ok((loaded, 1)) if loaded == doc => {}
                    other => panic!("state {} does not round-trip: {other:?}\n{}", show_doc(&doc), scenario()),
                }
                let inverse = invert(&annotated);
                let mut back = doc.clone();
                match apply(&mut back, &inverse) {
                    Err(e) => panic!("inverse {} does not apply: {e}\n{}", show(&inverse), scenario()),
                    Ok(_) if back != before => panic!(
                        "inverse {} restores {} instead of the original\n{}",
                        show(&inverse),
                        show_doc(&back),
                        scenario()
                    ),
                    Ok(_) => {}
                }
                let sent = Value::Array(annotated.iter().map(Op::to_value).collect());
                match Op::batch_from_value(sent.clone()) {
                    Ok(decoded) if decoded == annotated => {}
                    other => panic!("annotated batch {sent} does not round-trip: {other:?}\n{}", scenario()),
                }
            }
        }
    }
}

/// Body (b): an arbitrary concurrent pair on an arbitrary document satisfies TP1.
///
/// With `a` and `b` (batches of up to 3 ops) both valid on the generated state `S`, and `a'`,
/// `b'` their annotated forms from `apply`: `S·b'·transform(a', b', Later)` equals
/// `S·a'·transform(b', a', Earlier)`, both transformed batches apply cleanly, and both results
/// keep the invariants, and the transformed batches carry exact payloads (the subtree a delete
/// carries, an update's old value, a move's source are what `apply` reads from the state), so
/// that their inverse undoes them exactly.
pub fn tp1_pair(data: &[u8]) {
    let mut src = Source::new(data);
    let base = gen::document(&mut src);
    let mut fresh = Fresh::default();
    let a = gen::valid_batch(&mut src, &base, &mut fresh, 3);
    let b = gen::valid_batch(&mut src, &base, &mut fresh, 3);
    let scenario = || format!("S = {}\na = {}\nb = {}", show_doc(&base), show(&a), show(&b));

    let mut left = base.clone();
    let a1 =
        apply(&mut left, &a).unwrap_or_else(|e| panic!("a, valid op by op, fails as a batch: {e}\n{}", scenario()));
    let mut right = base.clone();
    let b1 =
        apply(&mut right, &b).unwrap_or_else(|e| panic!("b, valid op by op, fails as a batch: {e}\n{}", scenario()));

    let a2 = transform(a1.clone(), &b1, Side::Later);
    let b2 = transform(b1.clone(), &a1, Side::Earlier);
    let scenario = || {
        format!(
            "{}\na' = {}\nb' = {}\ntransform(a', b', Later) = {}\ntransform(b', a', Earlier) = {}",
            scenario(),
            show(&a1),
            show(&b1),
            show(&a2),
            show(&b2)
        )
    };
    let (after_b, after_a) = (right.clone(), left.clone());
    let a3 = match apply(&mut right, &a2) {
        Ok(a3) => a3,
        Err(e) => {
            panic!("transform(a', b', Later) does not apply after b: {e}\nS·b = {}\n{}", show_doc(&right), scenario())
        }
    };
    let b3 = match apply(&mut left, &b2) {
        Ok(b3) => b3,
        Err(e) => {
            panic!("transform(b', a', Earlier) does not apply after a: {e}\nS·a = {}\n{}", show_doc(&left), scenario())
        }
    };
    // Payload exactness: the subtree a delete carries, an update's old value and a move's
    // source, as transform left them, are exactly what apply reads from the state...
    for (name, ops, applied) in [("transform(a', b', Later)", &a2, &a3), ("transform(b', a', Earlier)", &b2, &b3)] {
        if ops != applied {
            panic!("{name} is not annotated exactly: apply annotates it as {}\n{}", show(applied), scenario());
        }
    }
    // ...and so they undo it exactly.
    for (name, ops, after, before) in
        [("transform(a', b', Later)", &a2, &right, &after_b), ("transform(b', a', Earlier)", &b2, &left, &after_a)]
    {
        let inverse = invert(ops);
        let mut undone = after.clone();
        match apply(&mut undone, &inverse) {
            Ok(_) if undone == *before => {}
            Ok(_) => panic!(
                "the inverse {} of {name} restores {} instead of {}\n{}",
                show(&inverse),
                show_doc(&undone),
                show_doc(before),
                scenario()
            ),
            Err(e) => panic!("the inverse {} of {name} does not apply: {e}\n{}", show(&inverse), scenario()),
        }
    }
    assert_invariants(&right, &scenario);
    assert_invariants(&left, &scenario);
    if left != right {
        panic!(
            "TP1 broken:\nS·a·transform(b,a) = {}\nS·b·transform(a,b) = {}\n{}",
            show_doc(&left),
            show_doc(&right),
            scenario()
        );
    }
}

/// Body (c): arbitrary bytes through every decoder.
///
/// The bytes (lossily as UTF-8) go to `decode_client` and `decode_server`, and (when they are
/// JSON) to `Op::batch_from_value`; none may panic. Whatever decodes must survive a round trip
/// through its JSON value unchanged.
pub fn decode_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(msg) = decode_client(&text, MAX_DEPTH) {
        let value = serde_json::to_value(&msg).unwrap_or(Value::Null);
        match serde_json::from_value::<ClientMsg>(value.clone()) {
            Ok(back) if back == msg => {}
            other => panic!("client message {msg:?} does not round-trip through {value}: {other:?}"),
        }
    }
    if let Ok(msg) = decode_server(&text) {
        let value = serde_json::to_value(&msg).unwrap_or(Value::Null);
        match serde_json::from_value::<ServerMsg>(value.clone()) {
            Ok(back) if back == msg => {}
            other => panic!("server message {msg:?} does not round-trip through {value}: {other:?}"),
        }
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        if let Ok(ops) = Op::batch_from_value(value) {
            let sent = Value::Array(ops.iter().map(Op::to_value).collect());
            match Op::batch_from_value(sent.clone()) {
                Ok(back) if back == ops => {}
                other => panic!("ops {} do not round-trip through {sent}: {other:?}", show(&ops)),
            }
        }
    }
}
