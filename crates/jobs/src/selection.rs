//! A job's selection resolved against the pool as it is now: the VMs a run backs up, and
//! the preview the API shows.

use std::collections::{BTreeMap, BTreeSet};

use xenvault_engine::selection::{self, SelectOptions, Selector};
use xenvault_pool::host::Host;
use xenvault_pool::records::{HostName, Vm};

use crate::model::{Selection, SmartSelection};

/// The VMs `selection` covers, each once, sorted by name then uuid. Named VMs must exist
/// (the error lists the candidates); smart criteria may match none.
pub async fn resolve(host: &Host, selection: &Selection) -> Result<Vec<Vm>, xenvault_engine::Error> {
    let vms = host.vms().await?;
    let hosts = host.hosts().await?;
    resolve_among(&vms, &hosts, selection)
}

/// [`resolve`] over records already fetched.
pub fn resolve_among(vms: &[Vm], hosts: &[HostName], selection: &Selection) -> Result<Vec<Vm>, xenvault_engine::Error> {
    let select = |selectors: &[Selector]| selection::select(vms, hosts, selectors, SelectOptions::default());
    let named: Vec<Selector> = selection.vms.iter().map(|v| Selector::NameOrUuid(v.clone())).collect();
    let mut chosen: BTreeMap<String, Vm> = select(&named)?.into_iter().map(|vm| (vm.uuid.clone(), vm)).collect();
    if let Some(smart) = &selection.smart {
        for vm in smart_matches(vms, hosts, smart)? {
            chosen.entry(vm.uuid.clone()).or_insert(vm);
        }
        let excluded = excluded(vms, smart);
        chosen.retain(|uuid, _| !excluded.contains(uuid));
    }
    let mut list: Vec<Vm> = chosen.into_values().collect();
    list.sort_by(|a, b| a.name_label.cmp(&b.name_label).then_with(|| a.uuid.cmp(&b.uuid)));
    Ok(list)
}

fn smart_matches(vms: &[Vm], hosts: &[HostName], smart: &SmartSelection) -> Result<Vec<Vm>, xenvault_engine::Error> {
    let select = |selectors: &[Selector]| selection::select(vms, hosts, selectors, SelectOptions::default());
    let on_hosts: Option<BTreeSet<String>> = match smart.hosts.is_empty() {
        true => None,
        false => {
            let selectors: Vec<Selector> = smart.hosts.iter().map(|h| Selector::Host(h.clone())).collect();
            Some(select(&selectors)?.into_iter().map(|vm| vm.uuid).collect())
        }
    };
    Ok(select(&[Selector::All])?
        .into_iter()
        .filter(|vm| on_hosts.as_ref().is_none_or(|uuids| uuids.contains(&vm.uuid)))
        .filter(|vm| smart.tags.is_empty() || smart.tags.iter().any(|t| vm.tags.contains(t)))
        .filter(|vm| smart.power_states.is_empty() || smart.power_states.iter().any(|p| p.matches(&vm.power_state)))
        .collect())
}

/// Uuids of the VMs the exclusions name (by name, uuid or tag); unknown names exclude nothing.
fn excluded(vms: &[Vm], smart: &SmartSelection) -> BTreeSet<String> {
    vms.iter()
        .filter(|vm| {
            smart.exclude_vms.iter().any(|x| vm.uuid.eq_ignore_ascii_case(x) || vm.name_label == *x)
                || smart.exclude_tags.iter().any(|t| vm.tags.contains(t))
        })
        .map(|vm| vm.uuid.clone())
        .collect()
}
