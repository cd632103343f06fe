//! Criterion benches for ot-core, each group answering one named question:
//!
//! - `apply/doc_entities/{1k,10k,100k}`: does applying a realistic op mix stay flat as the
//!   document grows? (target: 100k within 2× of 1k) Each iteration applies the mix to a fresh
//!   clone of the document, so every write first copies the path it changes out of the shared
//!   structure, as at the server, whose history window shares the head's structure.
//! - `apply/unshared/10k`: the same mix on a document whose paths it touches are already its
//!   own (the mix applied once to the clone outside the timing; the mix leaves the document as
//!   it found it but for gain values): what apply costs without the copy-on-write.
//! - `transform/pair/*`: what does one primitive transform cost, per conflict row?
//! - `rebase/stale_by/{1,10,100,1000}`: what does the server pay to sequence an op made N
//!   versions ago? (target: 1,000 under 100 µs)
//! - `rebase/update_stale_by/{10,100,1000}`: the same for an update of a value nothing after
//!   its base touched, which is sequenced at the head without rebuilding its base.
//! - `rebase/insert_stream/stale_by_4`: what does one op of the server benchmark's all-insert
//!   workload cost in ot-core (a new clip at index 0 of one track, made 4 versions before the
//!   head, on a server that serves the whole stream)?
//! - `compose/chain/{10,100,1000}`: what does composing a client's buffer cost?
//! - `codec/op_message/{decode,decode_validate,encode}`: what does the wire cost per operation
//!   frame? (`decode`: the general path; `decode_validate`: the sequencer's path for an edit,
//!   [`decode_operation`] and the size limits; target under 3 µs)
//! - `undo/remote_op/{disjoint,same_path}/{0,100}`: what does keeping a client's undo and redo
//!   stacks transformed add to taking one remote op, with 0 or 100 undo steps, when the steps
//!   touch other values than the remote op (the common case) or all the same value? (target:
//!   100 steps add under 20 µs)
//! - `undo/at_head/100`: what does an undo cost with 100 steps on the stack?
//!
//! Fixed seeds everywhere; results go through `black_box`. Run with
//! `cargo bench -p ot-core --bench ot -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ot_core::protocol::{decode_client, decode_operation, encode, ClientMsg, Limits, OperationMsg, ServerMsg};
use ot_core::sync::{ClientDoc, ServerDoc, Submit};
use ot_core::{apply, compose, transform, Document, Op, Side};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Clips per track in the generated documents.
const CLIPS_PER_TRACK: usize = 99;

/// A document of `entities` entities: `entities / 100` tracks, each with 99 clips.
fn document(entities: usize) -> Document {
    let tracks: Vec<Value> = (0..entities / (CLIPS_PER_TRACK + 1))
        .map(|t| {
            let clips: Vec<Value> = (0..CLIPS_PER_TRACK)
                .map(|c| json!({"id": format!("c{t}_{c}"), "start": c as f64 * 4.0, "duration": 4.0, "gain": 1.0}))
                .collect();
            json!({"id": format!("t{t}"), "name": format!("Track {t}"), "volume": 0.8, "muted": false, "clips": clips})
        })
        .collect();
    let state = json!({"version": 0, "tempo": 120, "name": "Bench", "tracks": tracks, "markers": []});
    Document::from_state_value(&state).expect("generated state is well formed").0
}

fn ops(v: Value) -> Vec<Op> {
    Op::batch_from_value(v).expect("bench ops are well formed")
}

/// A realistic edit session on a document of `tracks` tracks, as separate batches: set a clip's
/// gain, move a clip to another track and back, insert a clip and delete it again.
fn op_mix(rng: &mut StdRng, tracks: usize, rounds: usize) -> Vec<Vec<Op>> {
    let mut out = Vec::new();
    for r in 0..rounds {
        let (t, u) = (rng.gen_range(0..tracks), rng.gen_range(0..tracks));
        let c = rng.gen_range(0..CLIPS_PER_TRACK);
        let clip = format!("c{t}_{c}");
        let to = rng.gen_range(0..CLIPS_PER_TRACK - 1);
        let new = format!("new{r}");
        out.push(ops(
            json!({"type": "update", "target": "clip", "id": clip, "path": ["gain"], "value": rng.gen::<f64>()}),
        ));
        out.push(ops(json!({"type": "move", "target": "clip", "id": clip, "parent": format!("t{u}"), "index": to})));
        out.push(ops(json!({"type": "move", "target": "clip", "id": clip, "parent": format!("t{t}"), "index": c})));
        out.push(ops(json!({"type": "insert", "target": "clip", "id": new, "parent": format!("t{u}"), "index": to,
            "value": {"start": 0.0, "duration": 2.0}})));
        out.push(ops(json!({"type": "delete", "target": "clip", "id": new})));
    }
    out
}

