//! The global allocator: mimalloc, called the way std's own `System` allocator calls `malloc`.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`, whose fast
//! path only takes blocks of up to 1 KiB that happen to sit at the asked alignment; everything
//! else (hyper's 8 KiB buffers, the boxed exchange and request futures, body chunks) went
//! through mimalloc's generic aligned path and most of it on to its over-allocating path:
//! about 14 allocations per intercepted exchange at about 190 instructions each, 2.8 % of the
//! proxy's instructions in callgrind (bench/README.md). `mi_malloc` already returns blocks
//! aligned to 16 bytes, and to their size below that, so as in std, requests with an alignment
//! of at most 16 and at most their size go to `mi_malloc`, and only the others to the aligned
//! entry points.
//!
//! This module implements `GlobalAlloc`, an `unsafe` trait, hence its exemption from the
//! workspace's `unsafe_code = "deny"`; the only other module allowed `unsafe` is `conn/recv.rs`.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys as mi;

/// The alignment every `mi_malloc` block has (mimalloc's `MI_MAX_ALIGN_SIZE`, the same as
/// glibc's on x86-64 and aarch64), when the block is at least that large.
const MALLOC_ALIGN: usize = 16;

/// Whether plain `mi_malloc` meets `align` for a block of `size` bytes: blocks smaller than
/// 16 bytes are aligned to their size class, which is at least `size` rounded up to 8.
fn plain_is_aligned(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

pub struct MiMalloc;

// SAFETY: every pointer returned comes from mimalloc and is released with `mi_free` (which
// takes blocks from any of its entry points); alignment is either met by `mi_malloc`'s
// guarantee (`plain_is_aligned`) or asked of the aligned entry points.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; `layout.size()` is non-zero per `GlobalAlloc`'s contract.
        unsafe {
            if plain_is_aligned(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain_is_aligned(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract), so from mimalloc.
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new block keeps `layout`'s alignment by
        // the same rule as in `alloc`, now for `new_size`.
        unsafe {
            if plain_is_aligned(layout.align(), new_size) {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_meet_every_alignment_asked() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1usize, 3, 7, 8, 9, 15, 16, 17, 100, 1024, 1500, 8192, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is written within its size, checked,
                // grown and freed with the layout it was made with.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size} bytes at {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(
                        q as usize % align,
                        0,
                        "realloc {size} → {} at {align}",
                        size * 3
                    );
                    assert!(
                        (0..size).all(|i| *q.add(i) == 0xab),
                        "realloc kept the bytes"
                    );
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size} at {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
