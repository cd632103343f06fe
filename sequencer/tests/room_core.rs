//! [`RoomCore`] without sockets, tasks or a clock: each test runs in milliseconds and checks a
//! rule that `server.rs` checks end to end.

mod common;

use std::sync::Arc;

use common::room::{config, Harness};
use ot_core::protocol::CursorPos;
use ot_core::sync::Submit;
use ot_core::Op;
use sequencer::auth::Role;
use sequencer::error::Close;
use sequencer::room::core::{ClientIn, ConnKey, Input};
use sequencer::store::{MemoryStore, Store};
use serde_json::{json, Value};

fn track(id: &str, index: usize) -> Value {
    json!({"type":"insert","target":"track","id":id,"index":index,"value":{"name":id}})
}

fn submit(key: &ConnKey, user: &str, op: Value, base: Option<u64>, op_id: &str) -> ClientIn {
    ClientIn::Submit(Submit {
        from: key.0.to_string(),
        account: Some(Arc::from(user)),
        base,
        op_id: Some(op_id.into()),
        ops: Op::batch_from_value(op).unwrap(),
    })
}

#[test]
fn join_gets_init_and_everyone_gets_each_op_once_in_order() {
    let mut h = Harness::new(config("r"));
    let a = h.join("a", 1, "ana", Role::Editor, None);
    let init = h.take(&a);
    assert_eq!(init.len(), 1);
    assert_eq!(
        (init[0]["type"].as_str(), init[0]["yourId"].as_str(), init[0]["version"].as_u64()),
        (Some("init"), Some("a"), Some(0))
    );
    let b = h.join("b", 1, "ben", Role::Editor, None);
    assert_eq!(h.take_type(&a, "user_joined")[0]["user"]["id"], "b");
    h.take(&b);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    h.client(&b, submit(&b, "ben", track("t2", 0), Some(0), "b:1"));
    for k in [&a, &b] {
        let ops = h.take_type(k, "operation");
        let versions: Vec<u64> = ops.iter().map(|m| m["version"].as_u64().unwrap()).collect();
        assert_eq!(versions, [1, 2]);
        assert_eq!(ops[1]["opId"], "b:1");
    }
    assert_eq!(h.core.state_value()["tracks"].as_array().unwrap().len(), 2);
}

#[test]
fn an_ack_waits_for_durability() {
    let mut h = Harness::new(config("r"));
    h.auto = false;
    let a = h.join("a", 1, "ana", Role::Editor, None);
    h.take(&a);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    assert!(h.take_type(&a, "operation").is_empty(), "acked before it was stored");
    assert_eq!(h.core.durable_version(), 0);
    assert!(h.store_one());
    assert_eq!(h.take_type(&a, "operation").len(), 1);
    assert_eq!(h.core.durable_version(), 1);
}

#[test]
fn viewers_receive_but_may_not_edit_or_drive_the_transport() {
    let mut h = Harness::new(config("r"));
    let v = h.join("v", 1, "vic", Role::Viewer, None);
    h.take(&v);
    h.client(&v, submit(&v, "vic", track("t1", 0), Some(0), "v:1"));
    h.client(&v, ClientIn::Transport { playing: true, position: 1.0 });
    let errors = h.take_type(&v, "error");
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e["code"] == "forbidden"));
    assert_eq!(errors[0]["opId"], "v:1");
    assert_eq!(h.core.durable_version(), 0);
}

/// Two changes that cross: Ben's `transport` may still be on its way to Ana when she changes
/// it again (her client mirrored her own change at once); she gets hers back after his, so
/// her last word is the room's. A change long after the last one is not echoed.
#[test]
fn a_transport_that_crosses_another_is_echoed_to_its_sender_last() {
    let mut h = Harness::new(config("r"));
    let a = h.join("a", 1, "ana", Role::Editor, None);
    let b = h.join("b", 1, "ben", Role::Editor, None);
    h.take(&a);
    h.take(&b);
    h.client(&b, ClientIn::Transport { playing: true, position: 1.0 });
    h.now.mono_ms += 5;
    h.now.epoch_ms += 5;
    h.client(&a, ClientIn::Transport { playing: false, position: 7.0 });
    let to_ana = h.take_type(&a, "transport");
    let seen: Vec<_> = to_ana.iter().map(|t| (t["userId"].as_str(), t["playing"].as_bool())).collect();
    assert_eq!(seen, [(Some("b"), Some(true)), (Some("a"), Some(false))]);
    assert_eq!(h.take_type(&b, "transport").len(), 1, "Ben gets Ana's change once");
    h.now.mono_ms += 60_000;
    h.now.epoch_ms += 60_000;
    h.client(&a, ClientIn::Transport { playing: true, position: 0.0 });
    assert!(h.take_type(&a, "transport").is_empty(), "nothing crossed it");
    let stored = h.store.transport("r").unwrap().unwrap();
    assert_eq!((stored.playing, stored.user_id.as_deref()), (true, Some("a")), "the latest change is stored");
}

