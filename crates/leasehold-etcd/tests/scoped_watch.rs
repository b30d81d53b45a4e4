//! A registering client watches only the prefixes of the services it registered, and
//! only deletes there: deletes elsewhere (another service under the same root, or outside
//! it) reach none of them, and puts reach none at all.

mod common;

use std::time::Duration;

use common::*;
use leasehold::{Instance, RegisterOptions, Registry};
use leasehold_testkit::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_elsewhere_cost_registering_clients_nothing() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let mut clients = Vec::new();
    let mut registrations = Vec::new();
    for n in 0..20 {
        let client = connect(&etcd).await;
        let instance = Instance::builder(format!("svc{n}"), "127.0.0.1:7001")
            .id("a")
            .build()
            .unwrap();
        registrations.push(
            client
                .register(instance, RegisterOptions::ttl(TTL))
                .await
                .unwrap(),
        );
        clients.push(client);
    }
    let mut other = raw(&etcd).await;
    for n in 0..100 {
        other.put(format!("{ROOT}/other/{n}"), "x", None).await.unwrap();
        other.put(format!("/elsewhere/{n}"), "x", None).await.unwrap();
    }
    // Let the own-key watches catch up with the registrations' own events.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = clients.iter().map(|c| c.own_key_events()).collect();
    for n in 0..100 {
        other.delete(format!("{ROOT}/other/{n}"), None).await.unwrap();
        other.delete(format!("/elsewhere/{n}"), None).await.unwrap();
    }
    // A delete in a registered service does reach its client (the watch works); a put
    // there does not: etcd leaves puts out, and own keys are read back instead.
    other.put(format!("{ROOT}/svc0/x"), "x", None).await.unwrap();
    other.delete(format!("{ROOT}/svc0/x"), None).await.unwrap();
    eventually("client 0 sees the delete in its own service", || {
        let (client, before) = (&clients[0], before[0]);
        async move { client.own_key_events() > before }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        clients[0].own_key_events() - before[0],
        1,
        "client 0 received the delete and not the put"
    );
    let received: u64 = clients
        .iter()
        .zip(&before)
        .skip(1)
        .map(|(c, b)| c.own_key_events() - b)
        .sum();
    eprintln!("200 unrelated deletes, 19 registering clients: {received} own-key events");
    assert_eq!(received, 0, "no client received an event for a delete elsewhere");
}
