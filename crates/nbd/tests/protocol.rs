//! Our client against our server in both behaviours, raw xapi-nbd conversations, scripted
//! misbehaving servers and cut links.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xenvault_nbd::proto::*;
use xenvault_nbd::{Client, Error, MultiReader, MultiReaderConfig, ServerConfig};

// ---- raw protocol helpers ----

async fn send_option<S: AsyncWrite + Unpin>(s: &mut S, option: u32, payload: &[u8]) {
    s.write_all(&OptionHeader::encode(option, payload.len() as u32)).await.unwrap();
    s.write_all(payload).await.unwrap();
}

async fn option_reply<S: AsyncRead + Unpin>(s: &mut S) -> (u32, u32) {
    let mut h = [0; OptionReplyHeader::SIZE];
    s.read_exact(&mut h).await.unwrap();
    let h = OptionReplyHeader::decode(&h);
    assert_eq!(h.magic, OPTION_REPLY_MAGIC);
    let mut payload = vec![0; h.len as usize];
    s.read_exact(&mut payload).await.unwrap();
    (h.option, h.reply)
}

async fn assert_closed<S: AsyncRead + Unpin>(s: &mut S) {
    let mut b = [0; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("server kept the link open");
    assert!(matches!(n, Ok(0) | Err(_)), "server sent more data instead of closing");
}

async fn greet(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0; 18];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting[..8], NBD_MAGIC.to_be_bytes());
    assert_eq!(greeting[8..16], IHAVEOPT.to_be_bytes());
    // xapi advertises FIXED_NEWSTYLE only: never NO_ZEROES.
    assert_eq!(greeting[16..], FLAG_FIXED_NEWSTYLE.to_be_bytes());
    s.write_all(&u32::from(FLAG_FIXED_NEWSTYLE).to_be_bytes()).await.unwrap();
    s
}

fn go_payload(name: &str) -> Vec<u8> {
    let mut p = string32(name);
    p.extend_from_slice(&0u16.to_be_bytes());
    p
}

fn tls_connector(pki: &Pki) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls::pki_types::pem::PemObject::pem_slice_iter(&pki.pem("ca-cert.pem")).map(Result::unwrap),
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn xapi_compat_answers_options_and_commands_exactly_like_xapi_nbd() {
    let pki = Pki::new();
    let data = disk_bytes();
    let (addr, _stop) = start_xapi_over_tls(&pki, &data).await;

    // Before STARTTLS every option but EXPORT_NAME/ABORT gets TLS_REQD.
    let mut s = greet(addr).await;
    for option in [OPT_GO, OPT_STRUCTURED_REPLY, OPT_LIST] {
        send_option(&mut s, option, &go_payload(EXPORT)).await;
        assert_eq!(option_reply(&mut s).await, (option, REP_ERR_TLS_REQD));
    }
    send_option(&mut s, OPT_STARTTLS, &[]).await;
    assert_eq!(option_reply(&mut s).await, (OPT_STARTTLS, REP_ACK));
    let mut s = tls_connector(&pki).connect(ServerName::try_from("localhost").unwrap(), s).await.unwrap();

    // After TLS: the modern options are unknown to xapi-nbd.
    for (option, payload, expected) in [
        (OPT_GO, go_payload(EXPORT), REP_ERR_UNSUP),
        (OPT_INFO, go_payload(EXPORT), REP_ERR_UNSUP),
        (OPT_STRUCTURED_REPLY, vec![], REP_ERR_UNSUP),
        (OPT_SET_META_CONTEXT, vec![0; 8], REP_ERR_UNSUP),
        (OPT_LIST, vec![], REP_ERR_POLICY),
        (OPT_STARTTLS, vec![], REP_ERR_INVALID),
    ] {
        send_option(&mut s, option, &payload).await;
        assert_eq!(option_reply(&mut s).await, (option, expected), "option {}", option_name(option));
    }
    send_option(&mut s, OPT_EXPORT_NAME, EXPORT.as_bytes()).await;
    let mut export = [0; 10 + EXPORT_NAME_PADDING];
    s.read_exact(&mut export).await.unwrap();
    assert_eq!(export[..8], (data.len() as u64).to_be_bytes());
    assert_eq!(export[8..10], (TFLAG_HAS_FLAGS | TFLAG_READ_ONLY).to_be_bytes());
    assert!(export[10..].iter().all(|&b| b == 0));

    // READ works (simple reply); WRITE gets EPERM and, as in xapi-nbd, ends the session.
    s.write_all(&Request::new(CMD_READ, 0, 7, 4096, 4096).encode()).await.unwrap();
    let mut reply = [0; 16];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, encode_simple_reply(0, 7));
    let mut block = vec![0; 4096];
    s.read_exact(&mut block).await.unwrap();
    assert!(block[..] == data[4096..8192]);
    s.write_all(&Request::new(CMD_WRITE, 0, 8, 0, 512).encode()).await.unwrap();
    s.write_all(&[0; 512]).await.unwrap();
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, encode_simple_reply(EPERM, 8));
    assert_closed(&mut s).await;

    // EXPORT_NAME and ABORT in clear drop the link without a reply.
    for option in [OPT_EXPORT_NAME, OPT_ABORT] {
        let mut s = greet(addr).await;
        send_option(&mut s, option, EXPORT.as_bytes()).await;
        assert_closed(&mut s).await;
    }
}

