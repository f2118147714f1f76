//! A small real HTTP server speaking KernelCI's storage API, for the storage tests.
//!
//! `POST /upload`: multipart, `Authorization` must equal the token (else 401), a `path` text
//! field first, then file parts each stored at `<root>/<path>/<field name>`. `GET`/`HEAD` of
//! any other path serves `<root>/<url path>` read-only, like the web server in front of
//! KernelCI's storage. Counters and fault switches let tests see and provoke what happened.
#![allow(dead_code)]

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::io::AsyncWriteExt as _;

struct Shared {
    root: PathBuf,
    token: String,
    /// Upload requests that reached the handler, whatever their outcome.
    upload_requests: AtomicUsize,
    /// Upload requests that were accepted and stored.
    uploads: AtomicUsize,
    files_written: AtomicUsize,
    gets: AtomicUsize,
    heads: AtomicUsize,
    corrupt_next: AtomicBool,
    fail_next: AtomicUsize,
}

pub struct StorageServer {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StorageServer {
    /// Serves `root` on a loopback port, on its own thread and runtime, until dropped.
    pub fn start(root: &Path, token: &str) -> StorageServer {
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            token: token.to_owned(),
            upload_requests: AtomicUsize::new(0),
            uploads: AtomicUsize::new(0),
            files_written: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            corrupt_next: AtomicBool::new(false),
            fail_next: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/upload", post(upload))
            .fallback(serve)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        StorageServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upload_requests(&self) -> usize {
        self.shared.upload_requests.load(Ordering::SeqCst)
    }

    pub fn uploads(&self) -> usize {
        self.shared.uploads.load(Ordering::SeqCst)
    }

    pub fn files_written(&self) -> usize {
        self.shared.files_written.load(Ordering::SeqCst)
    }

    pub fn gets(&self) -> usize {
        self.shared.gets.load(Ordering::SeqCst)
    }

    pub fn heads(&self) -> usize {
        self.shared.heads.load(Ordering::SeqCst)
    }

    /// The next accepted upload stores every file with its first byte flipped.
    pub fn corrupt_next_upload(&self) {
        self.shared.corrupt_next.store(true, Ordering::SeqCst);
    }

    /// The next `n` upload requests are answered 503 and store nothing.
    pub fn fail_next_uploads(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::SeqCst);
    }
}

impl Drop for StorageServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn reply(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// A relative path with only normal components, or `None`.
fn safe_relative(s: &str) -> Option<PathBuf> {
    let p = Path::new(s);
    if s.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(p.to_owned())
}

/// Reads and drops the rest of a request, so the client sees the answer, not a reset.
async fn drain(mut mp: Multipart) {
    while let Ok(Some(mut field)) = mp.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

async fn upload(State(s): State<Arc<Shared>>, headers: HeaderMap, mp: Multipart) -> Response {
    s.upload_requests.fetch_add(1, Ordering::SeqCst);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == s.token.as_bytes());
    if !authorized {
        drain(mp).await;
        return reply(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if s.fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        drain(mp).await;
        return reply(StatusCode::SERVICE_UNAVAILABLE, "injected failure");
    }
    let corrupt = s.corrupt_next.swap(false, Ordering::SeqCst);
    match store(&s, mp, corrupt).await {
        Ok(n) => {
            s.uploads.fetch_add(1, Ordering::SeqCst);
            reply(StatusCode::OK, &format!("stored {n} files"))
        }
        Err(r) => r,
    }
}

async fn store(s: &Shared, mut mp: Multipart, corrupt: bool) -> Result<usize, Response> {
    let bad = |m: String| reply(StatusCode::BAD_REQUEST, &m);
    let mut dir: Option<PathBuf> = None;
    let mut written = 0;
    while let Some(mut field) = mp.next_field().await.map_err(|e| bad(e.to_string()))? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "path" {
            let text = field.text().await.map_err(|e| bad(e.to_string()))?;
            let rel = safe_relative(&text).ok_or_else(|| bad(format!("bad path {text:?}")))?;
            dir = Some(s.root.join(rel));
            continue;
        }
        let Some(dir) = &dir else {
            return Err(bad("the path field must come before the files".into()));
        };
        if field.file_name().is_none() {
            return Err(bad(format!("field {name:?} is not a file")));
        }
        let rel = safe_relative(&name).ok_or_else(|| bad(format!("bad file name {name:?}")))?;
        let target = dir.join(rel);
        let internal = |e: std::io::Error| reply(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        tokio::fs::create_dir_all(target.parent().unwrap())
            .await
            .map_err(internal)?;
        let mut file = tokio::fs::File::create(&target).await.map_err(internal)?;
        let mut flip = corrupt;
        while let Some(chunk) = field.chunk().await.map_err(|e| bad(e.to_string()))? {
            if flip && !chunk.is_empty() {
                let mut bytes = chunk.to_vec();
                bytes[0] ^= 0xff;
                file.write_all(&bytes).await.map_err(internal)?;
                flip = false;
            } else {
                file.write_all(&chunk).await.map_err(internal)?;
            }
        }
        file.flush().await.map_err(internal)?;
        written += 1;
        s.files_written.fetch_add(1, Ordering::SeqCst);
    }
    if dir.is_none() {
        return Err(bad("missing path field".into()));
    }
    Ok(written)
}

async fn serve(State(s): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    let head = match method {
        Method::GET => false,
        Method::HEAD => true,
        _ => return reply(StatusCode::METHOD_NOT_ALLOWED, "read-only"),
    };
    if head {
        s.heads.fetch_add(1, Ordering::SeqCst);
    } else {
        s.gets.fetch_add(1, Ordering::SeqCst);
    }
    let Some(rel) = safe_relative(uri.path().trim_start_matches('/')) else {
        return reply(StatusCode::NOT_FOUND, "Not Found");
    };
    let path = s.root.join(rel);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return reply(StatusCode::NOT_FOUND, "Not Found"),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return reply(StatusCode::NOT_FOUND, "Not Found"),
    };
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::new(file))
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, meta.len())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap()
}
