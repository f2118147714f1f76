//! kci-build's own certificate authority, for pinned `https://` downloads.
//!
//! A script downloads `https://github.com/…/main.tar.gz` through the build's proxy with a
//! `CONNECT`. To serve it the pinned bytes, the proxy answers the TLS handshake itself with a
//! certificate for that host signed by this authority; the script's tools trust it because
//! the build points them at its certificate (`SSL_CERT_FILE`, `CURL_CA_BUNDLE`, wget's
//! `ca_certificate`) for the script's run only — it never enters the image. Nothing else
//! trusts it, and the proxy only ever answers with store bytes whose sha256 a lockfile pins,
//! so the authority can vouch for nothing else.
//!
//! One authority per store: `<store>/download-ca.pem` holds its private key (mode 0600,
//! never logged); the certificate is made again from it on every load (same subject, same
//! key: a client that trusts one copy trusts every copy).

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const KEY_FILE: &str = "download-ca.pem";
const SUBJECT: &str = "kci-build pinned downloads (trusted by build scripts only)";

/// The store's authority, and the server configurations it made, one per host.
pub struct Authority {
    key: KeyPair,
    cert: rcgen::Certificate,
    configs: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl Authority {
    /// The authority of the store at `root`: made on first use.
    pub fn of_store(root: &Path) -> anyhow::Result<Authority> {
        let path = root.join(KEY_FILE);
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(root, &path)?,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("{}: not a private key in PEM", path.display()))?;
        let cert = ca_params()
            .self_signed(&key)
            .context("making the download authority's certificate")?;
        Ok(Authority {
            key,
            cert,
            configs: Mutex::default(),
        })
    }

    /// The certificate a build's tools trust, in PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS server configuration presenting a certificate for `host` (a name or an IP
    /// address), made once per host.
    pub fn server_config(&self, host: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        if let Some(c) = self.configs.lock().unwrap().get(host) {
            return Ok(c.clone());
        }
        let host_name = host.trim_start_matches('[').trim_end_matches(']');
        let mut params = CertificateParams::new(vec![host_name.to_owned()])
            .with_context(|| format!("`{host}` is not a host name for a certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, host_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let leaf_key = KeyPair::generate().context("making a TLS key")?;
        let leaf = params
            .signed_by(&leaf_key, &self.cert, &self.key)
            .context("signing a TLS certificate")?;
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key_der)
            .context("a TLS server configuration")?;
        // The proxy speaks HTTP/1.1 inside the tunnel.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.configs
            .lock()
            .unwrap()
            .insert(host.to_owned(), config.clone());
        Ok(config)
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SUBJECT);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A new key at `path`, unless another process made one first (then that one).
fn create_key(root: &Path, path: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let pem = KeyPair::generate()
        .context("making the download authority's key")?
        .serialize_pem();
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-ca-")
        .tempfile_in(root)
        .with_context(|| format!("creating a file in {}", root.display()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .context("making the key file private")?;
    tmp.write_all(pem.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .context("writing the download authority's key")?;
    // A hard link never replaces: the first process to link wins, the others read its key.
    match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => Ok(pem),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_private_key_per_store_and_every_load_vouches_for_the_same_subject() {
        let d = tempfile::tempdir().unwrap();
        let a = Authority::of_store(d.path()).unwrap();
        let b = Authority::of_store(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        assert_eq!(
            a.key.public_key_der(),
            b.key.public_key_der(),
            "a second load reads the first key"
        );
        assert!(a.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let other = Authority::of_store(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(a.key.public_key_der(), other.key.public_key_der());
        // A configuration per host, made once.
        let c1 = a.server_config("github.com").unwrap();
        let c2 = a.server_config("github.com").unwrap();
        assert!(Arc::ptr_eq(&c1, &c2));
        a.server_config("127.0.0.1").unwrap();
    }
}
