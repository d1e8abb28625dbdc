//! `xenvault metadata backup|list|restore` through the binary against the simulator: the
//! pool database backed up, the pool changed (a VM renamed), a dry run that changes
//! nothing, the restore with --yes that brings the name back; a cut download fails clearly
//! and stores nothing.

mod sim_pool;
mod standalone_sim;

use sim_pool::{PASSPHRASE, Pool, count_files, fails, json, ok};

const VM: &str = "debian-web";

impl Pool {
    async fn vm_name(&self, uuid: &str) -> String {
        let vm = self.call_str("VM.get_by_uuid", &[uuid]).await;
        self.call_str("VM.get_name_label", &[&vm]).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_database_brings_a_renamed_vm_back() {
    let pool = Pool::start("metadata-cli", 4);
    let repo = pool.init_repo("repo", PASSPHRASE);
    let backup = json(&ok(pool.run(&["metadata", "backup", "--pool", "sim", "--repo", &repo, "--json"]), "backup"));
    let id = backup["restore_point"].as_str().unwrap().to_owned();
    let pool_uuid = backup["info"]["pool_uuid"].as_str().unwrap().to_owned();
    assert!(backup["info"]["bytes"].as_u64().unwrap() > 0, "{backup}");
    assert_eq!(backup["info"]["sha256"].as_str().map(str::len), Some(64), "{backup}");

    let listed = json(&ok(pool.run(&["metadata", "list", "--repo", &repo, "--json"]), "list"));
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["id"], id.as_str(), "{listed}");
    assert_eq!(entries[0]["info"]["pool_uuid"], pool_uuid.as_str(), "{listed}");
    let text = ok(pool.run(&["metadata", "list", "--repo", &repo]), "list (text)");
    assert!(text.contains(&id[..8]), "{text}");

    let refs = pool.call("VM.get_by_name_label", &[VM]).await;
    let vm = refs.as_array().and_then(|r| r.first()).and_then(|r| r.as_str()).expect("the VM").to_owned();
    let uuid = pool.call_str("VM.get_uuid", &[&vm]).await;
    pool.call("VM.set_name_label", &[&vm, "renamed after the backup"]).await;

    let dry =
        json(&ok(pool.run(&["metadata", "restore", "latest", "--pool", "sim", "--repo", &repo, "--json"]), "dry run"));
    assert_eq!(dry["outcome"], "checked", "{dry}");
    assert_eq!((dry["restore_point"].as_str(), dry["same_pool"].as_bool()), (Some(id.as_str()), Some(true)), "{dry}");
    let text = ok(pool.run(&["metadata", "restore", &id[..8], "--pool", "sim", "--repo", &repo]), "dry run (text)");
    assert!(text.contains("dry run") && text.contains("--yes"), "{text}");
    assert_eq!(pool.vm_name(&uuid).await, "renamed after the backup", "a dry run changes nothing");

    let args = ["metadata", "restore", &id, "--pool", "sim", "--repo", &repo, "--yes", "--json"];
    let restored = json(&ok(pool.run(&args), "restore --yes"));
    assert_eq!(restored["outcome"], "restarted", "{restored}");
    // The restart forgot every session: the helper logs in again.
    assert_eq!(pool.vm_name(&uuid).await, VM, "the name as backed up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_fails_clearly_and_stores_nothing() {
    let pool = Pool::start("metadata-cli-cut", 4);
    let repo = pool.init_repo("repo", PASSPHRASE);
    pool.call("sim.set_cut", &["http", "1000"]).await;
    let err = fails(pool.run(&["metadata", "backup", "--pool", "sim", "--repo", &repo]), 1, "backup of a cut dump");
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "one line of error: {err}");
    assert!(err.contains("the pool database download broke off"), "says the download was cut: {err}");

    let listed = json(&ok(pool.run(&["metadata", "list", "--repo", &repo, "--json"]), "list"));
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let all = json(&ok(pool.run(&["snapshots", "--repo", &repo, "--json"]), "snapshots"));
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");
    let packs = count_files(&std::path::Path::new(&repo).join("data"));
    assert_eq!(packs, 0, "no pack written");

    // The same backup once the pool serves whole dumps again.
    pool.call("sim.set_cut", &["http", ""]).await;
    let backup = json(&ok(pool.run(&["metadata", "backup", "--pool", "sim", "--repo", &repo, "--json"]), "backup"));
    assert!(backup["restore_point"].is_string(), "{backup}");
}
