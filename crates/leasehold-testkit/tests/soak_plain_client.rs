//! The soak's plain clients against real servers: what they list is what the server
//! holds, and what they delete is gone. The soak trusts these listings over leasehold's
//! own, so they are checked here on their own.

use std::time::Duration;

use leasehold_testkit::soak::{EtcdSoak, ListedKey, SoakCluster, ZkSoak};
use leasehold_testkit::{EtcdCluster, ZkEnsemble, ZkSession};

fn services() -> Vec<String> {
    vec!["a".to_owned(), "b".to_owned()]
}

#[tokio::test]
async fn etcd_lists_exactly_the_service_prefixes_and_deletes() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    etcd.put("/soak/a/1", "one").await.unwrap();
    etcd.put("/soak/b/2", "two").await.unwrap();
    etcd.put("/soak/ab/3", "not a service of ours").await.unwrap();
    etcd.put("/soak/c/4", "another service").await.unwrap();
    let soak = EtcdSoak::new(etcd);

    let mut listed = soak.list("/soak", &services()).await.unwrap();
    listed.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        listed,
        [
            ListedKey {
                key: "/soak/a/1".to_owned(),
                value: b"one".to_vec()
            },
            ListedKey {
                key: "/soak/b/2".to_owned(),
                value: b"two".to_vec()
            },
        ]
    );

    assert!(soak.delete("/soak/a/1").await.unwrap());
    assert!(!soak.delete("/soak/a/1").await.unwrap(), "already gone");
    let listed = soak.list("/soak", &services()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(soak.cluster().get("/soak/a/1").await.unwrap(), None);
}

#[tokio::test]
async fn etcd_gives_no_listing_without_a_running_member() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    etcd.pause(0).unwrap();
    let soak = EtcdSoak::new(etcd);
    assert!(soak.list("/soak", &services()).await.is_err());
    soak.cluster().resume(0).unwrap();
    assert!(soak.list("/soak", &services()).await.unwrap().is_empty());
}

#[tokio::test]
async fn zookeeper_session_reads_children_and_data_and_deletes() {
    let zk = ZkEnsemble::start_standalone().await.unwrap();
    let mut session = ZkSession::open(&zk.endpoint(0), Duration::from_secs(30))
        .await
        .unwrap();
    session.sync("/").await.unwrap();
    let children = session.children("/").await.unwrap().unwrap();
    assert!(children.contains(&"zookeeper".to_owned()), "{children:?}");
    assert_eq!(session.children("/soak/a").await.unwrap(), None);
    assert_eq!(session.data("/soak/a/x").await.unwrap(), None);
    assert!(session.data("/zookeeper").await.unwrap().is_some());
    assert!(!session.delete("/soak/a/x").await.unwrap());
    drop(session);

    // A service node that does not exist yet lists nothing, and is no error.
    let soak = ZkSoak::new(zk);
    assert!(soak.list("/soak", &services()).await.unwrap().is_empty());
    assert!(!soak.delete("/soak/a/x").await.unwrap());
}
