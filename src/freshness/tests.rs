//! Each rule of RFC 9111 §4.2 that `remaining` implements, one test each.

use super::*;
use crate::policy::directives;
use std::time::UNIX_EPOCH;

/// The time the test answers arrive.
fn received() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn date(before_received: u64) -> String {
    httpdate::fmt_http_date(received() - Duration::from_secs(before_received))
}

fn head(status: u16, headers: &[(&str, &str)]) -> response::Parts {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// Seconds fresh for an answer with these headers, asked for `delay`
/// seconds before it arrived.
fn fresh_for_with(
    settings: OriginFreshness,
    status: u16,
    headers: &[(&str, &str)],
    delay: u64,
) -> u64 {
    let head = head(status, headers);
    let directives = directives(&head.headers).expect("readable Cache-Control");
    let requested = received() - Duration::from_secs(delay);
    let (ttl, _) = remaining(&settings, &head, (&directives, true), requested, received());
    ttl.as_secs()
}

fn fresh_for(headers: &[(&str, &str)]) -> u64 {
    fresh_for_with(OriginFreshness::new(), 200, headers, 0)
}

#[test]
fn s_maxage_wins_over_max_age_and_max_age_over_expires() {
    let now = date(0);
    let expires = httpdate::fmt_http_date(received() + Duration::from_secs(500));
    assert_eq!(
        fresh_for(&[("cache-control", "max-age=60, s-maxage=30"), ("date", &now)]),
        30
    );
    assert_eq!(
        fresh_for(&[
            ("cache-control", "max-age=60"),
            ("date", &now),
            ("expires", &expires)
        ]),
        60
    );
    assert_eq!(fresh_for(&[("date", &now), ("expires", &expires)]), 500);
    // Directive names are case-insensitive; the quoted form is accepted.
    assert_eq!(
        fresh_for(&[("cache-control", "Max-Age=\"40\""), ("date", &now)]),
        40
    );
}

#[test]
fn expires_counts_from_date_and_an_invalid_expires_is_already_expired() {
    let expires = httpdate::fmt_http_date(received() + Duration::from_secs(100));
    // The origin's clock is 20 s behind: Expires - Date is what counts, less
    // the 20 s the answer seems to have aged since its Date.
    assert_eq!(
        fresh_for(&[("date", &date(20)), ("expires", &expires)]),
        100
    );
    for bad in ["0", "-1", "tomorrow", ""] {
        assert_eq!(
            fresh_for(&[("date", &date(0)), ("expires", bad)]),
            0,
            "{bad:?}"
        );
    }
    // Without a Date, the time of arrival stands for it.
    assert_eq!(fresh_for(&[("expires", &expires)]), 100);
    // Expires in the past.
    assert_eq!(fresh_for(&[("date", &date(0)), ("expires", &date(10))]), 0);
}

#[test]
fn the_age_on_arrival_is_taken_off_the_lifetime() {
    // The origin's Age.
    assert_eq!(
        fresh_for(&[("cache-control", "max-age=60"), ("age", "50")]),
        10
    );
    assert_eq!(
        fresh_for(&[("cache-control", "max-age=60"), ("age", "70")]),
        0
    );
    // The time since Date (apparent age), when larger.
    assert_eq!(
        fresh_for(&[
            ("cache-control", "max-age=60"),
            ("date", &date(15)),
            ("age", "5")
        ]),
        45
    );
    // Age plus the time the exchange took (corrected age), when larger.
    let settings = OriginFreshness::new();
    assert_eq!(
        fresh_for_with(
            settings,
            200,
            &[
                ("cache-control", "max-age=60"),
                ("age", "5"),
                ("date", &date(0))
            ],
            3
        ),
        52
    );
    // A Date in the future is no negative age.
    let ahead = httpdate::fmt_http_date(received() + Duration::from_secs(30));
    assert_eq!(
        fresh_for(&[("cache-control", "max-age=60"), ("date", &ahead)]),
        60
    );
}

#[test]
fn freshness_that_cannot_be_read_is_none() {
    for bad in [
        "max-age=abc",
        "max-age=-1",
        "max-age=1.5",
        "max-age",
        "s-maxage=x, max-age=60",
        "max-age=\"\"",
    ] {
        assert_eq!(fresh_for(&[("cache-control", bad)]), 0, "{bad}");
    }
    // Two different values of one directive: stale (the cautious reading).
    assert_eq!(fresh_for(&[("cache-control", "max-age=60, max-age=30")]), 0);
    assert_eq!(
        fresh_for(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "max-age=60")
        ]),
        60
    );
    // An Age that is not a number is no age (RFC 9111 §5.1).
    assert_eq!(
        fresh_for(&[("cache-control", "max-age=60"), ("age", "soon")]),
        60
    );
}

