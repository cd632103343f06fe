//! What the server's history window costs in memory beyond the document, for BENCHMARKS.md:
//! a 1,000-clip project (20 tracks × 50 clips) whose `ServerDoc` keeps a full window of 1,000
//! versions, filled twice over with one kind of op at a time. Each kind runs in a process of its
//! own (the example runs itself once per kind). Three figures per kind:
//!
//! - the growth of resident memory (`VmRSS` of `/proc/self/status`, Linux only), which
//!   understates: the allocator reuses what building the document freed;
//! - the live heap with the window minus the live heap once the window is dropped and only the
//!   head state is left (a counting allocator): exactly what the window keeps alive;
//! - the window's own estimate of it ([`ServerDoc::history_bytes`]), which
//!   [`ServerDoc::set_history_bytes`] bounds.
//!
//! ```text
//! cargo run --release -p ot-core --example room_memory
//! BUDGET=2000000 cargo run --release -p ot-core --example room_memory   # with that bound
//! STALE=4 cargo run --release -p ot-core --example room_memory   # each op made 4 versions back
//! ```

use ot_core::sync::{ServerDoc, Submit};
use ot_core::{Document, Op};
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes this process has allocated and not freed: the live heap, exact, unlike
/// resident memory, which keeps what the allocator holds on to.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const TRACKS: usize = 20;
const CLIPS: usize = 50;
const WINDOW: usize = 1_000;

fn window() -> usize {
    std::env::var("WINDOW").ok().and_then(|w| w.parse().ok()).unwrap_or(WINDOW)
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn document() -> Document {
    let tracks: Vec<Value> = (0..TRACKS)
        .map(|t| {
            let clips: Vec<Value> = (0..CLIPS)
                .map(|c| {
                    json!({"id": format!("c{t}_{c}"), "start": c as f64 * 4.0, "duration": 4.0, "gain": 1.0,
                    "name": format!("Clip {t}.{c}"), "color": "#3b82f6", "fx": {"reverb": 0.1, "delay": 0.0}})
                })
                .collect();
            json!({"id": format!("t{t}"), "name": format!("Track {t}"), "volume": 0.8, "muted": false, "clips": clips})
        })
        .collect();
    let state = json!({"version": 0, "tempo": 120, "name": "Memory", "tracks": tracks, "markers": []});
    match Document::from_state_value(&state) {
        Ok((doc, _)) => doc,
        Err(e) => panic!("generated state is well formed: {e}"),
    }
}

/// The `i`-th op of a kind (a small deterministic mix over tracks and clips).
fn op(kind: &str, i: usize) -> Value {
    let (t, c) = ((i * 7) % TRACKS, (i * 13) % CLIPS);
    match kind {
        "gain" => {
            json!({"type": "update", "target": "clip", "id": format!("c{t}_{c}"), "path": ["gain"], "value": i as f64})
        }
        "fx" => {
            json!({"type": "update", "target": "clip", "id": format!("c{t}_{c}"), "path": ["fx", "delay"], "value": i as f64})
        }
        "move" => {
            json!({"type": "move", "target": "clip", "id": format!("c{t}_{c}"), "parent": format!("t{}", (t + 1) % TRACKS), "index": 0})
        }
        _ => json!({"type": "insert", "target": "clip", "id": format!("n{i}"), "parent": format!("t{t}"), "index": 0,
            "value": {"start": 1.0, "duration": 1.0}}),
    }
}

fn main() {
    let kinds = ["gain", "fx", "move", "insert"];
    if let Some(kind) = std::env::args().nth(1) {
        measure(&kind);
        return;
    }
    println!("| ops in the window | versions kept | RSS growth | live heap beyond the head's own | the window's own estimate |");
    println!("|---|---:|---:|---:|---:|");
    let me = std::env::current_exe().unwrap_or_else(|e| panic!("own path: {e}"));
    for kind in kinds {
        match std::process::Command::new(&me).arg(kind).status() {
            Ok(s) if s.success() => {}
            other => panic!("{kind}: {other:?}"),
        }
    }
}

fn measure(kind: &str) {
    let doc = document();
    let before = rss_kb();
    let mut server = ServerDoc::new(doc, 0, window(), 100_000);
    if let Some(budget) = std::env::var("BUDGET").ok().and_then(|b| b.parse().ok()) {
        server.set_history_bytes(budget);
    }
    // Each op made `STALE` versions before the head (0 by default): stale ops are validated on
    // the scratch state the server keeps between submits, which the figure then includes.
    let stale: u64 = std::env::var("STALE").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    // Twice the window, so the window is full and has been trimmed.
    for i in 0..2 * WINDOW {
        let ops = match Op::batch_from_value(op(kind, i)) {
            Ok(ops) => ops,
            Err(e) => panic!("{kind} {i}: {e}"),
        };
        let base = Some(server.version().saturating_sub(stale));
        let submit = Submit { from: "a".into(), account: None, base, op_id: Some(format!("a:{i}")), ops };
        if let Err(e) = server.submit(submit, None) {
            panic!("{kind} {i}: {e}");
        }
    }
    let after = rss_kb();
    let with_window = live();
    let versions = server.version() - server.window_start();
    let estimate = server.history_bytes();
    // The head alone: what is left once the window is gone.
    let head = server.doc().clone();
    drop(server);
    let head_only = live();
    std::hint::black_box(&head);
    let mb = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "| {kind} | {versions} | {:.2} MB | {:.2} MB | {:.2} MB |",
        after.saturating_sub(before) as f64 / 1024.0,
        mb(with_window.saturating_sub(head_only)),
        mb(estimate)
    );
}
