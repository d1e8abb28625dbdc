//! Records as xapi creates them: every field of the class at the datamodel's default
//! (see [`crate::datamodel`]), then what xapi fills on creation; callers override the rest.

use crate::datamodel;
use crate::db::{NULL_REF, Record, empty_map, epoch_date, new_uuid, now_date, str_map};
use xenvault_xapi_wire::Value;

fn empty_list() -> Value {
    Value::Array(Vec::new())
}

/// The defaults of `class` with a fresh uuid and `pairs` on top.
fn record(class: &str, pairs: Vec<(&str, Value)>) -> Record {
    let mut r = datamodel::defaults(class);
    r.insert("uuid".to_owned(), Value::from(new_uuid()));
    for (k, v) in pairs {
        debug_assert!(r.contains_key(k), "{class}.{k} is not a field in xapi's datamodel");
        r.insert(k.to_owned(), v);
    }
    r
}

fn with_name(class: &str, name_label: &str, mut pairs: Vec<(&str, Value)>) -> Record {
    pairs.push(("name_label", Value::from(name_label)));
    record(class, pairs)
}

pub fn pool(master: &str, default_sr: &str) -> Record {
    with_name(
        "pool",
        "",
        vec![
            ("master", master.into()),
            ("default_SR", default_sr.into()),
            ("suspend_image_SR", default_sr.into()),
            ("crash_dump_SR", default_sr.into()),
            ("ha_enabled", false.into()),
            ("ha_configuration", empty_map()),
            ("blobs", empty_map()),
            ("gui_config", empty_map()),
            ("health_check_config", empty_map()),
            ("wlb_enabled", false.into()),
            ("restrictions", str_map([("restrict_cbt", "false"), ("restrict_vss", "false")])),
            ("cpu_info", empty_map()),
            ("allowed_operations", empty_list()),
            ("current_operations", empty_map()),
            ("redo_log_enabled", false.into()),
            ("vswitch_controller", "".into()),
            ("tls_verification_enabled", false.into()),
            ("is_psr_pending", false.into()),
            ("migration_compression", false.into()),
            ("coordinator_bias", true.into()),
        ],
    )
}

pub fn host(name: &str, address: &str, metrics: &str) -> Record {
    with_name(
        "host",
        name,
        vec![
            ("hostname", name.into()),
            ("address", address.into()),
            ("enabled", true.into()),
            ("API_version_major", 2i64.into()),
            ("API_version_minor", 21i64.into()),
            ("API_version_vendor", "XenSource".into()),
            (
                "software_version",
                str_map([
                    ("product_brand", "XCP-ng"),
                    ("product_version", "8.3.0"),
                    ("platform_name", "XCP"),
                    ("platform_version", "3.4.0"),
                    ("xapi", "24.19"),
                    ("xen", "4.17.4"),
                    ("hostname", name),
                    ("build_number", "cloud"),
                ]),
            ),
            ("cpu_info", str_map([("cpu_count", "4"), ("socket_count", "1"), ("vendor", "GenuineIntel")])),
            ("capabilities", Value::from(vec!["xen-3.0-x86_64", "hvm-3.0-x86_64"])),
            ("memory_overhead", 0i64.into()),
            ("metrics", metrics.into()),
            ("resident_VMs", empty_list()),
            ("PBDs", empty_list()),
            ("PIFs", empty_list()),
            ("host_CPUs", empty_list()),
            ("allowed_operations", empty_list()),
            ("current_operations", empty_map()),
            ("logging", empty_map()),
            ("suspend_image_sr", NULL_REF.into()),
            ("crash_dump_sr", NULL_REF.into()),
            ("license_params", empty_map()),
            ("edition", "xcp-ng".into()),
            ("bios_strings", empty_map()),
            ("external_auth_type", "".into()),
            ("power_on_mode", "".into()),
            ("ssl_legacy", false.into()),
            ("tls_verification_enabled", false.into()),
        ],
    )
}

pub fn host_metrics(memory: i64) -> Record {
    record(
        "host_metrics",
        vec![
            ("memory_total", memory.into()),
            ("live", true.into()),
            ("last_updated", now_date()),
            ("other_config", empty_map()),
        ],
    )
}

