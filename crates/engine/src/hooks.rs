//! Pre- and post-snapshot commands, run by `sh -c` with the VM's identity in the
//! environment (e.g. to flush a database the guest tools cannot quiesce).

use crate::error::Error;
use crate::records::Vm;

pub struct HookContext<'a> {
    pub pool: &'a str,
    pub job_id: &'a str,
    pub vm: &'a Vm,
    pub snapshot_uuid: Option<&'a str>,
}

pub async fn run(phase: &str, command: &str, ctx: &HookContext<'_>) -> Result<(), Error> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("XENVAULT_PHASE", phase)
        .env("XENVAULT_POOL", ctx.pool)
        .env("XENVAULT_JOB_ID", ctx.job_id)
        .env("XENVAULT_VM_UUID", &ctx.vm.uuid)
        .env("XENVAULT_VM_NAME", &ctx.vm.name_label)
        .env("XENVAULT_VM_REF", &ctx.vm.reference)
        .env("XENVAULT_SNAPSHOT_UUID", ctx.snapshot_uuid.unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = cmd
        .status()
        .await
        .map_err(|e| Error::Hook(format!("{phase} command could not start: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Hook(format!("{phase} command failed ({status})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvault_xapi_wire::Value;

    #[tokio::test]
    async fn hook_sees_vm_identity_and_failures_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let record = Value::Struct(
            [("uuid".to_owned(), Value::from("u-1")), ("name_label".to_owned(), Value::from("web"))]
                .into_iter()
                .collect(),
        );
        let vm = Vm::parse("OpaqueRef:x", &record);
        let ctx = HookContext { pool: "lab", job_id: "j", vm: &vm, snapshot_uuid: None };
        let cmd = format!("echo \"$XENVAULT_PHASE $XENVAULT_VM_UUID $XENVAULT_VM_NAME\" > {}", out.display());
        run("pre", &cmd, &ctx).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "pre u-1 web");
        assert!(run("post", "exit 3", &ctx).await.is_err());
    }
}
