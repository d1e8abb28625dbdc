//! How each disk is read: the backup level, the requested strategy, and the decision
//! (with its reason) among CBT + NBD, VHD delta export, and a full read.

pub mod cbt;
pub mod full;
pub mod vhd;

use serde::Serialize;
use std::fmt;

pub use xenvault_types::metadata::Level;

/// What the user asked for with `--strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requested {
    #[default]
    Auto,
    Cbt,
    Vhd,
    FullRead,
}

impl std::str::FromStr for Requested {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Requested::Auto),
            "cbt" => Ok(Requested::Cbt),
            "vhd" => Ok(Requested::Vhd),
            "full-read" | "full" => Ok(Requested::FullRead),
            other => Err(format!("unknown strategy {other:?} (auto, cbt, vhd, full-read)")),
        }
    }
}

/// The strategy a disk was actually read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Changed 64 KiB blocks from `VDI.list_changed_blocks`, read over NBD.
    Cbt,
    /// A differencing VHD from `/export_raw_vdi?base=`, 2 MiB blocks.
    Vhd,
    /// Every byte of the disk; the repository stores only new chunks.
    FullRead,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Cbt => "cbt",
            Strategy::Vhd => "vhd",
            Strategy::FullRead => "full-read",
        })
    }
}

impl Strategy {
    /// How a reason text names the strategy.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Cbt => "CBT + NBD",
            Strategy::Vhd => "VHD delta",
            Strategy::FullRead => "full read",
        }
    }
}

/// How the bytes came from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Nbd,
    HttpRaw,
    HttpVhd,
    /// `/export` of the snapshot VM as an XVA.
    HttpXva,
}

/// The previous state of one disk that an incremental can build on.
#[derive(Debug, Clone)]
pub struct BaseDisk {
    /// Restore point whose image of this disk the changes are applied to.
    pub restore_point: String,
    /// Our older snapshot of this VDI still on the host, if any.
    pub snapshot_vdi: Option<BaseSnapshotVdi>,
}

#[derive(Debug, Clone)]
pub struct BaseSnapshotVdi {
    pub reference: String,
    pub uuid: String,
    /// False once `VDI.data_destroy` left only the CBT log.
    pub has_data: bool,
}

/// Everything the choice depends on, for one disk.
#[derive(Debug, Clone)]
pub struct DiskFacts {
    pub level: Level,
    pub requested: Requested,
    pub base: Option<BaseDisk>,
    /// CBT was on for the source VDI when the snapshot was taken.
    pub cbt_enabled: bool,
    /// CBT had been turned off since the last run and this run turned it on again.
    pub cbt_reenabled: bool,
    /// `VDI.get_nbd_info` of the new snapshot offered at least one endpoint.
    pub nbd_available: bool,
}

/// One way to read the disk, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub strategy: Strategy,
    pub transport: Transport,
    pub why: String,
}

/// The ordered attempts for a disk; the last is always a full read, which cannot
/// depend on any earlier state. `notes` say why better strategies were skipped.
#[derive(Debug, Clone)]
pub struct Plan {
    pub attempts: Vec<Attempt>,
    pub notes: Vec<String>,
    /// Why middle strategies were skipped, said only if the first attempt fails.
    pub fallback_notes: Vec<String>,
}

pub fn plan(facts: &DiskFacts) -> Plan {
    let mut notes = Vec::new();
    let mut attempts = Vec::new();
    let full_transport =
        if facts.nbd_available && facts.requested != Requested::Vhd { Transport::Nbd } else { Transport::HttpRaw };
    let base = match (facts.level, &facts.base) {
        (Level::Copy | Level::Full, _) => {
            let why = format!("level {}: the whole disk is read", facts.level);
            attempts.push(Attempt { strategy: Strategy::FullRead, transport: full_transport, why });
            return Plan { attempts, notes, fallback_notes: Vec::new() };
        }
        (_, None) => {
            let why = "no earlier restore point of this disk: the whole disk is read".to_owned();
            attempts.push(Attempt { strategy: Strategy::FullRead, transport: full_transport, why });
            return Plan { attempts, notes, fallback_notes: Vec::new() };
        }
        (_, Some(base)) => base,
    };

    let mut vhd_note = None;
    if facts.requested == Requested::FullRead {
        notes.push("full read requested".into());
    } else {
        let wants_cbt = matches!(facts.requested, Requested::Auto | Requested::Cbt);
        if wants_cbt {
            match cbt_blocker(facts, base) {
                None => attempts.push(Attempt {
                    strategy: Strategy::Cbt,
                    transport: Transport::Nbd,
                    why: "CBT enabled, base snapshot on the host, NBD offered: only changed 64 KiB blocks are read"
                        .into(),
                }),
                Some(blocker) => notes.push(format!("CBT not usable: {blocker}")),
            }
        }
        match &base.snapshot_vdi {
            Some(snapshot) if snapshot.has_data => attempts.push(Attempt {
                strategy: Strategy::Vhd,
                transport: Transport::HttpVhd,
                why: "base snapshot kept with its data: VHD delta export of changed 2 MiB blocks".into(),
            }),
            Some(_) => vhd_note = Some("VHD delta not possible: the base snapshot holds CBT metadata only"),
            None => vhd_note = Some("VHD delta not possible: the base snapshot is gone from the host"),
        }
    }
    attempts.push(Attempt {
        strategy: Strategy::FullRead,
        transport: full_transport,
        why: "full read; only chunks new to the repository are stored".into(),
    });
    // Said now when nothing better was planned, else only if the better attempt fails.
    let mut fallback_notes = Vec::new();
    if let Some(note) = vhd_note {
        if attempts.len() == 1 { notes.push(note.into()) } else { fallback_notes.push(note.into()) }
    }
    Plan { attempts, notes, fallback_notes }
}

