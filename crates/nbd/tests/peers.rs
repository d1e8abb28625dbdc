//! Our client and server against real NBD peers: qemu-nbd, nbdkit, nbdinfo, nbdcopy, qemu-img.

mod common;

use std::process::Command;

use common::*;
use xenvault_nbd::{
    Client, ConnectOptions, Error, MultiReader, MultiReaderConfig, ServerConfig, ServerTrust, TlsOptions,
};

#[tokio::test]
async fn client_reads_qemu_nbd_tls_export_with_go_byte_exactly() {
    let pki = Pki::new();
    let data = disk_bytes();
    let file = sparse_file(pki.path(), &data);
    let (_qemu, port) = qemu_nbd_tls(&pki, &file, "disk", 2);

    let opts = ConnectOptions::new("127.0.0.1", port, "disk").with_tls(pki.client_tls("ca-cert.pem"));
    let client = Client::connect(&opts).await.unwrap();
    let info = client.info().clone();
    assert!(info.used_go && info.structured_replies && info.read_only(), "{info:?}");
    assert!(info.base_allocation.is_some(), "{info:?}");
    assert_eq!(info.size, data.len() as u64);

    // Several reads in flight at once on one connection, across data and holes.
    let reads = (0..8u64).map(|i| client.read(i << 20, 1 << 20));
    let got: Vec<u8> = futures::future::try_join_all(reads).await.unwrap().concat();
    assert!(got == data, "qemu-nbd data differs");

    let extents = client.block_status(3 << 20, 2 << 20).await.unwrap();
    let first = extents.first().unwrap();
    assert_eq!(first.offset, 3 << 20);
    assert!(first.is_zero() && first.len >= 1 << 20, "{extents:?}");
    client.close().await.unwrap();

    // The certificate itself, as get_nbd_info hands it out, works as a pin.
    let pinned = ConnectOptions::new("127.0.0.1", port, "disk").with_tls(pki.client_tls("server-cert.pem"));
    let client = Client::connect(&pinned).await.unwrap();
    assert!(client.read(0, 4096).await.unwrap()[..] == data[..4096]);
    client.close().await.unwrap();

    // A certificate from another CA is refused.
    let other = Pki::new();
    let wrong = ConnectOptions::new("127.0.0.1", port, "disk").with_tls(other.client_tls("ca-cert.pem"));
    assert!(matches!(Client::connect(&wrong).await, Err(Error::Tls(_))));
    // So is the right CA under another name, while insecure mode (asked for) accepts anything.
    let mut misnamed = pki.client_tls("ca-cert.pem");
    misnamed.server_name = "other.example".into();
    let misnamed = ConnectOptions::new("127.0.0.1", port, "disk").with_tls(misnamed);
    assert!(matches!(Client::connect(&misnamed).await, Err(Error::Tls(_))));
    let insecure = TlsOptions { server_name: "other.example".into(), trust: ServerTrust::Insecure };
    let insecure = ConnectOptions::new("127.0.0.1", port, "disk").with_tls(insecure);
    Client::connect(&insecure).await.unwrap().close().await.unwrap();
}

#[tokio::test]
async fn multi_reader_reads_qemu_nbd_tls_over_four_connections() {
    let pki = Pki::new();
    let data = disk_bytes();
    let file = sparse_file(pki.path(), &data);
    let (_qemu, port) = qemu_nbd_tls(&pki, &file, "disk", 4);

    let opts = ConnectOptions::new("127.0.0.1", port, "disk").with_tls(pki.client_tls("ca-cert.pem"));
    let config = MultiReaderConfig { connections: 4, piece_size: 256 << 10, in_flight: 8, ..Default::default() };
    let reader = MultiReader::connect(opts, config).await.unwrap();
    // Unordered input ranges come back in the order asked, each cut into pieces.
    let ranges = [(5 << 20, 3 << 20), (0, 5 << 20)];
    let mut got = Vec::new();
    let mut offsets = Vec::new();
    reader
        .read_ranges_with::<Error>(ranges, |offset, bytes| {
            offsets.push(offset);
            got.push((offset, bytes));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(offsets.first(), Some(&(5 << 20)));
    assert_eq!(offsets.len(), 32);
    got.sort_by_key(|(o, _)| *o);
    let whole: Vec<u8> = got.into_iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(whole == data, "multi-connection read differs");
    reader.close().await;
}

#[tokio::test]
async fn client_uses_export_name_with_zero_padding_on_nbdkit_masking_like_xapi() {
    let pki = Pki::new();
    let data = disk_bytes();
    let file = sparse_file(pki.path(), &data);
    let port = free_port();
    // Like xapi: TLS required, no structured replies, only FIXED_NEWSTYLE advertised (so the 124
    // zero bytes follow EXPORT_NAME's reply).
    let _nbdkit = spawn_listening(
        Command::new("nbdkit")
            .args(["--foreground", "--exit-with-parent", "--no-sr", "--mask-handshake=1", "--tls=require"])
            .arg(format!("--tls-certificates={}", pki.path().display()))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "file"])
            .arg(format!("file={}", file.display())),
        port,
    );
    let mut opts = ConnectOptions::new("127.0.0.1", port, "").with_tls(pki.client_tls("ca-cert.pem"));
    opts.try_go = false;
    let client = Client::connect(&opts).await.unwrap();
    let info = client.info();
    assert!(!info.used_go && !info.structured_replies && info.base_allocation.is_none(), "{info:?}");
    assert!(client.read(0, data.len() as u32).await.unwrap()[..] == data[..]);

    // Without TLS the server's TLS_REQD becomes a typed error.
    let plain = ConnectOptions::new("127.0.0.1", port, "");
    assert!(matches!(Client::connect(&plain).await, Err(Error::TlsRequired)));
}

