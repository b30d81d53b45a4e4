//! Two clients registering one id at the same instant both find no other node and both
//! create one; the older node keeps the id and the other client gives way: exactly one
//! node stays, one handle shows `Registered` and the other `Conflict` (or its register
//! was refused), and the one that gave way writes itself back once the other goes.

mod common;

use common::{instance, service, until_nodes, WAIT};
use leasehold::{RegisterOptions, Registration, RegistrationState, Registry};
use leasehold_testkit::zookeeper::ZkEnsemble;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_of_two_simultaneous_registrations_keeps_the_id() {
    let zk = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    let first = common::client(&zk);
    let second = common::client(&zk);
    for round in 0..8 {
        let svc = service(&format!("dup-{round}"));
        // Both sessions follow the service first, as long-running clients would.
        let warm = (
            first
                .register(instance(&svc, "warm-a"), RegisterOptions::default())
                .await
                .unwrap(),
            second
                .register(instance(&svc, "warm-b"), RegisterOptions::default())
                .await
                .unwrap(),
        );
        let (a, b) = tokio::join!(
            first.register(instance(&svc, "x"), RegisterOptions::default()),
            second.register(instance(&svc, "x"), RegisterOptions::default()),
        );
        let held: Vec<Registration> = [a, b]
            .into_iter()
            .filter_map(|r| match r {
                Ok(registration) => Some(registration),
                Err(e) if e.is_conflict() => None,
                Err(e) => panic!("round {round}: unexpected error {e}"),
            })
            .collect();
        assert!(!held.is_empty(), "round {round}: one of them must hold x");
        until_nodes(
            &zk,
            &svc,
            &format!("round {round}: exactly one node of x"),
            |names| {
                names
                    .iter()
                    .filter(|n| n.starts_with("_c_") && n.get(36..37) == Some("x"))
                    .count()
                    == 1
            },
        )
        .await;
        let winner = held
            .iter()
            .position(|r| r.state() == RegistrationState::Registered)
            .expect("one handle is Registered");
        for (at, registration) in held.iter().enumerate().filter(|(at, _)| *at != winner) {
            assert!(
                registration.wait_for(RegistrationState::Conflict, WAIT).await,
                "round {round}: the handle that gave way ({at}) shows Conflict, not {:?}",
                registration.state()
            );
        }
        if held.len() == 2 {
            let loser = &held[1 - winner];
            held[winner].deregister().await.unwrap();
            assert!(
                loser.wait_for(RegistrationState::Registered, WAIT).await,
                "round {round}: once the other is gone the one that gave way writes itself back"
            );
        }
        drop(held);
        drop(warm);
    }
}
