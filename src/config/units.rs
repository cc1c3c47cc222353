//! Human units in the config file: sizes ("8MiB", plain integers = bytes), durations
//! ("5s", "1h 30m") and socket addresses, each with a message that shows what is expected.
//!
//! Parsing happens during deserialization so that the TOML deserializer attaches the
//! value's span to the error, and the message can name the line and the key.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::de::{self, Deserialize, Deserializer, Visitor};

pub(crate) const DURATION_EXAMPLE: &str = "a duration like \"5s\" or \"2m\"";
pub(crate) const SIZE_EXAMPLE: &str = "a size like \"8MiB\" or \"256KiB\" (or a number of bytes)";
pub(crate) const ADDR_EXAMPLE: &str = "a socket address like \"127.0.0.1:9464\"";

/// A duration written with humantime units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXAMPLE)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                parse_duration(s).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// Parses "5s", "10m", "1h 30m"; the error is the whole user-facing sentence.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected {DURATION_EXAMPLE}, found \"{s}\" ({e})"))
}

/// A byte size written with bytesize units, or a plain integer number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_EXAMPLE)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<HumanSize, E> {
                u64::try_from(n)
                    .map(HumanSize)
                    .map_err(|_| E::custom(format!("expected {SIZE_EXAMPLE}, found {n}")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<HumanSize, E> {
                Ok(HumanSize(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanSize, E> {
                parse_size(s).map(HumanSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Parses "8MiB", "1GB", "262144"; the error is the whole user-facing sentence.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let trimmed = s.trim();
    // bytesize reads "-1MiB" or "" in odd ways; a size starts with a digit.
    if !trimmed.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected {SIZE_EXAMPLE}, found \"{s}\""));
    }
    trimmed
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("expected {SIZE_EXAMPLE}, found \"{s}\" ({e})"))
}

pub(crate) const RATE_EXAMPLE: &str = "a rate like \"5MiB/s\" or \"512KiB/s\", or \"off\"";

/// The slowest limit accepted: slower, a single request body would take minutes per piece.
pub const MIN_RATE: u64 = 1024;

/// Parses "5MiB/s" (bytes per second) or "off" (`None`: no limit); the error is the whole
/// user-facing sentence.
pub(crate) fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let trimmed = s.trim();
    if trimmed.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || format!("expected {RATE_EXAMPLE}, found \"{s}\"");
    let size = trimmed.strip_suffix("/s").ok_or_else(bad)?;
    let rate = parse_size(size).map_err(|_| bad())?;
    if rate < MIN_RATE {
        return Err(format!(
            "expected a rate of at least 1KiB/s (or \"off\"), found \"{s}\""
        ));
    }
    Ok(Some(rate))
}

/// A socket address (`127.0.0.1:8787`, `[::1]:9464`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listen(pub SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ADDR_EXAMPLE)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Listen, E> {
                s.trim()
                    .parse::<SocketAddr>()
                    .map(Listen)
                    .map_err(|_| E::custom(format!("expected {ADDR_EXAMPLE}, found \"{s}\"")))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// Renders a size for the plan: "8 MiB" when exact in binary units, else bytes.
pub(crate) fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (factor, unit) in UNITS {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{} {unit}", bytes / factor);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_binary_and_decimal_units_and_plain_bytes() {
        assert_eq!(parse_size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("8 MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("262144"), Ok(262_144));
    }

    #[test]
    fn sizes_reject_unknown_units_and_signs_with_an_example() {
        for bad in ["8 parsecs", "-1MiB", "", "MiB"] {
            let err = parse_size(bad).expect_err("the input is not a size");
            assert!(err.contains("\"8MiB\""), "{err}");
            assert!(err.contains(&format!("found \"{bad}\"")), "{err}");
        }
    }

    #[test]
    fn durations_accept_humantime_forms() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_reject_unknown_units_with_an_example() {
        let err = parse_duration("5 parsecs").expect_err("parsecs are not a time unit");
        assert!(err.starts_with("expected a duration like \"5s\""), "{err}");
        assert!(err.contains("found \"5 parsecs\""), "{err}");
    }

    #[test]
    fn rates_take_a_size_per_second_or_off() {
        assert_eq!(parse_rate("5MiB/s"), Ok(Some(5 << 20)));
        assert_eq!(parse_rate(" 512 KiB/s "), Ok(Some(512 << 10)));
        assert_eq!(parse_rate("off"), Ok(None));
        for bad in ["5MiB", "fast", "-1MiB/s", ""] {
            let err = parse_rate(bad).expect_err("not a rate");
            assert!(err.contains("\"5MiB/s\""), "{err}");
        }
        let err = parse_rate("100/s").expect_err("too slow");
        assert!(err.contains("at least 1KiB/s"), "{err}");
    }

    #[test]
    fn sizes_are_formatted_in_the_largest_exact_binary_unit() {
        assert_eq!(format_size(8 << 20), "8 MiB");
        assert_eq!(format_size(256 << 10), "256 KiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
