//! The wire and image formats: XML-RPC, JSON-RPC, CBT bitmaps, VHD, XVA and NBD (both sides).

use std::io::Cursor;

use xenvault_vhd::{VhdReader, VhdStreamReader};
use xenvault_xapi_wire::cbt::ChangedBlocks;
use xenvault_xapi_wire::jsonrpc::{self, JsonRpcVersion};
use xenvault_xapi_wire::xmlrpc;
use xenvault_xva::{CHUNK_SIZE, XvaReader, decompress};

/// Bounds the bytes read per input: a tiny file may describe a 2 TiB disk.
const MAX_READ: usize = 4 * 1024 * 1024;

/// XML-RPC decoding never panics, and whatever it accepts re-encodes into a document it
/// accepts again.
pub fn xmlrpc(data: &[u8]) {
    if let Ok((method, params)) = xmlrpc::decode_call(data) {
        let again = xmlrpc::encode_call(&method, &params);
        assert!(xmlrpc::decode_call(again.as_bytes()).is_ok(), "re-encoded call rejected");
    }
    if let Ok(result) = xmlrpc::decode_response(data) {
        let again = xmlrpc::encode_response(&result);
        assert!(xmlrpc::decode_response(again.as_bytes()).is_ok(), "re-encoded response rejected");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = xmlrpc::parse_value(text);
    }
}

/// JSON-RPC decoding never panics and what it accepts re-encodes into what it accepts; the
/// input is also read as `VDI.list_changed_blocks`' base64 bitmap, whose changed ranges lie
/// inside the blocks it covers.
pub fn jsonrpc(data: &[u8]) {
    if let Ok(call) = jsonrpc::decode_call(data) {
        let again = jsonrpc::encode_call(&call.method, &call.params, 1, call.version);
        assert!(jsonrpc::decode_call(&again).is_ok(), "re-encoded call rejected");
    }
    if let Ok(result) = jsonrpc::decode_response(data) {
        let again = jsonrpc::encode_response(JsonRpcVersion::V2, &1.into(), &result);
        assert!(jsonrpc::decode_response(&again).is_ok(), "re-encoded response rejected");
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(blocks) = ChangedBlocks::decode(text)
    {
        let end = blocks.block_count() * xenvault_xapi_wire::cbt::BLOCK_SIZE;
        assert!(blocks.ranges().all(|r| r.start < r.end && r.end <= end), "range outside the bitmap");
        assert_eq!(blocks.changed_blocks().count() as u64, blocks.changed_count());
    }
}

/// Both VHD readers turn any input into data or an error, and agree on the data when both
/// accept it.
pub fn vhd(data: &[u8]) {
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
}

/// The XVA reader (after compression detection) turns any input into chunks or an error;
/// the chunks it yields lie inside their disk.
pub fn xva(data: &[u8]) {
    let Ok((input, _)) = decompress(Cursor::new(data)) else {
        return;
    };
    let Ok(mut reader) = XvaReader::new(input) else {
        return;
    };
    let disks = reader.disks();
    while let Ok(Some(chunk)) = reader.next_chunk() {
        assert!(!chunk.data.is_empty() && chunk.data.len() as u64 <= CHUNK_SIZE);
        let disk = disks.iter().find(|d| d.reference == chunk.disk).expect("chunk of a listed disk");
        if let Some(size) = disk.size {
            assert!(chunk.offset + chunk.data.len() as u64 <= size);
        }
    }
}

/// The same bytes as everything an NBD server says to our client, and as everything a
/// client says to our server.
pub fn nbd(data: &[u8]) {
    xenvault_nbd::fuzzing::client(data);
    xenvault_nbd::fuzzing::server(data);
}
