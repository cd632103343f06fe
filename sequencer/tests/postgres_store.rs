//! The PostgreSQL store against this machine's server (`SEQUENCER_TEST_PG`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in its own database, dropped at
//! the end; without a reachable server the tests fail in CI (`CI` set) and elsewhere print why
//! and return.

mod pg;
mod services;

use std::sync::Arc;

use ot_core::protocol::OperationMsg;
use ot_core::sync::Sequenced;
use ot_core::{apply, Document, Op};
use sequencer::store::{older_history, restore, Entry, RoomAppend, Store, StoreError};
use sequencer::store_pg::PgStore;
use serde_json::json;

fn msg(v: u64, op_id: &str) -> Sequenced {
    let op = Op::batch_from_value(
        json!({"type":"insert","target":"track","id":format!("t{v}-{op_id}"),"index":0,"value":{"name":op_id}}),
    )
    .unwrap();
    Arc::new(OperationMsg {
        operation: op,
        version: v,
        user_id: "c".into(),
        op_id: Some(op_id.into()),
        account: Some(Arc::from("acct")),
    })
}

fn group(room: &str, entries: Vec<Entry>) -> RoomAppend {
    RoomAppend { room: Arc::from(room), entries }
}

fn plain(m: Sequenced) -> Entry {
    Entry { msg: m, snapshot: None, by_id: true }
}