#[tokio::test]
async fn xapi_compat_answers_flush_trim_block_status_and_unaligned_reads_with_einval() {
    let data = disk_bytes();
    let (addr, _stop) = start_server(ServerConfig::xapi(None), memory(&data, false)).await;
    for (command, offset, len) in
        [(CMD_FLUSH, 0, 0), (CMD_TRIM, 0, 512), (CMD_BLOCK_STATUS, 0, 512), (CMD_READ, 1, 512), (CMD_READ, 0, 100)]
    {
        let mut s = greet(addr).await;
        send_option(&mut s, OPT_EXPORT_NAME, EXPORT.as_bytes()).await;
        let mut export = [0; 10 + EXPORT_NAME_PADDING];
        s.read_exact(&mut export).await.unwrap();
        s.write_all(&Request::new(command, 0, 1, offset, len).encode()).await.unwrap();
        let mut reply = [0; 16];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, encode_simple_reply(EINVAL, 1), "command {command}");
        assert_closed(&mut s).await;
    }
}

#[tokio::test]
async fn our_client_falls_back_to_export_name_on_xapi_compat_over_tls() {
    let pki = Pki::new();
    let data = disk_bytes();
    let (addr, _stop) = start_xapi_over_tls(&pki, &data).await;

    let opts = options(addr, EXPORT).with_tls(pki.client_tls("server-cert.pem"));
    let client = Client::connect(&opts).await.unwrap();
    let info = client.info().clone();
    assert!(
        !info.used_go && !info.structured_replies && info.base_allocation.is_none() && info.read_only(),
        "{info:?}"
    );
    assert_eq!(info.size, data.len() as u64);
    let reads = (0..8u64).map(|i| client.read(i << 20, 1 << 20));
    assert!(futures::future::try_join_all(reads).await.unwrap().concat() == data);
    assert!(matches!(client.block_status(0, 4096).await, Err(Error::Unsupported(_))));

    let write = client.write(0, &[1; 512]).await.unwrap_err();
    assert_eq!(write.errno(), Some(EPERM), "{write}");
    // xapi-nbd ends the session after an error reply.
    let after = client.read(0, 512).await.unwrap_err();
    assert!(after.is_connection_lost(), "{after}");

    // Without TLS configured the client gets a typed refusal.
    assert!(matches!(Client::connect(&options(addr, EXPORT)).await, Err(Error::TlsRequired)));
}

#[tokio::test]
async fn xapi_compat_serves_sixteen_connections_and_drops_the_seventeenth() {
    let data = vec![7; 1 << 20];
    let (addr, _stop) = start_server(ServerConfig::xapi(None), memory(&data, false)).await;
    let opts = options(addr, EXPORT);
    let clients = futures::future::try_join_all((0..16).map(|_| Client::connect(&opts))).await.unwrap();
    let extra = Client::connect(&opts).await.unwrap_err();
    assert!(matches!(extra, Error::Closed(_)), "{extra}");

    // A closed connection frees its slot.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    let client = loop {
        match Client::connect(&opts).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("slots never freed: {e}"),
        }
    };
    assert!(client.read(0, 512).await.unwrap()[..] == data[..512]);

    // The multi-connection reader makes do with the connections the host grants.
    let (fresh, _stop2) = start_server(ServerConfig::xapi(None), memory(&data, false)).await;
    let config = MultiReaderConfig { connections: 20, ..Default::default() };
    let reader = MultiReader::connect(options(fresh, EXPORT), config).await.unwrap();
    assert_eq!(reader.connections(), 16);
    let pieces: Vec<_> = reader.read_ranges([(0, 1 << 20)]).collect().await;
    assert!(pieces.into_iter().map(|p| p.unwrap().1).collect::<Vec<_>>().concat() == data);
}

