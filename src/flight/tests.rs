use super::*;
use crate::FlightErrorKind;

fn key() -> Key {
    Key::from("k")
}

#[tokio::test]
async fn one_leader_and_followers_hear_the_landing() {
    let table = FlightTable::default();
    let Role::Leader(guard) = table.join(&key()) else {
        panic!("first caller must lead")
    };
    let Role::Follower(rx) = table.join(&key()) else {
        panic!("second caller must follow")
    };
    assert_eq!(table.len(), 1);
    guard.land(Landing::Failed(FlightError::new(
        FlightErrorKind::Origin,
        "x",
    )));
    assert_eq!(table.len(), 0);
    assert!(matches!(rx.wait().await, Some(Landing::Failed(_))));
}

#[tokio::test]
async fn dropped_leader_releases_followers_and_the_entry() {
    let table = FlightTable::default();
    let Role::Leader(guard) = table.join(&key()) else {
        panic!()
    };
    let Role::Follower(rx) = table.join(&key()) else {
        panic!()
    };
    drop(guard);
    assert_eq!(table.len(), 0);
    assert!(rx.wait().await.is_none());
    assert!(matches!(table.join(&key()), Role::Leader(_)));
}

#[tokio::test]
async fn an_old_guard_never_removes_a_newer_flight() {
    let table = FlightTable::default();
    let Role::Leader(old) = table.join(&key()) else {
        panic!()
    };
    assert!(old.abandon_if_unfollowed());
    let Role::Leader(_new) = table.join(&key()) else {
        panic!()
    };
    drop(old);
    assert_eq!(table.len(), 1, "the newer flight must stay");
}

#[tokio::test]
async fn a_followed_flight_is_not_abandoned() {
    let table = FlightTable::default();
    let Role::Leader(guard) = table.join(&key()) else {
        panic!()
    };
    let Role::Follower(rx) = table.join(&key()) else {
        panic!()
    };
    assert!(!guard.abandon_if_unfollowed());
    drop(rx);
    assert!(guard.abandon_if_unfollowed());
    assert_eq!(table.len(), 0);
}