fn bench_apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply/doc_entities");
    for (label, n) in [("1k", 1_000), ("10k", 10_000), ("100k", 100_000)] {
        let doc = document(n);
        assert_eq!(doc.entity_count(), n);
        let mix = op_mix(&mut StdRng::seed_from_u64(7), n / (CLIPS_PER_TRACK + 1), 4);
        g.throughput(Throughput::Elements(mix.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &mix, |b, mix| {
            b.iter_batched(
                || doc.clone(),
                |mut d| {
                    for batch in mix {
                        black_box(apply(&mut d, batch).expect("the mix applies"));
                    }
                    d
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    let mut g = c.benchmark_group("apply/unshared");
    let doc = document(10_000);
    let mix = op_mix(&mut StdRng::seed_from_u64(7), 10_000 / (CLIPS_PER_TRACK + 1), 4);
    g.throughput(Throughput::Elements(mix.len() as u64));
    g.bench_with_input(BenchmarkId::from_parameter("10k"), &mix, |b, mix| {
        b.iter_batched(
            || {
                let mut d = doc.clone();
                for batch in mix {
                    apply(&mut d, batch).expect("the mix applies");
                }
                d
            },
            |mut d| {
                for batch in mix {
                    black_box(apply(&mut d, batch).expect("the mix applies again"));
                }
                d
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Applies `a` and `b` to clones of `doc`, returning their annotated forms.
fn pair(doc: &Document, a: Value, b: Value) -> (Vec<Op>, Vec<Op>) {
    let a = apply(&mut doc.clone(), &ops(a)).expect("a applies");
    let b = apply(&mut doc.clone(), &ops(b)).expect("b applies");
    (a, b)
}

fn bench_transform(c: &mut Criterion) {
    let doc = document(1_000);
    let clip = |id: &str, parent: &str, index: usize| json!({"type": "insert", "target": "clip", "id": id, "parent": parent, "index": index, "value": {"start": 1.0}});
    let mv = |id: &str, parent: &str, index: usize| json!({"type": "move", "target": "clip", "id": id, "parent": parent, "index": index});
    let upd =
        |id: &str, path: Value, v: f64| json!({"type": "update", "target": "clip", "id": id, "path": path, "value": v});
    let cases = [
        ("insert-insert", pair(&doc, clip("x", "t1", 5), clip("y", "t1", 5))),
        ("move-move", pair(&doc, mv("c1_3", "t2", 7), mv("c1_3", "t4", 0))),
        ("move-move-other", pair(&doc, mv("c1_3", "t2", 7), mv("c2_5", "t1", 1))),
        ("delete-move", pair(&doc, json!({"type": "delete", "target": "track", "id": "t2"}), mv("c1_3", "t2", 7))),
        ("move-delete", pair(&doc, mv("c1_3", "t2", 7), json!({"type": "delete", "target": "track", "id": "t2"}))),
        (
            "delete-delete",
            pair(
                &doc,
                json!({"type": "delete", "target": "clip", "id": "c3_3"}),
                json!({"type": "delete", "target": "track", "id": "t3"}),
            ),
        ),
        ("update-update", pair(&doc, upd("c1_3", json!(["gain"]), 0.5), upd("c1_3", json!(["gain"]), 0.7))),
        (
            "update-update-prefix",
            pair(&doc, upd("c1_3", json!(["fx", "reverb"]), 0.5), upd("c1_3", json!(["fx"]), 1.0)),
        ),
        (
            "update-delete",
            pair(&doc, upd("c1_3", json!(["gain"]), 0.5), json!({"type": "delete", "target": "track", "id": "t1"})),
        ),
    ];
    let mut g = c.benchmark_group("transform/pair");
    g.throughput(Throughput::Elements(1));
    for (name, (a, b)) in &cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), &(a, b), |bench, (a, b)| {
            bench.iter_batched(|| (*a).clone(), |a| black_box(transform(a, b, Side::Later)), BatchSize::SmallInput)
        });
    }
    g.finish();
}

/// One history op for the rebase bench, never touching track `t0` or clip `c0_0` (what the stale
/// op edits), so that the stale op survives every rebase.
fn history_op(rng: &mut StdRng, i: usize, tracks: usize) -> Vec<Op> {
    let t = rng.gen_range(1..tracks);
    let c = rng.gen_range(1..CLIPS_PER_TRACK);
    match i % 4 {
        0 => ops(
            json!({"type": "update", "target": "clip", "id": format!("c{t}_{c}"), "path": ["gain"], "value": rng.gen::<f64>()}),
        ),
        1 => ops(
            json!({"type": "insert", "target": "clip", "id": format!("h{i}"), "parent": "t0", "index": rng.gen_range(0..CLIPS_PER_TRACK),
            "value": {"start": 0.0}}),
        ),
        2 => ops(json!({"type": "delete", "target": "clip", "id": format!("h{}", i - 1)})),
        _ => ops(
            json!({"type": "update", "target": "track", "id": format!("t{t}"), "path": ["volume"], "value": rng.gen::<f64>()}),
        ),
    }
}

/// A server at version `n` whose history holds `n` ops from [`history_op`] (fixed seed).
fn server_with_history(doc: &Document, n: u64) -> ServerDoc {
    let tracks = doc.tracks().len();
    let mut rng = StdRng::seed_from_u64(11);
    let mut server = ServerDoc::new(doc.clone(), 0, 2_000, 10_000);
    for i in 0..n as usize {
        let submit = Submit {
            account: None,
            from: "h".into(),
            base: None,
            op_id: Some(format!("h:{i}")),
            ops: history_op(&mut rng, i, tracks),
        };
        server.submit(submit, None).expect("history op applies");
    }
    server
}

/// Measures `ServerDoc::submit` of `stale` (based on version 0) on a clone of `server`; the
/// clone is made outside the timing and the result dropped outside it.
fn bench_submit(b: &mut criterion::Bencher<'_>, server: &ServerDoc, stale: &Submit) {
    b.iter_batched(
        || (server.clone(), stale.clone()),
        |(mut s, op)| {
            let out = s.submit(op, None).expect("the stale op is rebased");
            (s, black_box(out))
        },
        BatchSize::SmallInput,
    )
}

fn bench_rebase(c: &mut Criterion) {
    let doc = document(10_000);
    // Made at version 0, N versions ago: move a clip within track t0, where the history
    // inserted and deleted clips (so its indices shift).
    let one = Submit {
        account: None,
        from: "client".into(),
        base: Some(0),
        op_id: Some("client:1".into()),
        ops: ops(json!({"type": "move", "target": "clip", "id": "c0_0", "parent": "t0", "index": 50})),
    };
    // The same move and a gain change in one batch: the batch path of transform.
    let two = Submit {
        account: None,
        ops: ops(json!([
            {"type": "move", "target": "clip", "id": "c0_0", "parent": "t0", "index": 50},
            {"type": "update", "target": "clip", "id": "c0_0", "path": ["gain"], "value": 0.25}
        ])),
        ..one.clone()
    };
    let mut g = c.benchmark_group("rebase/stale_by");
    g.throughput(Throughput::Elements(1));
    for n in [1u64, 10, 100, 1_000] {
        let server = server_with_history(&doc, n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &one, |b, stale| bench_submit(b, &server, stale));
    }
    g.finish();
    let mut g = c.benchmark_group("rebase/batch2_stale_by");
    g.throughput(Throughput::Elements(2));
    for n in [1u64, 1_000] {
        let server = server_with_history(&doc, n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &two, |b, stale| bench_submit(b, &server, stale));
    }
    g.finish();
    // The common stale edit: an update of a value that nothing after its base touched (the
    // history writes track volumes and clip gains, this a track's name).
    let rename = Submit {
        ops: ops(json!({"type": "update", "target": "track", "id": "t7", "path": ["name"], "value": "Bass"})),
        ..one.clone()
    };
    let mut g = c.benchmark_group("rebase/update_stale_by");
    g.throughput(Throughput::Elements(1));
    for n in [10u64, 100, 1_000] {
        let server = server_with_history(&doc, n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &rename, |b, stale| bench_submit(b, &server, stale));
    }
    g.finish();
    // The server benchmark's all-insert workload in ot-core: clients take turns inserting a new
    // clip at index 0 of one track, each made 4 versions before the head, so every one is
    // validated at its base and transformed over the 4 inserts after it. One server serves the
    // whole run (its window bounded as the sequencer's default), so what it keeps between
    // submits is measured as the sequencer runs it.
    let mut g = c.benchmark_group("rebase/insert_stream");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("stale_by_4"), |b| {
        b.iter_custom(|iters| {
            let mut server = ServerDoc::new(doc.clone(), 0, 1_000, 10_000);
            server.set_history_bytes(1_792 * 1_024);
            let inserts: Vec<Vec<Op>> = (0..iters)
                .map(|i| {
                    ops(json!({"type": "insert", "target": "clip", "id": format!("i{i}"), "parent": "t0", "index": 0,
                        "value": {"start": 0.0, "duration": 1.0}}))
                })
                .collect();
            let start = std::time::Instant::now();
            for (i, ops) in inserts.into_iter().enumerate() {
                let submit = Submit {
                    account: None,
                    from: "client".into(),
                    base: Some(server.version().saturating_sub(4)),
                    op_id: Some(format!("i{i}")),
                    ops,
                };
                black_box(server.submit(submit, None).expect("the insert is sequenced"));
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn bench_compose(c: &mut Criterion) {
    let doc = document(1_000);
    let mut g = c.benchmark_group("compose/chain");
    for n in [10usize, 100, 1_000] {
        // A client's buffer while offline: fader drags (runs of same-path updates), clip moves
        // and new clips, each annotated in sequence.
        let mut rng = StdRng::seed_from_u64(3);
        let mut d = doc.clone();
        let chain: Vec<Vec<Op>> = (0..n)
            .map(|i| {
                let t = rng.gen_range(0..10);
                let op = match i % 5 {
                    0..=2 => json!({"type": "update", "target": "track", "id": format!("t{t}"), "path": ["volume"], "value": rng.gen::<f64>()}),
                    3 => json!({"type": "move", "target": "clip", "id": format!("c{t}_{}", rng.gen_range(0..CLIPS_PER_TRACK)),
                        "parent": format!("t{}", rng.gen_range(0..10)), "index": 0}),
                    _ => json!({"type": "insert", "target": "clip", "id": format!("n{i}"), "parent": format!("t{t}"), "index": 0,
                        "value": {"start": 0.0}}),
                };
                apply(&mut d, &ops(op)).expect("chain op applies")
            })
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &chain, |b, chain| {
            b.iter_batched(
                || chain.clone(),
                |chain| black_box(chain.into_iter().fold(Vec::new(), compose)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_codec(c: &mut Criterion) {
    let op = json!({"type": "move", "target": "clip", "id": "6f1c2a8e-3b7d-4c55-9a0e-1d2f3a4b5c6d",
        "parent": "0b9e8d7c-6a5f-4e3d-2c1b-0a9f8e7d6c5b", "index": 3});
    let upd = json!({"type": "update", "target": "clip", "id": "6f1c2a8e-3b7d-4c55-9a0e-1d2f3a4b5c6d",
        "path": ["gain"], "value": 0.75, "oldValue": 1.0});
    let client = encode(&ClientMsg::Operation {
        operation: json!([op, upd]),
        base_version: Some(1234),
        op_id: Some("V1StGXR8_Z5jdHi6B-myT:42".into()),
    });
    let mut doc = Document::new();
    let setup = ops(json!([
        {"type": "insert", "target": "track", "id": "0b9e8d7c-6a5f-4e3d-2c1b-0a9f8e7d6c5b", "index": 0, "value": {"name": "A"}},
        {"type": "insert", "target": "track", "id": "t2", "index": 1,
            "value": {"name": "B", "clips": [{"id": "6f1c2a8e-3b7d-4c55-9a0e-1d2f3a4b5c6d", "start": 0.0, "gain": 1.0}]}}
    ]));
    apply(&mut doc, &setup).expect("setup applies");
    let mut moved = ops(json!([op, upd]));
    if let Some(Op::Move(m)) = moved.first_mut() {
        m.index = 0;
    }
    let annotated = apply(&mut doc, &moved).expect("frame ops apply");
    let server = ServerMsg::Operation(OperationMsg {
        operation: annotated,
        version: 1235,
        user_id: "V1StGXR8_Z5jdHi6B-myT".into(),
        op_id: Some("V1StGXR8_Z5jdHi6B-myT:42".into()),
        account: None,
    });
    let server_len = encode(&server).len();

    let mut g = c.benchmark_group("codec/op_message");
    g.throughput(Throughput::Bytes(client.len() as u64));
    g.bench_function(BenchmarkId::from_parameter("decode"), |b| {
        b.iter(|| {
            // What the sequencer does with a frame: decode the message, then its ops.
            let Ok(ClientMsg::Operation { operation, .. }) = decode_client(black_box(&client), 32) else {
                unreachable!("the frame is an operation")
            };
            black_box(Op::batch_from_value(operation).expect("ops decode"))
        })
    });
    g.bench_function(BenchmarkId::from_parameter("decode_validate"), |b| {
        let limits = Limits::default();
        b.iter(|| {
            // What the sequencer does with an edit: the one-pass decode, then the size limits.
            let f = decode_operation(black_box(&client), limits.frame_depth()).expect("the fast path takes it");
            limits.check_ops(&f.ops).expect("within the limits");
            black_box(f)
        })
    });
    g.throughput(Throughput::Bytes(server_len as u64));
    g.bench_function(BenchmarkId::from_parameter("encode"), |b| b.iter(|| black_box(encode(black_box(&server)))));
    g.finish();
}

/// A client on a 1k-entity document with `steps` undo steps: updates of the gain of distinct
/// clips, or, with `same_path`, all of the gain of clip `c0_0`. All acknowledged.
fn client_with_steps(steps: usize, same_path: bool) -> ClientDoc {
    let mut client = ClientDoc::new(document(1_000), 0, "me");
    for i in 0..steps {
        let clip = if same_path { "c0_0".to_string() } else { format!("c{}_{}", i / 50 + 1, i % 50) };
        let edit = ops(json!({"type": "update", "target": "clip", "id": clip, "path": ["gain"], "value": i as f64}));
        client.local(&edit).expect("bench edit applies");
        if let Some(out) = client.take_outgoing() {
            let v = client.version() + 1;
            let ack = OperationMsg {
                operation: out.ops,
                version: v,
                user_id: "me".into(),
                op_id: Some(out.op_id),
                account: None,
            };
            client.receive(&ack).expect("ack");
        }
    }
    client
}

fn bench_undo(c: &mut Criterion) {
    let mut g = c.benchmark_group("undo");
    for (name, same_path) in [("disjoint", false), ("same_path", true)] {
        for steps in [0usize, 100] {
            let client = client_with_steps(steps, same_path);
            let mut scratch = client.doc().clone();
            let remote = apply(
                &mut scratch,
                &ops(json!({"type": "update", "target": "clip", "id": "c0_0", "path": ["gain"], "value": 0.5})),
            )
            .expect("remote op applies");
            let msg = OperationMsg {
                operation: remote,
                version: client.version() + 1,
                user_id: "other".into(),
                op_id: None,
                account: None,
            };
            g.bench_with_input(BenchmarkId::new(format!("remote_op/{name}"), steps), &steps, |b, _| {
                b.iter_batched(
                    || client.clone(),
                    |mut c| {
                        c.receive(black_box(&msg)).expect("remote op applies");
                        c
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    let client = client_with_steps(100, false);
    g.bench_function("at_head/100", |b| {
        b.iter_batched(
            || client.clone(),
            |mut c| {
                let out = c.undo().expect("undo applies");
                black_box(out);
                c
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_apply, bench_transform, bench_rebase, bench_compose, bench_codec, bench_undo);
criterion_main!(benches);
