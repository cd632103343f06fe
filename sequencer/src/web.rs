//! The studio page, served from the same origin as the socket and the HTTP API.
//!
//! The files are the build of `web/` (`scripts/build-web.sh` writes them to `web/dist`); the
//! server reads them from [`crate::Config::web_dir`] on each request (they are small, and a
//! rebuild shows without a restart). `GET /` is `index.html`; any other `GET` of one file name
//! (`/studio.js`, `/ot_wasm_bg.wasm`, …) is that file, gzip-compressed when the build left a
//! `.gz` beside it and the request accepts gzip. Names are plain (`[A-Za-z0-9._-]`, no leading
//! dot), so nothing outside the directory is reachable. Without a built page, `GET /` says how
//! to build it.

use std::path::Path;

use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use crate::http::Resp;

/// What `GET /` answers when no page is built.
const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Studio</title>\
<body style=\"font:16px system-ui;margin:3em\"><h1>The studio page is not built</h1>\
<p>Run <code>scripts/studio.sh</code> from the repository (it builds the page and starts this \
server with it), or <code>scripts/build-web.sh</code> and start the server with \
<code>--web-dir web/dist</code>.</p><p>The socket (<code>/parties/main/{room}</code>) and the \
HTTP API (<code>/api/projects/{id}/…</code>) work without it.</p>";

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// Whether `name` is a plain file name: no separator, no `..`, no hidden file.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Answers `GET /{name}` from `dir` (`name` empty for `/`), or `None` when there is no such
/// file (the caller answers 404).
pub async fn serve(dir: Option<&Path>, name: &str, accept_gzip: bool) -> Option<Resp> {
    let name = if name.is_empty() { "index.html" } else { name };
    let Some(dir) = dir else {
        return (name == "index.html")
            .then(|| crate::http::respond(StatusCode::OK, "text/html; charset=utf-8", NOT_BUILT));
    };
    if !plain_name(name) {
        return None;
    }
    let path = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let zipped = if accept_gzip { tokio::fs::read(&gz).await.ok() } else { None };
    let (body, gzipped) = match zipped {
        Some(b) => (b, true),
        None => match tokio::fs::read(&path).await {
            Ok(b) => (b, false),
            Err(_) if name == "index.html" => {
                return Some(crate::http::respond(StatusCode::OK, "text/html; charset=utf-8", NOT_BUILT))
            }
            Err(_) => return None,
        },
    };
    let mut r = crate::http::respond(StatusCode::OK, content_type(name), Bytes::from(body));
    let h = r.headers_mut();
    // The page and its assets change with every build: revalidate rather than cache stale code.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_served() {
        for ok in ["index.html", "studio.js", "ot_wasm_bg.wasm", "a-b_c.1.css"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["", "..", ".env", "../secret", "a/b", "a\\b", "%2e%2e", "x y"] {
            assert!(!plain_name(bad), "{bad}");
        }
        assert_eq!(content_type("ot_wasm_bg.wasm"), "application/wasm");
    }
}
