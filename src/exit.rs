//! The exit code of an error: the list of the services' typed errors (store, engine,
//! bootstrap, registry, storage, the apt cache, pinned downloads, Jenkins, kernelci-backend), each asked whose fault it is
//! ([`Fault`], decided where the error is defined). Above every module that defines one,
//! below what needs an exit decision (the build scheduler stopping on an environment fault);
//! `ops::exit_code` adds the procedure's errors (`prod`, on this floor) for the runner.

use crate::error::{ExitCode, Fault};

/// The exit code of a command's error: each typed error in the chain says whose fault it is
/// ([`crate::error::Fault`]); an environment fault anywhere wins.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    crate::error::classify(err, fault_of)
}

/// The fault of one error of the chain, when its type is one of the services' (floors 1–2;
/// `ops::exit_code` adds the procedure's, which live beside this module on floor 3).
pub fn fault_of(cause: &(dyn std::error::Error + 'static)) -> Option<Fault> {
    if let Some(e) = cause.downcast_ref::<crate::store::StoreError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::engine::DaemonError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::bootstrap::BootstrapError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::registry::RegistryError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::storage::StorageError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::backend::BackendError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::jenkins::JenkinsError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::aptcache::AptError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::urlpins::DownloadError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::gitstore::GitSourceError>() {
        return Some(e.fault());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    /// A port nothing listens on: connecting is refused at once.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr.to_string()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn an_unreachable_registry_exits_2() {
        let mut registry =
            crate::registry::Registry::new(&closed_port(), &Default::default()).unwrap();
        registry.max_attempts = 1;
        let digest = crate::core::names::Digest::of(b"x");
        let err = runtime()
            .block_on(registry.blob_exists("kernelci/gcc-12", &digest))
            .unwrap_err();
        assert!(
            matches!(err, crate::registry::RegistryError::Transport { .. }),
            "{err:?}"
        );
        let err = Err::<(), _>(err).context("pushing gcc-12").unwrap_err();
        assert_eq!(exit_code(&err), ExitCode::Environment, "{err:?}");
    }

    #[test]
    fn an_unreachable_storage_api_exits_2() {
        let url = format!("http://{}/", closed_port());
        let storage = crate::storage::Storage::open_with_token(
            &url,
            Some("http://files.invalid/"),
            None,
            Some("secret".into()),
        )
        .unwrap();
        let err = runtime()
            .block_on(storage.fetch("bookworm/20260101.0", "amd64/manifest.json"))
            .unwrap_err();
        let err = anyhow::Error::new(err).context("uploading bookworm/20260101.0");
        assert_eq!(exit_code(&err), ExitCode::Environment, "{err:?}");
    }

    #[test]
    fn refusals_and_bad_recipes_are_bad_input_and_the_environment_wins() {
        let refused = crate::storage::StorageError::Refused {
            url: "http://storage.invalid/".into(),
            status: 403,
        };
        let err = anyhow::Error::new(refused).context("uploading");
        assert_eq!(exit_code(&err), ExitCode::BadInput);
        let failed = crate::engine::DaemonError::BuildFailed("step 3 exited 1".into());
        assert_eq!(exit_code(&anyhow::Error::new(failed)), ExitCode::BadInput);
        let plain = anyhow::anyhow!("recipe images/x/image.toml: unknown field");
        assert_eq!(exit_code(&plain), ExitCode::BadInput);
        // mmdebstrap missing is reported through a transparent variant: still the machine's.
        let missing =
            crate::bootstrap::BootstrapError::Environment(crate::error::EnvironmentError {
                message: "mmdebstrap not found".into(),
                hint: "apt install mmdebstrap".into(),
            });
        assert_eq!(
            exit_code(&anyhow::Error::new(missing).context("bootstrapping")),
            ExitCode::Environment
        );
        let store = crate::store::StoreError {
            root: "/store".into(),
            context: "writing a blob".into(),
            source: std::io::Error::other("No space left on device"),
        };
        let err = anyhow::Error::new(store).context("building gcc-12: the build failed");
        assert_eq!(exit_code(&err), ExitCode::Environment);
    }
}
