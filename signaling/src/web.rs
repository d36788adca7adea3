//! The web demo: embedded in the binary (so an installed binary works from any directory), or served
//! from a folder with `--web-root` while developing it.

use rust_embed::RustEmbed;
use std::path::{Path, PathBuf};
use warp::http::{header, Response, StatusCode};
use warp::hyper::body::Bytes;

#[derive(RustEmbed)]
#[folder = "../web-demo/"]
struct Assets;

/// Where the demo's files come from.
#[derive(Debug, Clone)]
pub enum WebRoot {
    /// The copy built into the binary.
    Embedded,
    /// A folder on disk, read on every request.
    Dir(PathBuf),
}

impl WebRoot {
    /// The response for `path` (relative, no leading slash; empty means `index.html`).
    pub fn respond(&self, path: &str) -> Response<Bytes> {
        let path = if path.is_empty() { "index.html" } else { path };
        // `..` and absolute paths never reach a file: warp's tail is already normalised, this is belt and braces.
        if path.split('/').any(|seg| seg == ".." || seg.is_empty()) {
            return not_found();
        }
        let body = match self {
            WebRoot::Embedded => Assets::get(path).map(|f| Bytes::from(f.data.into_owned())),
            WebRoot::Dir(root) => std::fs::read(root.join(Path::new(path))).ok().map(Bytes::from),
        };
        match body {
            Some(body) => {
                let mime = mime_guess::from_path(path).first_or_octet_stream();
                let mut resp = Response::new(body);
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, header::HeaderValue::from_str(mime.as_ref()).unwrap_or(
                    header::HeaderValue::from_static("application/octet-stream"),
                ));
                // The demo is tiny and changes with the server version: never serve a stale client.
                h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
                h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
                resp
            }
            None => not_found(),
        }
    }
}

fn not_found() -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from_static(b"not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}
