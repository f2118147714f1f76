//! The base URL of an HTTP service kci-build talks to (Jenkins, kernelci-backend): parsed
//! once, refused when it carries credentials (they would end up in messages; secrets are
//! given separately), and redacted whenever a URL is shown.

use reqwest::Url;

/// `url` as a base: http(s), no user info, no query or fragment, ending in `/` so joined
/// paths stay below it. The error says why not, for the caller's typed error; `what`
/// names the service ("Jenkins").
pub fn base(url: &str, what: &str) -> Result<Url, String> {
    let mut base = Url::parse(url).map_err(|_| "not a URL".to_owned())?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err("not an http(s) URL".into());
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err("credentials do not belong in the URL: give them separately".into());
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(format!("a {what} base URL has no query or fragment"));
    }
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    Ok(base)
}

/// `url` with any user info replaced, for a message.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) if url.contains('@') => "<a URL with credentials>".into(),
        Err(_) => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_plain_and_credentials_never_echoed() {
        assert_eq!(
            base("https://j.example/ci", "Jenkins").unwrap().as_str(),
            "https://j.example/ci/"
        );
        let e = base("https://bot:hunter2@j.example/", "Jenkins").unwrap_err();
        assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
        assert!(base("ftp://j.example/", "Jenkins").is_err());
        assert!(base("https://j.example/?x=1", "Jenkins")
            .unwrap_err()
            .contains("Jenkins"));
        assert_eq!(
            redact("https://bot:hunter2@j.example/"),
            "https://***@j.example/"
        );
        assert_eq!(redact("not a url @ all"), "<a URL with credentials>");
    }
}