#[test]
fn schema_is_created_once_and_reopened() {
    let Some(db) = pg::TestDb::create("schema") else { return };
    let a = PgStore::open(&db.url).unwrap();
    assert!(a.shared(), "several nodes write one database: the cluster logic must run");
    a.append(&[group("r", vec![plain(msg(1, "o1"))])]).unwrap();
    drop(a);
    // A second open (a restart, or another node) keeps the data and does not migrate again.
    let b = PgStore::open(&db.url).unwrap();
    assert_eq!(b.load("r").unwrap().ops.len(), 1);
    let mut c = db.client();
    let v: i32 = c.query_one("SELECT version FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(v, 3, "every migration applied once");
    let n: i64 = c.query_one("SELECT count(*) FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(n, 1);
}

#[test]
fn the_transport_is_stored_and_the_latest_change_wins() {
    let Some(db) = pg::TestDb::create("transport") else { return };
    let store = PgStore::open(&db.url).unwrap();
    let t = |time: u64, user: &str| ot_core::protocol::TransportState {
        playing: true,
        position: 1.5,
        server_time: time,
        user_id: Some(user.into()),
    };
    assert_eq!(store.transport("r").unwrap(), None);
    store.save_transport("r", &t(2000, "ana")).unwrap();
    store.save_transport("r", &t(1000, "ben")).unwrap();
    assert_eq!(store.load("r").unwrap().transport, Some(t(2000, "ana")), "an older save never wins");
    // Another node (another store handle on the same database) sees it.
    let other = PgStore::open(&db.url).unwrap();
    assert_eq!(other.transport("r").unwrap(), Some(t(2000, "ana")));
}

#[test]
fn two_nodes_race_for_the_same_version_and_exactly_one_wins() {
    let Some(db) = pg::TestDb::create("race") else { return };
    let a = Arc::new(PgStore::open(&db.url).unwrap());
    let b = Arc::new(PgStore::open(&db.url).unwrap());
    a.append(&[group("r", vec![plain(msg(1, "base"))])]).unwrap();
    for v in 2..=40u64 {
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = [(a.clone(), "a"), (b.clone(), "b")]
            .into_iter()
            .map(|(s, node)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    s.append(&[group("r", vec![plain(msg(v, &format!("{node}{v}")))])])
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let wins = handles.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "version {v}: {handles:?}");
        let lost = handles.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(matches!(lost, StoreError::Conflict { version, .. } if *version == v), "{lost:?}");
    }
    let ops = b.ops("r", 0, 1000, usize::MAX).unwrap();
    assert_eq!(ops.iter().map(|m| m.version).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
}

#[test]
fn a_conflicting_group_stores_nothing_of_the_call() {
    let Some(db) = pg::TestDb::create("atomic") else { return };
    let s = PgStore::open(&db.url).unwrap();
    s.append(&[group("r", vec![plain(msg(1, "o1")), plain(msg(2, "o2"))])]).unwrap();
    // Room `other` is fine, but `r` v2 is taken: the whole call is refused.
    let err = s
        .append(&[group("other", vec![plain(msg(1, "x1"))]), group("r", vec![plain(msg(3, "o3")), plain(msg(2, "y"))])])
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { version: 2, .. }), "{err:?}");
    assert!(s.load("other").unwrap().ops.is_empty());
    assert_eq!(s.load("r").unwrap().ops.len(), 2);
    // The same opId twice in a room is refused too (a resend sequenced on two nodes).
    let err = s.append(&[group("r", vec![plain(msg(3, "o1"))])]).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
}

#[test]
fn load_replay_round_trip_find_op_and_older_history() {
    let Some(db) = pg::TestDb::create("roundtrip") else { return };
    let store = PgStore::open(&db.url).unwrap();
    let entries = (1..=5).map(|v| plain(msg(v, &format!("o{v}")))).collect();
    store.append(&[group("r", entries)]).unwrap();
    assert_eq!(store.ops("r", 1, 3, 10).unwrap().len(), 2);
    assert_eq!(store.ops("r", 0, 5, 2).unwrap().len(), 2);
    assert_eq!(store.find_op("r", Some("acct"), "o4").unwrap().unwrap().version, 4);
    assert_eq!(store.find_op("r", Some("acct"), "o4").unwrap().unwrap().account.as_deref(), Some("acct"));
    assert!(store.find_op("r", Some("other"), "o4").unwrap().is_none(), "op ids are scoped per account");
    assert!(store.find_op("r", Some("acct"), "nope").unwrap().is_none());
    assert!(store.find_op("elsewhere", Some("acct"), "o4").unwrap().is_none());

    let mut sd = restore("r", store.load("r").unwrap(), 2, 100, usize::MAX).unwrap();
    assert_eq!(sd.version(), 5);
    let mut doc = sd.doc().clone();
    let six = msg(6, "o6");
    sd.replay(six.clone()).unwrap();
    apply(&mut doc, &six.operation).unwrap();
    let snap = Entry { msg: six, snapshot: Some(doc.clone()), by_id: true };
    store.append(&[group("r", vec![snap])]).unwrap();

    let loaded = store.load("r").unwrap();
    assert_eq!(loaded.snapshot.as_ref().map(|s| s.0), Some(6));
    assert!(loaded.ops.is_empty());
    let back = restore("r", loaded, 10, 100, usize::MAX).unwrap();
    assert_eq!(back.version(), 6);
    assert_eq!(back.doc().to_state_value(6), sd.doc().to_state_value(6));
    let (from_snapshot, _) =
        Document::from_state_value(&store.snapshot_at_or_before("r", 100).unwrap().unwrap().1).unwrap();
    assert_eq!(from_snapshot.tracks().len(), 6);
    assert!(store.snapshot_at_or_before("r", 5).unwrap().is_none());

    let older = older_history(&store, "r", 2, 6, Some("acct"), Some("new"), usize::MAX).unwrap();
    assert_eq!(older.state.tracks().len(), 2);
    assert_eq!(older.ops.len(), 4);
    assert!(older.known.is_none());
    // A resend is answered with the op among those after its base.
    let resend = older_history(&store, "r", 2, 6, Some("acct"), Some("o5"), usize::MAX).unwrap();
    assert_eq!(resend.known.unwrap().version, 5);
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let err = PgStore::open("postgres://postgres@127.0.0.1:1/none?connect_timeout=2").unwrap_err();
    assert!(err.to_string().starts_with("postgres:"), "{err}");
}
