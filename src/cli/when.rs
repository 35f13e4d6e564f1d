//! Time bounds for `audit query` and `audit report`, as an admin types them (all UTC):
//! RFC 3339 (`2026-05-01T10:00:00Z`), a date (`2026-05-01`), a date and time without zone
//! (`2026-05-01 10:00`, `2026-05-01T10:00:30`), relative (`7d`, `36h`, `90m`, `2w` ago), and
//! the words `now`, `today`, `yesterday`.
//! A bound that names a whole day (a date, `today`, `yesterday`) covers that whole day: as
//! `--since` it starts at its midnight, as `--until` it ends at the next midnight.

use time::format_description::well_known::Rfc3339;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime};

/// A time bound; `inclusive` is false for the midnight after an `--until` day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub at: OffsetDateTime,
    pub inclusive: bool,
}

const HELP: &str = "use 7d, 12h, 30m, 2w, today, yesterday, a date (2026-05-01), a date and time \
                    (2026-05-01 10:00, UTC) or RFC 3339 (2026-05-01T10:00:00Z)";

/// Parses `s` relative to `now`; `is_until` selects the end of a named day.
pub fn parse_bound(s: &str, is_until: bool, now: OffsetDateTime) -> Result<Bound, String> {
    let s = s.trim();
    let point = |at| {
        Ok(Bound {
            at,
            inclusive: true,
        })
    };
    let day = |d: Date| -> Result<Bound, String> {
        if is_until {
            let next = d
                .next_day()
                .ok_or_else(|| format!("`{s}` is out of range"))?;
            Ok(Bound {
                at: next.midnight().assume_utc(),
                inclusive: false,
            })
        } else {
            point(d.midnight().assume_utc())
        }
    };
    match s.to_ascii_lowercase().as_str() {
        "now" => return point(now),
        "today" => return day(now.date()),
        "yesterday" => {
            return day(now
                .date()
                .previous_day()
                .ok_or("`yesterday` is out of range")?)
        }
        _ => {}
    }
    if let Some(ago) = relative(s) {
        return point(now - ago);
    }
    if let Ok(at) = OffsetDateTime::parse(s, &Rfc3339) {
        return point(at);
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = Date::parse(s, &date_fmt) {
        return day(d);
    }
    let with_time = [
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]"),
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]"),
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
    ];
    for fmt in with_time {
        if let Ok(t) = PrimitiveDateTime::parse(s, &fmt) {
            return point(t.assume_utc());
        }
    }
    Err(format!("`{s}` is not a time I understand: {HELP}"))
}

/// `7d`, `12h`, `30m`, `2w`, `45s` as a duration.
fn relative(s: &str) -> Option<Duration> {
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()].trim().parse().ok()?;
    if n < 0 {
        return None;
    }
    Some(match unit.to_ascii_lowercase() {
        's' => Duration::seconds(n),
        'm' => Duration::minutes(n),
        'h' => Duration::hours(n),
        'd' => Duration::days(n),
        'w' => Duration::weeks(n),
        _ => return None,
    })
}

/// Whether `t` lies within the bounds.
pub fn within(t: OffsetDateTime, since: Option<&Bound>, until: Option<&Bound>) -> bool {
    if since.is_some_and(|b| t < b.at) {
        return false;
    }
    if let Some(b) = until {
        if t > b.at || (!b.inclusive && t == b.at) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-12-02T13:30:00Z", &Rfc3339).unwrap()
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn relative_and_named_times() {
        assert_eq!(
            parse_bound("7d", false, now()).unwrap().at,
            at("2026-11-25T13:30:00Z")
        );
        assert_eq!(
            parse_bound("36h", false, now()).unwrap().at,
            at("2026-12-01T01:30:00Z")
        );
        assert_eq!(
            parse_bound("2w", false, now()).unwrap().at,
            at("2026-11-18T13:30:00Z")
        );
        let y = parse_bound("yesterday", false, now()).unwrap();
        assert_eq!(y.at, at("2026-12-01T00:00:00Z"));
        let y = parse_bound("Yesterday", true, now()).unwrap();
        assert_eq!((y.at, y.inclusive), (at("2026-12-02T00:00:00Z"), false));
        assert_eq!(
            parse_bound("today", false, now()).unwrap().at,
            at("2026-12-02T00:00:00Z")
        );
    }

    #[test]
    fn dates_and_times() {
        let d = parse_bound("2026-05-01", true, now()).unwrap();
        assert_eq!((d.at, d.inclusive), (at("2026-05-02T00:00:00Z"), false));
        assert_eq!(
            parse_bound("2026-05-01 10:15", false, now()).unwrap().at,
            at("2026-05-01T10:15:00Z")
        );
        assert_eq!(
            parse_bound("2026-05-01T10:15:30", false, now()).unwrap().at,
            at("2026-05-01T10:15:30Z")
        );
        assert_eq!(
            parse_bound("2026-05-01T10:15:30+02:00", false, now())
                .unwrap()
                .at,
            at("2026-05-01T08:15:30Z")
        );
        let err = parse_bound("someday", false, now()).unwrap_err();
        assert!(err.contains("7d") && err.contains("yesterday"), "{err}");
        assert!(parse_bound("-3d", false, now()).is_err());
    }

    #[test]
    fn until_a_day_excludes_the_next_midnight() {
        let u = parse_bound("2026-05-01", true, now()).unwrap();
        assert!(within(at("2026-05-01T23:59:59Z"), None, Some(&u)));
        assert!(!within(at("2026-05-02T00:00:00Z"), None, Some(&u)));
    }
}
