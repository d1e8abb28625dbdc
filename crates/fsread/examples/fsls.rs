//! `cargo run -p xenvault-fsread --example fsls DISK [VOLUME [PATH [DEST]]]`: lists volumes,
//! a directory, or extracts PATH to DEST, with timings.
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [disk, rest @ ..] = args.as_slice() else { return Err("usage: fsls DISK [VOLUME [PATH [DEST]]]".into()) };
    let t = Instant::now();
    let volumes = xenvault_fsread::probe(Arc::new(std::fs::File::open(disk)?))?;
    let Some(name) = rest.first() else {
        for v in &volumes {
            println!("{:<14} {:>12} {:?} {}", v.name, v.size, v.content, v.description);
        }
        eprintln!("probe: {:?}", t.elapsed());
        return Ok(());
    };
    let volume =
        volumes.iter().find(|v| &v.name == name).ok_or_else(|| xenvault_fsread::Error::NoSuchVolume(name.clone()))?;
    let fs = volume.open()?;
    let path = rest.get(1).map_or("/", String::as_str);
    match rest.get(2) {
        Some(dest) => {
            let stats = fs.extract(path, std::path::Path::new(dest))?;
            let secs = t.elapsed().as_secs_f64();
            eprintln!("{stats:?} in {secs:.3} s ({:.0} MB/s)", stats.bytes as f64 / secs / 1e6);
        }
        None => {
            for e in fs.list(path)? {
                println!("{:o} {:>10} {:>11} {:?} {}", e.mode, e.size, e.mtime, e.kind, e.name);
            }
            eprintln!("probe+open+list: {:?}", t.elapsed());
        }
    }
    Ok(())
}