pub fn sr(name: &str, sr_type: &str, shared: bool, size: i64) -> Record {
    with_name(
        "SR",
        name,
        vec![
            ("type", sr_type.into()),
            ("content_type", "user".into()),
            ("shared", shared.into()),
            ("physical_size", size.into()),
            ("physical_utilisation", 0i64.into()),
            ("virtual_allocation", 0i64.into()),
            ("VDIs", empty_list()),
            ("PBDs", empty_list()),
            (
                "allowed_operations",
                Value::from(vec![
                    "vdi_enable_cbt",
                    "vdi_list_changed_blocks",
                    "vdi_disable_cbt",
                    "vdi_data_destroy",
                    "vdi_mirror",
                    "vdi_clone",
                    "vdi_resize",
                    "vdi_snapshot",
                    "vdi_create",
                    "vdi_destroy",
                    "vdi_introduce",
                    "plug",
                    "update",
                    "forget",
                    "scan",
                    "unplug",
                ]),
            ),
            ("current_operations", empty_map()),
            ("sm_config", str_map([("devserial", "scsi-sim")])),
            ("blobs", empty_map()),
            ("local_cache_enabled", false.into()),
            ("introduced_by", NULL_REF.into()),
            ("clustered", false.into()),
            ("is_tools_sr", false.into()),
        ],
    )
}

pub fn pbd(host: &str, sr: &str) -> Record {
    record(
        "PBD",
        vec![
            ("host", host.into()),
            ("SR", sr.into()),
            ("device_config", empty_map()),
            ("currently_attached", true.into()),
            ("other_config", empty_map()),
        ],
    )
}

pub fn network(name: &str, bridge: &str, purpose: &[&str]) -> Record {
    with_name(
        "network",
        name,
        vec![
            ("bridge", bridge.into()),
            ("MTU", 1500i64.into()),
            ("PIFs", empty_list()),
            ("VIFs", empty_list()),
            ("purpose", Value::from(purpose.to_vec())),
            ("managed", true.into()),
            ("allowed_operations", empty_list()),
            ("current_operations", empty_map()),
            ("blobs", empty_map()),
            ("default_locking_mode", "unlocked".into()),
            ("assigned_ips", empty_map()),
        ],
    )
}

pub fn pif(host: &str, network: &str, device: &str, ip: &str, mac: &str, management: bool) -> Record {
    record(
        "PIF",
        vec![
            ("device", device.into()),
            ("network", network.into()),
            ("host", host.into()),
            ("MAC", mac.into()),
            ("MTU", 1500i64.into()),
            ("VLAN", (-1i64).into()),
            ("physical", true.into()),
            ("currently_attached", true.into()),
            ("ip_configuration_mode", if ip.is_empty() { "None" } else { "Static" }.into()),
            ("IP", ip.into()),
            ("netmask", if ip.is_empty() { "" } else { "255.0.0.0" }.into()),
            ("gateway", "".into()),
            ("DNS", "".into()),
            ("IPv6", empty_list()),
            ("ipv6_configuration_mode", "None".into()),
            ("ipv6_gateway", "".into()),
            ("primary_address_type", "IPv4".into()),
            ("management", management.into()),
            ("other_config", empty_map()),
            ("disallow_unplug", false.into()),
            ("managed", true.into()),
            ("properties", empty_map()),
            ("capabilities", empty_list()),
        ],
    )
}

