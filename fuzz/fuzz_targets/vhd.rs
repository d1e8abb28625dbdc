//! Both VHD readers must turn any input into data or an error, never a panic, and
//! must agree on the data when both accept it.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use xenvault_vhd::{VhdReader, VhdStreamReader};

/// Bounds the bytes read per input: a tiny file may describe a 2 TiB disk.
const MAX_READ: usize = 4 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut seekable = VhdReader::open(Cursor::new(data)).ok();
    if let Some(reader) = seekable.as_mut() {
        let blocks: Vec<u32> = reader.present_blocks().take(4).collect();
        for block in blocks {
            if let Ok(ranges) = reader.allocated_ranges(block) {
                for range in ranges {
                    let len = ((range.end - range.start) as usize).min(MAX_READ);
                    let mut buf = vec![0u8; len];
                    let _ = reader.read_at(range.start, &mut buf);
                }
            }
        }
        let mut head = vec![0u8; (reader.disk_size() as usize).min(MAX_READ)];
        let _ = reader.read_at(0, &mut head);
    }
    let Ok(mut stream) = VhdStreamReader::new(Cursor::new(data)) else {
        return;
    };
    let mut compared = 0;
    while let Ok(Some(extent)) = stream.next_extent() {
        if let Some(reader) = seekable.as_mut()
            && compared < MAX_READ
        {
            let mut buf = vec![0u8; extent.data.len()];
            if reader.read_at(extent.offset, &mut buf).is_ok() {
                assert_eq!(buf, extent.data, "readers disagree at {}", extent.offset);
            }
            compared += buf.len();
        }
    }
});
