//! Damaged and hostile VHDs give errors from both readers, never a panic.

use std::io::Cursor;

use uuid::Uuid;
use xenvault_vhd::{
    DynamicHeader, DynamicWriter, Error, FixedWriter, Footer, VhdReader, VhdStreamReader, WriterOptions,
};

const BLOCK: usize = 2 * 1024 * 1024;
const SIZE: u64 = 6 * 1024 * 1024;
const BAT_AT: usize = 2048;

/// A valid dynamic VHD of 6 MiB holding blocks 0 and 2.
fn valid() -> Vec<u8> {
    let mut w =
        DynamicWriter::dynamic(Vec::new(), SIZE, [0, 2], WriterOptions { unique_id: Uuid::from_u128(1), timestamp: 0 })
            .unwrap();
    w.write_block(0, &vec![0xAB; BLOCK]).unwrap();
    w.write_block(2, &vec![0xCD; BLOCK]).unwrap();
    w.finish().unwrap()
}

fn open(bytes: &[u8]) -> Result<(), Error> {
    let mut r = VhdReader::open(Cursor::new(bytes))?;
    let mut buf = vec![0u8; SIZE as usize];
    let size = r.disk_size().min(SIZE);
    r.read_at(0, &mut buf[..size as usize])
}

fn stream(bytes: &[u8]) -> Result<(), Error> {
    let mut s = VhdStreamReader::new(Cursor::new(bytes))?;
    while s.next_extent()?.is_some() {}
    Ok(())
}

/// Rewrites both footers through `edit`, with valid checksums.
fn with_footer(edit: impl Fn(&mut Footer)) -> Vec<u8> {
    let mut bytes = valid();
    let end = bytes.len() - 512;
    let mut footer = Footer::parse(bytes[end..].try_into().unwrap()).unwrap();
    edit(&mut footer);
    let new = footer.to_bytes();
    bytes[end..].copy_from_slice(&new);
    bytes[..512].copy_from_slice(&new);
    bytes
}

fn with_header(edit: impl Fn(&mut DynamicHeader)) -> Vec<u8> {
    let mut bytes = valid();
    let mut header = DynamicHeader::parse(bytes[512..1536].try_into().unwrap()).unwrap();
    edit(&mut header);
    bytes[512..1536].copy_from_slice(&header.to_bytes().unwrap());
    bytes
}

fn set_bat(bytes: &mut [u8], block: usize, sector: u32) {
    bytes[BAT_AT + 4 * block..BAT_AT + 4 * block + 4].copy_from_slice(&sector.to_be_bytes());
}

#[test]
fn valid_image_opens() {
    open(&valid()).unwrap();
    stream(&valid()).unwrap();
}

#[test]
fn bad_cookies_and_checksums() {
    let mut bytes = valid();
    let end = bytes.len() - 512;
    bytes[end] = b'X';
    bytes[0] = b'X';
    assert!(matches!(open(&bytes), Err(Error::BadCookie { .. })));
    assert!(matches!(stream(&bytes), Err(Error::BadCookie { .. })));

    let mut bytes = valid();
    let end = bytes.len() - 512;
    bytes[end + 200] ^= 1;
    bytes[200] ^= 1;
    assert!(matches!(open(&bytes), Err(Error::BadChecksum { .. })));
    assert!(matches!(stream(&bytes), Err(Error::BadChecksum { .. })));

    let mut bytes = valid();
    bytes[512 + 300] ^= 1;
    assert!(matches!(open(&bytes), Err(Error::BadChecksum { what: "dynamic header", .. })));
    assert!(matches!(stream(&bytes), Err(Error::BadChecksum { what: "dynamic header", .. })));
}

#[test]
fn truncated_anywhere() {
    let bytes = valid();
    for cut in (0..bytes.len()).step_by(4093).chain([511, 512, 1536, 2048, bytes.len() - 1]) {
        assert!(open(&bytes[..cut]).is_err(), "open cut at {cut}");
        assert!(stream(&bytes[..cut]).is_err(), "stream cut at {cut}");
    }
}

