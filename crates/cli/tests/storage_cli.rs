//! The repository through the `xenvault` binary, as scripts use it (the contract of issue 3:
//! init, backup-image, snapshots --json, restore-image, verify), on a local directory,
//! SeaweedFS S3 and Azurite.

// The storage servers are the repository tests' own, shared rather than copied.
#[path = "../../repo/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use xenvault_repo::backend::{self, Backend, BackendOptions, ObjectStore};

const PASSPHRASE: &str = "correct horse battery staple";
/// Written into source images; must never appear in a stored object.
const MARKER: &[u8] = b"XENVAULT-TEST-PLAINTEXT-MARKER-51c3";
const SEGMENT: usize = 64 << 10;
/// `xenvault` exit codes (crates/cli/src/exit.rs).
const EXIT_DAMAGE_FOUND: i32 = 3;
const EXIT_AUTH: i32 = 5;

struct TestRepo {
    url: String,
    env: Vec<(&'static str, String)>,
    options: BackendOptions,
    /// Images and restored files.
    work: tempfile::TempDir,
}

impl TestRepo {
    fn local() -> Self {
        let work = tempfile::tempdir().expect("temp dir");
        let url = work.path().join("repo").display().to_string();
        TestRepo { url, env: Vec::new(), options: BackendOptions::default(), work }
    }

    /// A fresh repository on a shared object-store server.
    fn on(server: &common::StorageServer, name: &str) -> Self {
        TestRepo {
            url: server.url(name),
            env: server.env(),
            options: server.options(),
            work: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xenvault"));
        cmd.args(args)
            .arg("--repo")
            .arg(&self.url)
            .env("XENVAULT_PASSPHRASE", PASSPHRASE)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("cannot run xenvault {args:?}: {e}"))
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "xenvault {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("xenvault {args:?}: not JSON ({e}): {out}"))
    }

    /// Small chunks and packs so a few MiB make many objects; a cheap KDF keeps each
    /// command fast (the KDF runs on every open).
    fn init(&self) {
        self.ok(&[
            "init",
            "--chunk-size",
            "64K",
            "--pack-size",
            "1M",
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
        ]);
    }

    /// Backs up `image` and returns the restore point id.
    fn backup(&self, image: &Path, source: &str, tags: &[&str]) -> String {
        let mut args = vec!["backup-image", path_str(image), "--source-id", source, "--json"];
        for tag in tags {
            args.extend(["--tag", tag]);
        }
        let out = self.json(&args);
        out["snapshot"]["id"].as_str().unwrap_or_else(|| panic!("no snapshot id in {out}")).to_string()
    }

    fn restore_points(&self) -> Vec<serde_json::Value> {
        match self.json(&["snapshots", "--json"]) {
            serde_json::Value::Array(list) => list,
            other => panic!("snapshots --json is not a list: {other}"),
        }
    }

    fn restore(&self, id: &str) -> Vec<u8> {
        let to = self.path(&format!("restored-{id}"));
        self.ok(&["restore-image", id, "--to", path_str(&to)]);
        let data = std::fs::read(&to).unwrap_or_else(|e| panic!("reading {to:?}: {e}"));
        let _ = std::fs::remove_file(&to);
        data
    }

    /// Exit code and JSON report of a full verify.
    fn verify(&self) -> (Option<i32>, serde_json::Value) {
        let out = self.run(&["verify", "--json"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("verify --json ({}): {e}\n{}", out.status, String::from_utf8_lossy(&out.stderr))
        });
        (out.status.code(), report)
    }

