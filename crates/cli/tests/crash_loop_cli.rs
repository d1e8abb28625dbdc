//! The crash loop's short form: `bench/torture/crash-loop.sh` kills the `xenvault` binary
//! (kill -9) during backups, prunes, copies and restores, a few iterations; nothing may be
//! lost. `TORTURE_ITERATIONS` sets how many.

#[test]
fn kill_9_loop_of_backup_prune_copy_restore_loses_nothing() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/torture/crash-loop.sh");
    let iterations = std::env::var("TORTURE_ITERATIONS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(12);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("XENVAULT_BIN", env!("CARGO_BIN_EXE_xenvault"))
        .env("ITERATIONS", iterations.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    assert!(out.status.success(), "crash loop failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("figure points_lost 0"), "no figures: {stdout}");
}
