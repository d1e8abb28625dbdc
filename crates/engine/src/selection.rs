//! Which VMs a job covers. Tag, host and pool selectors are evaluated at every run, so
//! VMs created later are picked up without editing the job.

use std::collections::BTreeMap;

use crate::error::Error;
use xenvault_pool::inventory::{Candidate, Kind, LookupError, choose};
use xenvault_pool::records::{HostName, Vm};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// A VM's name label or uuid; a name must match exactly one VM.
    NameOrUuid(String),
    Tag(String),
    /// VMs resident on (or, halted, with affinity to) a host given by name or uuid.
    Host(String),
    /// Every VM of the pool.
    All,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SelectOptions {
    pub include_templates: bool,
    pub include_snapshots: bool,
    pub include_control_domain: bool,
}

/// The VMs the selectors match, each once, sorted by name then uuid.
pub fn select(
    vms: &[Vm],
    hosts: &[HostName],
    selectors: &[Selector],
    options: SelectOptions,
) -> Result<Vec<Vm>, Error> {
    let eligible = |vm: &&Vm| {
        (options.include_templates || !vm.is_a_template)
            && (options.include_snapshots || !vm.is_a_snapshot)
            && (options.include_control_domain || !vm.is_control_domain)
    };
    let mut chosen: BTreeMap<String, Vm> = BTreeMap::new();
    for selector in selectors {
        let matched: Vec<&Vm> = match selector {
            Selector::NameOrUuid(wanted) => {
                let by_uuid: Vec<&Vm> = vms.iter().filter(|vm| vm.uuid.eq_ignore_ascii_case(wanted)).collect();
                let found = if by_uuid.is_empty() {
                    vms.iter().filter(|vm| &vm.name_label == wanted).filter(eligible).collect()
                } else {
                    by_uuid
                };
                // None or several: the error lists the VMs that could be meant.
                let listed = |list: Vec<&Vm>| {
                    list.iter().map(|vm| Candidate { uuid: vm.uuid.clone(), name: vm.name_label.clone() }).collect()
                };
                let (kind, wanted) = (Kind::Vm, wanted.clone());
                match found.len() {
                    0 => {
                        return Err(LookupError::NoMatch {
                            kind,
                            wanted,
                            candidates: listed(vms.iter().filter(eligible).collect()),
                        }
                        .into());
                    }
                    1 => found,
                    _ => return Err(LookupError::Ambiguous { kind, wanted, candidates: listed(found) }.into()),
                }
            }
            Selector::Tag(tag) => vms.iter().filter(eligible).filter(|vm| vm.tags.contains(tag)).collect(),
            Selector::Host(wanted) => {
                let candidates =
                    hosts.iter().map(|h| Candidate { uuid: h.uuid.clone(), name: h.name_label.clone() }).collect();
                let uuid = choose(Kind::Host, wanted, candidates)?;
                let host = hosts
                    .iter()
                    .find(|h| h.uuid == uuid)
                    .ok_or_else(|| Error::Protocol(format!("host {uuid} vanished")))?;
                vms.iter()
                    .filter(eligible)
                    .filter(|vm| {
                        let placed = if vm.power_state.eq_ignore_ascii_case("running")
                            || vm.power_state.eq_ignore_ascii_case("paused")
                        {
                            &vm.resident_on
                        } else {
                            &vm.affinity
                        };
                        *placed == host.reference
                    })
                    .collect()
            }
            Selector::All => vms.iter().filter(eligible).collect(),
        };
        for vm in matched {
            chosen.entry(vm.uuid.clone()).or_insert_with(|| vm.clone());
        }
    }
    let mut list: Vec<Vm> = chosen.into_values().collect();
    list.sort_by(|a, b| a.name_label.cmp(&b.name_label).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenvault_xapi_wire::Value;

    fn vm(uuid: &str, name: &str, extra: &[(&str, Value)]) -> Vm {
        let mut fields: std::collections::BTreeMap<String, Value> = [
            ("uuid", Value::from(uuid)),
            ("name_label", Value::from(name)),
            ("power_state", Value::from("Running")),
            ("resident_on", Value::from("OpaqueRef:h1")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            fields.insert((*k).to_owned(), v.clone());
        }
        Vm::parse(&format!("OpaqueRef:{uuid}"), &Value::Struct(fields))
    }

    #[test]
    fn selectors_skip_templates_and_dom0() {
        let vms = vec![
            vm("u1", "web", &[("tags", Value::from(vec!["prod"]))]),
            vm("u2", "db", &[("tags", Value::from(vec!["prod"]))]),
            vm("u3", "tmpl", &[("is_a_template", Value::from(true))]),
            vm("u4", "Control domain", &[("is_control_domain", Value::from(true))]),
        ];
        let hosts = vec![HostName { reference: "OpaqueRef:h1".into(), uuid: "h1u".into(), name_label: "host1".into() }];
        let all = select(&vms, &hosts, &[Selector::All], SelectOptions::default()).unwrap();
        assert_eq!(all.iter().map(|v| v.name_label.as_str()).collect::<Vec<_>>(), ["db", "web"]);
        let tagged = select(&vms, &hosts, &[Selector::Tag("prod".into())], SelectOptions::default()).unwrap();
        assert_eq!(tagged.len(), 2);
        let on_host = select(&vms, &hosts, &[Selector::Host("host1".into())], SelectOptions::default()).unwrap();
        assert_eq!(on_host.len(), 2);
        let by_uuid = select(&vms, &hosts, &[Selector::NameOrUuid("u1".into())], SelectOptions::default()).unwrap();
        assert_eq!(by_uuid[0].name_label, "web");
        let missing =
            select(&vms, &hosts, &[Selector::NameOrUuid("nope".into())], SelectOptions::default()).unwrap_err();
        assert!(matches!(missing, Error::Lookup(_)) && missing.to_string().contains("web (u1)"), "{missing}");
        let with_templates = SelectOptions { include_templates: true, ..Default::default() };
        assert_eq!(select(&vms, &hosts, &[Selector::All], with_templates).unwrap().len(), 3);
    }
}
