//! The cross-process tier, above the [`Backend`](crate::Backend) trait so that
//! every backend shares one protocol: take the lease or wait for the process
//! that holds it, keep the lease alive while the origin call runs, and end
//! the flight through the owner-checked `complete`.
//!
//! Only a process's local leader comes here; its local followers wait on it
//! and never touch the backend. A wait is woken by the backend's [`Watch`]
//! (a message), and looks again once per lease, because a holder that crashed
//! leaves a lease that ends without a message. A backend that fails or is
//! slow turns the flight into a process-local one; it never fails a request.

mod held;

pub(crate) use held::{complete, with_watchdog, Held};

use crate::backend::{Completion, LeaseToken, Notice, TryLock};
use crate::backend_call::{optional, Op, Unavailable};
use crate::shared::Shared;
use crate::stats::bump;
use crate::{Entry, Found, Key};
use std::time::{Duration, SystemTime};

/// The outcome of trying to lead a key across processes.
pub(crate) enum Elected {
    /// Lead: with a lease, or (`None`) without one, when the backend has no
    /// leases to give or could not be asked.
    Lead(Option<LeaseToken>),
    /// Lead without knowing whether the lease is held: an attempt to take
    /// it failed, and may have run in the backend all the same (its reply
    /// late or lost). The flight leads as without a lease, then completes
    /// with this token: if the lease was its own, its waiters elsewhere get
    /// the answer at once instead of after the lease.
    Unsure(LeaseToken),
    /// Another process's flight stored this answer.
    Answer(Entry),
    /// Another process's flight gave this answer to its waiters, unstored.
    Shared(Entry),
    /// Another process found that the key's answers cannot be shared: call
    /// the origin for each caller; `remember`: the key is marked
    /// pass-through (its answers were private), rather than this one answer
    /// being unshareable across instances (too large, or varied).
    Pass { remember: bool },
    /// Another process held the lease past the wait timeout.
    Timeout,
    /// Another process found the key's answers varying on these request
    /// headers: the flight goes on for the variant its request selects.
    Varies(crate::Variants),
    /// Another process's flight is streaming its answer: follow it with
    /// this watch, from this read of its head.
    Streaming(crate::backend::Watch, crate::backend::StreamRead),
}

