//! With nothing scraping `/metrics`, histogram samples must not pile up: the relay's upkeep
//! thread folds them into their buckets. Measured on the heap of this test process (its own
//! binary, so the counting allocator and the global recorder see only this test).
//!
//! No timing is asserted: the test waits for the upkeep thread's pass counter to show a
//! whole pass after the samples were recorded, then checks how much heap they still hold.
//! Without the upkeep every sample stays on the heap until a render, which nothing does.
#![allow(unsafe_code)] // A global allocator is an unsafe impl; this one only forwards to System.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use outbox_relay::metrics::{upkeep_passes, DELIVERY_LATENCY, UPKEEP_INTERVAL};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A million deliveries' worth of latency samples: 8 bytes each, raw.
const SAMPLES: usize = 1_000_000;
const MIB: isize = 1024 * 1024;

/// Heap bytes in use, after crossbeam-epoch has run the frees the recorder deferred to it
/// (drained sample blocks are freed once no thread can still be reading them).
fn live_bytes() -> isize {
    for _ in 0..100 {
        crossbeam_epoch::pin().flush();
    }
    LIVE_BYTES.load(Ordering::Relaxed)
}

#[test]
fn histogram_samples_do_not_pile_up_without_a_scrape() {
    let _handle = outbox_relay::metrics::install().expect("install the recorder");
    let latency = metrics::histogram!(DELIVERY_LATENCY, "table" => "public.outbox", "topic" => "t");
    latency.record(0.001);
    let before = live_bytes();
    for n in 0..SAMPLES {
        latency.record((n % 1_000) as f64 / 1_000.0);
    }
    let held = live_bytes() - before;
    assert!(
        held >= (SAMPLES * 8) as isize,
        "recording {SAMPLES} samples took only {held} bytes: the measure sees nothing"
    );

    // Pass `recorded + 1` may have begun before the last sample; `recorded + 2` began
    // after it. The deadline only guards against a thread that never runs.
    let recorded = upkeep_passes();
    let deadline = Instant::now() + 12 * UPKEEP_INTERVAL;
    while upkeep_passes() < recorded + 2 {
        assert!(Instant::now() < deadline, "the upkeep thread made no pass");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = live_bytes() - before;
    println!(
        "metrics upkeep: {SAMPLES} samples held {} KiB, {} KiB after an upkeep pass",
        held / 1024,
        left / 1024
    );
    assert!(
        left < 2 * MIB,
        "{SAMPLES} latency samples still hold {} KiB after an upkeep pass (were {} KiB)",
        left / 1024,
        held / 1024
    );
}
