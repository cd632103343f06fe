//! The studio page is served from the same origin as the socket: `GET /` and its files, gzip
//! when built and accepted, nothing outside the page's directory, and a page that says how to
//! build it when there is none.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET with extra headers; returns the status line's code, the head and the body bytes.
async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_ascii_lowercase(), buf[split + 4..].to_vec())
}

#[tokio::test]
async fn the_page_and_its_files_are_served_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("dist");
    std::fs::create_dir(&pages).unwrap();
    std::fs::write(pages.join("index.html"), "<!doctype html><title>Studio</title>").unwrap();
    std::fs::write(pages.join("studio.js"), "console.log('studio')").unwrap();
    std::fs::write(pages.join("studio.js.gz"), b"\x1f\x8bgzipped").unwrap();
    std::fs::write(pages.join("ot_wasm_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    std::fs::write(pages.join(".hidden"), "hidden").unwrap();

    let mut config = memory();
    config.web_dir = Some(pages.clone());
    let server = sequencer::start(config).await.unwrap();
    let addr = server.addr;

    let (code, head, body) = get(addr, "/", "").await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert_eq!(body, b"<!doctype html><title>Studio</title>");

    let (code, head, body) = get(addr, "/ot_wasm_bg.wasm", "").await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert_eq!(body, b"\0asm\x01\0\0\0");

    let (_, head, body) = get(addr, "/studio.js", "").await;
    assert!(!head.contains("content-encoding"), "no gzip unless accepted: {head}");
    assert_eq!(body, b"console.log('studio')");
    let (_, head, body) = get(addr, "/studio.js", "Accept-Encoding: br, gzip;q=0.8\r\n").await;
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert_eq!(body, b"\x1f\x8bgzipped");

    for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/.hidden", "/missing.js", "/a/b.js", "/..%2fsecret.txt"] {
        let (code, _, body) = get(addr, path, "").await;
        assert_eq!(code, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
    // The API and the health check are untouched by the page.
    let (code, _, body) = get(addr, "/healthz", "").await;
    assert_eq!((code, body.as_slice()), (200, b"ok".as_slice()));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_built_page_the_root_says_how_to_build_it() {
    let server = sequencer::start(memory()).await.unwrap();
    let (code, head, body) = get(server.addr, "/", "").await;
    assert_eq!(code, 200);
    assert!(head.contains("text/html"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("scripts/studio.sh"));
    assert_eq!(get(server.addr, "/studio.js", "").await.0, 404);
    server.shutdown().await.unwrap();
}
