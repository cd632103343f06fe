//! Tests of the real binary: the command line of PROTOCOL §6, crash safety under SIGKILL,
//! and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

struct Server {
    child: Child,
    addr: SocketAddr,
    lines: Vec<String>,
}

fn spawn(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sequencer"))
        .args(args)
        .env_remove("SEQUENCER_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "server exited early: {lines:?}");
        let done = line.contains("listening on ");
        lines.push(line.trim_end().to_string());
        if done {
            break;
        }
    }
    let last = lines.last().unwrap();
    let addr = last.rsplit("listening on ").next().unwrap().trim().parse().unwrap();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    Server { child, addr, lines }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("server did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_op() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--secret", SECRET, "--rate-limit", "0"];
    let mut server = spawn(&args);
    let (mut c, _) = Client::join(server.addr, "crash", "k").await;
    for i in 0..200 {
        c.op(track(&format!("t{i}"), 0), None, &format!("k:{i}")).await;
    }
    let mut acked = Vec::new();
    while acked.len() < 120 {
        let m = c.recv_type("operation").await;
        acked.push((m["opId"].as_str().unwrap().to_string(), m["version"].as_u64().unwrap()));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = spawn(&args);
    let ops = http_json(server.addr, "GET", "/api/projects/crash/ops?from=0", Some(&app("x"))).await;
    let stored: Vec<(String, u64)> = ops["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["opId"].as_str().unwrap().to_string(), o["version"].as_u64().unwrap()))
        .collect();
    assert!(stored.len() >= acked.len());
    for a in &acked {
        assert!(stored.contains(a), "acked op {a:?} lost after SIGKILL");
    }
    // Resending everything after the crash applies nothing twice.
    let (mut c, init) = Client::join(server.addr, "crash", "k").await;
    let version = init["version"].as_u64().unwrap();
    c.op(track("t0", 0), Some(0), "k:0").await;
    assert_eq!(c.recv_type("operation").await["version"], 1);
    let ack = c.op_acked(track("after", 0), None, "k:after").await;
    assert_eq!(ack["version"], version + 1);
    sigterm(&server.child);
    assert!(wait_exit(&mut server.child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_prints_a_demo_token_and_url_and_sigterm_exits_cleanly() {
    let mut server = spawn(&["--listen", "127.0.0.1:0", "--memory"]);
    let url_line = server.lines.iter().find(|l| l.starts_with("socket URL: ")).expect("no socket URL printed");
    let url = url_line.trim_start_matches("socket URL: ");
    assert!(url.starts_with(&format!("ws://{}/parties/main/demo?token=", server.addr)));
    assert!(server.lines.iter().any(|l| l.contains("generated secret")));
    let mut c = Client::raw(url).await;
    let init = c.recv().await;
    assert_eq!(init["type"], "init");
    c.send(json!({"type":"ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    sigterm(&server.child);
    assert_eq!(c.closed().await.0, 1001);
    assert!(wait_exit(&mut server.child).success());
}

#[test]
fn token_subcommand_prints_a_room_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_sequencer"))
        .args(["token", "--secret", "s3", "--room", "r", "--sub", "u1", "--name", "Ann", "--role", "viewer"])
        .args(["--avatar", "https://x/a.png", "--ttl", "60"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = sequencer::auth::verify_room("s3", Some(token.trim()), "r").unwrap();
    assert_eq!((claims.sub.as_str(), claims.name.as_str()), ("u1", "Ann"));
    assert_eq!(claims.role, sequencer::auth::Role::Viewer);
    assert_eq!(claims.avatar.as_deref(), Some("https://x/a.png"));
    let help = Command::new(env!("CARGO_BIN_EXE_sequencer")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in
        ["--threads", "--rate-limit", "--max-frame", "--heartbeat-timeout", "--cursor-tick", "--data-dir", "--memory"]
    {
        assert!(help.contains(flag), "{flag} missing from serve --help");
    }
}
