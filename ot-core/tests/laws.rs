//! Property tests of ot-core's laws over random valid documents and ops valid on them.
//!
//! Case counts are CI-sized; set `OT_PROPTEST_CASES` for longer runs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{gen_batch, gen_doc, gen_junk_op, gen_op};
use ot_core::sync::{Outcome, ServerDoc, Submit, SubmitError};
use ot_core::transform::{transform_entry, transform_one};
use ot_core::{apply, compose, independent, invert, transform, Document, Op, OpError, Side};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("OT_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

fn applied(doc: &Document, ops: &[Op]) -> (Document, Vec<Op>) {
    let mut d = doc.clone();
    let a = apply(&mut d, ops).expect("generated ops apply");
    d.check_invariants().expect("invariants after apply");
    (d, a)
}

/// Strips unknown extra fields so annotated ops compare on meaning only.
fn plain(ops: &[Op]) -> Vec<serde_json::Value> {
    ops.iter().map(Op::to_value).collect()
}

/// What the server should make of `ops` made at `base` (whose state is `at_base`), done by hand
/// through the public API: validated and annotated at the base, transformed over every op after
/// it, applied at the head. The sequenced ops and the head after them.
fn rebased_by_hand(
    server: &ServerDoc,
    at_base: &Document,
    base: u64,
    ops: &[Op],
) -> Result<(Vec<Op>, Document), OpError> {
    let after: Vec<Op> =
        server.ops_since(base).expect("in the window").iter().flat_map(|m| m.operation.clone()).collect();
    let annotated = apply(&mut at_base.clone(), ops)?;
    let rebased = transform(annotated, &after, Side::Later);
    let mut head = server.doc().clone();
    let applied = apply(&mut head, &rebased)?;
    Ok((applied, head))
}

/// Submits `ops`, made at `base`, and holds the outcome to their rebase on the state at `base`
/// built by hand (`states` holds every state the server went through, by version): the same
/// annotated op and head, or the same refusal. Records the new head in `states`.
fn submit_as_rebased(
    server: &mut ServerDoc,
    states: &mut Vec<Document>,
    base: u64,
    ops: Vec<Op>,
    seed: u64,
    i: usize,
) -> Result<(), TestCaseError> {
    let expected = rebased_by_hand(server, &states[base as usize], base, &ops);
    let submit =
        Submit { from: "c".into(), account: None, base: Some(base), op_id: Some(format!("c{i}")), ops: ops.clone() };
    match (expected, server.submit(submit, None)) {
        (Ok((annotated, head)), Ok(Outcome::Sequenced(msg))) => {
            prop_assert_eq!(plain(&msg.operation), plain(&annotated), "seed {} op {}: {:?}", seed, i, ops);
            prop_assert!(*server.doc() == head, "seed {} op {}: the heads differ", seed, i);
            states.push(head);
        }
        (Err(want), Err(SubmitError::Invalid(got))) => prop_assert_eq!(want, got, "seed {} op {}", seed, i),
        (want, got) => prop_assert!(false, "seed {} op {}: expected {:?}, got {:?} for {:?}", seed, i, want, got, ops),
    }
    Ok(())
}

/// TP1 plus totality and payload exactness for two concurrent batches.
fn check_tp1(seed: u64, max: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = gen_doc(&mut rng);
    let a = gen_batch(&mut rng, &s, max);
    let b = gen_batch(&mut rng, &s, max);
    let (sa, a) = applied(&s, &a);
    let (sb, b) = applied(&s, &b);
    let a2 = transform(a.clone(), &b, Side::Later);
    let b2 = transform(b.clone(), &a, Side::Earlier);
    let mut left = sb.clone();
    let a2_annotated = apply(&mut left, &a2)
        .unwrap_or_else(|e| panic!("seed {seed}: transform(a,b) does not apply: {e}\na={a:?}\nb={b:?}\na'={a2:?}"));
    let mut right = sa.clone();
    let b2_annotated = apply(&mut right, &b2)
        .unwrap_or_else(|e| panic!("seed {seed}: transform(b,a) does not apply: {e}\na={a:?}\nb={b:?}\nb'={b2:?}"));
    left.check_invariants().unwrap();
    right.check_invariants().unwrap();
    assert!(
        left == right,
        "seed {seed}: TP1 fails\nS={}\na={}\nb={}\na'={}\nb'={}\nS·b·a'={}\nS·a·b'={}",
        s.to_state_value(0),
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap(),
        serde_json::to_string(&a2).unwrap(),
        serde_json::to_string(&b2).unwrap(),
        left.to_state_value(0),
        right.to_state_value(0)
    );
    assert_eq!(plain(&a2_annotated), plain(&a2), "seed {seed}: a' annotations are not exact\na={a:?}\nb={b:?}");
    assert_eq!(plain(&b2_annotated), plain(&b2), "seed {seed}: b' annotations are not exact\na={a:?}\nb={b:?}");
}

/// The batch transform with no shortcut: every op of `a` over every op of `b` by the primitive
/// rule alone, each op of `b` carried along `a` in full up to `a`'s last op (no independence
/// test). What `transform`'s shortcuts must agree with.
fn reference(a: Vec<Op>, b: &[Op], side: Side) -> Vec<Op> {
    b.iter().fold(a, |a, bop| {
        let n = a.len();
        let mut out = Vec::new();
        let mut carried = vec![bop.clone()];
        for (i, aop) in a.into_iter().enumerate() {
            let next = if i + 1 < n {
                reference(carried.clone(), std::slice::from_ref(&aop), side.flip())
            } else {
                Vec::new()
            };
            out.extend(match carried.as_slice() {
                [one] => transform_one(aop, one, side),
                many => reference(vec![aop], many, side),
            });
            carried = next;
        }
        out
    })
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn tp1_primitive_pairs(seed in any::<u64>()) {
        check_tp1(seed, 1);
    }

    #[test]
    fn tp1_batches(seed in any::<u64>()) {
        check_tp1(seed, 4);
    }

    #[test]
    fn batch_transform_equals_the_unshortcut_reference(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (_, a) = applied(&s, &gen_batch(&mut rng, &s, 4));
        let (_, b) = applied(&s, &gen_batch(&mut rng, &s, 3));
        for side in [Side::Later, Side::Earlier] {
            let fast = transform(a.clone(), &b, side);
            let full = reference(a.clone(), &b, side);
            prop_assert_eq!(plain(&fast), plain(&full), "seed {}: {:?}\na={:?}\nb={:?}", seed, side, a, b);
        }
    }

    #[test]
    fn a_stale_update_sequenced_at_the_head_equals_its_rebase(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut server = ServerDoc::new(gen_doc(&mut rng), 0, 64, 64);
        // Every state the server went through, by version: the reference `state_at` is not.
        let mut states = vec![server.doc().clone()];
        for i in 0..rng.gen_range(1..8) {
            let ops = gen_batch(&mut rng, server.doc(), 3);
            let submit = Submit { from: "h".into(), account: None, base: None, op_id: Some(format!("h{i}")), ops };
            server.submit(submit, None).expect("a batch made at the head is sequenced");
            states.push(server.doc().clone());
        }
        let base = rng.gen_range(0..server.version());
        let at_base = states[base as usize].clone();
        // Updates made at the base; sometimes made at the head instead, so that some name an
        // entity inserted or deleted since the base, which the base must refuse.
        let on = if rng.gen_bool(0.8) { at_base.clone() } else { server.doc().clone() };
        let ops: Vec<Op> = (0..rng.gen_range(1..4))
            .map(|_| gen_op(&mut rng, &on))
            .filter(|op| matches!(op, Op::Update(_)))
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        let expected = rebased_by_hand(&server, &at_base, base, &ops);
        let submit = Submit { from: "c".into(), account: None, base: Some(base), op_id: Some("c".into()), ops: ops.clone() };
        match (expected, server.submit(submit, None)) {
            (Ok((annotated, head)), Ok(Outcome::Sequenced(msg))) => {
                prop_assert_eq!(plain(&msg.operation), plain(&annotated), "seed {}: {:?}", seed, ops);
                prop_assert!(*server.doc() == head, "seed {}: the heads differ", seed);
            }
            (Err(want), Err(SubmitError::Invalid(got))) => prop_assert_eq!(want, got, "seed {}", seed),
            (want, got) => prop_assert!(false, "seed {}: expected {:?}, got {:?} for {:?}", seed, want, got, ops),
        }
    }

    #[test]
    fn stale_ops_in_a_row_equal_their_rebase_on_a_state_built_afresh(seed in any::<u64>()) {
        // The server validates a stale op on a scratch state that it keeps between submits,
        // moves from base to base and undoes each op on in place: a run of stale ops of every
        // kind, at bases mostly a few versions back (as a room's clients make them), some
        // refused, must each give what a rebase on the state at its base built afresh gives.
        let mut rng = StdRng::seed_from_u64(seed);
        let mut server = ServerDoc::new(gen_doc(&mut rng), 0, 64, 64);
        // Every state the server went through, by version: the reference `state_at` is not.
        let mut states = vec![server.doc().clone()];
        for i in 0..24 {
            let version = server.version();
            let oldest = server.window_start();
            let base = if rng.gen_bool(0.2) {
                rng.gen_range(oldest..=version)
            } else {
                version.saturating_sub(rng.gen_range(0..6)).max(oldest)
            };
            // Mostly made at the base; sometimes at the head, so that some are refused there.
            let on = if rng.gen_bool(0.85) { &states[base as usize] } else { server.doc() };
            let ops = gen_batch(&mut rng, on, 3);
            submit_as_rebased(&mut server, &mut states, base, ops, seed, i)?;
        }
    }

    #[test]
    fn a_stale_lone_insert_equals_its_rebase_on_its_base_state(seed in any::<u64>()) {
        // A lone insert that nothing after its base could have made valid or invalid (but for
        // its list's length) is validated at the head instead of on its base state: inserts
        // near the edge of valid, at bases a few versions back, among edits of every kind, must
        // each give what a rebase on the state at its base gives, accepted or refused alike.
        let mut rng = StdRng::seed_from_u64(seed);
        let mut server = ServerDoc::new(gen_doc(&mut rng), 0, 64, 64);
        let mut states = vec![server.doc().clone()];
        for i in 0..40 {
            let version = server.version();
            let base = version.saturating_sub(rng.gen_range(0..6)).max(server.window_start());
            let (ops, base) = if rng.gen_bool(0.5) {
                (gen_batch(&mut rng, server.doc(), 2), version)
            } else {
                let on = if rng.gen_bool(0.8) { &states[base as usize] } else { server.doc() };
                (vec![common::gen_edge_insert(&mut rng, on)], base)
            };
            submit_as_rebased(&mut server, &mut states, base, ops, seed, i)?;
        }
    }

    #[test]
    fn state_at_gives_the_state_sequenced_at_every_version_of_the_window(seed in any::<u64>()) {
        // `state_at` rebuilds a state from the head (undoing the ops after it) or from the
        // checkpoint before it (replaying the ops in between), across the window's trims, and
        // across the stretches where stale ops needing their base state turn checkpoints on.
        let mut rng = StdRng::seed_from_u64(seed);
        let window = rng.gen_range(1..40);
        let mut server = ServerDoc::new(gen_doc(&mut rng), 0, window, 64);
        let mut states = vec![server.doc().clone()];
        let stale = rng.gen_range(0.0..0.3);
        for i in 0..rng.gen_range(1..300) {
            let (base, ops) = if rng.gen_bool(stale) {
                let base = server.version().saturating_sub(rng.gen_range(1..4)).max(server.window_start());
                (Some(base), gen_batch(&mut rng, &states[base as usize], 3))
            } else {
                (None, gen_batch(&mut rng, server.doc(), 3))
            };
            let submit = Submit { from: "h".into(), account: None, base, op_id: Some(format!("h{i}")), ops };
            if server.submit(submit, None).is_ok() {
                states.push(server.doc().clone());
            }
        }
        prop_assert_eq!(server.version() as usize, states.len() - 1);
        for v in server.window_start()..=server.version() {
            let rebuilt = server.state_at(v);
            prop_assert!(rebuilt.as_ref() == Some(&states[v as usize]), "seed {}: version {} of {}", seed, v, server.version());
        }
        prop_assert!(server.state_at(server.version() + 1).is_none());
    }

    #[test]
    fn an_op_id_in_the_window_is_answered_with_its_version_across_trims(seed in any::<u64>()) {
        // Exactly-once within the window: a submit whose (account, op id) was sequenced at a
        // version still in the window gets that version back, and one that left the window is
        // sequenced again, its id then standing for the new version.
        let mut rng = StdRng::seed_from_u64(seed);
        let window = rng.gen_range(1..20);
        let mut server = ServerDoc::new(gen_doc(&mut rng), 0, window, 64);
        let mut model: HashMap<(Option<String>, String), u64> = HashMap::new();
        let accounts = [None, Some("a"), Some("b")];
        for _ in 0..rng.gen_range(1..80) {
            let account = accounts[rng.gen_range(0..accounts.len())];
            let id = format!("x{}", rng.gen_range(0..8));
            let key = (account.map(String::from), id.clone());
            let ops = gen_batch(&mut rng, server.doc(), 2);
            let submit = Submit { from: "c".into(), account: account.map(Arc::from), base: None, op_id: Some(id), ops };
            let known = model.get(&key).copied().filter(|v| *v > server.window_start());
            match (known, server.submit(submit, None)) {
                (Some(v), Ok(Outcome::Duplicate(m))) => prop_assert_eq!(m.version, v, "seed {}", seed),
                (None, Ok(Outcome::Sequenced(m))) => {
                    prop_assert_eq!(m.version, server.version());
                    model.insert(key, m.version);
                }
                (None, Err(_)) => {}
                (known, got) => prop_assert!(false, "seed {}: {:?} expected {:?}, got {:?}", seed, key, known, got),
            }
        }
    }

    #[test]
    fn independent_ops_transform_to_themselves(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (_, a) = applied(&s, &[gen_op(&mut rng, &s)]);
        let (_, b) = applied(&s, &[gen_op(&mut rng, &s)]);
        if independent(&a[0], &b[0]) {
            prop_assert!(independent(&b[0], &a[0]), "seed {}: not symmetric", seed);
            for side in [Side::Later, Side::Earlier] {
                let full = transform_one(a[0].clone(), &b[0], side);
                prop_assert_eq!(plain(&full), plain(&a), "seed {}: independent ops changed", seed);
            }
        }
    }

    #[test]
    fn compose_equals_sequential_apply(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (sa, a) = applied(&s, &gen_batch(&mut rng, &s, 4));
        let (sab, b) = applied(&sa, &gen_batch(&mut rng, &sa, 4));
        let c = compose(a, b);
        let (sc, c_annotated) = applied(&s, &c);
        prop_assert!(sc == sab, "seed {}", seed);
        prop_assert_eq!(plain(&c_annotated), plain(&c), "seed {}: composed annotations", seed);
    }

    #[test]
    fn apply_then_invert_restores(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (mut sa, a) = applied(&s, &gen_batch(&mut rng, &s, 5));
        let inv = invert(&a);
        apply(&mut sa, &inv).unwrap_or_else(|e| panic!("seed {seed}: inverse does not apply: {e}"));
        prop_assert!(sa == s, "seed {}: invert did not restore", seed);
        sa.check_invariants().unwrap();
    }

    #[test]
    fn transform_over_composition_equals_stepwise(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (_, x) = applied(&s, &gen_batch(&mut rng, &s, 2));
        let (sa, a) = applied(&s, &gen_batch(&mut rng, &s, 3));
        let (sab, b) = applied(&sa, &gen_batch(&mut rng, &sa, 3));
        let whole = transform(x.clone(), &compose(a.clone(), b.clone()), Side::Later);
        let steps = transform(transform(x, &a, Side::Later), &b, Side::Later);
        let (d1, _) = applied(&sab, &whole);
        let (d2, _) = applied(&sab, &steps);
        prop_assert!(d1 == d2, "seed {}", seed);
    }

    #[test]
    fn undo_entry_transform_converges_with_exact_annotations(seed in any::<u64>()) {
        // An undo entry `u` and a remote op `r` on the same state: the entry after `r`, and `r`
        // carried past the entry, reach the same state either way.
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (su, u) = applied(&s, &gen_batch(&mut rng, &s, 3));
        let (sr, r) = applied(&s, &gen_batch(&mut rng, &s, 3));
        let (u2, r2) = transform_entry(u.clone(), &r);
        let mut left = sr.clone();
        let u2a = apply(&mut left, &u2).unwrap_or_else(|e| panic!("seed {seed}: entry' does not apply: {e}"));
        let mut right = su.clone();
        let r2a = apply(&mut right, &r2).unwrap_or_else(|e| panic!("seed {seed}: remote' does not apply: {e}"));
        prop_assert!(left == right, "seed {}: S·r·u' differs from S·u·r'\nu={:?}\nr={:?}", seed, u, r);
        prop_assert_eq!(plain(&u2a), plain(&u2), "seed {}: entry' annotations", seed);
        prop_assert_eq!(plain(&r2a), plain(&r2), "seed {}: remote' annotations", seed);
    }

    #[test]
    fn serde_round_trip(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let (_, a) = applied(&s, &gen_batch(&mut rng, &s, 4));
        let text = serde_json::to_string(&a).unwrap();
        let back: Vec<Op> = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &a);
        let state = s.to_state_value(7);
        let (doc, v) = Document::from_state_value(&state).unwrap();
        prop_assert_eq!(v, 7);
        prop_assert!(doc == s);
        prop_assert_eq!(doc.to_state_value(7), state);
    }

    #[test]
    fn apply_is_atomic_on_arbitrary_ops(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = gen_doc(&mut rng);
        let mut batch = vec![];
        for i in 0..rand::Rng::gen_range(&mut rng, 1..5) {
            let v = if i % 2 == 0 { gen_op(&mut rng, &s).to_value() } else { gen_junk_op(&mut rng) };
            if let Ok(op) = Op::from_value(v) {
                batch.push(op);
            }
        }
        let mut d = s.clone();
        match apply(&mut d, &batch) {
            Ok(_) => {}
            Err(_) => prop_assert!(d == s, "seed {}: failed batch left changes", seed),
        }
        d.check_invariants().unwrap();
    }
}
