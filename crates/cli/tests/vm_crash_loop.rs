//! Short form of bench/torture/vm-crash-loop.sh (the long form runs 50+ iterations):
//! `xenvault backup` killed with SIGKILL at random moments against a standalone
//! simulator; afterwards one base snapshot, no lock, verify clean, every accepted restore
//! point exact. The script prints its seed and figures; they show in the test output.

use std::path::Path;
use std::process::Command;

#[test]
fn backups_killed_at_random_moments_lose_and_leave_nothing() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/torture/vm-crash-loop.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("ITERATIONS", "6")
        .env("XENVAULT_BIN", env!("CARGO_BIN_EXE_xenvault"))
        .output()
        .expect("run the crash loop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "crash loop failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("figure failures 0"), "{stdout}");
    assert!(stdout.contains("figure pool_after_cleanup snapshots=1 untagged=0 lock=0"), "{stdout}");
}