fn nbdinfo(uri: &str, extra: &[&str]) -> String {
    let out = Command::new("nbdinfo").args(extra).arg(uri).output().unwrap();
    assert!(out.status.success(), "nbdinfo {uri}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn nbdcopy_to_file(uri: &str, out: &std::path::Path) -> Vec<u8> {
    let status = Command::new("nbdcopy").arg(uri).arg(out).status().unwrap();
    assert!(status.success(), "nbdcopy {uri}");
    std::fs::read(out).unwrap()
}

fn qemu_img_convert(image_opts: &str, tls_object: &str, out: &std::path::Path) -> Result<Vec<u8>, String> {
    let result = Command::new("qemu-img")
        .args(["convert", "--object", tls_object, "--image-opts", image_opts, "-O", "raw"])
        .arg(out)
        .output()
        .unwrap();
    if !result.status.success() {
        return Err(String::from_utf8_lossy(&result.stderr).into_owned());
    }
    Ok(std::fs::read(out).unwrap())
}

/// Runs `nbdinfo FLAG` and `nbdcopy` (into `work`) on our server's `EXPORT` over TLS.
async fn nbdinfo_and_nbdcopy(port: u16, pki: &Pki, flag: &'static str, work: &tempfile::TempDir) -> (String, Vec<u8>) {
    // The xapi-style export name, percent-encoded as the URI path.
    let name = EXPORT.replace('?', "%3F").replace('=', "%3D").replace(':', "%3A");
    let uri = format!("nbds://127.0.0.1:{port}/{name}?tls-certificates={}", pki.path().display());
    let out = work.path().join("copy.raw");
    tokio::task::spawn_blocking(move || (nbdinfo(&uri, &[flag]), nbdcopy_to_file(&uri, &out))).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_nbdcopy_qemu_img_read_xapi_compat_server_over_tls() {
    let pki = Pki::new();
    let data = disk_bytes();
    let (addr, _stop) = start_xapi_over_tls(&pki, &data).await;
    let work = tempfile::tempdir().unwrap();
    let (info, copy) = nbdinfo_and_nbdcopy(addr.port(), &pki, "--json", &work).await;
    assert!(info.contains(&format!("\"export-size\": {}", data.len())), "{info}");
    assert!(info.contains("\"is_read_only\": true"), "{info}");
    assert!(copy == data, "nbdcopy from XapiCompat differs");

    // xapi answers NBD_OPT_LIST with ERR_POLICY, and qemu (which lists exports after falling back
    // to EXPORT_NAME) treats that as fatal: qemu-img cannot read a real host either.
    let opts = qemu_opts(addr.port());
    let tls = qemu_tls_object(&pki);
    let out = work.path().join("qemu.raw");
    let err = tokio::task::spawn_blocking(move || qemu_img_convert(&opts, &tls, &out)).await.unwrap().unwrap_err();
    assert!(err.contains("Denied by server for option 3 (list)"), "{err}");
}

fn qemu_tls_object(pki: &Pki) -> String {
    format!("tls-creds-x509,id=t0,endpoint=client,dir={}", pki.path().display())
}

fn qemu_opts(port: u16) -> String {
    format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export={EXPORT},tls-creds=t0,tls-hostname=localhost"
    )
}

/// 8 MiB export reporting its zero MiBs as holes through `base:allocation`.
struct Sparse(xenvault_nbd::fuzzing::MemoryExport, Vec<u8>);

impl xenvault_nbd::Export for Sparse {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, len: u32) -> futures::future::BoxFuture<'_, std::io::Result<bytes::Bytes>> {
        self.0.read_at(offset, len)
    }
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> futures::future::BoxFuture<'_, std::io::Result<Vec<xenvault_nbd::Extent>>> {
        let mib = 1u64 << 20;
        let extents = (offset / mib..(offset + u64::from(len)).div_ceil(mib))
            .map(|i| {
                let zero = self.1.chunks(mib as usize).nth(i as usize).is_some_and(|c| c.iter().all(|&b| b == 0));
                xenvault_nbd::Extent { offset: i * mib, len: mib, flags: if zero { 3 } else { 0 } }
            })
            .collect();
        Box::pin(async move { Ok(extents) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_map_nbdcopy_qemu_img_read_modern_server_over_tls() {
    let pki = Pki::new();
    let data = disk_bytes();
    let export =
        std::sync::Arc::new(Sparse(xenvault_nbd::fuzzing::MemoryExport::new(data.clone(), false), data.clone()));
    let (addr, _stop) = start_server(ServerConfig::modern(Some(pki.server_config())), export).await;
    let work = tempfile::tempdir().unwrap();
    let (map, copy) = nbdinfo_and_nbdcopy(addr.port(), &pki, "--map", &work).await;
    // nbdinfo merges runs: data 0-3 MiB, hole 3-4, data 4-7, hole 7-8.
    let runs: Vec<Vec<&str>> = map.lines().map(|l| l.split_whitespace().take(3).collect()).collect();
    let expected =
        [["0", "3145728", "0"], ["3145728", "1048576", "3"], ["4194304", "3145728", "0"], ["7340032", "1048576", "3"]];
    assert_eq!(runs, expected.map(|r| r.to_vec()), "{map}");
    assert!(copy == data, "nbdcopy from Modern differs");

    let (opts, tls) = (qemu_opts(addr.port()), qemu_tls_object(&pki));
    let out = work.path().join("qemu.raw");
    let converted = tokio::task::spawn_blocking(move || qemu_img_convert(&opts, &tls, &out)).await.unwrap().unwrap();
    assert!(converted == data, "qemu-img convert from Modern differs");
}
