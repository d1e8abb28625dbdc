//! The same bytes as everything an NBD server says to our client (handshake, option replies,
//! simple and structured replies), and as everything a client says to our server (both behaviours).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xenvault_nbd::fuzzing::client(data);
    xenvault_nbd::fuzzing::server(data);
});