pub fn vm(name: &str, is_a_template: bool, metrics: &str, guest_metrics: &str) -> Record {
    with_name(
        "VM",
        name,
        vec![
            ("allowed_operations", empty_list()),
            ("current_operations", empty_map()),
            ("power_state", "Halted".into()),
            ("user_version", 1i64.into()),
            ("is_a_template", is_a_template.into()),
            ("is_default_template", false.into()),
            ("suspend_VDI", NULL_REF.into()),
            ("resident_on", NULL_REF.into()),
            ("scheduled_to_be_resident_on", NULL_REF.into()),
            ("affinity", NULL_REF.into()),
            ("memory_overhead", 0i64.into()),
            ("memory_target", 0i64.into()),
            ("memory_static_max", 2147483648i64.into()),
            ("memory_dynamic_max", 2147483648i64.into()),
            ("memory_dynamic_min", 2147483648i64.into()),
            ("memory_static_min", 1073741824i64.into()),
            ("VCPUs_params", empty_map()),
            ("VCPUs_max", 2i64.into()),
            ("VCPUs_at_startup", 2i64.into()),
            ("actions_after_shutdown", "destroy".into()),
            ("actions_after_reboot", "restart".into()),
            ("actions_after_crash", "restart".into()),
            ("consoles", empty_list()),
            ("VIFs", empty_list()),
            ("VBDs", empty_list()),
            ("VUSBs", empty_list()),
            ("crash_dumps", empty_list()),
            ("VTPMs", empty_list()),
            ("PV_bootloader", "".into()),
            ("PV_kernel", "".into()),
            ("PV_ramdisk", "".into()),
            ("PV_args", "".into()),
            ("PV_bootloader_args", "".into()),
            ("PV_legacy_args", "".into()),
            ("HVM_boot_policy", "BIOS order".into()),
            ("HVM_boot_params", str_map([("order", "cdn")])),
            ("HVM_shadow_multiplier", 1.0f64.into()),
            ("platform", str_map([("acpi", "1"), ("apic", "true"), ("pae", "true"), ("viridian", "false")])),
            ("PCI_bus", "".into()),
            ("domid", (-1i64).into()),
            ("domarch", "".into()),
            ("last_boot_CPU_flags", empty_map()),
            ("is_control_domain", false.into()),
            ("metrics", metrics.into()),
            ("guest_metrics", guest_metrics.into()),
            ("last_booted_record", "".into()),
            ("recommendations", "".into()),
            ("xenstore_data", empty_map()),
            ("ha_always_run", false.into()),
            ("ha_restart_priority", "".into()),
            ("is_a_snapshot", false.into()),
            ("snapshot_of", NULL_REF.into()),
            ("snapshots", empty_list()),
            ("snapshot_time", epoch_date()),
            ("transportable_snapshot_id", "".into()),
            ("blobs", empty_map()),
            ("blocked_operations", empty_map()),
            ("snapshot_info", empty_map()),
            ("snapshot_metadata", "".into()),
            ("parent", NULL_REF.into()),
            ("children", empty_list()),
            ("bios_strings", empty_map()),
            ("protection_policy", NULL_REF.into()),
            ("snapshot_schedule", NULL_REF.into()),
            ("is_vmss_snapshot", false.into()),
            ("appliance", NULL_REF.into()),
            ("start_delay", 0i64.into()),
            ("shutdown_delay", 0i64.into()),
            ("order", 0i64.into()),
            ("VGPUs", empty_list()),
            ("attached_PCIs", empty_list()),
            ("suspend_SR", NULL_REF.into()),
            ("version", 0i64.into()),
            ("generation_id", "0:0".into()),
            ("hardware_platform_version", 0i64.into()),
            ("has_vendor_device", false.into()),
            ("requires_reboot", false.into()),
            ("reference_label", "".into()),
            ("domain_type", "hvm".into()),
            ("NVRAM", empty_map()),
            ("pending_guidances", empty_list()),
            ("pending_guidances_recommended", empty_list()),
            ("pending_guidances_full", empty_list()),
        ],
    )
}

pub fn vm_metrics() -> Record {
    record(
        "VM_metrics",
        vec![
            ("memory_actual", 0i64.into()),
            ("VCPUs_number", 0i64.into()),
            ("VCPUs_CPU", empty_map()),
            ("VCPUs_params", empty_map()),
            ("VCPUs_flags", empty_map()),
            ("state", empty_list()),
            ("start_time", epoch_date()),
            ("install_time", now_date()),
            ("last_updated", epoch_date()),
            ("other_config", empty_map()),
            ("hvm", true.into()),
            ("nested_virt", false.into()),
            ("nomigrate", false.into()),
            ("current_domain_type", "unspecified".into()),
        ],
    )
}

/// Guest metrics as written by guest tools; `features` go into `other`
/// (xapi reads `feature-quiesce` / `feature-snapshot` there).
pub fn vm_guest_metrics(os_name: &str, distro: &str, features: &[(&str, &str)]) -> Record {
    record(
        "VM_guest_metrics",
        vec![
            ("os_version", str_map([("name", os_name), ("distro", distro)])),
            ("PV_drivers_version", str_map([("major", "8"), ("minor", "3"), ("micro", "0"), ("build", "1")])),
            ("PV_drivers_up_to_date", true.into()),
            ("networks", empty_map()),
            ("other", str_map(features.iter().copied())),
            ("last_updated", now_date()),
            ("other_config", empty_map()),
            ("live", true.into()),
            ("can_use_hotplug_vbd", "yes".into()),
            ("can_use_hotplug_vif", "yes".into()),
            ("PV_drivers_detected", true.into()),
        ],
    )
}

