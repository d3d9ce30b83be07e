//! Durations as the config file writes them: a number of seconds (`_secs` keys) or whole
//! milliseconds (`_ms` keys). Used with `#[serde(deserialize_with = ...)]`, so a config
//! struct keeps its `Duration` fields while the file keeps its key names.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// Longest duration a `_secs` key may hold (about 31 years): beyond it is a typo.
const MAX_SECS: f64 = 1e9;

/// A positive, finite number of seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 && v < MAX_SECS {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(de::Error::invalid_value(
            de::Unexpected::Float(v),
            &"a positive number of seconds",
        ))
    }
}

/// Whole milliseconds (range checks are the owner's, which knows its bounds).
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Keys {
        #[serde(deserialize_with = "secs")]
        wait_secs: Duration,
        #[serde(deserialize_with = "millis")]
        pause_ms: Duration,
    }

    fn parse(json: &str) -> Result<Keys, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn seconds_and_milliseconds_become_durations() {
        let k = parse(r#"{"wait_secs": 2.5, "pause_ms": 700}"#).unwrap();
        assert_eq!(k.wait_secs, Duration::from_millis(2_500));
        assert_eq!(k.pause_ms, Duration::from_millis(700));
        let k = parse(r#"{"wait_secs": 10, "pause_ms": 0}"#).unwrap();
        assert_eq!(k.wait_secs, Duration::from_secs(10));
    }

    #[test]
    fn seconds_that_are_not_a_positive_duration_are_refused() {
        for bad in ["-1.0", "0", "1e12"] {
            let err = parse(&format!(r#"{{"wait_secs": {bad}, "pause_ms": 1}}"#)).unwrap_err();
            assert!(err.contains("a positive number of seconds"), "{bad}: {err}");
        }
        assert!(parse(r#"{"wait_secs": 1, "pause_ms": -5}"#).is_err());
    }
}
