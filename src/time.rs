//! Wall-clock timestamps as stored in key records: whole seconds since the Unix epoch, written
//! as RFC 3339 so a store file stays readable.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 9999-12-31T23:59:59Z: the last instant RFC 3339 can write. Every timestamp is clamped to
    /// it, so a huge duration from a client can never overflow or fail to serialise.
    pub const MAX: Timestamp = Timestamp(253_402_300_799);

    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Timestamp(secs)
    }

    pub const fn from_unix(secs: u64) -> Self {
        if secs > Timestamp::MAX.0 {
            Timestamp::MAX
        } else {
            Timestamp(secs)
        }
    }

    pub const fn unix(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp::from_unix(self.0.saturating_add(d.as_secs()))
    }

    fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }
}

/// One reading of the wall clock, to the nanosecond: a request reads it once, and the wall time
/// it needs later (the response's `Date`, the audit trail's minute) is this plus the monotonic
/// time since, not another reading.
#[derive(Clone, Copy, Debug)]
pub struct WallClock(Duration);

impl WallClock {
    pub fn now() -> Self {
        WallClock(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// The reading, in whole seconds.
    pub fn timestamp(self) -> Timestamp {
        Timestamp::from_unix(self.0.as_secs())
    }

    /// The wall time `elapsed` after the reading, in whole seconds.
    pub fn after(self, elapsed: Duration) -> Timestamp {
        Timestamp::from_unix(self.0.saturating_add(elapsed).as_secs())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_seconds(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)?;
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| serde::de::Error::custom("timestamp before 1970"))?;
        Ok(Timestamp::from_unix(secs.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Timestamp::from_unix(1_790_000_000);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-09-21T14:13:20Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }

    /// A reading and the times after it are the system clock's, in whole seconds.
    #[test]
    fn a_wall_clock_reading_and_the_times_after_it() {
        let before = Timestamp::now();
        let wall = WallClock::now();
        let after = Timestamp::now();
        assert!(before <= wall.timestamp() && wall.timestamp() <= after);
        assert_eq!(wall.after(Duration::ZERO), wall.timestamp());
        let later = wall.after(Duration::from_secs(90));
        assert_eq!(later.unix(), (wall.0 + Duration::from_secs(90)).as_secs());
        assert_eq!(wall.after(Duration::MAX), Timestamp::MAX);
    }

    #[test]
    fn huge_values_clamp_instead_of_panicking() {
        let far = Timestamp::now().saturating_add(Duration::from_secs(u64::MAX));
        assert_eq!(far, Timestamp::MAX);
        assert_eq!(Timestamp::from_unix(u64::MAX), Timestamp::MAX);
        assert_eq!(
            serde_json::to_string(&far).unwrap(),
            "\"9999-12-31T23:59:59Z\""
        );
    }
}
