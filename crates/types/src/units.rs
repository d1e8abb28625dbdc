//! Human units: byte sizes and rates.

const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/// `512 B`, `1.5 KiB`, `20.0 GiB`: binary units, one decimal above bytes.
pub fn bytes(n: u64) -> String {
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `bytes` moved in `seconds`, per second (`0 B/s` for no time at all).
pub fn rate(bytes: u64, seconds: f64) -> String {
    let per_second = if seconds > 0.0 { bytes as f64 / seconds } else { 0.0 };
    format!("{}/s", self::bytes(per_second as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units_with_one_decimal() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 << 30), "20.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(rate(3 << 20, 2.0), "1.5 MiB/s");
        assert_eq!(rate(5, 0.0), "0 B/s");
    }
}
