//! Real registries for the tests: Debian's docker-registry (Docker Distribution) on a
//! loopback port — plain, htpasswd, or token auth with a small token issuer — and a
//! fault-injecting HTTP proxy to put in front of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub enum Auth {
    None,
    Htpasswd {
        user: String,
        password: String,
    },
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert_pem: String,
    },
}

pub struct Registry {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_cfg = match &auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, password } => {
                let file = dir.path().join("htpasswd");
                // A low bcrypt cost keeps pushes fast (cost 12 adds seconds per request).
                let st = Command::new("htpasswd")
                    .args(["-B", "-C", "4", "-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .stderr(Stdio::null())
                    .status()
                    .expect("htpasswd (apache2-utils)");
                assert!(st.success());
                format!(
                    "auth:\n  htpasswd:\n    realm: kci-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token {
                realm,
                service,
                issuer,
                cert_pem,
            } => {
                let bundle = dir.path().join("token-ca.pem");
                std::fs::write(&bundle, cert_pem).unwrap();
                format!("auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n", bundle.display())
            }
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_cfg}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        // From here on, dropping the Registry kills and reaps the process.
        let registry = Registry { port, child, dir };
        for _ in 0..400 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start:\n{}", registry.log());
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token issuer speaking Docker's token protocol: `GET /token?service=…&scope=…` with
/// Basic credentials, answering `{"token": <ES256 JWT with an x5c chain>}`.
pub struct TokenServer {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert_pem: String,
    /// Scopes asked for, in order.
    pub scopes: Arc<Mutex<Vec<String>>>,
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> TokenServer {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["kci-token-issuer".into()]).unwrap();
        let cert_der = cert.der().to_vec();
        let pkcs8 = key_pair.serialize_der();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (service, issuer) = ("kci-test-registry".to_owned(), "kci-test-issuer".to_owned());
        let scopes: Arc<Mutex<Vec<String>>> = Arc::default();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let (svc, iss, seen) = (service.clone(), issuer.clone(), scopes.clone());
        std::thread::spawn(move || {
            let rng = ring::rand::SystemRandom::new();
            let key = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &pkcs8,
                &rng,
            )
            .unwrap();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some((head, _)) = read_head(&mut BufReader::new(conn.try_clone().unwrap()))
                else {
                    continue;
                };
                let target = head
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .split(' ')
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let authorized = head.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                    })
                });
                if !authorized {
                    let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
                let scope = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .unwrap_or_default();
                seen.lock().unwrap().push(scope.clone());
                let access: Vec<serde_json::Value> = scope
                    .split(' ')
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (typ, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": typ, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
                let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)]});
                let claims = serde_json::json!({"iss": iss, "sub": "kci", "aud": svc, "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", seen.lock().unwrap().len()), "access": access});
                let signing_input = format!(
                    "{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(claims.to_string().as_bytes())
                );
                let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
                let token = format!("{signing_input}.{}", b64(sig.as_ref()));
                let body =
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                        .to_string();
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        TokenServer {
            realm: format!("http://127.0.0.1:{port}/token"),
            service,
            issuer,
            cert_pem: cert.pem(),
            scopes,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
                );
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads an HTTP head (request or response); returns it and the Content-Length.
fn read_head(r: &mut impl BufRead) -> Option<(String, Option<u64>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
    });
    Some((head, len))
}

/// What the proxy does to the `nth` request (1-based) whose request line starts with
/// `method` and contains `path_part`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    pub path_part: &'static str,
    pub nth: usize,
    pub action: FaultAction,
}

#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Answer with this status (and `Retry-After` when given) without forwarding.
    Status(u16, Option<u64>),
    /// Forward the head and this many body bytes, then drop both connections.
    ResetAfter(usize),
}

/// An HTTP/1.1 proxy in front of `upstream` that injects [`Fault`]s.
pub struct FaultProxy {
    pub port: u16,
    /// Faults that fired, as `"<method> <path> -> <action>"`.
    pub fired: Arc<Mutex<Vec<String>>>,
    /// Request lines seen.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: u16, faults: Vec<Fault>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fired: Arc<Mutex<Vec<String>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let counts: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(vec![0; faults.len()]));
        let faults = Arc::new(faults);
        let (f2, r2) = (fired.clone(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (faults, counts, fired, requests) =
                    (faults.clone(), counts.clone(), f2.clone(), r2.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, &faults, &counts, &fired, &requests);
                });
            }
        });
        FaultProxy {
            port,
            fired,
            requests,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    faults: &[Fault],
    counts: &Mutex<Vec<usize>>,
    fired: &Mutex<Vec<String>>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut from_up = BufReader::new(up.try_clone()?);
    let mut to_up = up;
    while let Some((head, len)) = read_head(&mut from_client) {
        let line = head.lines().next().unwrap_or_default().to_owned();
        requests.lock().unwrap().push(line.clone());
        let action = {
            let mut c = counts.lock().unwrap();
            faults.iter().enumerate().find_map(|(i, f)| {
                if line.starts_with(f.method) && line.contains(f.path_part) {
                    c[i] += 1;
                    (c[i] == f.nth).then(|| f.action.clone())
                } else {
                    None
                }
            })
        };
        let mut body = vec![0; len.unwrap_or(0) as usize];
        match action {
            Some(FaultAction::Status(code, retry_after)) => {
                from_client.read_exact(&mut body)?;
                fired.lock().unwrap().push(format!("{line} -> {code}"));
                let extra = retry_after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                write!(to_client, "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n")?;
                return Ok(());
            }
            Some(FaultAction::ResetAfter(n)) => {
                to_up.write_all(head.as_bytes())?;
                let n = n.min(body.len());
                from_client.read_exact(&mut body[..n])?;
                to_up.write_all(&body[..n])?;
                to_up.flush()?;
                std::thread::sleep(Duration::from_millis(100));
                fired
                    .lock()
                    .unwrap()
                    .push(format!("{line} -> reset after {n} bytes"));
                let _ = to_up.shutdown(std::net::Shutdown::Both);
                let _ = to_client.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            None => {
                from_client.read_exact(&mut body)?;
                to_up.write_all(head.as_bytes())?;
                to_up.write_all(&body)?;
            }
        }
        // Relay the response.
        let Some((rhead, rlen)) = read_head(&mut from_up) else {
            return Ok(());
        };
        to_client.write_all(rhead.as_bytes())?;
        let status: u16 = rhead
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let no_body = line.starts_with("HEAD ") || status == 204 || status == 304;
        if !no_body {
            if rhead
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                loop {
                    let mut size_line = String::new();
                    from_up.read_line(&mut size_line)?;
                    to_client.write_all(size_line.as_bytes())?;
                    let size = usize::from_str_radix(
                        size_line.trim().split(';').next().unwrap_or("0"),
                        16,
                    )
                    .unwrap_or(0);
                    let mut chunk = vec![0; size + 2];
                    from_up.read_exact(&mut chunk)?;
                    to_client.write_all(&chunk)?;
                    if size == 0 {
                        break;
                    }
                }
            } else if let Some(n) = rlen {
                let mut buf = vec![0; n as usize];
                from_up.read_exact(&mut buf)?;
                to_client.write_all(&buf)?;
            }
        }
        to_client.flush()?;
    }
    Ok(())
}

/// A Docker `config.json` directory holding credentials for `host`.
pub fn docker_config_with(host: &str, user: &str, password: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let p = dir.path().to_owned();
    (dir, p)
}
