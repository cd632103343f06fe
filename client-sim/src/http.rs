//! A minimal HTTP/1.1 GET for the server's JSON API (`/api/projects/{id}/state`, `/ops`,
//! `/healthz`): one request per connection, `Content-Length` or chunked bodies. Enough for
//! the simulator's verdict without pulling in an HTTP client stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::endpoint::BaseUrl;

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("HTTP {path}: {source}")]
    Io {
        /// The request path.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("HTTP {path}: no answer within {timeout:?}")]
    Timeout {
        /// The request path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// The answer is not HTTP/1.x as expected.
    #[error("HTTP {path}: malformed response: {reason}")]
    Malformed {
        /// The request path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A status other than 200.
    #[error("HTTP {path}: status {status}: {body}")]
    Status {
        /// The request path.
        path: String,
        /// The status code.
        status: u16,
        /// The body, cut to 200 bytes.
        body: String,
    },
    /// No server was given to ask.
    #[error("HTTP: no server to ask")]
    NoServer,
    /// TLS is not supported by this minimal client.
    #[error("https is not supported by the verdict client")]
    Tls,
    /// The body is not the JSON expected.
    #[error("HTTP {path}: body is not JSON: {source}")]
    Json {
        /// The request path.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// `GET path` with an optional bearer token; returns the body of a 200 answer.
pub async fn get(base: &BaseUrl, path: &str, bearer: Option<&str>, timeout: Duration) -> Result<Vec<u8>, HttpError> {
    if base.secure() {
        return Err(HttpError::Tls);
    }
    let full = base.http_path(path);
    let fut = async {
        let io = |source| HttpError::Io { path: full.clone(), source };
        let mut s = TcpStream::connect(base.host()).await.map_err(io)?;
        let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "GET {full} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\nAccept: application/json\r\n\r\n",
            base.host()
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(io)?;
        Ok::<_, HttpError>(buf)
    };
    let raw =
        tokio::time::timeout(timeout, fut).await.map_err(|_| HttpError::Timeout { path: full.clone(), timeout })??;
    parse_response(&full, &raw)
}

/// `GET path` and parse the body as JSON.
pub async fn get_json(
    base: &BaseUrl,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<serde_json::Value, HttpError> {
    let body = get(base, path, bearer, timeout).await?;
    serde_json::from_slice(&body).map_err(|source| HttpError::Json { path: base.http_path(path), source })
}

fn parse_response(path: &str, raw: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = |reason| HttpError::Malformed { path: path.to_string(), reason };
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status code"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        match length {
            Some(n) if n <= body.len() => body[..n].to_vec(),
            Some(_) => return Err(bad("body shorter than Content-Length")),
            None => body.to_vec(),
        }
    };
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(HttpError::Status { path: path.to_string(), status, body: text });
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_txt = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_status() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_response("/x", r).unwrap(), b"{}");
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response("/x", r).unwrap(), b"{\"a\":1}");
        let r = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\n\r\nnope";
        assert!(matches!(parse_response("/x", r), Err(HttpError::Status { status: 401, .. })));
        assert!(matches!(parse_response("/x", b"garbage"), Err(HttpError::Malformed { .. })));
    }
}
