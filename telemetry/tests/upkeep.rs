//! The recorder keeps histogram samples only until its upkeep folds them into buckets, so an
//! instance nobody scrapes does not grow with every sample it records.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn samples_nobody_scrapes_are_folded_away() {
    let _handle = telemetry::init_metrics();
    let before = LIVE.load(Ordering::Relaxed);
    let samples = 1_000_000;
    let histogram = metrics::histogram!("chat_test_unscraped_seconds");
    for i in 0..samples {
        histogram.record(f64::from(i % 1000) / 1e6);
    }
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    // Held as raw samples until folded: 8 bytes each.
    assert!(held >= samples as usize * 8 / 2, "{held} bytes held");
    let deadline = Instant::now() + telemetry::METRICS_UPKEEP_EVERY * 3;
    loop {
        // Recording pins the recorder's epoch, which lets the folded blocks be freed.
        histogram.record(0.0);
        let left = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        if left < held / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} of {held} bytes still held with no scrape"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
