//! Pool metadata backup and restore against the simulator: the database goes into the
//! repository as its own kind of restore point, comes back through the host's dry run
//! and then the real restore, after which the pool holds the records as dumped (as xapi
//! does: the backup's slaves are forgotten). Broken dumps are refused with clear errors.

mod common;

use common::{Pool, VM, call_str, count, pool};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;
use xenvault_engine::pool_metadata::{self, RestoreOutcome, SOURCE_KIND};
use xenvault_pool::config::{PoolEntry, PoolLogin, ServerTrust};
use xenvault_pool::host::Host;
use xenvault_types::progress::HiddenProgress;
use xenvault_xapi::Value;

fn login(p: &Pool) -> PoolLogin {
    let fingerprint = xenvault_pool::config::fingerprint_of_pem(&p.server.cert_pem).unwrap();
    PoolLogin {
        name: "test".into(),
        entry: PoolEntry {
            url: p.server.url.clone(),
            user: "root".into(),
            tls: ServerTrust::pin_sha256_hex(&fingerprint).unwrap(),
        },
        password: p.server.password.clone(),
    }
}

async fn back_up(p: &Pool) -> pool_metadata::MetadataBackupReport {
    pool_metadata::backup(&p.host, &p.repo, vec!["nightly".into()], &CancellationToken::new(), HiddenProgress::shared())
        .await
        .unwrap()
}

async fn vm_by_name(client: &xenvault_xapi::Client, name: &str) -> String {
    let found = client.call("VM.get_by_name_label", &[Value::from(name)]).await.unwrap();
    found.as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap().to_owned()
}

/// The pool master's reference.
async fn master(client: &xenvault_xapi::Client) -> String {
    let pools = client.call("pool.get_all", &[]).await.unwrap();
    let pool = pools.as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap().to_owned();
    call_str(client, "pool.get_master", &[&pool]).await
}

