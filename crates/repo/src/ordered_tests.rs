//! The ordered stream and the restore built on it, against random access reads.

use crate::DiskReader;
use crate::crypto::fill_random;
use crate::tests::{backup_file, new_repo};
use std::os::unix::fs::{FileExt, MetadataExt};

const CHUNK: usize = 64 << 10;

/// 3 index pages of 64 slots: random data, a zero page, a chunk repeated at several
/// places (dedup), scattered holes and a short last chunk.
fn image() -> Vec<u8> {
    let mut img = vec![0u8; 161 * CHUNK - 1234];
    fill_random(&mut img[..40 * CHUNK]).unwrap();
    img[10 * CHUNK..12 * CHUNK].fill(0);
    let repeated = img[3 * CHUNK..4 * CHUNK].to_vec();
    for slot in [20, 21, 130, 140, 141] {
        img[slot * CHUNK..(slot + 1) * CHUNK].copy_from_slice(&repeated);
    }
    fill_random(&mut img[150 * CHUNK + 7..]).unwrap();
    img
}

async fn stored(dir: &std::path::Path) -> (crate::Repository, DiskReader, Vec<u8>) {
    let img = image();
    let path = dir.join("disk.img");
    // Written sparse, so the backup also goes through the source's SEEK_DATA extents.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(img.len() as u64).unwrap();
    for (i, chunk) in img.chunks(CHUNK).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            file.write_all_at(chunk, (i * CHUNK) as u64).unwrap();
        }
    }
    let repo = new_repo(&dir.join("repo"), CHUNK as u32).await;
    let m = backup_file(&repo, &path, "img").await;
    let reader = DiskReader::new(&repo, &m.disks[0]).await.unwrap();
    (repo, reader, img)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_stream_equals_read_at_with_holes_dedup_and_a_short_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, reader, img) = stored(dir.path()).await;
    let slots = reader.disk().slot_count();
    assert_eq!(slots, 161);
    for ranges in [Vec::from_iter(std::iter::once(0..slots)), vec![2..5, 20..21, 60..140, 150..slots], vec![]] {
        let mut stream = reader.chunks_in_order(ranges.clone()).unwrap();
        let mut seen = Vec::new();
        while let Some(s) = stream.next().await {
            let s = s.unwrap();
            let mut want = vec![0u8; s.len];
            reader.read_at(s.offset, &mut want).await.unwrap();
            assert_eq!(&want[..], &img[s.offset as usize..s.offset as usize + s.len]);
            match &s.data {
                Some(d) => assert_eq!(&d[..], &want[..], "slot {}", s.slot),
                None => assert!(want.iter().all(|&b| b == 0), "slot {} is a hole but holds data", s.slot),
            }
            seen.push(s.slot);
        }
        let expected: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(seen, expected);
    }
    assert!(reader.chunks_in_order([5..9, 7..10]).is_err());
    assert!(reader.chunks_in_order(std::iter::once(0..slots + 1)).is_err());

    let out = dir.path().join("restored.img");
    let stats = reader
        .restore_to_file(
            &out,
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == img, "restored image differs");
    assert_eq!(stats.bytes, img.len() as u64);
    assert!(stats.bytes_zero >= 64 * CHUNK as u64);
    // Holes are not written: the zero page takes no space.
    assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < stats.bytes - 64 * CHUNK as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_pipe_writes_the_holes_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let (_repo, reader, img) = stored(dir.path()).await;
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let drain = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    reader
        .restore_to_file(
            &fifo,
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(drain.join().unwrap() == img, "piped image differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pack_byte_fails_the_restore_naming_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, reader, _img) = stored(dir.path()).await;
    let id = reader.chunk_id(30).await.unwrap();
    let loc = repo.locate(&id).unwrap();
    let pack = dir.path().join("repo").join(loc.pack.data_object());
    let mut data = std::fs::read(&pack).unwrap();
    data[loc.offset as usize + loc.len as usize / 2] ^= 0x01;
    std::fs::write(&pack, data).unwrap();

    let err = reader
        .restore_to_file(
            &dir.path().join("out.img"),
            xenvault_types::progress::Task::hidden(xenvault_types::progress::Phase::Export),
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(err.is_damage(), "{err}");
    assert!(err.to_string().contains(&format!("chunk {id}")), "{err}");

    // The stream hands out every slot before the damaged one, then the error, then nothing.
    let mut stream = reader.all_chunks_in_order().unwrap();
    let mut next_slot = 0;
    let err = loop {
        match stream.next().await.expect("the stream ended without reporting the damage") {
            Ok(s) => {
                assert_eq!(s.slot, next_slot);
                next_slot += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(next_slot <= 30 && err.to_string().contains(&id.to_hex()), "{err}");
    assert!(stream.next().await.is_none());
}
