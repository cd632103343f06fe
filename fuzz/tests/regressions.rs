//! Minimized fuzz findings, kept as ordinary tests. A test that still fails because the fix
//! belongs in ot-core is `#[ignore]`d with the reason; un-ignore it with the fix.

use ot_core::{apply, transform, Document, Op, Side};
use serde_json::json;

fn ops(v: serde_json::Value) -> Vec<Op> {
    Op::batch_from_value(v).expect("well-formed ops")
}

/// Found by `tp1_pair` with a strict annotation check: two concurrent inserts of the same track
/// id. `transform(b', a', Earlier)` takes the later-sequenced track out again with a delete
/// whose carried `value` is the insert's value (`{"name":"A"}`), while `apply` of that delete
/// computes `{"name":"A","clips":[]}`: the payload is not exactly what the state holds (a
/// track's subtree always has its `clips`). Undo still restores the same state, so this is a
/// representation mismatch, not a divergence.
#[test]
fn insert_id_collision_delete_carries_exact_subtree() {
    let s = Document::new();
    let a = ops(json!({"type": "insert", "target": "track", "id": "n2", "index": 0, "value": {"name": "A"}}));
    let b = ops(json!({"type": "insert", "target": "track", "id": "n2", "index": 0, "value": {"name": "A"}}));
    let mut left = s.clone();
    let a1 = apply(&mut left, &a).expect("a applies");
    let b1 = apply(&mut s.clone(), &b).expect("b applies");
    let b2 = transform(b1, &a1, Side::Earlier);
    let b3 = apply(&mut left, &b2).expect("transformed b applies after a");
    assert_eq!(b3, b2, "applying transform(b', a', Earlier) annotates it differently than transform did");
}
