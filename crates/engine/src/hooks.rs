//! Pre- and post-snapshot commands, run by `sh -c` with the VM's identity in the
//! environment (e.g. to flush a database the guest tools cannot quiesce). They get
//! none of our secrets: every inherited `XENVAULT_*` variable and every variable that
//! looks like a credential is removed from their environment.

use std::ffi::OsString;

use crate::error::Error;
use xenvault_pool::records::Vm;

pub struct HookContext<'a> {
    pub pool: &'a str,
    pub job_id: &'a str,
    pub vm: &'a Vm,
    pub snapshot_uuid: Option<&'a str>,
}

pub async fn run(phase: &str, command: &str, ctx: &HookContext<'_>) -> Result<(), Error> {
    let status = hook_command(phase, command, ctx, std::env::vars_os())
        .status()
        .await
        .map_err(|e| Error::Hook(format!("{phase} command could not start: {e}")))?;
    if status.success() { Ok(()) } else { Err(Error::Hook(format!("{phase} command failed ({status})"))) }
}

/// `sh -c command` with the non-secret part of `inherited` and the VM's identity.
fn hook_command(
    phase: &str,
    command: &str,
    ctx: &HookContext<'_>,
    inherited: impl Iterator<Item = (OsString, OsString)>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.env_clear()
        .envs(inherited.filter(|(name, _)| name.to_str().is_some_and(|n| !is_secret(n))))
        .arg("-c")
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
    cmd
}

/// Repository passphrases, pool passwords, cloud keys and tokens: nothing a hook needs.
fn is_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("XENVAULT_")
        || ["PASSWORD", "PASSPHRASE", "SECRET", "TOKEN", "CONNECTION_STRING", "_KEY", "ACCESS_KEY"]
            .iter()
            .any(|word| upper.contains(word))
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

    #[tokio::test]
    async fn hooks_get_no_secrets() {
        let record = Value::Struct([("uuid".to_owned(), Value::from("u-1"))].into_iter().collect());
        let vm = Vm::parse("OpaqueRef:x", &record);
        let ctx = HookContext { pool: "lab", job_id: "j", vm: &vm, snapshot_uuid: None };
        let inherited = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("XENVAULT_PASSPHRASE", "repo-secret".into()),
            ("XENVAULT_POOL_PASSWORD", "pool-secret".into()),
            ("AWS_SECRET_ACCESS_KEY", "cloud-secret".into()),
            ("BACKUP_LABEL", "nightly".into()),
        ];
        let inherited = inherited.into_iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let out = hook_command("pre", "env", &ctx, inherited).output().await.unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(env.contains("BACKUP_LABEL=nightly") && env.contains("XENVAULT_VM_UUID=u-1"), "{env}");
        assert!(!env.contains("secret"), "a secret reached the hook: {env}");
    }

    #[test]
    fn secrets_are_recognised_and_ordinary_variables_kept() {
        for name in [
            "XENVAULT_PASSPHRASE",
            "XENVAULT_POOL_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "AWS_SESSION_TOKEN",
            "AZURE_STORAGE_KEY",
            "AZURE_STORAGE_CONNECTION_STRING",
            "my_db_password",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["PATH", "HOME", "LANG", "KEYBOARD_LAYOUT"] {
            assert!(!is_secret(name), "{name}");
        }
    }
}
