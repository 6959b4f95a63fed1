//! Durations as people write them: `"90s"`, `"15m"`, `"24h"`, `"30d"`, `"1h 30m"`.

use std::time::Duration;

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{input}` is not a duration (write e.g. \"90s\", \"15m\", \"24h\" or \"30d\")")]
    Malformed { input: String },
    #[error("`{input}` is no time at all; give a duration longer than zero")]
    Zero { input: String },
}

/// Whole seconds, rounded up: a period asked for (a secret's overlap) is never cut short.
pub fn secs_rounded_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Parses a positive duration.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    match humantime::parse_duration(input.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(DurationError::Zero {
            input: input.to_owned(),
        }),
        Err(_) => Err(DurationError::Malformed {
            input: input.to_owned(),
        }),
    }
}

/// Formats a duration back into the same syntax, as compactly as it goes.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5_400));
    }

    #[test]
    fn refuses_zero_and_garbage() {
        assert!(matches!(parse("0s"), Err(DurationError::Zero { .. })));
        assert!(
            parse("0s")
                .unwrap_err()
                .to_string()
                .contains("longer than zero")
        );
        assert!(parse("soon").is_err());
        assert!(parse("").is_err());
        assert!(parse("10").is_err());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(
            parse(&format(Duration::from_secs(93_784)))
                .unwrap()
                .as_secs(),
            93_784
        );
    }
}
