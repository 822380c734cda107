//! The berthd binary, with its allocator, gives back what a burst of connections freed once
//! they are idle, and most of what they held once they close (issue 23; the housekeeping in
//! `src/proxy/conn_memory.rs`). Without it, mimalloc kept the freed buffers of the burst's
//! last second resident for as long as the process stayed quiet. `BERTH_TEST_BERTHD` runs it
//! against another build (e.g. `--profile deb-test`, to compare with a base commit).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::berthd::BerthdProcess;

/// Connections of the burst, opened `BATCH` at a time (each carries one request).
const CONNS: usize = 2000;
const BATCH: usize = 250;
/// What an idle parked connection may keep once the allocator caught up (`deb-test` build on
/// kernel 6.18: ~1.5 KiB, 2.1 KiB before the drain wait left the connection's task; debug
/// builds keep larger futures), against ~10-20 KiB before the housekeeping.
const IDLE_PER_CONN: i64 = 6 * 1024;
/// Once they all closed, RSS is back within this share of the burst's peak growth.
const CLOSED_PCT_OF_PEAK: i64 = 25;

fn rss_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// One request on `s`, its whole answer read (berthd's own 404: no route for the host).
fn request(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: idle-memory.test\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 404"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .unwrap_or(0);
        if got.len() >= end + 4 + len {
            return;
        }
    }
}

/// Polls (every 100 ms, at most `within`) until the growth over `base` is at most `limit`
/// KiB; returns the last growth seen.
fn settle(pid: u32, base: i64, limit: i64, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let grown = rss_kib(pid) - base;
        if grown <= limit || Instant::now() >= deadline {
            return grown;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
fn a_burst_of_idle_connections_gives_its_freed_memory_back() {
    // One worker thread, as in the bench: with several, a connection's buffers may be freed on
    // another thread than the one that allocated them, and mimalloc takes such blocks back
    // only when their own thread next allocates (see src/proxy/conn_memory.rs).
    let mut d = BerthdProcess::new("proxy:\n  workers: 1\n");
    d.start();
    let pid = d.child.as_ref().expect("spawned").id();
    let timeout = Some(Duration::from_secs(20));
    // One request first: what berthd builds lazily is baseline.
    let mut warm = TcpStream::connect(d.http).expect("connect");
    warm.set_read_timeout(timeout).unwrap();
    request(&mut warm);
    std::thread::sleep(Duration::from_secs(2));
    let base = rss_kib(pid);

    let mut held = Vec::with_capacity(CONNS);
    let opened = Instant::now();
    while held.len() < CONNS {
        let batch: Vec<TcpStream> = (0..BATCH)
            .map(|_| {
                let s = TcpStream::connect(d.http).expect("connect");
                s.set_read_timeout(timeout).unwrap();
                s
            })
            .collect();
        for mut s in batch {
            request(&mut s);
            held.push(s);
        }
    }
    let opened = opened.elapsed();
    let peak = rss_kib(pid) - base;
    // Every connection parks 500 ms after its answer (freeing hyper's buffers); the allocator
    // purges what was freed 1 s later, when the housekeeping next frees a page.
    let limit = IDLE_PER_CONN * CONNS as i64 / 1024;
    let idle = settle(pid, base, limit, Duration::from_secs(6));
    println!(
        "{CONNS} connections opened in {opened:?}: RSS +{peak} KiB right after, +{idle} KiB idle \
         ({} B per connection)",
        idle * 1024 / CONNS as i64
    );
    assert!(
        idle <= limit,
        "{CONNS} idle connections still hold {idle} KiB ({} B each, at most {IDLE_PER_CONN})",
        idle * 1024 / CONNS as i64
    );

    // Closed: back toward the baseline.
    drop(held);
    let grown_at_most = peak * CLOSED_PCT_OF_PEAK / 100;
    let closed = settle(pid, base, grown_at_most, Duration::from_secs(6));
    println!("closed: RSS +{closed} KiB");
    assert!(
        closed <= grown_at_most,
        "after the close RSS is still +{closed} KiB (peak +{peak} KiB)"
    );
    d.stop();
}
