//! The WebAssembly benchmark's workload natively, for comparison:
//! `cargo run --release -p ot-wasm --example native_bench`.

use std::time::Instant;

use ot_core::session::Now;
use ot_wasm::StudioSession;
use serde_json::json;

fn main() {
    let (tracks_n, per) = (20, 50);
    let tracks: Vec<_> = (0..tracks_n)
        .map(|t| {
            let clips: Vec<_> = (0..per)
                .map(|c| json!({"id": format!("c{t}-{c}"), "start": c * 2, "duration": 2, "gain": 1, "name": format!("Clip {c}")}))
                .collect();
            json!({"id": format!("t{t}"), "name": format!("Track {t}"), "volume": 0.8, "clips": clips})
        })
        .collect();
    let init = json!({"type":"init","users":[],"yourId":"me","version":0,"serverTime":1,
        "state":{"version":0,"tempo":120,"tracks":tracks,"markers":[]}})
    .to_string();
    let n = 5000;
    let frames: Vec<String> = (0..n)
        .map(|i| {
            json!({"type":"operation","version":i + 1,"userId":"ben","opId":format!("ben:{}", i + 1),
                "operation":[{"type":"update","target":"clip","id":format!("c{}-{}", i % tracks_n, (i * 7) % per),"path":["gain"],"value":(i % 100) as f64 / 100.0}]})
            .to_string()
        })
        .collect();
    let now = Now { mono_ms: 0, epoch_ms: 0 };
    for pending in [false, true, false, true] {
        let mut s = StudioSession::new("me");
        s.on_open();
        s.receive_text(&init, now);
        if pending {
            s.edit_text(r#"[{"type":"move","target":"clip","id":"c3-3","parent":"t4","index":0},{"type":"update","target":"clip","id":"c3-3","path":["start"],"value":9}]"#, now).unwrap();
            s.edit_text(r#"{"type":"update","target":"clip","id":"c5-5","path":["gain"],"value":0.5}"#, now).unwrap();
        }
        let t0 = Instant::now();
        for f in &frames {
            std::hint::black_box(s.receive_text(f, now));
        }
        println!("remote op (pending: {pending}): {:.1} us", t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
