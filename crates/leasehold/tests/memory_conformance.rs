//! The in-process registry through the backend conformance suite, one test per case.
//!
//! Built only with the `conformance` feature: `cargo test -p leasehold --all-features`.

use leasehold::conformance::{self, MemoryHarness};

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                conformance::$case(&MemoryHarness::new()).await;
            }
        )*
    };
}

cases!(
    register,
    list,
    list_services,
    watch_from_empty,
    watch_with_existing,
    update_in_place,
    pause_resume,
    deregister,
    drop_deregisters,
    lease_expiry,
    many_services,
    many_watchers,
    invalid_input,
    deleted_key_rewritten,
    corrupt_values_skipped,
    changes_exactly_once_in_order,
);

/// `run` itself, on one store shared by every case, as a backend's single test would.
#[tokio::test]
async fn run_all_cases_on_one_store() {
    conformance::run(&MemoryHarness::new()).await;
}
