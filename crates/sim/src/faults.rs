//! Fault injection: failing calls, cutting transfers, slowing things down. Set from
//! the command line at start and changed at run time through `sim.*` calls.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Fail `method` (e.g. `VM.snapshot`, or `*`) with `code` and `params`,
/// `times` times (`None`: always).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallFault {
    pub method: String,
    pub code: String,
    pub params: Vec<String>,
    pub times: Option<u32>,
}

impl CallFault {
    /// Parses `METHOD=CODE[,PARAM...][:N]` (the `--fail-call` flag).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (method, rest) = spec.split_once('=').ok_or_else(|| format!("{spec:?}: expected METHOD=CODE[:N]"))?;
        let (what, times) = match rest.rsplit_once(':') {
            Some((what, n)) => (what, Some(n.parse::<u32>().map_err(|_| format!("{spec:?}: bad count {n:?}"))?)),
            None => (rest, None),
        };
        let mut parts = what.split(',').map(str::to_owned);
        let code = parts.next().filter(|c| !c.is_empty()).ok_or_else(|| format!("{spec:?}: empty error code"))?;
        Ok(CallFault { method: method.to_owned(), code, params: parts.collect(), times })
    }
}

/// Which kind of transfer a byte limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Http,
    Nbd,
}

/// VMs (name glob, e.g. `web*`, or uuid) whose domain crashes `after_secs` seconds
/// after every start, before or after the guest agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootCrash {
    pub vm: String,
    pub after_secs: u64,
}

impl BootCrash {
    /// Parses `VM=SECONDS` (the `--crash-on-boot` flag).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (vm, secs) = spec.rsplit_once('=').ok_or_else(|| format!("{spec:?}: expected VM=SECONDS"))?;
        let after_secs = secs.parse().map_err(|_| format!("{spec:?}: bad number of seconds {secs:?}"))?;
        if vm.is_empty() {
            return Err(format!("{spec:?}: empty VM name"));
        }
        Ok(BootCrash { vm: vm.to_owned(), after_secs })
    }

    fn matches(&self, name_label: &str, uuid: &str) -> bool {
        self.vm == uuid || xenvault_fsread::glob_match(&self.vm, name_label)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    pub calls: Vec<CallFault>,
    /// Cut every HTTP export/import after this many body bytes.
    pub cut_http_after: Option<u64>,
    /// Cut every NBD connection after this many bytes of read replies.
    pub cut_nbd_after: Option<u64>,
    /// Added to every RPC call.
    pub latency_ms: u64,
    /// Caps transfer speed (HTTP and NBD), bytes per second.
    pub bandwidth: Option<u64>,
    /// VMs that crash after they start.
    #[serde(default)]
    pub boot_crashes: Vec<BootCrash>,
}

impl Faults {
    /// The failure to answer for `method`, consuming one use of the fault.
    pub fn take_call_fault(&mut self, method: &str) -> Option<ApiError> {
        let index = self.calls.iter().position(|f| f.method == "*" || f.method.eq_ignore_ascii_case(method))?;
        let fault = self.calls.get_mut(index)?;
        let error = ApiError::new(&fault.code, fault.params.clone());
        if let Some(n) = fault.times.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.calls.remove(index);
            }
        }
        Some(error)
    }

    /// How long after a start the VM `name_label` (`uuid`) crashes, if a fault says so.
    pub fn boot_crash(&self, name_label: &str, uuid: &str) -> Option<Duration> {
        let fault = self.boot_crashes.iter().find(|f| f.matches(name_label, uuid))?;
        Some(Duration::from_secs(fault.after_secs))
    }

    pub fn cut_after(&self, transfer: Transfer) -> Option<u64> {
        match transfer {
            Transfer::Http => self.cut_http_after,
            Transfer::Nbd => self.cut_nbd_after,
        }
    }

    /// How long sending `bytes` should take at the configured bandwidth.
    pub fn throttle(&self, bytes: u64) -> Option<Duration> {
        let bw = self.bandwidth.filter(|&b| b > 0)?;
        Some(Duration::from_secs_f64(bytes as f64 / bw as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_consume() {
        let f = CallFault::parse("VM.snapshot=SR_FULL,1,2:2").unwrap();
        assert_eq!(f.params, vec!["1", "2"]);
        let mut faults = Faults { calls: vec![f], ..Faults::default() };
        assert!(faults.take_call_fault("VM.snapshot").is_some());
        assert!(faults.take_call_fault("VM.clone").is_none());
        assert!(faults.take_call_fault("vm.snapshot").is_some());
        assert!(faults.take_call_fault("VM.snapshot").is_none());
        assert!(CallFault::parse("nothing").is_err());
    }

    #[test]
    fn boot_crashes_match_a_name_glob_or_uuid() {
        let faults = Faults {
            boot_crashes: vec![BootCrash::parse("debian-*=3").unwrap(), BootCrash::parse("1234-abcd=0").unwrap()],
            ..Faults::default()
        };
        assert_eq!(faults.boot_crash("debian-web restored", "x"), Some(Duration::from_secs(3)));
        assert_eq!(faults.boot_crash("win-fileserver", "1234-abcd"), Some(Duration::ZERO));
        assert_eq!(faults.boot_crash("win-fileserver", "x"), None);
        for bad in ["vm", "=3", "vm=soon"] {
            assert!(BootCrash::parse(bad).is_err(), "{bad}");
        }
    }
}
