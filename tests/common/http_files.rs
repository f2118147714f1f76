//! A minimal real HTTP file server for tests: `HEAD`/`GET /a/b` answers 200 when
//! `<root>/a/b` is a file and 404 otherwise. One thread per connection, `Connection: close`,
//! loopback only; it stops when dropped. It records every request line it served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FileServer {
    pub url: String,
    pub root: PathBuf,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FileServer {
    pub fn serve(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (r, s, dir) = (requests.clone(), stop.clone(), root.to_owned());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, dir) = (r.clone(), dir.clone());
                std::thread::spawn(move || handle(conn, &dir, &r));
            }
        });
        FileServer {
            url: format!("http://{addr}"),
            root: root.to_owned(),
            addr,
            stop,
            requests,
        }
    }

    /// `HEAD /path` lines, in the order they were answered.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Puts a file where `/rel` serves it.
    pub fn put(&self, rel: &str, body: &[u8]) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn handle(mut conn: TcpStream, root: &Path, log: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 << 10 {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    log.lock().unwrap().push(format!("{method} {target}"));
    let rel = Path::new(target.split('?').next().unwrap().trim_start_matches('/'));
    let safe = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let file = root.join(rel);
    let body = if safe && file.is_file() {
        std::fs::read(&file).ok()
    } else {
        None
    };
    let response = match (&body, method) {
        (Some(b), "HEAD" | "GET") => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b.len()
        ),
        (None, "HEAD" | "GET") => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
        }
        _ => "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .into(),
    };
    let _ = conn.write_all(response.as_bytes());
    if let (Some(b), "GET") = (body, method) {
        let _ = conn.write_all(&b);
    }
    let _ = conn.flush();
}
