//! Calendar dates of Unix times, for the RFC 3339 timestamps of syslog
//! messages, the front-ends' records and `ringship inspect`.

use std::fmt::Write as _;

/// The proleptic Gregorian date (year, month, day) of a day counted from
/// 1970-01-01 (Howard Hinnant's `civil_from_days`, for days on or after
/// the epoch).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `nanos` since the Unix epoch as an RFC 3339 UTC time with `digits`
/// (0 to 9) digits of the second's fraction: `2026-12-07T14:43:20.123456Z`.
#[cfg_attr(not(any(feature = "syslog", feature = "inspect")), allow(dead_code))]
pub(crate) fn rfc3339(nanos: u64, digits: u32) -> String {
    let secs = nanos / 1_000_000_000;
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    if digits > 0 {
        let digits = digits.min(9);
        let fraction = (nanos % 1_000_000_000) / 10u64.pow(9 - digits);
        let _ = write!(out, ".{fraction:0width$}", width = digits as usize);
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_date_1() {
        // Values from `date -u -d @SECS +%FT%T`.
        for (nanos, digits, want) in [
            (0, 0, "1970-01-01T00:00:00Z"),
            (951_782_400_000_000_001, 9, "2000-02-29T00:00:00.000000001Z"),
            (1_796_654_600_123_456_789, 6, "2026-12-07T14:43:20.123456Z"),
            (4_107_542_399_999_999_999, 3, "2100-02-28T23:59:59.999Z"),
            (4_107_542_400_000_000_000, 9, "2100-03-01T00:00:00.000000000Z"),
        ] {
            assert_eq!(rfc3339(nanos, digits), want);
        }
    }
}
