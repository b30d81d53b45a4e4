//! The Curator peer registers, queries and unregisters against a real ZooKeeper.

use leasehold_testkit::{CuratorInstance, CuratorPeer, ZkEnsemble};

#[tokio::test]
async fn curator_peer_registers_queries_and_unregisters() {
    let zk = ZkEnsemble::start_standalone().await.unwrap();
    let peer = CuratorPeer::get().await.unwrap();
    let connect = zk.connect_string();
    let registration = peer
        .register(
            &connect,
            "/services",
            "echo",
            &CuratorInstance {
                id: "id-1",
                address: "10.0.0.5",
                port: 8080,
                payload: &[("zone", "z1")],
            },
        )
        .await
        .unwrap();
    let listed = peer.query(&connect, "/services", "echo").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let json: serde_json::Value = serde_json::from_str(&listed[0]).unwrap();
    assert_eq!(json["name"], "echo");
    assert_eq!(json["id"], "id-1");
    assert_eq!(json["address"], "10.0.0.5");
    assert_eq!(json["port"], 8080);
    assert_eq!(json["serviceType"], "DYNAMIC");
    assert_eq!(json["payload"]["zone"], "z1");
    registration.unregister().await.unwrap();
    assert!(peer
        .query(&connect, "/services", "echo")
        .await
        .unwrap()
        .is_empty());
}
