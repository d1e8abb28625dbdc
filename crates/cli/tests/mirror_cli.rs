//! `xenvault mirror` through the binary: VM backups on the simulator mirrored to a second
//! local repository with its own passphrase (so chunks are matched by content), restored
//! from the mirror byte for byte against the simulator's disk digests; a second mirror
//! sends nothing; the target's retention; a target without its passphrase.

mod sim_pool;
mod standalone_sim;

use sim_pool::{Pool, count_files, fails, json, ok, sha256_file};

const VM: &str = "debian-web";
const TARGET_PASSPHRASE: &str = "the mirror's own passphrase";
/// The target's passphrase for `mirror`, and for commands opening the target itself.
const TO: &[(&str, &str)] = &[("XENVAULT_TO_PASSPHRASE", TARGET_PASSPHRASE)];
const OF_TARGET: &[(&str, &str)] = &[("XENVAULT_PASSPHRASE", TARGET_PASSPHRASE)];

/// The ids of the restore points the report lists under `field`.
fn ids(report: &serde_json::Value, field: &str) -> Vec<String> {
    let list = report[field].as_array().unwrap_or_else(|| panic!("no {field} in {report}"));
    list.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

impl Pool {
    /// `mirror` from `src` to `dst` with `extra` flags: its JSON report.
    fn mirror(&self, src: &str, dst: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["mirror", "--repo", src, "--to", dst, "--json"];
        args.extend(extra);
        json(&ok(self.run_with(&args, TO), &format!("mirror {extra:?}")))
    }

    /// Every disk of the backed-up VM restored from `repo`'s restore point `id` equals the
    /// simulator's disk now (nothing writes to it after a backup).
    async fn assert_restores(&self, repo: &str, id: &str, vm_report: &serde_json::Value) {
        for disk in vm_report["disks"].as_array().unwrap() {
            let position = disk["position"].as_str().unwrap();
            let to = self.dir.join(format!("{id}-{position}.raw"));
            let args = ["restore-image", id, "--repo", repo, "--disk", position, "--to", to.to_str().unwrap()];
            ok(self.run_with(&args, OF_TARGET), "restore-image from the mirror");
            let expected = self.call_str("sim.sha256", &[disk["vdi_uuid"].as_str().unwrap()]).await;
            assert_eq!(sha256_file(&to), expected, "disk {position} of {id} restored from the mirror");
            std::fs::remove_file(&to).unwrap();
        }
    }

    /// The ids of the restore points in the target `dst`.
    fn on_target(&self, dst: &str) -> Vec<String> {
        let listed =
            json(&ok(self.run_with(&["snapshots", "--repo", dst, "--json"], OF_TARGET), "snapshots of the mirror"));
        listed.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    }

    /// Random guest writes over `percent` % of each of the VM's disks.
    async fn scribble(&self, vm_report: &serde_json::Value, percent: &str, seed: &str) {
        for disk in vm_report["disks"].as_array().unwrap() {
            self.call("sim.scribble", &[disk["vdi_uuid"].as_str().unwrap(), percent, "65536", seed]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_restores_exactly_sends_only_what_is_missing_and_keeps_its_retention() {
    let pool = Pool::start("mirror-cli", 16);
    let src = pool.init_repo("src", sim_pool::PASSPHRASE);
    // A blank first point, then one with data of its own.
    let first = pool.backup(VM, &src);
    pool.scribble(&first, "30", "1").await;
    let second = pool.backup(VM, &src);
    let points: Vec<String> =
        [&first, &second].iter().map(|r| r["restore_point"].as_str().unwrap().to_owned()).collect();

    let dst = pool.init_repo("mirror", TARGET_PASSPHRASE);
    let report = pool.mirror(&src, &dst, &[]);
    assert_eq!(ids(&report, "copied"), points, "{report}");
    assert_eq!(report["chunk_ids_shared"], false, "another passphrase, another chunk-id key: {report}");
    assert!(report["chunks_sent"].as_u64().unwrap() > 0 && report["bytes_sent"].as_u64().unwrap() > 0, "{report}");
    let verify = &report["verify"];
    assert_eq!(verify["restore_points_checked"], 2, "{report}");
    assert!(verify["chunks_checked"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(verify["bad_chunks"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(verify["damaged_restore_points"], serde_json::json!({}), "{report}");
    pool.assert_restores(&dst, &points[1], &second).await;

    let again = pool.mirror(&src, &dst, &[]);
    assert_eq!(ids(&again, "copied"), Vec::<String>::new(), "{again}");
    assert_eq!(ids(&again, "skipped"), points, "{again}");
    assert_eq!((again["chunks_sent"].as_u64(), again["bytes_sent"].as_u64()), (Some(0), Some(0)), "{again}");

    // A third point, mirrored under the target's retention: only the newest is kept there.
    pool.scribble(&second, "10", "2").await;
    let third = pool.backup(VM, &src);
    let newest = third["restore_point"].as_str().unwrap().to_owned();
    let kept = pool.mirror(&src, &dst, &["--keep-last", "1", "--vm", VM]);
    assert_eq!(ids(&kept, "copied"), vec![newest.clone()], "{kept}");
    assert!(kept["chunks_sent"].as_u64().unwrap() > 0, "{kept}");
    let mut removed = kept["forget"]["remove"].as_array().unwrap().clone();
    removed.sort_by_key(|v| v.as_str().unwrap().to_owned());
    let mut expected = points.clone();
    expected.sort();
    assert_eq!(removed, expected, "{kept}");
    assert_eq!(pool.on_target(&dst), vec![newest.clone()]);
    pool.assert_restores(&dst, &newest, &third).await;

    // The human report says what moved.
    let text = ok(pool.run_with(&["mirror", "--repo", &src, "--to", &dst, "--latest"], TO), "mirror (text)");
    assert!(text.contains("mirrored 0 restore point(s)") && text.contains("1 already there"), "{text}");
    assert!(text.contains("sent 0 chunks") && text.contains("no damage found"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_its_passphrase_or_object_lock_is_refused_before_anything_moves() {
    let pool = Pool::start("mirror-cli-refusals", 4);
    let src = pool.init_repo("src", sim_pool::PASSPHRASE);
    let dst = pool.init_repo("mirror", TARGET_PASSPHRASE);
    pool.backup(VM, &src);
    let err = fails(pool.run(&["mirror", "--repo", &src, "--to", &dst]), 2, "mirror without the target's passphrase");
    assert!(err.contains("XENVAULT_TO_PASSPHRASE"), "{err}");
    let wrong = pool.run_with(&["mirror", "--repo", &src, "--to", &dst], &[("XENVAULT_TO_PASSPHRASE", "wrong")]);
    fails(wrong, 5, "mirror with a wrong target passphrase");
    let locked = pool.run_with(&["mirror", "--repo", &src, "--to", &dst, "--lock-days", "7"], TO);
    let err = fails(locked, 1, "mirror --lock-days to a local directory");
    assert!(err.contains("--lock-days"), "{err}");
    assert_eq!(pool.on_target(&dst), Vec::<String>::new(), "nothing mirrored");
}

/// `size` bytes no chunk of which repeats (xorshift64): every chunk is one the target lacks.
fn unique_chunks_image(path: &std::path::Path, size: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_mirror_cleanly_and_the_rerun_sends_only_what_had_not_arrived() {
    const CHUNKS: u64 = 2048; // of init's 256 KiB
    let pool = Pool::start("mirror-cli-sigint", 4);
    let src = pool.init_repo("src", sim_pool::PASSPHRASE);
    let dst = pool.init_repo("mirror", TARGET_PASSPHRASE);
    let image = pool.dir.join("disk.img");
    unique_chunks_image(&image, (CHUNKS << 18) as usize);
    let backup = json(&ok(pool.run(&["backup-image", image.to_str().unwrap(), "--repo", &src, "--json"]), "backup"));
    let id = backup["snapshot"]["id"].as_str().unwrap().to_owned();
    std::fs::remove_file(&image).unwrap();

    let mirror = pool
        .xenvault(&["mirror", "--repo", &src, "--to", &dst, "--json"])
        .envs(TO.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once its first pack is on the target, long before its last.
    let packs = std::path::Path::new(&dst).join("data");
    while count_files(&packs) == 0 {
        assert!(std::fs::exists(format!("/proc/{}", mirror.id())).unwrap(), "the mirror is gone");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = std::process::Command::new("kill").args(["-INT", &mirror.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = mirror.wait_with_output().unwrap();
    let err = sim_pool::text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("run the same command again to resume") && !err.contains("panicked"), "{err}");
    assert_eq!(pool.on_target(&dst), Vec::<String>::new(), "nothing committed");
    assert_eq!(count_files(&std::path::Path::new(&dst).join("locks")), 0, "the target's lock is released");

    // What the interrupted run stored: its packs hold data chunks only (no page is written).
    let verify = json(&ok(pool.run_with(&["verify", "--repo", &dst, "--json"], OF_TARGET), "verify the target"));
    let arrived = verify["chunks_checked"].as_u64().unwrap();
    assert!(0 < arrived && arrived < CHUNKS, "the interrupt came mid-transfer: {verify}");

    let resumed = pool.mirror(&src, &dst, &[]);
    assert_eq!(ids(&resumed, "copied"), vec![id.clone()], "{resumed}");
    assert_eq!(resumed["chunks_sent"].as_u64(), Some(CHUNKS - arrived), "only what had not arrived: {resumed}");
    assert_eq!(resumed["verify"]["damaged_restore_points"], serde_json::json!({}), "{resumed}");
}
