//! Durations on the command line: `30s`, `10m`, `2h`, `7d`.

use anyhow::anyhow;

use crate::{exit, Failure};

/// `s` in milliseconds; `flag` names the option in the error.
pub(crate) fn millis(flag: &str, s: &str) -> Result<i64, Failure> {
    let usage = |m: String| Failure {
        code: exit::USAGE,
        error: anyhow!(m),
    };
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(usage(format!(
                "{flag} {s}: expected a duration like 30s, 10m, 2h, 7d"
            )))
        }
    };
    let n: i64 = num
        .parse()
        .map_err(|_| usage(format!("{flag} {s}: `{num}` is not a number")))?;
    Ok(n.saturating_mul(mult))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::millis("--ttl", "30s").ok(), Some(30_000));
        assert_eq!(super::millis("--ttl", "2h").ok(), Some(7_200_000));
        assert!(super::millis("--ttl", "2w").is_err());
        assert!(super::millis("--ttl", "xm").is_err());
        assert!(super::millis("--ttl", "").is_err());
    }
}
