//! HTTP dates (RFC 9110 §5.6.7) as the mainstream caches read them: the
//! three forms — IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete
//! RFC 850 form (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime's (`Sun Nov
//! 6 08:49:37 1994`) — with two leniencies RFC 9111 §4.2 asks of a cache:
//! the weekday is redundant, so one that does not match the date (or is not
//! a weekday name at all, as long as it is letters) does not spoil it, and
//! names are read in any letter case. A two-digit year follows §5.6.7's
//! 50-year rule. Anything else is not a date (the caller fails closed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The date `text` names, if it is one; `now` decides a two-digit year's
/// century.
pub(super) fn parse(text: &str, now: SystemTime) -> Option<SystemTime> {
    let text = text.trim_matches([' ', '\t']);
    let (weekday, rest) = match text.split_once(',') {
        Some((weekday, rest)) => (weekday, rest.trim_start_matches(' ')),
        None => text.split_once(' ')?,
    };
    if weekday.is_empty() || !weekday.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let fields: Vec<&str> = rest.split(' ').filter(|f| !f.is_empty()).collect();
    let (day, month, year, time) = match (text.contains(','), fields.as_slice()) {
        // IMF-fixdate: `06 Nov 1994 08:49:37 GMT`.
        (true, [day, month, year, time, zone]) if zone.eq_ignore_ascii_case("GMT") => {
            (number(day, 2)?, month_of(month)?, number(year, 4)?, *time)
        }
        // RFC 850: `06-Nov-94 08:49:37 GMT`.
        (true, [date, time, zone]) if zone.eq_ignore_ascii_case("GMT") => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            let year = century(number(year, 2)?, now)?;
            (number(day, 2)?, month_of(month)?, year, *time)
        }
        // asctime: `Nov  6 08:49:37 1994`.
        (false, [month, day, time, year]) if (1..=2).contains(&day.len()) => (
            number(day, day.len())?,
            month_of(month)?,
            number(year, 4)?,
            *time,
        ),
        _ => return None,
    };
    let mut clock = time.split(':');
    let (hour, minute, second) = (clock.next()?, clock.next()?, clock.next()?);
    if clock.next().is_some() {
        return None;
    }
    let (hour, minute, second) = (number(hour, 2)?, number(minute, 2)?, number(second, 2)?);
    if hour > 23 || minute > 59 || second > 59 || day == 0 || day > days_in(month, year) {
        return None;
    }
    let days = days_since_1970(year, month, day)?;
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Exactly `digits` ASCII digits.
fn number(text: &str, digits: usize) -> Option<u32> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// The month a three-letter name names, in any letter case: 1 to 12.
fn month_of(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let index = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    Some(index as u32 + 1)
}

/// RFC 9110 §5.6.7: a two-digit year that would be more than 50 years in the
/// future is the most recent past year with those digits.
fn century(two_digits: u32, now: SystemTime) -> Option<u32> {
    let now_year = year_of(now)?;
    let year = now_year - now_year % 100 + two_digits;
    Some(if year > now_year + 50 {
        year - 100
    } else {
        year
    })
}

/// The calendar year of `time`.
fn year_of(time: SystemTime) -> Option<u32> {
    let days = i64::try_from(time.duration_since(UNIX_EPOCH).ok()?.as_secs() / 86_400).ok()?;
    // The inverse of `days_since_1970`, by Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    u32::try_from(year).ok()
}

fn leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in(month: u32, year: u32) -> u32 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date (Howard Hinnant's `days_from_civil`);
/// `None` before 1970.
fn days_since_1970(year: u32, month: u32, day: u32) -> Option<i64> {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days >= 0).then_some(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2023-11-14T22:13:20Z, a Tuesday.
    fn now() -> SystemTime {
        at(1_700_000_000)
    }

    #[test]
    fn the_three_forms_agree_with_a_strict_parser() {
        for secs in [0, 784_111_777, 951_782_400, 1_700_000_100, 4_102_444_799] {
            let imf = httpdate::fmt_http_date(at(secs));
            assert_eq!(parse(&imf, now()), Some(at(secs)), "{imf}");
            assert_eq!(httpdate::parse_http_date(&imf).ok(), Some(at(secs)));
        }
        let sunday = at(784_111_777);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse(text, now()), Some(sunday), "{text}");
        }
    }

    #[test]
    fn a_wrong_weekday_or_another_letter_case_does_not_spoil_a_date() {
        let tuesday = Some(at(1_700_000_100));
        for text in [
            "Mon, 14 Nov 2023 22:15:00 GMT",
            "tue, 14 nov 2023 22:15:00 gmt",
            "TUE, 14 NOV 2023 22:15:00 GMT",
            "Monday, 14-Nov-23 22:15:00 GMT",
            "Fri Nov 14 22:15:00 2023",
        ] {
            assert_eq!(parse(text, now()), tuesday, "{text}");
        }
    }

    #[test]
    fn a_two_digit_year_is_never_more_than_fifty_years_ahead() {
        let year = |text: &str| parse(text, now()).and_then(year_of);
        assert_eq!(year("Sunday, 06-Nov-94 08:49:37 GMT"), Some(1994));
        assert_eq!(year("Sunday, 06-Nov-30 08:49:37 GMT"), Some(2030));
        assert_eq!(year("Sunday, 06-Nov-72 08:49:37 GMT"), Some(2072));
        assert_eq!(year("Sunday, 06-Nov-74 08:49:37 GMT"), Some(1974));
    }

    #[test]
    fn anything_else_is_not_a_date() {
        for text in [
            "",
            "0",
            "-1",
            "tomorrow",
            "Tue, 31 Nov 2023 22:15:00 GMT",
            "Tue, 29 Feb 2023 22:15:00 GMT",
            "Tue, 14 Nov 2023 22:15:00",
            "Tue, 14 Nov 2023 22:15:00 UTC",
            "Tue, 14 Nov 2023 24:00:00 GMT",
            "Tue, 14 Nov 2023 22:15 GMT",
            "Tue, 14 Nov 2023 22:15:00 GMT extra",
            "14 Nov 2023 22:15:00 GMT",
            "Tue, 4 Nov 2023 22:15:00 GMT",
            "T3e, 14 Nov 2023 22:15:00 GMT",
            "Tue, 14 Nov 23 22:15:00 GMT",
            "Tue, 14 November 2023 22:15:00 GMT",
            "Tue, 14-Nov-2023 22:15:00 GMT",
            "Tue, 01 Jan 1969 00:00:00 GMT",
            "Tue, +1 Nov 2023 22:15:00 GMT",
        ] {
            assert_eq!(parse(text, now()), None, "{text:?}");
        }
        assert!(parse("Tue, 29 Feb 2024 22:15:00 GMT", now()).is_some());
    }
}