    fn backend(&self) -> Backend {
        backend::open(&self.url, &self.options).expect("open backend")
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A disk-like image: text-like segments (with the plaintext marker), zeros, random data
/// and repeats of earlier segments, with a short last chunk.
fn make_image(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut image = vec![0u8; size];
    let segments = size.div_ceil(SEGMENT);
    for n in 0..segments {
        let (start, end) = (n * SEGMENT, ((n + 1) * SEGMENT).min(size));
        match rng.below(4) {
            0 => {
                let mut text = Vec::with_capacity(end - start + 128);
                while text.len() < end - start {
                    let line =
                        format!("/usr/lib/x86_64-linux-gnu/libxv{}.so.{} seed {seed}\n", rng.below(500), rng.below(9));
                    text.extend_from_slice(line.as_bytes());
                    if rng.below(200) == 0 {
                        text.extend_from_slice(MARKER);
                    }
                }
                image[start..end].copy_from_slice(&text[..end - start]);
            }
            1 => {} // zeros
            2 => rng.fill(&mut image[start..end]),
            _ if n > 0 => {
                let from = rng.below(n as u64) as usize * SEGMENT;
                image.copy_within(from..from + (end - start), start);
            }
            _ => {}
        }
    }
    // The marker at least once, whatever the draw.
    image[..MARKER.len()].copy_from_slice(MARKER);
    image
}

fn write_image(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let data = make_image(size, seed);
    std::fs::write(path, &data).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
    data
}

/// image → repository → image byte-identical; a wrong passphrase fails clearly; no stored
/// object holds plaintext.
async fn round_trip(repo: TestRepo) {
    repo.init();
    let image = repo.path("disk.img");
    let data = write_image(&image, (3 << 20) + 4321, 1);
    let id = repo.backup(&image, "vm-1", &[]);
    let listed: Vec<String> = repo.restore_points().iter().filter_map(|s| s["id"].as_str().map(String::from)).collect();
    assert_eq!(listed, std::slice::from_ref(&id));
    assert!(repo.restore(&id) == data, "the restored image differs from the source");

    let wrong = repo.command(&["snapshots", "--json"]).env("XENVAULT_PASSPHRASE", "not the passphrase").output();
    let wrong = wrong.expect("run xenvault");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(EXIT_AUTH), "wrong passphrase: {stderr}");
    assert!(stderr.contains("wrong passphrase"), "unclear message: {stderr}");

    assert!(contains(&data, MARKER));
    let backend = repo.backend();
    let objects = backend.list("").await.expect("list");
    assert!(objects.len() > 3, "expected packs, indexes, a manifest: {objects:?}");
    for object in objects {
        let stored = backend.get(&object.path).await.expect("get");
        assert!(!contains(&stored, MARKER), "{} holds plaintext of the image", object.path);
    }
}

#[tokio::test]
async fn round_trip_local() {
    round_trip(TestRepo::local()).await;
}

#[tokio::test]
async fn round_trip_s3() {
    round_trip(TestRepo::on(common::s3(), "round-trip")).await;
}

#[tokio::test]
async fn round_trip_azure() {
    round_trip(TestRepo::on(common::azurite(), "round-trip")).await;
}

/// Flipped bytes in a stored pack: verify names exactly the restore points that use it,
/// restoring one fails instead of returning garbage, and backing up the same data heals it.
async fn damage_is_named_and_healed(repo: TestRepo) {
    repo.init();
    let backend = repo.backend();
    let (image_a, image_b) = (repo.path("a.img"), repo.path("b.img"));
    let data_a = write_image(&image_a, 2 << 20, 2);
    write_image(&image_b, 2 << 20, 3);
    let id_a = repo.backup(&image_a, "a", &[]);
    let packs_a = backend.list("data/").await.expect("list packs");
    let id_b = repo.backup(&image_b, "b", &[]);
    assert_eq!(repo.verify().0, Some(0), "a fresh repository verifies");

    let victim = packs_a.iter().max_by_key(|o| o.size).expect("a's backup wrote packs");
    let mut bytes = backend.get(&victim.path).await.expect("get pack").to_vec();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    backend.put(&victim.path, bytes.into()).await.expect("put damaged pack");

    let (code, report) = repo.verify();
    assert_eq!(code, Some(EXIT_DAMAGE_FOUND), "verify must fail: {report}");
    let damaged: Vec<&String> =
        report["damaged_restore_points"].as_object().expect("damaged_restore_points").keys().collect();
    assert_eq!(damaged, [&id_a], "only a uses the damaged pack (b is {id_b}): {report}");
    let restore = repo.run(&["restore-image", &id_a, "--to", path_str(&repo.path("bad.img"))]);
    assert!(!restore.status.success(), "restoring damaged data must fail");

    repo.backup(&image_a, "a", &[]);
    let (code, report) = repo.verify();
    assert_eq!(code, Some(0), "the next backup heals: {report}");
    assert!(repo.restore(&id_a) == data_a, "the healed restore point restores its image");
}

#[tokio::test]
async fn damage_is_named_and_healed_local() {
    damage_is_named_and_healed(TestRepo::local()).await;
}

#[tokio::test]
async fn damage_is_named_and_healed_s3() {
    damage_is_named_and_healed(TestRepo::on(common::s3(), "damage")).await;
}

/// SHA-256 of an image, to remember many versions without keeping them.
fn digest(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// kill -9 at random moments of backup, forget + prune and prune never leaves a repository
/// that verify rejects, and every restore point that made it restores its exact image.
#[tokio::test]
async fn kill_9_at_random_points_never_breaks_the_repository() {
    const ITERATIONS: usize = 15;
    let repo = TestRepo::local();
    repo.init();
    let image = repo.path("vm.img");
    let mut data = write_image(&image, 8 << 20, 4);
    let mut versions = std::collections::HashMap::new();
    versions.insert("v0".to_string(), digest(&data));
    let started = Instant::now();
    repo.backup(&image, "vm", &["v0"]);
    // Kill points spread over a little more than a whole run.
    let window = started.elapsed().as_micros() as u64 * 3 / 2;

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    eprintln!("kill -9 test seed {seed}");
    let mut rng = Rng(seed | 1);
    for i in 1..=ITERATIONS {
        let version = format!("v{i}");
        let args: Vec<String> = match rng.below(3) {
            0 => {
                // Change an eighth of the image so the backup has new packs to write.
                let at = rng.below(8) as usize * (1 << 20);
                rng.fill(&mut data[at..at + (1 << 20)]);
                std::fs::write(&image, &data).expect("write image");
                versions.insert(version.clone(), digest(&data));
                ["backup-image", path_str(&image), "--source-id", "vm", "--tag", &version].map(String::from).into()
            }
            1 => ["forget", "--keep-last", "2", "--prune"].map(String::from).into(),
            _ => vec!["prune".to_string()],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let delay = Duration::from_micros(rng.below(window));
        let mut child = repo
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run xenvault: {e}"));
        std::thread::sleep(delay);
        child.kill().expect("kill -9"); // SIGKILL; harmless if it already finished
        let status = child.wait().expect("wait");
        let (code, report) = repo.verify();
        assert_eq!(
            code,
            Some(0),
            "iteration {i} (seed {seed}): verify after kill -9 of {args:?} at {delay:?} ({status}): {report}"
        );
    }

    let snapshots = repo.restore_points();
    assert!(!snapshots.is_empty(), "forget --keep-last 2 always keeps some");
    for snapshot in snapshots {
        let id = snapshot["id"].as_str().expect("id");
        let tag = snapshot["tags"][0].as_str().unwrap_or_else(|| panic!("untagged restore point {snapshot}"));
        assert_eq!(digest(&repo.restore(id)), versions[tag], "restore point {id} ({tag}, seed {seed})");
    }
}

/// A bit flipped in a stored manifest and in a stored pack index while this host's cache
/// holds good copies: `verify` exits 3 naming the point and the rebuilt index, and
/// `restore-image` then says the point is damaged, not that it does not exist.
#[tokio::test]
async fn verify_with_a_warm_cache_sees_stored_damage() {
    let mut repo = TestRepo::local();
    let cache = repo.path("cache").display().to_string();
    repo.env.push(("XENVAULT_CACHE_DIR", cache));
    repo.init();
    let backend = repo.backend();
    let (image_a, image_b) = (repo.path("a.img"), repo.path("b.img"));
    write_image(&image_a, 1 << 20, 7);
    write_image(&image_b, 1 << 20, 8);
    let id_a = repo.backup(&image_a, "a", &[]);
    let id_b = repo.backup(&image_b, "b", &[]);
    assert_eq!(repo.restore_points().len(), 2, "the cache is warm");
    assert_eq!(repo.verify().0, Some(0));

    for object in [format!("snapshots/{id_a}"), backend.list("index/").await.unwrap()[0].path.clone()] {
        let mut bytes = backend.get(&object).await.unwrap().to_vec();
        bytes[40] ^= 0x01;
        backend.put(&object, bytes.into()).await.unwrap();
    }
    let (code, report) = repo.verify();
    assert_eq!(code, Some(EXIT_DAMAGE_FOUND), "{report}");
    let damaged: Vec<&String> = report["damaged_restore_points"].as_object().unwrap().keys().collect();
    assert_eq!(damaged, [&id_a], "b ({id_b}) is intact: {report}");
    assert_eq!(report["damaged_indexes"][0]["rebuilt"], true, "{report}");
    let restore = repo.run(&["restore-image", &id_a, "--to", path_str(&repo.path("a.out"))]);
    let stderr = String::from_utf8_lossy(&restore.stderr);
    assert!(!restore.status.success() && stderr.contains("damaged"), "{stderr}");

    // Usage errors, not a check of one pack or a KDF bomb.
    for bad in [["verify", "--sample", "0"], ["verify", "--sample", "NaN"]] {
        assert_eq!(repo.run(&bad).status.code(), Some(2), "{bad:?}");
    }
    let other = TestRepo::local();
    for bad in [["init", "--kdf-memory-mib", "99999999"], ["init", "--kdf-iterations", "4294967295"]] {
        assert_eq!(other.run(&bad).status.code(), Some(2), "{bad:?}");
    }
}
