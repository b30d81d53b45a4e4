//! Errors when a server is not installed. A binary of its own, because it changes the
//! environment of its process.

use leasehold_testkit::{etcd::ETCD_BIN_VAR, Error, EtcdCluster};

#[tokio::test]
async fn missing_or_broken_etcd_is_a_clear_error() {
    std::env::set_var(ETCD_BIN_VAR, "/nonexistent/etcd");
    let error = EtcdCluster::start_single().await.unwrap_err();
    assert!(matches!(error, Error::NotInstalled { .. }), "{error:?}");
    assert!(
        error.to_string().contains("apt-get install -y etcd-server"),
        "{error}"
    );

    // A binary that exits at once: the error carries its exit status and log.
    std::env::set_var(ETCD_BIN_VAR, "/bin/false");
    let error = EtcdCluster::start_single().await.unwrap_err();
    assert!(matches!(error, Error::ExitedEarly { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("leasehold-testkit: starting etcd member 0"),
        "{error}"
    );
}

#[tokio::test]
async fn missing_java_or_zookeeper_jars_is_a_clear_error() {
    use leasehold_testkit::zookeeper::{JAR_DIR_VAR, JAVA_BIN_VAR};
    use leasehold_testkit::ZkEnsemble;

    std::env::set_var(JAR_DIR_VAR, "/nonexistent");
    let error = ZkEnsemble::start_standalone().await.unwrap_err();
    assert!(matches!(error, Error::NotInstalled { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("/nonexistent/zookeeper.jar"), "{message}");
    assert!(message.contains("apt-get install -y zookeeper"), "{message}");

    std::env::remove_var(JAR_DIR_VAR);
    std::env::set_var(JAVA_BIN_VAR, "/nonexistent/java");
    let error = ZkEnsemble::start_standalone().await.unwrap_err();
    assert!(
        error.to_string().contains("apt-get install -y zookeeper"),
        "{error}"
    );
}