#[test]
fn ping_transport_and_cursors_coalesced_per_tick() {
    let mut h = Harness::new(config("r"));
    let a = h.join("a", 1, "ana", Role::Editor, None);
    let b = h.join("b", 1, "ben", Role::Editor, None);
    h.take(&a);
    h.take(&b);
    h.client(&a, ClientIn::Ping);
    assert_eq!(h.take_type(&a, "pong").len(), 1);
    h.client(&a, ClientIn::Transport { playing: true, position: 2.5 });
    let t = h.take_type(&b, "transport");
    assert_eq!((t[0]["playing"].as_bool(), t[0]["userId"].as_str()), (Some(true), Some("a")));
    assert!(h.take_type(&a, "transport").is_empty(), "the sender does not get its own transport");
    for x in 0..5 {
        h.client(&a, ClientIn::Cursor(CursorPos { x: f64::from(x), y: 0.0, selection: None }));
    }
    assert!(h.take_type(&b, "cursor").is_empty(), "cursors wait for the tick");
    h.advance(20);
    let c = h.take_type(&b, "cursor");
    assert_eq!(c.len(), 1, "five moves in one tick are one frame");
    assert_eq!(c[0]["x"], 4.0);
    assert!(h.take_type(&a, "cursor").is_empty());
}

#[test]
fn a_stale_op_is_rebased_and_a_resend_is_answered_with_its_original_version() {
    let mut h = Harness::new(config("r"));
    let a = h.join("a", 1, "ana", Role::Editor, None);
    let b = h.join("b", 1, "ben", Role::Editor, None);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    h.client(&b, submit(&b, "ben", track("t2", 0), Some(0), "b:1"));
    h.take(&a);
    h.take(&b);
    let state = h.core.state_value();
    let ids: Vec<&str> = state["tracks"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, ["t2", "t1"], "the later insert at the same index goes first");
    h.client(&b, submit(&b, "ben", track("t2", 0), Some(0), "b:1"));
    let again = h.take_type(&b, "operation");
    assert_eq!((again.len(), again[0]["version"].as_u64()), (1, Some(2)));
    assert!(h.take_type(&a, "operation").is_empty(), "a duplicate is not broadcast");
    // Another account's op with the same id is a new op.
    h.client(&a, submit(&a, "ana", track("t3", 0), Some(2), "b:1"));
    assert_eq!(h.take_type(&a, "operation")[0]["version"], 3);
}

