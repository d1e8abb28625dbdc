//! `cargo bench -p xenvault-vhd`: MB/s of the dynamic writer and both readers on a
//! 256 MiB disk held in memory (all blocks present, as in a full export).

use std::io::Cursor;
use std::time::Instant;

use xenvault_vhd::{DynamicWriter, VhdReader, VhdStreamReader, WriterOptions};

const BLOCK: usize = 2 * 1024 * 1024;
const BLOCKS: u32 = 128;

fn report(what: &str, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!("{what:<28} {:>8.0} MB/s", bytes as f64 / secs / 1e6);
}

fn main() {
    let size = u64::from(BLOCKS) * BLOCK as u64;
    let data = xenvault_fixtures::random_bytes(1, "vhd-bench", BLOCK);

    let start = Instant::now();
    let mut w = DynamicWriter::dynamic(Vec::new(), size, 0..BLOCKS, WriterOptions::default()).expect("writer");
    for b in 0..BLOCKS {
        w.write_block(b, &data).expect("block");
    }
    let vhd = w.finish().expect("finish");
    report("DynamicWriter", size, start);

    let start = Instant::now();
    let mut s = VhdStreamReader::new(Cursor::new(&vhd)).expect("stream");
    let mut seen = 0u64;
    while let Some(e) = s.next_extent().expect("extent") {
        seen += e.data.len() as u64;
    }
    assert_eq!(seen, size);
    report("VhdStreamReader", size, start);

    let start = Instant::now();
    let mut r = VhdReader::open(Cursor::new(&vhd)).expect("open");
    let mut buf = vec![0u8; 1024 * 1024];
    for offset in (0..size).step_by(buf.len()) {
        r.read_at(offset, &mut buf).expect("read");
    }
    report("VhdReader::read_at (1 MiB)", size, start);
}
