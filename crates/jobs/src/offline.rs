//! Offline backups: the VM is shut down cleanly before its backup and started again
//! afterwards, whatever became of the backup. A VM that was already halted is backed up
//! as it is and left halted.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use xenvault_engine::Value;
use xenvault_pool::host::Host;
use xenvault_pool::records::Vm;

/// How long a guest gets to shut down before the shutdown is cancelled and the VM fails.
pub const CLEAN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(600);

/// What the offline setting did before the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// The VM was shut down: it must be started again.
    ShutDown,
    /// The VM was halted already: it stays so.
    AlreadyHalted,
}

/// Shuts `vm` down cleanly (xapi's `VM.clean_shutdown`, asking the guest), waiting at most
/// `timeout` and no longer than `cancel` allows. Refuses VMs neither running nor halted.
/// A shutdown that failed may still have halted the guest: see [`halted_after_failure`].
pub async fn shut_down(host: &Host, vm: &Vm, timeout: Duration, cancel: &CancellationToken) -> Result<Before, String> {
    let vm = host.vm(&vm.reference).await.map_err(|e| format!("reading the VM's power state: {e}"))?;
    match vm.power_state.as_str() {
        "Halted" => return Ok(Before::AlreadyHalted),
        "Running" => {}
        other => {
            return Err(format!(
                "an offline backup shuts down a running VM; this one is {}: resume or start it first",
                other.to_lowercase()
            ));
        }
    }
    // The task is cancelled on the host when the wait is over, so the guest is not halted
    // later behind our back.
    let stop = cancel.child_token();
    let args = [Value::from(vm.reference.as_str())];
    let shutdown = host.client().call_and_wait("VM.clean_shutdown", &args, |_| {}, Some(&stop));
    tokio::pin!(shutdown);
    let result = tokio::select! {
        result = &mut shutdown => result.map_err(|e| e.to_string()),
        () = tokio::time::sleep(timeout) => {
            stop.cancel();
            let late = shutdown.await;
            late.map_err(|e| format!("the guest did not shut down within {} s ({e})", timeout.as_secs()))
        }
    };
    match result {
        Ok(_) => Ok(Before::ShutDown),
        Err(e) => Err(format!("clean shutdown failed: {e}")),
    }
}

/// Whether a VM whose shutdown failed (cancelled, timed out) halted all the same: then it
/// must be started again like one we shut down.
pub async fn halted_after_failure(host: &Host, vm: &Vm) -> bool {
    host.vm(&vm.reference).await.is_ok_and(|vm| vm.power_state == "Halted")
}

/// Starts `vm` again (not paused, not forced).
pub async fn start(host: &Host, vm: &Vm) -> Result<(), String> {
    host.call("VM.start", vec![Value::from(vm.reference.as_str()), Value::Bool(false), Value::Bool(false)])
        .await
        .map(drop)
        .map_err(|e| format!("could not start the VM again: {e}"))
}