/// name_label of every VM, by reference.
async fn vm_names(client: &xenvault_xapi::Client) -> BTreeMap<String, String> {
    let all = client.call("VM.get_all_records", &[]).await.unwrap();
    let Value::Struct(records) = all else { panic!("VM.get_all_records returned {all:?}") };
    records.into_iter().map(|(r, rec)| (r, rec.get("name_label").unwrap().as_str().unwrap().to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_brings_the_records_back_as_dumped() {
    let p = pool().await;
    let report = back_up(&p).await;
    let points = pool_metadata::list(&p.repo, Some(&report.info.pool_uuid)).await.unwrap();
    assert_eq!(points.len(), 1);
    let (point, info) = &points[0];
    assert_eq!((point.source.kind.as_str(), point.id.as_str()), (SOURCE_KIND, report.restore_point.as_str()));
    assert_eq!(info, &report.info);
    assert_eq!(info.xapi_version, "24.19");
    assert_eq!(info.master, "xenvault-sim-1");
    assert!(point.tags.contains(&"nightly".to_owned()));
    let names_then = vm_names(&p.client).await;
    let hosts_then = count(&p.client, "host").await;
    let master_uuid = call_str(&p.client, "host.get_uuid", &[&master(&p.client).await]).await;

    // The pool changes after the backup.
    let vm = vm_by_name(&p.client, VM).await;
    p.client.call("VM.set_name_label", &[Value::from(vm.as_str()), Value::from("renamed")]).await.unwrap();
    let sr = p.client.call("SR.get_all", &[]).await.unwrap().as_array().unwrap()[0].clone();
    let mut new_vdi = BTreeMap::new();
    new_vdi.insert("SR".to_owned(), sr);
    new_vdi.insert("name_label".to_owned(), Value::from("added after the backup"));
    new_vdi.insert("virtual_size".to_owned(), Value::Int(1 << 20));
    let added = p.client.call("VDI.create", &[Value::Struct(new_vdi)]).await.unwrap();
    let vdis_changed = count(&p.client, "VDI").await;

    // A dry run changes nothing.
    let dry = pool_metadata::restore(
        &p.host,
        &p.repo,
        point,
        false,
        false,
        &CancellationToken::new(),
        HiddenProgress::shared(),
    )
    .await
    .unwrap();
    assert_eq!(dry.outcome, RestoreOutcome::Checked);
    assert!(dry.same_pool);
    assert_eq!(call_str(&p.client, "VM.get_name_label", &[&vm]).await, "renamed");

    let applied = pool_metadata::restore(
        &p.host,
        &p.repo,
        point,
        true,
        true,
        &CancellationToken::new(),
        HiddenProgress::shared(),
    )
    .await
    .unwrap();
    assert_eq!(applied.outcome, RestoreOutcome::Restarted);

    // The restart ended every session: log in again.
    let again = xenvault_pool::host::connect(&login(&p)).await.unwrap();
    assert_eq!(call_str(&again, "VM.get_name_label", &[&vm]).await, VM);
    let gone = again.call("VDI.get_record", &[added]).await.unwrap_err();
    assert_eq!(gone.failure().unwrap().code, "HANDLE_INVALID");
    assert_eq!(count(&again, "VDI").await, vdis_changed - 1);
    // xapi forgets the backup's slaves; the master keeps this host's uuid.
    assert_eq!(count(&again, "host").await, 1);
    assert!(hosts_then > 1);
    assert_eq!(call_str(&again, "host.get_uuid", &[&master(&again).await]).await, master_uuid);
    assert_eq!(vm_names(&again).await, names_then);

    // The restored pool keeps working: its database backs up again.
    let host = Host::connect(&login(&p)).await.unwrap();
    let second = pool_metadata::backup(&host, &p.repo, vec![], &CancellationToken::new(), HiddenProgress::shared())
        .await
        .unwrap();
    assert_eq!(second.info.pool_uuid, report.info.pool_uuid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_dumps_are_refused_clearly() {
    let p = pool().await;
    let report = back_up(&p).await;
    let point = p.repo.restore_point(&report.restore_point).await.unwrap();
    let disk = point.disk(Some(pool_metadata::DUMP_NAME)).unwrap();
    let reader = xenvault_repo::DiskReader::new(&p.repo, disk).await.unwrap();
    let mut dump = vec![0; reader.size() as usize];
    reader.read_at(0, &mut dump).await.unwrap();
    let text = String::from_utf8(dump).unwrap();

    let put = |body: String, dry_run: bool| {
        let len = body.len() as u64;
        let body = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(body)) });
        p.client.pool_restore_database(body, len, dry_run)
    };
    let code = |e: xenvault_xapi::Error| {
        let f = e.failure().unwrap_or_else(|| panic!("not a XenAPI failure: {e}"));
        (f.code.clone(), f.params.clone())
    };

    // The host checks what the dry run is for: it is a whole dump of its schema...
    let truncated = text[..text.len() / 2].to_owned();
    let (c, params) = code(put(truncated, true).await.unwrap_err());
    assert_eq!(c, "INTERNAL_ERROR");
    assert!(params[0].contains("truncated"), "{params:?}");
    let other_version = text.replace(r#"key="schema_minor_vsn" value="786""#, r#"key="schema_minor_vsn" value="35""#);
    assert_eq!(code(put(other_version, true).await.unwrap_err()).0, "RESTORE_INCOMPATIBLE_VERSION");
    // ... and this host has every physical interface of the backup's master.
    let foreign_nic = text.replace(r#"device="eth0""#, r#"device="eth7""#);
    assert_eq!(
        code(put(foreign_nic, true).await.unwrap_err()),
        ("RESTORE_TARGET_MISSING_DEVICE".into(), vec!["eth7".into()])
    );
    // A refused real restore changes nothing either.
    let (c, _) = code(put("<database>".into(), false).await.unwrap_err());
    assert_eq!(c, "INTERNAL_ERROR");
    assert!(vm_by_name(&p.client, VM).await.starts_with("OpaqueRef:"));

    // A restore point of another kind is not sent to the host.
    let vm_point = common::back_up(&p, xenvault_engine::strategy::Level::Full).await;
    let wrong = pool_metadata::restore(
        &p.host,
        &p.repo,
        &vm_point,
        false,
        false,
        &CancellationToken::new(),
        HiddenProgress::shared(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(wrong.contains("not pool metadata"), "{wrong}");
}