fn cbt_blocker(facts: &DiskFacts, base: &BaseDisk) -> Option<&'static str> {
    if !facts.cbt_enabled {
        Some("CBT is disabled on the VDI")
    } else if facts.cbt_reenabled {
        Some("CBT was off at the last backup (turned on now, for the next run)")
    } else if base.snapshot_vdi.is_none() {
        Some("the previous snapshot is gone from the host")
    } else if !facts.nbd_available {
        Some("no NBD network: VDI.get_nbd_info offered no endpoint")
    } else {
        None
    }
}

/// The reason text of the attempt that succeeded, with what was skipped or failed before.
pub fn reason(notes: &[String], attempt: &Attempt) -> String {
    if notes.is_empty() { attempt.why.clone() } else { format!("{}; {}", notes.join("; "), attempt.why) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(level: Level, requested: Requested, snapshot: Option<bool>) -> DiskFacts {
        DiskFacts {
            level,
            requested,
            base: Some(BaseDisk {
                restore_point: "rp1".into(),
                snapshot_vdi: snapshot.map(|has_data| BaseSnapshotVdi {
                    reference: "OpaqueRef:s".into(),
                    uuid: "s".into(),
                    has_data,
                }),
            }),
            cbt_enabled: true,
            cbt_reenabled: false,
            nbd_available: true,
        }
    }

    fn strategies(plan: &Plan) -> Vec<Strategy> {
        plan.attempts.iter().map(|a| a.strategy).collect()
    }

    #[test]
    fn incremental_prefers_cbt_then_vhd_then_full() {
        let p = plan(&facts(Level::Inc, Requested::Auto, Some(true)));
        assert_eq!(strategies(&p), [Strategy::Cbt, Strategy::Vhd, Strategy::FullRead]);
        let p = plan(&facts(Level::Inc, Requested::Auto, Some(false)));
        assert_eq!(strategies(&p), [Strategy::Cbt, Strategy::FullRead]);
        assert!(p.notes.is_empty() && p.fallback_notes[0].contains("metadata only"));
    }

    #[test]
    fn fallbacks_say_why() {
        let mut f = facts(Level::Inc, Requested::Auto, None);
        let p = plan(&f);
        assert_eq!(strategies(&p), [Strategy::FullRead]);
        assert!(p.notes.iter().any(|n| n.contains("gone")));
        f = facts(Level::Diff, Requested::Cbt, Some(true));
        f.cbt_enabled = false;
        let p = plan(&f);
        assert_eq!(strategies(&p), [Strategy::Vhd, Strategy::FullRead]);
        assert!(reason(&p.notes, &p.attempts[0]).contains("CBT is disabled"));
        f.cbt_enabled = true;
        f.nbd_available = false;
        let p = plan(&f);
        assert!(p.notes[0].contains("NBD"));
        assert_eq!(p.attempts[1].transport, Transport::HttpRaw);
    }

    #[test]
    fn full_levels_and_forced_strategies() {
        let p = plan(&facts(Level::Copy, Requested::Cbt, Some(true)));
        assert_eq!(strategies(&p), [Strategy::FullRead]);
        assert_eq!(p.attempts[0].transport, Transport::Nbd);
        let p = plan(&facts(Level::Inc, Requested::Vhd, Some(true)));
        assert_eq!(strategies(&p), [Strategy::Vhd, Strategy::FullRead]);
        let p = plan(&facts(Level::Inc, Requested::FullRead, Some(true)));
        assert_eq!(strategies(&p), [Strategy::FullRead]);
    }
}
