//! Picking the registry backend from a URL.

use std::sync::Arc;

use leasehold::memory::MemoryRegistry;
use leasehold::{Error, Registry, RegistryUrl, Result};
use leasehold_etcd::EtcdRegistry;
use leasehold_zookeeper::ZkRegistry;

/// The URL schemes this build can connect to.
pub const SCHEMES: &[&str] = &["memory", "etcd", "zk"];

/// The usage error when no registry is given.
pub const MISSING_REGISTRY: &str = "no registry given: pass --registry URL or set LEASEHOLD_REGISTRY, \
for example etcd://127.0.0.1:2379, zk://127.0.0.1:2181, or memory:// for one that lives only in this command";

/// Connects to the registry `url` names, with the backend its scheme selects.
///
/// This is the one place a backend is chosen: `etcd://h1:p1,h2:p2/root` for etcd v3,
/// `zk://h1:p1,h2:p2/root` for ZooKeeper, and `memory://[name]` for the in-process
/// registry, whose store lives as long as this process, so it suits the demo and tests
/// rather than sharing registrations between processes. Any other scheme is an
/// [`Error::InvalidUrl`] that names it and lists the supported ones.
pub async fn connect(url: &RegistryUrl) -> Result<Arc<dyn Registry>> {
    match url.scheme.as_str() {
        "memory" => Ok(Arc::new(MemoryRegistry::connect(url)?)),
        "etcd" => Ok(Arc::new(EtcdRegistry::connect(url).await?)),
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

    #[tokio::test]
    async fn unknown_schemes_are_named() {
        let url: RegistryUrl = "consul://127.0.0.1:8500".parse().unwrap();
        let err = connect(&url).await.unwrap_err().to_string();
        assert!(err.contains("unknown scheme \"consul\""), "{err}");
        assert!(err.contains("memory://"), "{err}");
    }

    #[tokio::test]
    async fn memory_urls_connect() {
        let url: RegistryUrl = "memory://connect-test".parse().unwrap();
        let registry = connect(&url).await.unwrap();
        assert!(registry.list_services().await.unwrap().is_empty());
    }
}
