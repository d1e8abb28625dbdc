//! `Async.*` calls and xapi tasks.

use tokio_util::sync::CancellationToken;
use xenvault_xapi_wire::{Failure, TASK_CANCELLED, Value, xmlrpc};

use crate::{Client, Error, Ref};

/// `task.get_status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Pending,
    Success,
    Failure,
    Cancelling,
    Cancelled,
}

impl TaskStatus {
    fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "pending" => TaskStatus::Pending,
            "success" => TaskStatus::Success,
            "failure" => TaskStatus::Failure,
            "cancelling" => TaskStatus::Cancelling,
            "cancelled" => TaskStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A task's result text is an XML-RPC `<value>` document whatever the transport ("" when
/// the call returns nothing); anything else is kept as a plain string.
pub fn decode_task_result(text: &str) -> Result<Value, Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("<value") { Ok(xmlrpc::parse_value(text)?) } else { Ok(Value::Str(text.to_owned())) }
}

impl Client {
    /// Starts `Async.<method>` and returns its task.
    pub async fn call_async(&self, method: &str, params: &[Value]) -> Result<Ref, Error> {
        Ref::from_value(&self.call(&format!("Async.{method}"), params).await?)
    }

    /// Creates a task to attach to an HTTP transfer (`task_id=`), so it reports progress and
    /// can be cancelled.
    pub async fn create_task(&self, label: &str, description: &str) -> Result<Ref, Error> {
        Ref::from_value(&self.call("task.create", &[label.into(), description.into()]).await?)
    }

    pub async fn task_status(&self, task: &Ref) -> Result<TaskStatus, Error> {
        let status = self.call("task.get_status", &[task.into()]).await?;
        status
            .as_str()
            .and_then(TaskStatus::parse)
            .ok_or_else(|| Error::malformed(format!("unknown task status {status:?}")))
    }

    pub async fn cancel_task(&self, task: &Ref) -> Result<(), Error> {
        self.call("task.cancel", &[task.into()]).await.map(drop)
    }

    /// Polls `task` until it ends, reporting progress (0.0 to 1.0), and destroys it. When
    /// `cancel` fires the task is cancelled on the host and [`Error::Cancelled`] returned
    /// once it stopped. The result is decoded from its XML-RPC text.
    pub async fn wait_task(
        &self,
        task: &Ref,
        mut progress: impl FnMut(f64),
        cancel: Option<&CancellationToken>,
    ) -> Result<Value, Error> {
        let outcome = self.poll_task(task, &mut progress, cancel).await;
        // A task left behind clutters the host; failing to destroy it changes nothing else.
        if let Err(e) = self.call("task.destroy", &[task.into()]).await {
            tracing::debug!(%task, error = %e, "task.destroy failed");
        }
        outcome
    }

    async fn poll_task(
        &self,
        task: &Ref,
        progress: &mut impl FnMut(f64),
        cancel: Option<&CancellationToken>,
    ) -> Result<Value, Error> {
        let mut cancel_sent = false;
        loop {
            match self.task_status(task).await? {
                TaskStatus::Success => {
                    progress(1.0);
                    let text = self.call("task.get_result", &[task.into()]).await?;
                    return decode_task_result(text.as_str().unwrap_or_default());
                }
                TaskStatus::Failure | TaskStatus::Cancelled => {
                    if cancel_sent {
                        return Err(Error::Cancelled);
                    }
                    return Err(self.task_error(task).await);
                }
                TaskStatus::Pending | TaskStatus::Cancelling => {}
            }
            if let Some(p) = self.call("task.get_progress", &[task.into()]).await?.as_f64() {
                progress(p);
            }
            let wait = tokio::time::sleep(self.inner.task_poll_interval);
            match cancel {
                Some(token) if !cancel_sent => {
                    tokio::select! {
                        () = wait => {}
                        () = token.cancelled() => {
                            cancel_sent = true;
                            self.cancel_task(task).await?;
                        }
                    }
                }
                _ => wait.await,
            }
        }
    }

    /// The failure recorded in a task's `error_info`.
    pub(crate) async fn task_error(&self, task: &Ref) -> Error {
        match self.call("task.get_error_info", &[task.into()]).await {
            Ok(Value::Array(items)) => match Failure::from_description(&items) {
                Some(f) => Error::Failure(f),
                None => Error::Failure(Failure::new(TASK_CANCELLED, vec![task.to_string()])),
            },
            Ok(other) => Error::malformed(format!("task error_info is {other:?}")),
            Err(e) => e,
        }
    }

    /// Runs `Async.<method>` to completion.
    pub async fn call_and_wait(
        &self,
        method: &str,
        params: &[Value],
        progress: impl FnMut(f64),
        cancel: Option<&CancellationToken>,
    ) -> Result<Value, Error> {
        let task = self.call_async(method, params).await?;
        self.wait_task(&task, progress, cancel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_results() {
        assert_eq!(decode_task_result("").ok(), Some(Value::Str(String::new())));
        assert_eq!(decode_task_result("<value>OpaqueRef:a</value>").ok(), Some(Value::Str("OpaqueRef:a".into())));
        assert_eq!(
            decode_task_result("<value><array><data><value>OpaqueRef:b</value></data></array></value>").ok(),
            Some(Value::Array(vec![Value::Str("OpaqueRef:b".into())]))
        );
        assert!(decode_task_result("<value><array>").is_err());
    }
}
