//! Simulator-only calls (never in xapi): guest writes that CBT sees, a digest of a
//! disk, and fault injection at run time. int64 arguments are decimal strings.

use super::Args;
use crate::error::{ApiError, ApiResult};
use crate::faults::{BootCrash, CallFault};
use crate::state::{SharedSim, State};
use base64::Engine;
use sha2::{Digest, Sha256};
use xenvault_xapi_wire::Value;

pub async fn call(sim: &SharedSim, name: &str, args: &Args<'_>) -> ApiResult<Value> {
    match name {
        "write" => {
            args.expect(4)?;
            let offset = u64_arg(args, 2)?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(args.str(3)?)
                .map_err(|_| ApiError::field_type("data (base64)"))?;
            sim.with(|st| {
                let vdi = vdi_arg(st, args, 1)?;
                super::vdi::write_guest(st, &vdi, offset, &data)?;
                super::vdi::finish_writes(st, &vdi)?;
                Ok(Value::from(""))
            })
        }
        "scribble" => {
            args.expect(5)?;
            let percent: f64 = args.str(2)?.parse().map_err(|_| ApiError::field_type("percent"))?;
            let write_size = u64_arg(args, 3)?;
            let seed = u64_arg(args, 4)?;
            sim.with(|st| {
                let vdi = vdi_arg(st, args, 1)?;
                let count = scribble(st, &vdi, percent, write_size, seed)?;
                Ok(Value::from(count.to_string()))
            })
        }
        "sha256" => {
            args.expect(2)?;
            let (disk, size) = {
                let st = sim.lock();
                let vdi = vdi_arg(&st, args, 1)?;
                let disk = super::vdi::disk_id(&st, &vdi)?;
                let size = st.storage.size(&disk)?;
                (disk, size)
            };
            let sim = sim.clone();
            tokio::task::spawn_blocking(move || digest(&sim, &disk, size))
                .await
                .map_err(ApiError::internal)?
                .map(Value::from)
        }
        "inject_fault" => {
            // (session, method, code, params, times): times "" means every call.
            args.expect(5)?;
            let times = match args.str(4)? {
                "" => None,
                n => Some(n.parse().map_err(|_| ApiError::field_type("times"))?),
            };
            let fault = CallFault {
                method: args.str(1)?.to_owned(),
                code: args.str(2)?.to_owned(),
                params: crate::db::string_list(args.value(3)?),
                times,
            };
            sim.lock().faults.calls.push(fault);
            Ok(Value::from(""))
        }
        "crash_on_boot" => {
            // (session, VM name glob or uuid, seconds after each start)
            args.expect(3)?;
            let fault = BootCrash { vm: args.str(1)?.to_owned(), after_secs: u64_arg(args, 2)? };
            sim.lock().faults.boot_crashes.push(fault);
            Ok(Value::from(""))
        }
        "clear_faults" => {
            args.expect(1)?;
            sim.lock().faults = Default::default();
            Ok(Value::from(""))
        }
        "set_cut" => {
            // (session, "http" | "nbd", bytes): "" clears the limit.
            args.expect(3)?;
            let limit = optional_u64(args, 2)?;
            let mut st = sim.lock();
            match args.str(1)? {
                "http" => st.faults.cut_http_after = limit,
                "nbd" => st.faults.cut_nbd_after = limit,
                other => return Err(ApiError::new("VALUE_NOT_SUPPORTED", ["transfer", other, "http or nbd"])),
            }
            Ok(Value::from(""))
        }
        "set_latency" => {
            args.expect(2)?;
            sim.lock().faults.latency_ms = u64_arg(args, 1)?;
            Ok(Value::from(""))
        }
        "set_bandwidth" => {
            args.expect(2)?;
            sim.lock().faults.bandwidth = optional_u64(args, 1)?;
            Ok(Value::from(""))
        }
        _ => Err(ApiError::method_unknown(args.method)),
    }
}

fn u64_arg(args: &Args, i: usize) -> ApiResult<u64> {
    u64::try_from(args.int(i)?).map_err(|_| ApiError::field_type(&format!("parameter {i}")))
}

fn optional_u64(args: &Args, i: usize) -> ApiResult<Option<u64>> {
    match args.value(i)? {
        Value::Str(s) if s.is_empty() => Ok(None),
        _ => u64_arg(args, i).map(Some),
    }
}

/// A VDI by ref or by uuid (handy from a shell).
fn vdi_arg(st: &State, args: &Args, i: usize) -> ApiResult<String> {
    let v = args.str(i)?;
    if st.db.exists("VDI", v) {
        return Ok(v.to_owned());
    }
    st.db.by_uuid("VDI", v).map_err(|_| ApiError::handle_invalid("VDI", v))
}

/// splitmix64: a tiny generator whose output never changes between versions, so a
/// seed always scribbles the same bytes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One scribble write is built in memory: keep it bounded.
const MAX_SCRIBBLE_WRITE: u64 = 16 << 20;

/// Random writes of `write_size` bytes at aligned offsets, covering `percent` of
/// the disk in total (overlaps allowed, as with a real guest). Returns the count.
pub fn scribble(st: &mut State, vdi: &str, percent: f64, write_size: u64, seed: u64) -> ApiResult<u64> {
    let size = st.storage.size(&super::vdi::disk_id(st, vdi)?)?;
    if write_size == 0 || write_size > size.min(MAX_SCRIBBLE_WRITE) || !(0.0..=100.0).contains(&percent) {
        return Err(ApiError::new(
            "VALUE_NOT_SUPPORTED",
            ["scribble", "percent in 0..100, write_size in 1..min(disk size, 16 MiB)"],
        ));
    }
    let slots = size / write_size;
    let count = ((size as f64 * percent / 100.0) / write_size as f64).ceil() as u64;
    let mut rng = SplitMix(seed);
    let mut data = vec![0u8; write_size as usize];
    for _ in 0..count {
        let offset = (rng.next() % slots) * write_size;
        for chunk in data.chunks_mut(8) {
            let word = rng.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        super::vdi::write_guest(st, vdi, offset, &data)?;
    }
    super::vdi::finish_writes(st, vdi)?;
    Ok(count)
}

/// SHA-256 of a whole disk, reading a chunk per lock so other calls go on.
fn digest(sim: &SharedSim, disk: &str, size: u64) -> ApiResult<String> {
    const CHUNK: u64 = 4 << 20;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(CHUNK) as usize;
        sim.lock().storage.read(disk, offset, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}
