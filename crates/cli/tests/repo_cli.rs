//! The repository commands' contract, through the real `xenvault` binary.

use std::path::Path;
use std::process::{Command, Output};

const PASS: &str = "cli test passphrase";
const MARKER: &[u8] = b"CLI-PLAINTEXT-MARKER-51c0ffee";

fn xenvault(dir: &Path, args: &[&str], passphrase: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xenvault"))
        .args(args)
        .env("XENVAULT_PASSPHRASE", passphrase)
        .env("XENVAULT_CACHE_DIR", dir.join("cache"))
        .env_remove("XENVAULT_REPO")
        .output()
        .expect("run xenvault")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image(path: &Path, seed: u8) -> Vec<u8> {
    let mut img = vec![0u8; (3 << 20) + 4096];
    let mut x = 0x9e3779b97f4a7c15u64 ^ seed as u64;
    for b in img[(1 << 20)..(2 << 20)].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (i, b) in img[(2 << 20)..].iter_mut().enumerate() {
        *b = (i % 97) as u8;
    }
    img[100..100 + MARKER.len()].copy_from_slice(MARKER);
    std::fs::write(path, &img).unwrap();
    img
}

/// A fresh directory removed on drop (no extra dev-dependency for this).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xenvault-repo-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn snapshot_ids(dir: &Path, repo: &str) -> Vec<String> {
    let out = ok(xenvault(dir, &["snapshots", "--repo", repo, "--json"], PASS));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn init_backup_list_restore_verify_damage_heal_forget_prune() {
    let tmp = TempDir::new("main");
    let dir = tmp.path();
    let repo = dir.join("repo");
    let repo_s = repo.to_str().unwrap();
    ok(xenvault(
        dir,
        &["init", "--repo", repo_s, "--chunk-size", "64K", "--kdf-memory-mib", "1", "--kdf-iterations", "1"],
        PASS,
    ));

    let a = dir.join("a.img");
    let img = image(&a, 1);
    ok(xenvault(dir, &["backup-image", a.to_str().unwrap(), "--repo", repo_s], PASS));
    let ids = snapshot_ids(dir, repo_s);
    assert_eq!(ids.len(), 1);

    let out = dir.join("out.img");
    ok(xenvault(
        dir,
        &["restore-image", &ids[0][..8], "--repo", repo_s, "--to", out.to_str().unwrap(), "--disk", "0"],
        PASS,
    ));
    assert_eq!(std::fs::read(&out).unwrap(), img);
    for f in files_under(&repo) {
        assert!(!std::fs::read(&f).unwrap().windows(MARKER.len()).any(|w| w == MARKER), "marker in {f:?}");
    }

    // Wrong passphrase: AUTH.
    let bad = xenvault(dir, &["snapshots", "--repo", repo_s], "wrong");
    assert_eq!(bad.status.code(), Some(5), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong passphrase"));

    ok(xenvault(dir, &["verify", "--repo", repo_s], PASS));
    // Flip a byte in the middle of every pack: verify exits 3 naming the restore point.
    for f in files_under(&repo.join("data")) {
        let mut d = std::fs::read(&f).unwrap();
        let mid = d.len() / 3;
        d[mid] ^= 0x08;
        std::fs::write(&f, d).unwrap();
    }
    let v = xenvault(dir, &["verify", "--repo", repo_s, "--json"], PASS);
    assert_eq!(v.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert!(report["damaged_restore_points"].get(&ids[0]).is_some(), "{report}");
    // The next backup heals; verify passes again and the old restore point reads back.
    ok(xenvault(dir, &["backup-image", a.to_str().unwrap(), "--repo", repo_s], PASS));
    ok(xenvault(dir, &["verify", "--repo", repo_s], PASS));
    ok(xenvault(dir, &["restore-image", &ids[0], "--repo", repo_s, "--to", out.to_str().unwrap()], PASS));
    assert_eq!(std::fs::read(&out).unwrap(), img);

    // Forget all but the newest, prune, and the newest still restores.
    let b = dir.join("b.img");
    let img_b = image(&b, 2);
    ok(xenvault(dir, &["backup-image", b.to_str().unwrap(), "--repo", repo_s, "--source-id", "vm-b"], PASS));
    let all = snapshot_ids(dir, repo_s);
    assert_eq!(all.len(), 3);
    let f = ok(xenvault(dir, &["forget", "--repo", repo_s, "--keep-last", "1", "--prune", "--json"], PASS));
    let f: serde_json::Value = serde_json::from_str(&f).unwrap();
    assert_eq!(f["remove"].as_array().unwrap().len(), 1, "keep-last is per source: {f}");
    let (packs, bytes) = (f["prune"]["packs_deleted"].as_u64(), f["prune"]["bytes_deleted"].as_u64());
    assert!(bytes.is_some() && (packs == Some(0)) == (bytes == Some(0)), "freed bytes reported: {f}");
    let again = ok(xenvault(dir, &["prune", "--repo", repo_s], PASS));
    assert!(again.starts_with("freed 0 B in 0 packs\n"), "nothing left to free: {again}");
    let left = snapshot_ids(dir, repo_s);
    assert_eq!(left.len(), 2);
    assert!(left.contains(&all[1]) && left.contains(&all[2]));
    ok(xenvault(dir, &["verify", "--repo", repo_s], PASS));
    ok(xenvault(dir, &["restore-image", "latest", "--repo", repo_s, "--to", out.to_str().unwrap()], PASS));
    assert_eq!(std::fs::read(&out).unwrap(), img_b);
}

#[test]
fn keys_and_copy() {
    let tmp = TempDir::new("keys");
    let dir = tmp.path();
    let repo = dir.join("repo");
    let repo_s = repo.to_str().unwrap();
    let fast = ["--kdf-memory-mib", "1", "--kdf-iterations", "1"];
    let mut init = vec!["init", "--repo", repo_s];
    init.extend(fast);
    ok(xenvault(dir, &init, PASS));

    let key_file = dir.join("repo.key");
    let mut add = vec!["key", "add", "--repo", repo_s, "--new-key-file", key_file.to_str().unwrap()];
    add.extend(fast);
    ok(xenvault(dir, &add, PASS));
    let keys: serde_json::Value =
        serde_json::from_str(&ok(xenvault(dir, &["key", "list", "--repo", repo_s, "--json"], PASS))).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    ok(xenvault(dir, &["snapshots", "--repo", repo_s, "--key-file", key_file.to_str().unwrap()], ""));

    let a = dir.join("a.img");
    let img = image(&a, 3);
    ok(xenvault(dir, &["backup-image", a.to_str().unwrap(), "--repo", repo_s], PASS));

    let mirror = dir.join("mirror");
    let mirror_s = mirror.to_str().unwrap();
    let mut init2 = vec!["init", "--repo", mirror_s, "--encryption", "none"];
    init2.extend(fast);
    ok(xenvault(dir, &init2, ""));
    ok(xenvault(dir, &["copy", "--all", "--repo", repo_s, "--to", mirror_s], PASS));
    let out = dir.join("m.img");
    ok(xenvault(dir, &["restore-image", "latest", "--repo", mirror_s, "--to", out.to_str().unwrap()], ""));
    assert_eq!(std::fs::read(&out).unwrap(), img);
}