#[test]
fn an_overflowing_delta_is_two_to_the_31_then_capped() {
    let huge = "max-age=99999999999999999999999";
    let uncapped = OriginFreshness::new().max_ttl(Duration::from_secs(u64::MAX / 4));
    assert_eq!(
        fresh_for_with(uncapped, 200, &[("cache-control", huge)], 0),
        1 << 31
    );
    // The default cap: a day.
    assert_eq!(fresh_for(&[("cache-control", huge)]), 24 * 3600);
    let capped = OriginFreshness::new().max_ttl(Duration::from_secs(90));
    assert_eq!(
        fresh_for_with(capped, 200, &[("cache-control", "max-age=600")], 0),
        90
    );
}

#[test]
fn without_explicit_freshness_the_default_ttl_or_the_heuristic_applies() {
    let lm = date(1000);
    let plain = [("date", date(0)), ("last-modified", lm)];
    let plain: Vec<(&str, &str)> = plain.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Neither by default: not stored.
    assert_eq!(fresh_for(&plain), 0);
    let default = OriginFreshness::new().default_ttl(Duration::from_secs(7));
    assert_eq!(fresh_for_with(default, 200, &plain, 0), 7);
    // The heuristic: a tenth of the time since Last-Modified.
    let heuristic = OriginFreshness::new().heuristic(true);
    assert_eq!(fresh_for_with(heuristic, 200, &plain, 0), 100);
    // Only for heuristically cacheable statuses.
    assert_eq!(fresh_for_with(default, 302, &plain, 0), 0);
    assert_eq!(fresh_for_with(heuristic, 500, &plain, 0), 0);
    assert_eq!(fresh_for_with(default, 404, &plain, 0), 7);
    // Explicit freshness of any status is the origin's word.
    assert_eq!(
        fresh_for_with(default, 302, &[("cache-control", "max-age=3")], 0),
        3
    );
    // The heuristic needs a Last-Modified; without one, the default.
    assert_eq!(
        fresh_for_with(heuristic.default_ttl(Duration::from_secs(2)), 200, &[], 0),
        2
    );
}

fn stale_for_with(settings: OriginFreshness, cc: &str) -> u64 {
    let head = head(200, &[("cache-control", cc)]);
    let directives = directives(&head.headers).unwrap();
    stale_window(&settings, &directives).as_secs()
}

#[test]
fn stale_while_revalidate_is_capped_and_forbidden_by_revalidation_directives() {
    let settings = OriginFreshness::new();
    assert_eq!(
        stale_for_with(settings, "max-age=2, stale-while-revalidate=10"),
        10
    );
    assert_eq!(stale_for_with(settings, "max-age=2"), 0);
    // Capped by max_stale (an hour by default).
    assert_eq!(
        stale_for_with(settings, "max-age=2, stale-while-revalidate=86400"),
        3600
    );
    let tight = OriginFreshness::new().max_stale(Duration::from_secs(5));
    assert_eq!(
        stale_for_with(tight, "max-age=2, stale-while-revalidate=10"),
        5
    );
    // The origin forbids serving it stale (s-maxage implies
    // proxy-revalidate for a shared cache).
    for cc in [
        "max-age=2, stale-while-revalidate=10, must-revalidate",
        "max-age=2, stale-while-revalidate=10, proxy-revalidate",
        "s-maxage=2, stale-while-revalidate=10",
    ] {
        assert_eq!(stale_for_with(settings, cc), 0, "{cc}");
    }
    // stale-if-error is read the same way.
    let head = head(
        200,
        &[(
            "cache-control",
            "max-age=2, stale-if-error=600, must-revalidate",
        )],
    );
    assert_eq!(
        error_window(&settings, &directives(&head.headers).unwrap()),
        Duration::ZERO
    );
    let head = super::tests::head(200, &[("cache-control", "max-age=2, stale-if-error=600")]);
    assert_eq!(
        error_window(&settings, &directives(&head.headers).unwrap()).as_secs(),
        600
    );
    // Unreadable or conflicting windows are none.
    for cc in [
        "max-age=2, stale-while-revalidate=soon",
        "max-age=2, stale-while-revalidate",
        "max-age=2, stale-while-revalidate=1, stale-while-revalidate=2",
    ] {
        assert_eq!(stale_for_with(settings, cc), 0, "{cc}");
    }
}

#[test]
fn an_expires_with_a_wrong_weekday_or_in_other_letters_counts_as_the_date_it_names() {
    // 100 s after the answer arrived, a Tuesday.
    for expires in [
        "Mon, 14 Nov 2023 22:15:00 GMT",
        "tue, 14 nov 2023 22:15:00 gmt",
        "Monday, 14-Nov-23 22:15:00 GMT",
    ] {
        assert_eq!(
            fresh_for(&[("date", &date(0)), ("expires", expires)]),
            100,
            "{expires:?}"
        );
    }
    // A date that does not exist is still no date: already expired.
    assert_eq!(
        fresh_for(&[
            ("date", &date(0)),
            ("expires", "Tue, 31 Nov 2023 22:15:00 GMT")
        ]),
        0
    );
}