#[test]
fn bat_entries_outside_the_file_or_overlapping() {
    let mut outside = valid();
    set_bat(&mut outside, 1, 0x00FF_FFFF);
    assert!(matches!(open(&outside), Err(Error::Corrupt(_))));
    assert!(stream(&outside).is_err());

    let mut overlap = valid();
    let first = u32::from_be_bytes(overlap[BAT_AT..BAT_AT + 4].try_into().unwrap());
    set_bat(&mut overlap, 1, first + 8);
    assert!(matches!(open(&overlap), Err(Error::Corrupt(m)) if m.contains("overlaps")));
    assert!(matches!(stream(&overlap), Err(Error::Unsupported(_))));

    let mut on_metadata = valid();
    set_bat(&mut on_metadata, 1, 1);
    assert!(matches!(open(&on_metadata), Err(Error::Corrupt(_))));
    assert!(stream(&on_metadata).is_err());
}

#[test]
fn absurd_sizes() {
    let huge = with_footer(|f| f.current_size = 1 << 60);
    assert!(matches!(open(&huge), Err(Error::Unsupported(_))));
    assert!(matches!(stream(&huge), Err(Error::Unsupported(_))));

    let too_few_entries = with_header(|h| h.max_table_entries = 1);
    assert!(matches!(open(&too_few_entries), Err(Error::Corrupt(_))));

    for block_size in [0, 3, 512, 1 << 31] {
        let odd = with_header(|h| h.block_size = block_size);
        assert!(matches!(open(&odd), Err(Error::Unsupported(_))), "{block_size}");
        assert!(matches!(stream(&odd), Err(Error::Unsupported(_))), "{block_size}");
    }
    let far_bat = with_header(|h| h.table_offset = u64::MAX - 10);
    assert!(matches!(open(&far_bat), Err(Error::Corrupt(_))));
    assert!(stream(&far_bat).is_err());

    let far_header = with_footer(|f| f.data_offset = u64::MAX - 100);
    assert!(matches!(open(&far_header), Err(Error::Corrupt(_))));
    assert!(stream(&far_header).is_err());
}

#[test]
fn stream_refuses_layouts_that_need_seeking_back() {
    let bat_first = with_header(|h| h.table_offset = 0);
    assert!(matches!(stream(&bat_first), Err(Error::Unsupported(m)) if m.contains("backwards")));

    let mut fixed = FixedWriter::new(Vec::new(), 1024 * 1024, WriterOptions::default()).unwrap();
    std::io::Write::write_all(&mut fixed, &vec![7u8; 1024 * 1024]).unwrap();
    let fixed = fixed.finish().unwrap();
    open(&fixed).unwrap();
    assert!(stream(&fixed).is_err());

    let mut other_trailer = valid();
    let end = other_trailer.len() - 512;
    let mut footer = Footer::parse(other_trailer[end..].try_into().unwrap()).unwrap();
    footer.unique_id = Uuid::from_u128(2);
    other_trailer[end..].copy_from_slice(&footer.to_bytes());
    assert!(matches!(stream(&other_trailer), Err(Error::Corrupt(_))));
}

#[test]
fn reads_past_the_end_and_writer_misuse_are_errors() {
    let mut r = VhdReader::open(Cursor::new(valid())).unwrap();
    let mut buf = [0u8; 1024];
    assert!(matches!(r.read_at(SIZE - 512, &mut buf), Err(Error::InvalidArgument(_))));
    assert!(matches!(r.read_at(u64::MAX - 10, &mut buf), Err(Error::InvalidArgument(_))));

    let options = WriterOptions::default();
    assert!(DynamicWriter::dynamic(Vec::new(), SIZE, [2, 1], options).is_err());
    assert!(DynamicWriter::dynamic(Vec::new(), SIZE, [3], options).is_err());
    assert!(DynamicWriter::dynamic(Vec::new(), SIZE + 1, [0], options).is_err());
    let mut w = DynamicWriter::dynamic(Vec::new(), SIZE, [0, 2], options).unwrap();
    assert!(w.write_block(2, &vec![0; BLOCK]).is_err());
    assert!(w.write_block(0, &[0; 100]).is_err());
    w.write_block(0, &vec![0; BLOCK]).unwrap();
    assert!(w.finish().is_err());
}
