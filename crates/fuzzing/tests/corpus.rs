//! The fuzz targets' regression suite without libFuzzer: every file under
//! `fuzz/corpus/<target>/` (seeds, and inputs the fuzzer once crashed on) and a few
//! thousand seeded mutations of them go through the same entry functions as `fuzz/`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xenvault_fuzzing::{TARGETS, Target, fsread, repo};

/// Mutated inputs per target (cheap ones; the file-system targets read up to a few MiB each).
const MUTATIONS: usize = 1500;
const FS_MUTATIONS: usize = 200;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("corpus file"))).collect()
}

/// Runs `input` through `target`; on a panic, keeps the input where the message says.
fn replay(target: &Target, input: &[u8], what: &str) {
    if catch_unwind(AssertUnwindSafe(|| (target.run)(input))).is_err() {
        let kept = std::env::temp_dir().join(format!("fuzz-failure-{}", target.name));
        std::fs::write(&kept, input).expect("keeping the failing input");
        panic!("{} panicked on {what}; input kept in {}", target.name, kept.display());
    }
}

#[test]
fn every_corpus_file_replays() {
    for target in TARGETS {
        let files = corpus(target.name);
        assert!(!files.is_empty(), "no corpus for {}", target.name);
        for (path, input) in files {
            replay(target, &input, &path.display().to_string());
        }
    }
}

#[test]
fn mutations_of_the_corpus_replay() {
    let mut rng = StdRng::seed_from_u64(9);
    for target in TARGETS {
        let seeds = corpus(target.name);
        let count = if target.name.starts_with("fs_") { FS_MUTATIONS } else { MUTATIONS };
        for round in 0..count {
            let (path, seed) = &seeds[rng.gen_range(0..seeds.len())];
            let input = mutate(&mut rng, seed);
            replay(target, &input, &format!("mutation {round} of {}", path.display()));
        }
    }
}

/// One to four of: a bit flip, an interesting byte or little-endian word, a truncation,
/// a duplicated or removed range.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if data.is_empty() {
            data.push(rng.r#gen());
            continue;
        }
        let at = rng.gen_range(0..data.len());
        match rng.gen_range(0..6) {
            0 => data[at] ^= 1 << rng.gen_range(0..8),
            1 => data[at] = [0, 1, 0x7f, 0x80, 0xff][rng.gen_range(0..5)],
            2 => {
                let word: u32 = [0, 1, u32::MAX, u32::MAX / 2 + 1, 4096, rng.r#gen()][rng.gen_range(0..6)];
                let end = (at + 4).min(data.len());
                data[at..end].copy_from_slice(&word.to_le_bytes()[..end - at]);
            }
            3 => data.truncate(at),
            4 => {
                let end = (at + rng.gen_range(1..64)).min(data.len());
                let copy = data[at..end].to_vec();
                let to = rng.gen_range(0..data.len());
                data.splice(to..to, copy);
            }
            _ => {
                let end = (at + rng.gen_range(1..64)).min(data.len());
                data.drain(at..end);
            }
        }
    }
    data
}

/// The seeds, without the regression inputs (`crash-*`) the fuzzer found.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let is_seed = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with("crash-"));
    corpus(target).into_iter().filter(|(p, _)| is_seed(p)).collect()
}

/// Seeds that the parsers reject would fuzz nothing: each must get through its format.
#[test]
fn seeds_are_valid_inputs() {
    for (path, image) in seeds("fs_volume") {
        let entries = fsread::walk_image(fsread::image(&image), false);
        assert!(entries >= 40, "{}: only {entries} entries walked", path.display());
    }
    for (path, image) in seeds("fs_disk") {
        let entries = fsread::walk_image(fsread::image(&image), true);
        assert!(entries >= 40, "{}: only {entries} entries walked", path.display());
    }
    let crypto = repo::crypto();
    let name = repo::pack_name();
    let pack = std::fs::read(corpus_dir("repo_pack").join("pack")).expect("pack seed");
    let index = xenvault_repo::pack::index_from_pack_tail(&name, &pack).expect("index at the tail");
    let entries = xenvault_repo::pack::open_index(&crypto, &name, &index).expect("pack index opens");
    assert_eq!(entries.len(), 3);
    for e in entries {
        let blob = &pack[e.offset as usize..(e.offset + e.len) as usize];
        let plain = crypto.open(&xenvault_repo::pack::chunk_aad(&e.id), blob, 1 << 20).expect("chunk opens");
        assert_eq!(crypto.chunk_id(&plain), e.id);
    }
    let slot = std::fs::read(corpus_dir("repo_keys").join("slot-key-file")).expect("key slot seed");
    let slot: xenvault_repo::keys::KeySlot = serde_json::from_slice(&slot).expect("key slot parses");
    let secret = xenvault_repo::Secret::key_file(b"fuzz key file".to_vec());
    assert!(slot.open(&secret).expect("slot").is_some(), "the seed slot opens with the targets' key file");
    let config = std::fs::read(corpus_dir("repo_keys").join("config")).expect("config seed");
    let config: xenvault_repo::keys::RepoConfig = serde_json::from_slice(&config).expect("config parses");
    config.validate().expect("seed config is valid");
    let manifest = std::fs::read(corpus_dir("repo_manifest").join("manifest")).expect("manifest seed");
    let manifest: xenvault_repo::Manifest = serde_json::from_slice(&manifest[1..]).expect("manifest parses");
    assert_eq!(manifest.disks.len(), 1);
}
