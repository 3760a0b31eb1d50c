use super::marks::cache_status;
use super::*;

#[test]
fn snapshot_reads_every_counter() {
    let c = Counters::default();
    bump(&c.requests);
    bump(&c.requests);
    bump(&c.hits);
    let s = c.snapshot();
    assert_eq!(s.requests, 2);
    assert_eq!(s.hits, 1);
    assert_eq!(s.flights, 0);
}

#[test]
fn counters_lists_every_field_once_by_its_metric_name() {
    let c = Counters::default();
    bump(&c.backend_skipped);
    let listed = c.snapshot().counters();
    let names: std::collections::HashSet<_> = listed.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), listed.len(), "names are unique");
    assert!(listed
        .iter()
        .all(|(n, _)| n.starts_with("coalesce_") && n.ends_with("_total")));
    assert_eq!(
        listed.iter().filter(|(_, v)| *v > 0).collect::<Vec<_>>(),
        [&("coalesce_backend_skipped_total", 1)]
    );
    // Every field: a `Stats` with all fields set shows no zero.
    let all = Stats {
        requests: 1,
        bypasses: 1,
        hits: 1,
        flights: 1,
        followers: 1,
        origin_calls: 1,
        stored: 1,
        passed_flights: 1,
        errors: 1,
        panics: 1,
        dangling: 1,
        wait_timeouts: 1,
        cancelled: 1,
        backend_errors: 1,
        backend_skipped: 1,
        remote_waits: 1,
        takeovers: 1,
        resumes: 1,
        lease_lost: 1,
        passes: 1,
        stale: 1,
        refreshes: 1,
        early_refreshes: 1,
        revalidations: 1,
        stale_on_error: 1,
        purges: 1,
        purge_fenced: 1,
        purge_reruns: 1,
        write_purge_failures: 1,
        origin_timeouts: 1,
    };
    assert!(all.counters().iter().all(|(_, v)| *v == 1));
}

#[test]
fn cache_status_members_follow_rfc_9211() {
    let ok = http::StatusCode::OK;
    assert_eq!(
        cache_status("c", Outcome::Hit, ok, Some(30), None),
        "c; hit; ttl=30"
    );
    assert_eq!(
        cache_status("c", Outcome::Stale, ok, Some(-4), None),
        "c; hit; ttl=-4"
    );
    assert_eq!(
        cache_status("c", Outcome::Leader, ok, None, None),
        "c; fwd=miss; fwd-status=200"
    );
    assert_eq!(
        cache_status(
            "c",
            Outcome::Follower,
            http::StatusCode::BAD_GATEWAY,
            None,
            None
        ),
        "c; fwd=miss; fwd-status=502; collapsed"
    );
    assert_eq!(
        cache_status("c", Outcome::Bypass, ok, None, None),
        "c; fwd=bypass"
    );
    let stored = Forwarded {
        stored: true,
        ..Forwarded::default()
    };
    assert_eq!(
        cache_status("c", Outcome::Leader, ok, None, Some(stored)),
        "c; fwd=miss; fwd-status=200; stored"
    );
    let reload = Forwarded {
        why: Fwd::Request,
        collapsed: true,
        ..Forwarded::default()
    };
    assert_eq!(
        cache_status("c", Outcome::Follower, ok, None, Some(reload)),
        "c; fwd=request; fwd-status=200; collapsed"
    );
    let rescued = Forwarded {
        rescued: Some(Some(http::StatusCode::SERVICE_UNAVAILABLE)),
        ..Forwarded::default()
    };
    assert_eq!(
        cache_status("c", Outcome::Stale, ok, Some(-3), Some(rescued)),
        "c; fwd=stale; fwd-status=503; ttl=-3"
    );
    let timed_out = Forwarded {
        rescued: Some(None),
        collapsed: true,
        ..Forwarded::default()
    };
    assert_eq!(
        cache_status("c", Outcome::Stale, ok, Some(-3), Some(timed_out)),
        "c; fwd=stale; collapsed; ttl=-3"
    );
}

#[test]
fn outcome_names_are_lower_case() {
    assert_eq!(Outcome::Follower.to_string(), "follower");
    assert_eq!(Outcome::Pass.as_str(), "pass");
    assert_eq!(Outcome::Stale.as_str(), "stale");
}