pub(crate) async fn elect<E>(
    shared: &Shared<E>,
    key: &Key,
    deadline: tokio::time::Instant,
    refresh: &mut Option<SystemTime>,
) -> Elected {
    let config = &shared.config;
    let counters = &shared.counters;
    let degrade = |what: &str, unavailable: Unavailable| {
        unavailable.report(counters, what, "leading this flight without a lease");
        Elected::Lead(None)
    };
    // A lease attempt that failed may still have run: the flight keeps its
    // token to end the lease with, should it be its own.
    let unsure = |what: &str, unavailable: Unavailable, token: LeaseToken| {
        let sent = matches!(unavailable, Unavailable::Failed(_));
        let degraded = degrade(what, unavailable);
        if sent {
            Elected::Unsure(token)
        } else {
            degraded
        }
    };
    let token = match LeaseToken::new() {
        Ok(token) => token,
        Err(error) => {
            bump(&counters.backend_errors);
            tracing::warn!(%error, "making a lease token failed; leading this flight without a lease");
            return Elected::Lead(None);
        }
    };
    // With nothing stored, the answer a leader hands on travels in its
    // message only, and reaches only the processes already listening: a
    // flight that finds the lease held must have listened before it
    // looked, or the answer may go by between the two. (With answers
    // stored, the lookup after subscribing finds them; only an unstored
    // server error can go by, and costs its origin call again.)
    let listen_first = !config.stores();
    // The key's watch; `None` (reported) when this flight leads without a
    // lease instead.
    let subscribe = || async {
        let subscribed = optional(shared, Op::Watch, |b| b.watch(key)).await;
        subscribed.unwrap_or_else(|unavailable| {
            degrade("subscribing", unavailable);
            None
        })
    };
    let early = if listen_first {
        let Some(watch) = subscribe().await else {
            return Elected::Lead(None);
        };
        Some(watch)
    } else {
        None
    };
    let version = *refresh;
    match optional(shared, Op::TryLock, |b| {
        b.try_lock(key, &token, config.lease, version)
    })
    .await
    {
        Ok(TryLock::Acquired) => return Elected::Lead(Some(token)),
        Ok(TryLock::Pass) => return Elected::Pass { remember: true },
        Ok(_) => {}
        Err(unavailable) => return unsure("taking the lease", unavailable, token),
    }
    // Held elsewhere. Subscribe first, then look: an answer completed in
    // between is found by the lookup, one completed after it wakes the watch.
    let watch = match early {
        Some(watch) => Some(watch),
        None => subscribe().await,
    };
    let Some(mut watch) = watch else {
        return Elected::Lead(None);
    };
    // Counted once the watch is in place: from then on no way the flight
    // ends is missed.
    bump(&counters.remote_waits);
    tracing::debug!("another instance leads this key; waiting for its answer");
    loop {
        // Look before trying the lease: a leader's completion stores the
        // answer and frees the lease in one step, and a waiter woken by it
        // must take the answer, not the free lease.
        let looked = match optional(shared, Op::Find, |b| b.find(key)).await {
            Ok(Some(Found::Variants(variants))) => return Elected::Varies(variants),
            looked => looked.map(|found| found.and_then(Found::into_entry)),
        };
        match looked {
            // A refresh is not answered by the stale answer it replaces.
            Ok(Some(entry)) if refresh.is_some() && entry.stored_at() == *refresh => {}
            // Nor is any flight by an answer it may not serve: purged, or
            // stale past its stale-while-revalidate window (it could only
            // stand in for an error). The flight replaces it instead.
            Ok(Some(entry))
                if shared.config.backend.purged(key, &entry).is_some()
                    || (entry.is_stale() && !entry.may_serve_stale()) =>
            {
                *refresh = entry.stored_at();
            }
            Ok(Some(entry)) => return Elected::Answer(entry),
            Ok(None) => {}
            Err(unavailable) => return degrade("looking up", unavailable),
        }
        let version = *refresh;
        match optional(shared, Op::TryLock, |b| {
            b.try_lock(key, &token, config.lease, version)
        })
        .await
        {
            Ok(TryLock::Pass) => return Elected::Pass { remember: true },
            Ok(TryLock::Acquired) => {
                // Free with no answer stored. The leader may have handed
                // its answer on without storing it (a ttl of zero, a server
                // error): its message went out before this reply, on
                // another connection, and may not have been read yet. One
                // that has is taken. One that has not is waited for (at
                // most `backend_timeout`) when this flight listened before
                // its first look, so that the message is sure to come if
                // there is one; a holder that died sends none, and its
                // takeover waits that much longer. A flight that takes an
                // answer so ends the lease as the leader did, for anyone
                // still waiting.
                let notice = match watch.arrived() {
                    Some(notice) => Some(notice),
                    None if listen_first => {
                        tokio::time::timeout(config.backend_timeout, watch.changed())
                            .await
                            .ok()
                            .flatten()
                    }
                    None => None,
                };
                if let Some(Notice::Answer(entry)) = notice {
                    complete(
                        shared,
                        key,
                        &token,
                        Completion::Shared(entry.clone()),
                        false,
                    )
                    .await;
                    return Elected::Shared(entry);
                }
                // Otherwise its holder died, or its answer could not be
                // shared.
                bump(&counters.takeovers);
                tracing::info!(
                    key = %key.fingerprint(),
                    "took over a flight whose leader ended without an answer"
                );
                return Elected::Lead(Some(token));
            }
            // Held. A refresh refused because another answer replaced the
            // one it saw has that answer near now (see `Leases::try_lock`),
            // and its message may have gone out before this wait listened:
            // look again at once rather than at the next recheck.
            Ok(_) if replaced(shared, key, version) => continue,
            Ok(_) => {}
            Err(unavailable) => return unsure("taking the lease", unavailable, token),
        }
        let recheck = tokio::time::Instant::now() + config.lease;
        tokio::select! {
            notice = watch.changed() => match notice {
                Some(Notice::Answer(entry)) => return Elected::Shared(entry),
                Some(Notice::Pass) => return Elected::Pass { remember: false },
                Some(Notice::Streaming) => {
                    if let Some(read) = stream_head(shared, key).await {
                        return Elected::Streaming(watch, read);
                    }
                }
                _ => {}
            },
            _ = tokio::time::sleep_until(recheck.min(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    // Counted by the flight, which has the same deadline.
                    return Elected::Timeout;
                }
            }
        }
    }
}

/// Whether this process now holds another answer for `key` than the one
/// stored at `version`, which a refresh meant to replace.
fn replaced<E>(shared: &Shared<E>, key: &Key, version: Option<SystemTime>) -> bool {
    version.is_some()
        && shared
            .config
            .backend
            .find_local(key)
            .and_then(Found::into_entry)
            .is_some_and(|entry| entry.stored_at() != version)
}

/// The head of the key's stream under way, if there is one this process can
/// still read from its first byte. A read that fails is tried again (after
/// 50 ms, then 100, ...) for up to a third of a lease: missing the stream
/// would leave this wait to the flight's completion, which for an answer
/// too large to store is a call of its own to the origin.
async fn stream_head<E>(shared: &Shared<E>, key: &Key) -> Option<crate::backend::StreamRead> {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match optional(shared, Op::ReadStream, |b| b.read_stream(key, None, 0, 0)).await {
            Ok(Some(read)) if read.head.is_some() && !read.dropped => return Some(read),
            Ok(_) => return None,
            Err(unavailable) => {
                if started.elapsed() + wait > shared.config.lease / 3 {
                    unavailable.report(
                        &shared.counters,
                        "reading the head of another instance's stream",
                        "waiting for its answer whole",
                    );
                    return None;
                }
                unavailable.report(
                    &shared.counters,
                    "reading the head of another instance's stream",
                    "trying again",
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}
