//! An etcd user whose role covers only its own service's prefix can do everything a
//! registering and watching client needs; a registration outside its prefix fails alone.

mod common;

use common::*;
use leasehold::{Instance, RegisterOptions, Registry};
use leasehold_testkit::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_limited_to_its_service_prefix() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    etcd.add_user_with_prefix("echo-svc", "pw", &format!("{ROOT}/echo/"))
        .await
        .unwrap();
    etcd.enable_auth("rootpw").await.unwrap();
    let endpoints = etcd.endpoints().join(",");
    let registry = connect_url(&format!("etcd://echo-svc:pw@{endpoints}{ROOT}")).await;

    let registration = register(&registry, "a").await;
    let listed = registry.list(&echo()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let discovery = watch_echo(&registry).await;
    assert_eq!(discovery.snapshot().len(), 1);
    let b = register(&registry, "b").await;
    discovery.wait_for(WAIT, |s| s.len() == 2).await.expect("b seen");

    // Outside its prefix: refused alone, naming the registration.
    let (elsewhere, c) = tokio::join!(
        registry.register(
            Instance::builder("other", "127.0.0.1:7002")
                .id("x")
                .build()
                .unwrap(),
            RegisterOptions::ttl(TTL),
        ),
        registry.register(instance("c"), RegisterOptions::ttl(TTL)),
    );
    let refused = elsewhere.unwrap_err();
    assert!(refused.is_permission_denied(), "{refused}");
    assert!(
        refused.to_string().contains("other/x"),
        "names the registration: {refused}"
    );
    let c = c.unwrap();
    discovery.wait_for(WAIT, |s| s.len() == 3).await.expect("c seen");

    assert!(registry
        .deregister(&echo(), &leasehold::InstanceId::new("b").unwrap())
        .await
        .unwrap());
    drop(b);
    registration.deregister().await.unwrap();
    c.deregister().await.unwrap();
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("all gone");
}