#[tokio::test]
async fn refused_export_names_are_typed_errors() {
    let (xapi, _stop1) = start_server(ServerConfig::xapi(None), memory(&[0; 4096], false)).await;
    let err = Client::connect(&options(xapi, "/other?session_id=OpaqueRef:bad")).await.unwrap_err();
    assert!(matches!(err, Error::ExportRefused(ref name) if name == "/other?session_id=OpaqueRef:bad"), "{err}");

    let (modern, _stop2) = start_server(ServerConfig::modern(None), memory(&[0; 4096], false)).await;
    let err = Client::connect(&options(modern, "nope")).await.unwrap_err();
    assert!(
        matches!(err, Error::OptionRefused { option: OPT_GO, reply: REP_ERR_UNKNOWN, ref message } if message.contains("no such VDI")),
        "{err}"
    );
}

#[tokio::test]
async fn modern_server_gives_structured_reads_holes_block_status_and_writes() {
    let data = disk_bytes();
    let export = memory(&data, true);
    let (addr, _stop) = start_server(ServerConfig::modern(None), export.clone()).await;
    let client = Client::connect(&options(addr, EXPORT)).await.unwrap();
    let info = client.info().clone();
    assert!(info.used_go && info.structured_replies && info.base_allocation.is_some() && !info.read_only(), "{info:?}");
    assert_eq!(info.block_size.map(|b| b.maximum), Some(DEFAULT_MAX_REQUEST));

    // The zero MiB comes back as an OFFSET_HOLE chunk; the client fills in zeros.
    let reads = (0..8u64).map(|i| client.read(i << 20, 1 << 20));
    assert!(futures::future::try_join_all(reads).await.unwrap().concat() == data);
    let extents = client.block_status(4096, 8192).await.unwrap();
    assert_eq!(extents, vec![xenvault_nbd::Extent { offset: 4096, len: 8192, flags: 0 }]);

    client.write(1 << 20, &[0xab; 4096]).await.unwrap();
    client.flush().await.unwrap();
    assert!(client.read(1 << 20, 4096).await.unwrap().iter().all(|&b| b == 0xab));
    assert!(export.contents()[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 0xab));
    let beyond = client.read(data.len() as u64, 512).await.unwrap_err();
    assert!(matches!(beyond, Error::OutOfRange { .. }), "{beyond}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn serve_stops_on_shutdown_and_closes_open_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let resolver = Arc::new(Named(memory(&[5; 65536], false)));
    let server = tokio::spawn(xenvault_nbd::serve(listener, ServerConfig::modern(None), resolver, async {
        let _ = stopped.await;
    }));
    let client = Client::connect(&options(addr, EXPORT)).await.unwrap();
    assert!(client.read(0, 4096).await.unwrap().iter().all(|&b| b == 5));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("serve did not return").unwrap().unwrap();
    assert!(client.read(0, 4096).await.unwrap_err().is_connection_lost());
    assert!(Client::connect(&options(addr, EXPORT)).await.is_err(), "still listening");
}

// ---- scripted misbehaving servers ----

enum Script {
    /// Sent instead of the greeting.
    Greeting(Vec<u8>),
    /// Sent as the answer to the first option.
    OptionReply(Vec<u8>),
    /// After an xapi-like handshake (plus STRUCTURED_REPLY when `structured`), sent in answer to the
    /// first request, given its handle; then the link is closed (nothing to send: kept open).
    Reply { structured: bool, bytes: fn(u64) -> Vec<u8> },
}

/// A one-connection fake server playing `script`.
async fn fake_server(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut greeting = NBD_MAGIC.to_be_bytes().to_vec();
        greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&FLAG_FIXED_NEWSTYLE.to_be_bytes());
        if let Script::Greeting(bytes) = &script {
            let _ = s.write_all(bytes).await;
            return;
        }
        s.write_all(&greeting).await.unwrap();
        let mut flags = [0; 4];
        s.read_exact(&mut flags).await.unwrap();
        loop {
            let mut h = [0; OptionHeader::SIZE];
            s.read_exact(&mut h).await.unwrap();
            let h = OptionHeader::decode(&h);
            let mut payload = vec![0; h.len as usize];
            s.read_exact(&mut payload).await.unwrap();
            match (&script, h.option) {
                (Script::OptionReply(bytes), _) => {
                    let _ = s.write_all(bytes).await;
                    return;
                }
                (Script::Reply { structured: true, .. }, OPT_STRUCTURED_REPLY) => {
                    s.write_all(&OptionReplyHeader::encode(h.option, REP_ACK, 0)).await.unwrap()
                }
                (_, OPT_EXPORT_NAME) => break,
                (_, option) => s.write_all(&OptionReplyHeader::encode(option, REP_ERR_UNSUP, 0)).await.unwrap(),
            }
        }
        let mut export = (1u64 << 20).to_be_bytes().to_vec();
        export.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_READ_ONLY).to_be_bytes());
        export.extend_from_slice(&[0; EXPORT_NAME_PADDING]);
        s.write_all(&export).await.unwrap();
        let mut req = [0; Request::SIZE];
        s.read_exact(&mut req).await.unwrap();
        if let Script::Reply { bytes, .. } = script {
            let reply = bytes(Request::decode(&req).handle);
            if reply.is_empty() {
                // Silent with the link open, until the client goes.
                let _ = s.read(&mut [0; 1]).await;
            }
            let _ = s.write_all(&reply).await;
        }
    });
    addr
}

