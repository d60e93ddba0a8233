//! I9: a second process opening a ring directory fails at once, with an
//! error naming the directory, while the first holds it; and succeeds once
//! the first has closed it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TempRing, open, small};
use ringship::{Error, Ring};

const CHILD_ENV: &str = "RINGSHIP_LOCK_CHILD";

fn run_child(dir: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "second_process_gets_the_lock_error", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn second_process_gets_the_lock_error() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let started = Instant::now();
        match Ring::open(&dir, small(64 << 10)) {
            Err(e @ Error::Locked { .. }) => {
                assert!(started.elapsed() < Duration::from_secs(1), "the lock error must come at once");
                println!("CHILD LOCKED: {e}");
            }
            Ok((ring, _)) => {
                println!("CHILD OPENED last_seq={}", ring.stats().last_seq);
                ring.close().unwrap();
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        return;
    }
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    ring.append(b"held").unwrap();
    let out = run_child(&t.dir);
    let expected = format!("CHILD LOCKED: ring directory {} is already open", t.dir.display());
    assert!(out.contains(&expected), "child said: {out}");
    ring.close().unwrap();
    let out = run_child(&t.dir);
    assert!(out.contains("CHILD OPENED last_seq=1"), "child said: {out}");
}
