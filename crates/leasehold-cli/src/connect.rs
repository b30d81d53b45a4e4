//! Picking the registry backend from a URL.

use std::sync::Arc;

use leasehold::memory::MemoryRegistry;
use leasehold::{Error, Registry, RegistryUrl, Result};
use leasehold_zookeeper::ZkRegistry;

/// The URL schemes this build can connect to.
pub const SCHEMES: &[&str] = &["memory", "zk"];

/// Connects to the registry `url` names, with the backend its scheme selects.
///
/// This is the one place a backend is chosen. `memory://[name]` is the in-process
/// registry: its store lives as long as this process, so it suits the demo and tests
/// rather than sharing registrations between processes. Any other scheme is an
/// [`Error::InvalidUrl`] that names it and lists the supported ones.
pub fn connect(url: &RegistryUrl) -> Result<Arc<dyn Registry>> {
    match url.scheme.as_str() {
        "memory" => Ok(Arc::new(MemoryRegistry::connect(url)?)),
        "zk" => Ok(Arc::new(ZkRegistry::connect(url)?)),
        other => Err(Error::invalid_url(
            url.to_string(),
            format!(
                "unknown scheme {other:?}; this build supports {}",
                SCHEMES
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_schemes_are_named() {
        let url: RegistryUrl = "consul://127.0.0.1:8500".parse().unwrap();
        let err = connect(&url).unwrap_err().to_string();
        assert!(err.contains("unknown scheme \"consul\""), "{err}");
        assert!(err.contains("memory://"), "{err}");
    }

    #[tokio::test]
    async fn memory_urls_connect() {
        let url: RegistryUrl = "memory://connect-test".parse().unwrap();
        let registry = connect(&url).unwrap();
        assert!(registry.list_services().await.unwrap().is_empty());
    }
}