async fn connect_and_read(script: Script) -> Error {
    let addr = fake_server(script).await;
    let client = match Client::connect(&options(addr, "disk")).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    client.read(0, 4096).await.unwrap_err()
}

fn chunk(kind: u16, handle: u64, body: &[u8]) -> Vec<u8> {
    let mut v = ChunkHeader { flags: REPLY_FLAG_DONE, kind, handle, len: body.len() as u32 }.encode().to_vec();
    v.extend_from_slice(body);
    v
}

#[tokio::test]
async fn malformed_server_input_gives_typed_errors() {
    let e = connect_and_read(Script::Greeting(b"NOTMAGIC........\0\x01".to_vec())).await;
    assert!(matches!(e, Error::BadMagic { what: "greeting", .. }), "{e}");
    let mut oldstyle = NBD_MAGIC.to_be_bytes().to_vec();
    oldstyle.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
    oldstyle.extend_from_slice(&[0; 2]);
    assert!(matches!(connect_and_read(Script::Greeting(oldstyle)).await, Error::Oldstyle));
    let e = connect_and_read(Script::Greeting(NBD_MAGIC.to_be_bytes().to_vec())).await;
    assert!(matches!(e, Error::Closed(_)), "{e}");

    let e = connect_and_read(Script::OptionReply(OptionReplyHeader::encode(OPT_LIST, REP_ACK, 0).to_vec())).await;
    assert!(
        matches!(e, Error::UnexpectedOptionReply { option: OPT_STRUCTURED_REPLY, for_option: OPT_LIST, .. }),
        "{e}"
    );
    let e = connect_and_read(Script::OptionReply(
        OptionReplyHeader::encode(OPT_STRUCTURED_REPLY, REP_INFO, 1 << 30).to_vec(),
    ))
    .await;
    assert!(matches!(e, Error::Oversized { .. }), "{e}");
    let mut bad = OptionReplyHeader::encode(OPT_STRUCTURED_REPLY, REP_ACK, 0);
    bad[0] ^= 0xff;
    let e = connect_and_read(Script::OptionReply(bad.to_vec())).await;
    assert!(matches!(e, Error::BadMagic { what: "option reply", .. }), "{e}");

    let e = connect_and_read(Script::Reply { structured: false, bytes: |_| vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0] })
        .await;
    assert!(matches!(e, Error::BadMagic { what: "reply", .. }), "{e}");
    let e =
        connect_and_read(Script::Reply { structured: false, bytes: |h| encode_simple_reply(0, h + 1).to_vec() }).await;
    assert!(matches!(e, Error::UnknownHandle(_)), "{e}");
    let e = connect_and_read(Script::Reply {
        structured: false,
        bytes: |h| [&encode_simple_reply(0, h)[..], &[1; 100]].concat(),
    })
    .await;
    assert!(matches!(e, Error::Closed(_)), "short read gave {e}");
    let e = connect_and_read(Script::Reply { structured: false, bytes: |h| chunk(REPLY_TYPE_NONE, h, &[]) }).await;
    assert!(matches!(e, Error::BadMagic { .. }), "structured reply without negotiation gave {e}");

    // With structured replies: chunks outside the request, simple replies to reads, oversized errors.
    let e = connect_and_read(Script::Reply {
        structured: true,
        bytes: |h| chunk(REPLY_TYPE_OFFSET_DATA, h, &[&4096u64.to_be_bytes()[..], &[1; 16]].concat()),
    })
    .await;
    assert!(matches!(e, Error::Malformed(_)), "{e}");
    let e = connect_and_read(Script::Reply {
        structured: true,
        bytes: |h| chunk(REPLY_TYPE_OFFSET_HOLE, h, &[&0u64.to_be_bytes()[..], &100u32.to_be_bytes()].concat()),
    })
    .await;
    assert!(matches!(e, Error::Malformed("structured read reply that does not cover the request")), "{e}");
    let e = connect_and_read(Script::Reply { structured: true, bytes: |h| encode_simple_reply(0, h).to_vec() }).await;
    assert!(matches!(e, Error::Malformed(_)), "{e}");
    let e = connect_and_read(Script::Reply {
        structured: true,
        bytes: |h| {
            [&ChunkHeader { flags: REPLY_FLAG_DONE, kind: REPLY_TYPE_ERROR, handle: h, len: u32::MAX }.encode()[..]]
                .concat()
        },
    })
    .await;
    assert!(matches!(e, Error::Oversized { .. }), "{e}");
    let e = connect_and_read(Script::Reply {
        structured: true,
        bytes: |h| chunk(REPLY_TYPE_ERROR, h, &[&EIO.to_be_bytes()[..], &4u16.to_be_bytes(), b"bad!"].concat()),
    })
    .await;
    assert!(matches!(e, Error::Server { errno: EIO, ref message } if message == "bad!"), "{e}");
}

