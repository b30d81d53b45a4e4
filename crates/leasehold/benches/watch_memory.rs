//! The memory a watcher (discovery cache) holds for 100,000 instances, beside a plain
//! `HashMap` of the same keys and decoded values, measured with a counting allocator in
//! the same run.
//!
//! ```text
//! cargo bench -p leasehold --bench watch_memory
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use leasehold::{Codec, DiscoveryFeed, Instance, NativeCodec, ServiceName, WatchOptions};

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

const INSTANCES: usize = 100_000;

fn listing(service: &ServiceName) -> Vec<(String, Vec<u8>)> {
    (0..INSTANCES)
        .map(|n| {
            let instance = Instance::builder(
                service.as_str(),
                format!("10.{}.{}.{}:8080", n / 65_536, (n / 256) % 256, n % 256),
            )
            .id(format!("bench-{n:06}"))
            .build()
            .unwrap();
            let value = NativeCodec.encode(&instance).unwrap();
            (instance.id().to_string(), value)
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let service = ServiceName::new("bench").unwrap();
    let listing = listing(&service);

    let before = held();
    let plain: HashMap<String, Instance> = listing
        .iter()
        .map(|(key, value)| {
            let instance = NativeCodec.decode(&service, key, value).unwrap();
            (key.clone(), instance)
        })
        .collect();
    let plain_bytes = held() - before;

    let before = held();
    let (mut feed, discovery) =
        DiscoveryFeed::new(service.clone(), Arc::new(NativeCodec), WatchOptions::default());
    feed.reset(listing.iter().map(|(k, v)| (k.as_str(), v.as_slice())), 1);
    let snapshot = discovery.snapshot();
    let cache_bytes = held() - before;

    assert_eq!(plain.len(), INSTANCES);
    assert_eq!(snapshot.len(), INSTANCES);
    let per = |bytes: isize| bytes as f64 / INSTANCES as f64;
    println!("watcher memory at {INSTANCES} instances (native format)");
    println!(
        "  plain HashMap<String, Instance>: {:>11} B  {:>6.1} B/instance",
        plain_bytes,
        per(plain_bytes)
    );
    println!(
        "  discovery cache (feed + snapshot): {:>9} B  {:>6.1} B/instance",
        cache_bytes,
        per(cache_bytes)
    );
    println!("  ratio: {:.2}x", cache_bytes as f64 / plain_bytes as f64);
    drop((snapshot, feed, discovery, plain));
}
