//! `berthd`: the Berth daemon. Thin: everything lives in `berth::daemon`.

/// mimalloc instead of glibc's malloc (issue 23, measured in bench/README.md): fewer
/// instructions per request (new connection per request -7.7 %, keep-alive -0.8 %), and after
/// a burst of connections closes it gives about half of their memory back to the kernel
/// within half a second, where glibc keeps freed chunks in the middle of its heap resident.
/// Built with `no_thp` (Cargo.toml): without it, mimalloc advises its arenas into transparent
/// huge pages, about 9 MiB more RSS at start. It gives freed memory back only when the process
/// next frees a page: `berth::proxy::conn_memory` makes sure that happens once traffic stops.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    berth::daemon::main()
}
