//! `cargo bench -p xenvault-xva`: MB/s of the writer and the reader on a 256 MiB disk
//! held in memory, half random data, half zeros (skipped chunks), xxhash checksums.

use std::io::Cursor;
use std::time::Instant;

use xenvault_xapi_wire::Value;
use xenvault_xva::{CHUNK_SIZE, OvaObject, OvaVersion, WriterOptions, XvaReader, XvaWriter, ova_xml};

const CHUNKS: u64 = 256;

fn report(what: &str, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!("{what:<12} {:>8.0} MB/s of disk", bytes as f64 / secs / 1e6);
}

fn main() {
    let size = CHUNKS * CHUNK_SIZE;
    let data = xenvault_fixtures::random_bytes(1, "xva-bench", CHUNK_SIZE as usize);
    let zeros = vec![0u8; CHUNK_SIZE as usize];
    let version = OvaVersion {
        hostname: "bench".into(),
        date: String::new(),
        product_version: String::new(),
        product_brand: String::new(),
        build_number: String::new(),
        xapi_major: 24,
        xapi_minor: 0,
        export_vsn: 2,
    };
    let disk = OvaObject {
        class: "VDI".into(),
        id: "Ref:1".into(),
        snapshot: Value::Struct([("virtual_size".to_owned(), Value::Str(size.to_string()))].into()),
    };
    let xml = ova_xml(&version, &[disk]);

    let start = Instant::now();
    let mut w = XvaWriter::new(Vec::new(), &xml, 0, WriterOptions::default()).expect("writer");
    w.begin_disk("Ref:1", size).expect("disk");
    for i in 0..CHUNKS {
        w.write(if i % 2 == 0 { &data } else { &zeros }).expect("write");
    }
    let xva = w.finish().expect("finish");
    report("XvaWriter", size, start);

    let start = Instant::now();
    let mut r = XvaReader::new(Cursor::new(&xva)).expect("reader");
    let mut seen = 0u64;
    while let Some(c) = r.next_chunk().expect("chunk") {
        seen += c.data.len() as u64;
    }
    assert!(seen >= size / 2);
    report("XvaReader", size, start);
}
