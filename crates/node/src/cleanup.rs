//! What a backup run left on its pool when the process running it died: the snapshots it
//! tagged (not kept as a base for the next incremental), the ones it was taking (found by
//! the intent it recorded while it held the VM's backup lock), and that lock. The server
//! cleans a whole run after its own crash; a node cleans one VM whose previous holder's
//! lease expired, before backing it up again.

use xenvault_engine::vm_lock;
use xenvault_pool::Host;
use xenvault_pool::hygiene::{self, LOCK_KEY, TAG_JOB};
use xenvault_pool::records::Vm;
use xenvault_pool::snapshot;

/// Removes what run `run_id` left on the pool, for every VM or only the VM `only_vm`
/// (uuid); returns the uuids of the snapshots removed.
pub async fn remove_snapshots_of_run(
    host: &Host,
    run_id: &str,
    only_vm: Option<&str>,
) -> Result<Vec<String>, xenvault_pool::Error> {
    let vms = host.vms().await?;
    let chosen = |vm: &Vm| match only_vm {
        None => true,
        Some(uuid) if vm.is_a_snapshot => vms.iter().any(|of| of.reference == vm.snapshot_of && of.uuid == uuid),
        Some(uuid) => vm.uuid == uuid,
    };
    let mut removed = Vec::new();
    for vm in vms.iter().filter(|vm| chosen(vm)) {
        let ours = hygiene::is_ours(&vm.other_config);
        if vm.is_a_snapshot && ours && !hygiene::is_base(&vm.other_config) && tag_names_run(vm, TAG_JOB, run_id) {
            snapshot::destroy(host, &vm.reference).await;
            removed.push(vm.uuid.clone());
        } else if let Some(lock) = lock_held_by(vm, run_id) {
            // Taken but never tagged: found by the intent the run recorded while it held the lock.
            let left = snapshot::left_by_intent(host, vm).await?;
            snapshot::remove_left_by_intent(host, vm, &left).await?;
            removed.extend(left.into_iter().map(|s| s.uuid));
            // The dead run's lock, so that the next backup need not wait for it to go stale.
            vm_lock::remove_if_held(host, &vm.reference, &lock).await?;
        }
    }
    Ok(removed)
}

fn tag_names_run(vm: &Vm, key: &str, run_id: &str) -> bool {
    vm.other_config.get(key).is_some_and(|v| v == run_id)
}

/// The VM's backup lock when it names this run as its holder (the lock's `job` is the run id).
fn lock_held_by(vm: &Vm, run_id: &str) -> Option<String> {
    let value = vm.other_config.get(LOCK_KEY).filter(|_| !vm.is_a_snapshot)?;
    let holder = serde_json::from_str::<serde_json::Value>(value).ok()?;
    (holder["job"] == run_id).then(|| value.clone())
}