#[test]
fn ops_based_before_the_window_are_rebased_from_the_store() {
    let store = Arc::new(MemoryStore::new());
    let mut h = Harness::on(store, config("r"), 2);
    let a = h.join("a", 1, "ana", Role::Editor, None);
    for i in 0..5u64 {
        h.client(&a, submit(&a, "ana", track(&format!("t{i}"), 0), Some(i), &format!("a:{i}")));
    }
    h.take(&a);
    h.auto = false;
    h.client(&a, submit(&a, "ana", track("old", 0), Some(1), "a:old"));
    assert!(h.core.is_blocked(), "waits for the history read");
    // Submits meanwhile wait their turn.
    h.client(&a, submit(&a, "ana", track("next", 0), Some(5), "a:next"));
    h.settle();
    let acks: Vec<(u64, String)> = h
        .take_type(&a, "operation")
        .iter()
        .map(|m| (m["version"].as_u64().unwrap(), m["opId"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(acks, [(6, "a:old".to_string()), (7, "a:next".to_string())]);
}

#[test]
fn since_catch_up_from_memory_from_the_store_and_as_state() {
    let store = Arc::new(MemoryStore::new());
    let mut h = Harness::on(store, config("r"), 2);
    let a = h.join("a", 1, "ana", Role::Editor, None);
    for i in 0..6u64 {
        h.client(&a, submit(&a, "ana", track(&format!("t{i}"), 0), Some(i), &format!("a:{i}")));
    }
    let c = h.join("c", 1, "cy", Role::Editor, Some(5));
    let init = &h.take(&c)[0];
    assert_eq!(init["ops"].as_array().map(Vec::len), Some(1));
    let d = h.join("d", 1, "di", Role::Editor, Some(1));
    let init = &h.take(&d)[0];
    let versions: Vec<u64> = init["ops"].as_array().unwrap().iter().map(|o| o["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [2, 3, 4, 5, 6], "read from the store beyond the window");
    let e = h.join("e", 1, "ed", Role::Editor, Some(60));
    assert_eq!(h.take(&e)[0]["state"]["tracks"].as_array().map(Vec::len), Some(6));
}

#[test]
fn room_and_account_limits() {
    let mut cfg = config("r");
    cfg.max_room_connections = 3;
    cfg.max_account_connections = 2;
    let mut h = Harness::new(cfg);
    h.join("a1", 1, "ana", Role::Editor, None);
    h.join("a2", 1, "ana", Role::Editor, None);
    let a3 = h.join("a3", 1, "ana", Role::Editor, None);
    assert_eq!(h.replies.last(), Some(&(a3, Err(Close::Full))));
    h.join("b1", 1, "ben", Role::Editor, None);
    let c1 = h.join("c1", 1, "cy", Role::Editor, None);
    assert_eq!(h.replies.last(), Some(&(c1, Err(Close::Full))));
    assert_eq!(h.core.presences().len(), 3);
}

#[test]
fn the_same_pk_replaces_its_presence_and_another_account_cannot_take_it() {
    let mut h = Harness::new(config("r"));
    let a1 = h.join("p", 1, "ana", Role::Editor, None);
    let b = h.join("b", 1, "ben", Role::Editor, None);
    h.take(&b);
    let a2 = h.join("p", 2, "ana", Role::Editor, None);
    assert!(h.closed.contains(&(a1, Close::Replaced)));
    assert!(h.take_type(&b, "user_joined").is_empty() && h.take_type(&b, "user_left").is_empty(), "no flicker");
    assert!(h.members.contains(&a2));
    let eve = h.join("p", 3, "eve", Role::Editor, None);
    assert_eq!(h.replies.last(), Some(&(eve, Err(Close::BadRequest))));
    assert_eq!(h.core.presences().len(), 2);
}

#[test]
fn a_join_waiting_for_its_catch_up_is_checked_again_when_it_arrives() {
    // Ana is in; Eve joins with Ana's `_pk` and an old `since` (a store read), then Ana
    // reconnects... the old code took the `_pk` over when the read returned.
    let store = Arc::new(MemoryStore::new());
    let mut h = Harness::on(store, config("r"), 1);
    let x = h.join("x", 1, "xa", Role::Editor, None);
    for i in 0..4u64 {
        h.client(&x, submit(&x, "xa", track(&format!("t{i}"), 0), Some(i), &format!("x:{i}")));
    }
    h.auto = false;
    let eve = h.join("p", 9, "eve", Role::Editor, Some(0));
    assert_eq!(h.reads.len(), 1, "the catch-up is read from the store");
    let ana = h.join("p", 1, "ana", Role::Editor, None);
    assert!(h.members.contains(&ana));
    h.settle();
    assert_eq!(h.replies.last(), Some(&(eve, Err(Close::BadRequest))));
    assert!(h.members.contains(&ana), "Eve evicted Ana");
    assert!(!h.closed.iter().any(|(k, _)| *k == ana));
}

#[test]
fn an_empty_room_unloads_when_idle_and_a_room_nobody_joined_sooner() {
    let mut cfg = config("r");
    cfg.room_idle_ms = 60_000;
    let mut h = Harness::new(cfg.clone());
    h.advance(2_000);
    assert_eq!(h.unloads, 1, "loaded only for a read: unloads within 2 s");
    let mut h = Harness::new(cfg);
    let a = h.join("a", 1, "ana", Role::Editor, None);
    h.leave(&a);
    h.advance(30_000);
    assert_eq!(h.unloads, 0);
    h.advance(30_000);
    assert_eq!(h.unloads, 1);
}

#[test]
fn shutdown_waits_for_outstanding_writes_then_closes_everyone() {
    let mut h = Harness::new(config("r"));
    h.auto = false;
    let a = h.join("a", 1, "ana", Role::Editor, None);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    h.feed(Input::Shutdown);
    assert!(h.closed.is_empty(), "closed before the ack went out");
    h.store_one();
    assert_eq!(h.take_type(&a, "operation").len(), 1);
    assert!(h.closed.contains(&(a, Close::GoingAway)));
    assert_eq!(h.unloads, 1);
}

#[test]
fn a_failed_write_closes_everyone_with_1011() {
    let mut h = Harness::new(config("r"));
    h.auto = false;
    let a = h.join("a", 1, "ana", Role::Editor, None);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    let epoch = h.appends.pop_front().unwrap().0;
    let durable = sequencer::store::Durable { failed: Some("disk".into()), ..Default::default() };
    h.feed(Input::Durable { epoch, durable });
    assert!(h.closed.contains(&(a, Close::Internal)));
    assert!(h.failed.is_some());
}

fn shared(room: &str) -> sequencer::room::core::CoreConfig {
    let mut c = config(room);
    c.shared_store = true;
    c
}

#[test]
fn two_cores_on_one_store_a_lost_race_resubmits_and_both_converge() {
    let store = Arc::new(MemoryStore::new());
    let mut n1 = Harness::on(store.clone(), shared("r"), 100);
    let mut n2 = Harness::on(store.clone(), shared("r"), 100);
    n1.auto = false;
    n2.auto = false;
    let a = n1.join("a", 1, "ana", Role::Editor, None);
    let b = n2.join("b", 1, "ben", Role::Editor, None);
    n1.client(&a, submit(&a, "ana", track("ta", 0), Some(0), "a:1"));
    n2.client(&b, submit(&b, "ben", track("tb", 0), Some(0), "b:1"));
    // Node 2 stores version 1 first; node 1 loses the race, rebuilds and resubmits.
    n2.settle();
    n1.settle();
    assert_eq!(n1.core.durable_version(), 2);
    let acks = n1.take_type(&a, "operation");
    let versions: Vec<u64> = acks.iter().map(|m| m["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2], "Ana sees Ben's op, then her own, rebased");
    assert_eq!(acks[1]["opId"], "a:1");
    // Node 2 learns of version 2 from the bus.
    for m in n1.published.clone() {
        n2.feed(Input::Foreign(m));
    }
    assert_eq!(n2.core.durable_version(), 2);
    assert_eq!(n1.core.state_value(), n2.core.state_value());
    assert_eq!(n2.take_type(&b, "operation").len(), 2);
}

#[test]
fn a_gap_on_the_bus_is_filled_from_the_store_and_polling_finds_lost_messages() {
    let store = Arc::new(MemoryStore::new());
    let mut n1 = Harness::on(store.clone(), shared("r"), 100);
    let mut n2 = Harness::on(store.clone(), shared("r"), 100);
    let a = n1.join("a", 1, "ana", Role::Editor, None);
    let b = n2.join("b", 1, "ben", Role::Editor, None);
    for i in 0..3u64 {
        n1.client(&a, submit(&a, "ana", track(&format!("t{i}"), 0), Some(i), &format!("a:{i}")));
    }
    // Version 3 arrives alone: a gap, so node 2 reads 1..=3 from the store.
    let last = n1.published.last().cloned().unwrap();
    n2.feed(Input::Foreign(last));
    assert_eq!(n2.core.durable_version(), 3);
    assert_eq!(n2.take_type(&b, "operation").len(), 3);
    // A lost bus message: the poll finds it.
    n1.client(&a, submit(&a, "ana", track("t9", 0), Some(3), "a:9"));
    n2.advance(250);
    assert_eq!(n2.core.durable_version(), 4);
    assert_eq!(n1.core.state_value(), n2.core.state_value());
}

fn lock(target: &str, id: &str, ttl_ms: u64) -> ClientIn {
    ClientIn::Lock { target: target.into(), id: id.into(), ttl_ms }
}

#[test]
fn a_lock_expires_at_the_rooms_deadline_and_a_refresh_moves_it() {
    let mut h = Harness::new(config("r"));
    let t0 = h.now.epoch_ms;
    let a = h.join("a", 1, "ana", Role::Editor, None);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    h.take(&a);
    assert_eq!(h.core.next_deadline(), None);
    h.client(&a, lock("track", "t1", 300));
    let got = h.take_type(&a, "locks");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["locks"][0]["expiresAt"].as_u64(), Some(t0 + 300));
    assert_eq!(h.core.next_deadline(), Some(300), "the shell wakes for the expiry");
    h.advance(200);
    h.client(&a, lock("track", "t1", 300));
    assert_eq!(h.take_type(&a, "locks")[0]["locks"][0]["expiresAt"].as_u64(), Some(t0 + 500));
    assert_eq!(h.core.next_deadline(), Some(500));
    h.advance(299);
    assert!(h.take_type(&a, "locks").is_empty(), "refreshed: not expired at 499");
    assert_eq!(h.core.locks().len(), 1);
    h.advance(1);
    let got = h.take_type(&a, "locks");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["locks"], json!([]));
    assert_eq!(h.core.next_deadline(), None);
}

#[test]
fn a_takeover_keeps_the_locks_and_the_replaced_sockets_leave_releases_nothing() {
    let mut h = Harness::new(config("r"));
    let a1 = h.join("a", 1, "ana", Role::Editor, None);
    let b = h.join("b", 1, "ben", Role::Editor, None);
    h.client(&a1, submit(&a1, "ana", track("t1", 0), Some(0), "a:1"));
    h.client(&a1, lock("track", "t1", 10_000));
    h.take(&b);
    let a2 = h.join("a", 2, "ana", Role::Editor, None);
    assert!(h.closed.contains(&(a1.clone(), Close::Replaced)));
    assert_eq!(h.take(&a2)[0]["locks"][0]["userId"], "a", "init carries the kept lock");
    h.leave(&a1);
    assert!(h.take_type(&b, "locks").is_empty());
    assert_eq!(h.core.locks().len(), 1);
    h.leave(&a2);
    assert_eq!(h.take_type(&b, "locks")[0]["locks"], json!([]));
}

#[test]
fn a_lock_on_an_entity_whose_insert_is_not_yet_durable_is_taken_and_released_with_its_delete() {
    let mut h = Harness::new(config("r"));
    h.auto = false;
    let a = h.join("a", 1, "ana", Role::Editor, None);
    h.client(&a, submit(&a, "ana", track("t1", 0), Some(0), "a:1"));
    h.client(&a, lock("track", "t1", 10_000));
    assert_eq!(h.core.locks().len(), 1, "the live document has t1");
    h.client(&a, submit(&a, "ana", json!({"type":"delete","target":"track","id":"t1"}), Some(1), "a:2"));
    assert_eq!(h.core.locks().len(), 1, "released when the delete is applied, not before");
    h.settle();
    assert!(h.core.locks().is_empty());
    let msgs: Vec<String> = h.take(&a).iter().map(|m| m["type"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(msgs, ["init", "locks", "operation", "operation", "locks"]);
}

#[test]
fn a_resend_answered_by_the_broadcast_of_its_own_op_is_not_answered_twice() {
    let store = Arc::new(MemoryStore::new());
    let mut n1 = Harness::on(store.clone(), shared("r"), 100);
    let mut n2 = Harness::on(store.clone(), shared("r"), 100);
    let a = n1.join("a", 1, "ana", Role::Editor, None);
    n1.client(&a, submit(&a, "ana", track("ta", 0), Some(0), "a:1"));
    assert_eq!(n1.core.durable_version(), 1);
    // Ana's first socket died before her ack reached her. She is back on node 2, which has not
    // heard of version 1 yet, and resends without a base: node 2 finds the op in the store,
    // waits until it has caught up to it, and its broadcast of version 1 is her answer.
    let a2 = n2.join("a", 2, "ana", Role::Editor, None);
    n2.take(&a2);
    n2.client(&a2, submit(&a2, "ana", track("ta", 0), None, "a:1"));
    n2.settle();
    assert_eq!(n2.core.durable_version(), 1);
    let ops = n2.take_type(&a2, "operation");
    let got: Vec<(u64, &str)> =
        ops.iter().map(|m| (m["version"].as_u64().unwrap(), m["opId"].as_str().unwrap_or(""))).collect();
    assert_eq!(got, [(1, "a:1")], "version 1 exactly once, as the answer to the resend");
    assert_eq!(n2.core.state_value()["tracks"].as_array().unwrap().len(), 1);
}