pub fn vdi(name: &str, sr: &str, virtual_size: i64, vdi_type: &str) -> Record {
    let mut r = with_name(
        "VDI",
        name,
        vec![
            ("allowed_operations", empty_list()),
            ("current_operations", empty_map()),
            ("SR", sr.into()),
            ("VBDs", empty_list()),
            ("crash_dumps", empty_list()),
            ("virtual_size", virtual_size.into()),
            ("physical_utilisation", 0i64.into()),
            ("type", vdi_type.into()),
            ("sharable", false.into()),
            ("read_only", false.into()),
            ("storage_lock", false.into()),
            ("managed", true.into()),
            ("missing", false.into()),
            ("parent", NULL_REF.into()),
            ("xenstore_data", empty_map()),
            ("sm_config", str_map([("vdi_type", "vhd")])),
            ("is_a_snapshot", false.into()),
            ("snapshot_of", NULL_REF.into()),
            ("snapshots", empty_list()),
            ("snapshot_time", epoch_date()),
            ("allow_caching", false.into()),
            ("on_boot", "persist".into()),
            ("metadata_of_pool", NULL_REF.into()),
            ("metadata_latest", false.into()),
            ("is_tools_iso", false.into()),
            ("cbt_enabled", false.into()),
        ],
    );
    // SMAPIv1 file SRs name the VHD after the VDI's uuid.
    let uuid = r.get("uuid").cloned().unwrap_or_else(|| Value::from(""));
    r.insert("location".to_owned(), uuid);
    r
}

pub fn vbd(vm: &str, vdi: &str, userdevice: &str, bootable: bool, attached: bool) -> Record {
    record(
        "VBD",
        vec![
            ("currently_attached", attached.into()),
            ("VM", vm.into()),
            ("VDI", vdi.into()),
            ("device", format!("xvd{}", device_letter(userdevice)).into()),
            ("userdevice", userdevice.into()),
            ("bootable", bootable.into()),
            ("mode", "RW".into()),
            ("type", "Disk".into()),
            ("unpluggable", true.into()),
            ("storage_lock", false.into()),
            ("empty", false.into()),
        ],
    )
}

fn device_letter(userdevice: &str) -> char {
    let n: u8 = userdevice.parse().unwrap_or(0);
    char::from(b'a' + n.min(25))
}

pub fn vif(vm: &str, network: &str, device_name: &str, mac: &str, attached: bool) -> Record {
    record(
        "VIF",
        vec![
            ("currently_attached", attached.into()),
            ("device", device_name.into()),
            ("network", network.into()),
            ("VM", vm.into()),
            ("MAC", mac.into()),
            ("MTU", 1500i64.into()),
            ("MAC_autogenerated", false.into()),
            ("locking_mode", "network_default".into()),
            ("ipv4_allowed", empty_list()),
            ("ipv6_allowed", empty_list()),
            ("ipv4_configuration_mode", "None".into()),
            ("ipv4_addresses", empty_list()),
            ("ipv4_gateway", "".into()),
            ("ipv6_configuration_mode", "None".into()),
            ("ipv6_addresses", empty_list()),
            ("ipv6_gateway", "".into()),
        ],
    )
}

pub fn task(name: &str, host: &str) -> Record {
    with_name(
        "task",
        name,
        vec![
            ("allowed_operations", Value::from(vec!["cancel"])),
            ("current_operations", empty_map()),
            ("created", now_date()),
            ("finished", epoch_date()),
            ("status", "pending".into()),
            ("resident_on", host.into()),
            ("progress", 0.0f64.into()),
            ("type", "<none/>".into()),
            ("result", "".into()),
            ("error_info", empty_list()),
            ("subtask_of", NULL_REF.into()),
            ("subtasks", empty_list()),
            ("backtrace", "()".into()),
        ],
    )
}

pub fn session(host: &str, user: &str, originator: &str) -> Record {
    record(
        "session",
        vec![
            ("this_host", host.into()),
            ("this_user", NULL_REF.into()),
            ("last_active", now_date()),
            ("pool", false.into()),
            ("other_config", empty_map()),
            ("is_local_superuser", true.into()),
            ("subject", NULL_REF.into()),
            ("validation_time", now_date()),
            ("auth_user_sid", "".into()),
            ("auth_user_name", user.into()),
            ("rbac_permissions", empty_list()),
            ("tasks", empty_list()),
            ("parent", NULL_REF.into()),
            ("originator", originator.into()),
            ("client_certificate", false.into()),
        ],
    )
}
