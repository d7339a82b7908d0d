use std::fmt;

use chrono::{DateTime, Datelike, SubsecRound, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond precision, written `2021-09-26T10:33:11.123Z` everywhere
/// (events, REST and WebSocket frames): the web client appends `Z` to any value not ending in
/// one, so `+00:00` would render as garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to milliseconds so it survives every round trip unchanged.
    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Self(value.trunc_subsecs(3))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.0;
        let year = t.year();
        if !(0..=9999).contains(&year) {
            // Out of the four-digit years: chrono's own rendering (a sign and more digits).
            return write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        }
        // Written by hand: chrono's `format` interprets its pattern at every call, and a sent
        // message writes several timestamps (the claim, the event, the frames).
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, digits: usize, mut value: u32| {
            for i in (at..at + digits).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        // A leap second is held in the nanoseconds (second 59, 1,000 ms or more), as chrono
        // renders it: second 60.
        let millis = t.timestamp_subsec_millis();
        put(17, 2, t.second() + millis / 1000);
        put(20, 3, millis % 1000);
        f.write_str(std::str::from_utf8(&text).expect("ASCII digits"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Self::from(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "UTC instant with millisecond precision and a literal Z, e.g. 2021-09-26T10:33:11.123Z.",
            "type": "string",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_milliseconds_and_a_literal_z() {
        let t: Timestamp = serde_json::from_str("\"2021-09-26T10:33:11.123456+00:00\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2021-09-26T10:33:11.123Z\""
        );
        let whole: Timestamp = serde_json::from_str("\"2021-09-26T10:33:11Z\"").unwrap();
        assert_eq!(whole.to_string(), "2021-09-26T10:33:11.000Z");
    }

    proptest::proptest! {
        /// The hand-written rendering is chrono's, for any instant (leap seconds and years
        /// past 9999 included).
        #[test]
        fn renders_as_chrono_does(secs in -70_000_000_000i64..400_000_000_000, nanos in 0u32..2_000_000_000) {
            if let Some(t) = DateTime::<Utc>::from_timestamp(secs, nanos) {
                let t = Timestamp::from(t);
                proptest::prop_assert_eq!(t.to_string(), t.0.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
            }
        }
    }

    #[test]
    fn now_round_trips_exactly() {
        let t = Timestamp::now();
        let back: Timestamp = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(t, back);
    }
}