#[tokio::test]
async fn fragmented_structured_read_is_reassembled() {
    // Second half as data (not final), then the first half as a hole (final).
    let addr = fake_server(Script::Reply {
        structured: true,
        bytes: |h| {
            let mut data =
                ChunkHeader { flags: 0, kind: REPLY_TYPE_OFFSET_DATA, handle: h, len: 8 + 2048 }.encode().to_vec();
            data.extend_from_slice(&2048u64.to_be_bytes());
            data.extend_from_slice(&[0x77; 2048]);
            [data, chunk(REPLY_TYPE_OFFSET_HOLE, h, &[&0u64.to_be_bytes()[..], &2048u32.to_be_bytes()].concat())]
                .concat()
        },
    })
    .await;
    let client = Client::connect(&options(addr, "disk")).await.unwrap();
    assert!(client.info().structured_replies);
    let got = client.read(0, 4096).await.unwrap();
    assert!(got[..2048].iter().all(|&b| b == 0) && got[2048..].iter().all(|&b| b == 0x77));
}

#[tokio::test]
async fn a_stuck_server_times_out_as_a_lost_connection() {
    // The fake answers nothing to the request and keeps the link open.
    let addr = fake_server(Script::Reply { structured: false, bytes: |_| Vec::new() }).await;
    let mut opts = options(addr, "disk");
    opts.request_timeout = Some(Duration::from_millis(200));
    let client = Client::connect(&opts).await.unwrap();
    let err = client.read(0, 4096).await.unwrap_err();
    assert!(err.is_connection_lost() && err.to_string().contains("timed out"), "{err}");
}

// ---- cut links ----

