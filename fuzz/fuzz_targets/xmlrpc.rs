//! XML-RPC decoding must never panic, and whatever it accepts must re-encode into a
//! document it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenvault_xapi_wire::xmlrpc;

fuzz_target!(|data: &[u8]| {
    if let Ok((method, params)) = xmlrpc::decode_call(data) {
        let again = xmlrpc::encode_call(&method, &params);
        assert!(
            xmlrpc::decode_call(again.as_bytes()).is_ok(),
            "re-encoded call rejected"
        );
    }
    if let Ok(result) = xmlrpc::decode_response(data) {
        let again = xmlrpc::encode_response(&result);
        assert!(
            xmlrpc::decode_response(again.as_bytes()).is_ok(),
            "re-encoded response rejected"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = xmlrpc::parse_value(text);
    }
});
