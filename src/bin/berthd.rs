//! `berthd`: the Berth daemon. Thin: everything lives in `berth::daemon`.

/// mimalloc instead of glibc's malloc: the proxy allocates and frees per connection and per
/// request (hyper's buffers, header maps, futures), where mimalloc's thread-local free lists
/// are cheaper, and it gives freed pages back to the kernel within milliseconds, so RSS
/// returns toward its baseline after a burst of connections ends; glibc keeps freed chunks
/// in the middle of its heap resident until `malloc_trim`. Measured in bench/README.md
/// (issue 23).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    berth::daemon::main()
}
