//! The XVA reader (after compression detection) must turn any input into chunks or an
//! error, never a panic; chunks it yields must lie inside their disk.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use xenvault_xva::{CHUNK_SIZE, XvaReader, decompress};

fuzz_target!(|data: &[u8]| {
    let Ok((input, _)) = decompress(Cursor::new(data)) else {
        return;
    };
    let Ok(mut reader) = XvaReader::new(input) else {
        return;
    };
    let disks = reader.disks();
    while let Ok(Some(chunk)) = reader.next_chunk() {
        assert!(!chunk.data.is_empty() && chunk.data.len() as u64 <= CHUNK_SIZE);
        let disk = disks
            .iter()
            .find(|d| d.reference == chunk.disk)
            .expect("chunk of a listed disk");
        if let Some(size) = disk.size {
            assert!(chunk.offset + chunk.data.len() as u64 <= size);
        }
    }
});
