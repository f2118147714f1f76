//! Answers of kci-build's loopback HTTP services (the build proxy's apt cache and its pinned
//! downloads): a blob of the store as a response, a short text — one shape for both.

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::StatusCode;

use crate::core::names::Digest;
use crate::store::Store;

pub type Response = hyper::Response<BoxBody<Bytes, std::io::Error>>;

/// A blob of the store as a response (`HEAD`: its length only).
pub async fn blob_response(store: &Store, digest: &Digest, head: bool) -> Response {
    let path = store.blob_path(digest);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = if head {
        Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
    } else if len <= 16 << 20 {
        // Most packages: one read on the blocking pool, one frame.
        match tokio::fs::read(&path).await {
            Ok(bytes) => Full::new(Bytes::from(bytes))
                .map_err(|n| match n {})
                .boxed(),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    } else {
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        BodyExt::boxed(StreamBody::new(stream.map_ok(Frame::data)))
    };
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_LENGTH, len)
        .body(body)
        .expect("a valid response")
}

pub fn text(status: StatusCode, message: &str) -> Response {
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain")
        .body(
            Full::new(Bytes::from(format!("{message}\n")))
                .map_err(|n| match n {})
                .boxed(),
        )
        .expect("a valid response")
}
