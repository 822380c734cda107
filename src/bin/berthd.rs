//! `berthd`: the Berth daemon. Thin: everything lives in `berth::daemon`.

/// mimalloc instead of glibc's malloc (issue 23, measured in bench/README.md): fewer
/// instructions per request (new connection per request -7.7 %, keep-alive -0.8 %), and after
/// a burst of connections closes it gives about half of their memory back to the kernel
/// within half a second, where glibc keeps freed chunks in the middle of its heap resident.
/// The price: about 9 MiB more RSS at start (its transparent huge pages).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    berth::daemon::main()
}
