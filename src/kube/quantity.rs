//! resource.Quantity parsing ("100m", "0.5", "128Mi", "1G", "1e3") for the two things tinylet
//! needs from it: CPU in millicores and memory in bytes.

/// Parses a quantity into its value times 1000 (millis), rounding up as Kubernetes does for CPU.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let (num, scale) = split(s)?;
    // value * 1000 * scale, computed in f64 then rounded up: quantities in manifests are short decimals.
    let v = num * scale * 1000.0;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("quantity {:?} is out of range", s));
    }
    Ok(v.ceil() as u64)
}

/// Parses a quantity into whole units (bytes for memory), rounding up.
pub fn parse_units(s: &str) -> Result<u64, String> {
    let (num, scale) = split(s)?;
    let v = num * scale;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("quantity {:?} is out of range", s));
    }
    Ok(v.ceil() as u64)
}

/// Quantities arrive as JSON strings or numbers.
pub fn value_to_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn split(s: &str) -> Result<(f64, f64), String> {
    let s = s.trim();
    let bad = || {
        format!("quantity {:?} must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'", s)
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    Ok((num, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory() {
        assert_eq!(parse_millis("100m").unwrap(), 100);
        assert_eq!(parse_millis("0.5").unwrap(), 500);
        assert_eq!(parse_millis("2").unwrap(), 2000);
        assert_eq!(parse_units("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_units("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_units("1e3").unwrap(), 1000);
        assert_eq!(parse_units("64Ki").unwrap(), 65536);
        assert!(parse_units("12 apples").is_err());
        assert!(parse_units("").is_err());
        assert!(parse_millis("-1").is_err());
    }
}