/// Forwards to `backend`; the first `cut` connections are closed after `after` bytes downstream.
async fn cutting_proxy(backend: SocketAddr, cut: usize, after: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0.. {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = TcpStream::connect(backend).await.unwrap();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (sr, mut sw) = server.into_split();
                let mut sr = sr.take(if i < cut { after } else { u64::MAX });
                tokio::select! {
                    _ = tokio::io::copy(&mut cr, &mut sw) => {}
                    _ = tokio::io::copy(&mut sr, &mut cw) => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_reader_reopens_a_cut_connection_once_then_gives_up() {
    let data = disk_bytes();
    let (backend, _stop) = start_server(ServerConfig::modern(None), memory(&data, false)).await;
    let config =
        MultiReaderConfig { connections: 2, piece_size: 256 << 10, in_flight: 6, reconnects: 1, ordered: true };

    let proxy = cutting_proxy(backend, 1, 1 << 20).await;
    let reader = MultiReader::connect(options(proxy, EXPORT), config.clone()).await.unwrap();
    let mut got = Vec::new();
    reader
        .read_ranges_with::<Error>([(0, data.len() as u64)], |_, b| {
            got.extend_from_slice(&b);
            Ok(())
        })
        .await
        .unwrap();
    assert!(got == data, "read through a cut link differs");

    // Every connection cut, and cut again after reopening: a clear error, not a hang.
    let proxy = cutting_proxy(backend, usize::MAX, 1 << 20).await;
    let reader = MultiReader::connect(options(proxy, EXPORT), config).await.unwrap();
    let err = reader.read_ranges_with::<Error>([(0, data.len() as u64)], |_, _| Ok(())).await.unwrap_err();
    assert!(matches!(err, Error::RetriesExhausted { attempts: 1, ref last, .. } if last.is_connection_lost()), "{err}");
}

#[test]
fn fuzz_entry_points_survive_truncated_and_corrupted_conversations() {
    // A server conversation our client accepts: xapi-like handshake, then a read reply.
    let mut server = NBD_MAGIC.to_be_bytes().to_vec();
    server.extend_from_slice(&IHAVEOPT.to_be_bytes());
    server.extend_from_slice(&FLAG_FIXED_NEWSTYLE.to_be_bytes());
    for option in [OPT_STRUCTURED_REPLY, OPT_GO] {
        server.extend_from_slice(&OptionReplyHeader::encode(option, REP_ERR_UNSUP, 0));
    }
    server.extend_from_slice(&4096u64.to_be_bytes());
    server.extend_from_slice(&3u16.to_be_bytes());
    server.extend_from_slice(&[0; EXPORT_NAME_PADDING]);
    server.extend_from_slice(&encode_simple_reply(0, 1));
    server.extend_from_slice(&[9; 4096]);
    server.extend_from_slice(&chunk(
        REPLY_TYPE_OFFSET_HOLE,
        2,
        &[&0u64.to_be_bytes()[..], &4096u32.to_be_bytes()].concat(),
    ));

    // A client conversation: flags, GO, then read, write, block status and disconnect.
    let mut client = vec![1, 0, 0, 0, 1];
    for (option, payload) in [(OPT_STRUCTURED_REPLY, vec![]), (OPT_GO, go_payload("disk"))] {
        client.extend_from_slice(&OptionHeader::encode(option, payload.len() as u32));
        client.extend_from_slice(&payload);
    }
    client.extend_from_slice(&Request::new(CMD_READ, 0, 1, 0, 4096).encode());
    client.extend_from_slice(&Request::new(CMD_WRITE, 0, 2, 512, 16).encode());
    client.extend_from_slice(&[3; 16]);
    client.extend_from_slice(&Request::new(CMD_BLOCK_STATUS, 0, 3, 0, 4096).encode());
    client.extend_from_slice(&Request::new(CMD_DISC, 0, 4, 0, 0).encode());

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for (script, run) in
        [(&server, xenvault_nbd::fuzzing::client as fn(&[u8])), (&client, xenvault_nbd::fuzzing::server)]
    {
        for cut in (0..script.len()).step_by(7) {
            run(&script[..cut]);
        }
        for _ in 0..300 {
            let mut corrupted = script.clone();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % corrupted.len() as u64) as usize;
            corrupted[at] ^= (seed >> 32) as u8 | 1;
            run(&corrupted);
        }
    }
    // Flag byte 0 switches the server to XapiCompat: the same script must be survivable there too.
    client[0] = 0;
    xenvault_nbd::fuzzing::server(&client);
}
