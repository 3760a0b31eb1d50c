//! A follower that cannot take its flight's answer goes again: to the
//! flight of its own variant, a new flight for its key, or the origin alone.

use super::{start, State};
use crate::flight::Role;
use crate::leader;
use crate::origin::{Origin, OriginBody};
use crate::shared::Shared;
use crate::stats::bump;
use crate::{Key, KeyExtractor, Outcome};
use http::Request;
use std::sync::Arc;
use tower::ServiceExt;

/// A follower whose flight's answer it cannot have: joins (or leads) a new
/// flight for its key, or passes if the extractor no longer keys it.
/// `overdue`: the flight timed out with `CallOrigin`, so a new one it leads
/// goes to the origin without waiting on another process's lease again,
/// and is not timed out.
pub(super) fn rejoin<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    call: &mut Option<(Request<ReqBody>, S)>,
    overdue: bool,
) -> State<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let key = key_again(shared, call);
    rejoin_as(shared, call, key, overdue)
}

/// The key this follower's request has now: its variant's, where this
/// process knows the key's variants; `None` if the extractor no longer
/// keys it.
pub(super) fn key_again<S, E, ReqBody>(
    shared: &Shared<E>,
    call: &Option<(Request<ReqBody>, S)>,
) -> Option<Key>
where
    E: KeyExtractor<ReqBody>,
{
    let (req, _) = call.as_ref()?;
    let key = shared.key(req)?;
    Some(leader::variant_of(shared, key, req.headers()))
}

/// [`rejoin`], with the request's key found already (`None`: it passes).
pub(super) fn rejoin_as<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    call: &mut Option<(Request<ReqBody>, S)>,
    key: Option<Key>,
    overdue: bool,
) -> State<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let Some(key) = key else {
        return pass(shared, call);
    };
    let Some(role) = join(shared, &key, call) else {
        return pass(shared, call);
    };
    if let (true, Role::Leader(_), Some((req, _))) = (overdue, &role, call.as_mut()) {
        req.extensions_mut().insert(leader::Overdue);
    }
    start(shared, key, call, role)
}

/// Whether this follower's request selects the variant a flight's answer
/// was made for.
pub(super) fn selects<S, ReqBody>(
    call: &Option<(Request<ReqBody>, S)>,
    varied: &crate::flight::Varied,
) -> bool {
    call.as_ref()
        .is_some_and(|(req, _)| varied.matches(req.headers()))
}

/// A follower whose request selects another variant of its key's answers
/// (varying on `variants`) than its flight's: joins (or leads) the flight
/// for its own variant, where the followers that select the same meet — one
/// flight per variant, not one origin call per follower.
pub(super) fn rejoin_variant<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    call: &mut Option<(Request<ReqBody>, S)>,
    variants: Option<&crate::Variants>,
) -> State<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
    ResBody: OriginBody,
{
    let key = call
        .as_ref()
        .zip(variants)
        .and_then(|((req, _), variants)| {
            let primary = shared.key(req)?;
            Some(crate::flight::Varied::of(variants.clone(), req.headers()).key(&primary))
        });
    let Some(key) = key else {
        return pass(shared, call);
    };
    let Some(role) = join(shared, &key, call) else {
        return pass(shared, call);
    };
    start(shared, key, call, role)
}

/// Joins the flight table again for `key`: leads or follows — or, for a
/// `no-store` request, which never leads, follows or (`None`) nothing.
pub(super) fn join<S, E, ReqBody>(
    shared: &Shared<E>,
    key: &Key,
    call: &Option<(Request<ReqBody>, S)>,
) -> Option<Role> {
    let no_store = shared.config.client_directives
        && call
            .as_ref()
            .and_then(|(req, _)| crate::client::Asks::of(req.headers()))
            .is_some_and(|asks| asks.no_store());
    if no_store {
        return shared.table.follow(key).map(Role::Follower);
    }
    Some(shared.table.join(key))
}

/// Calls the inner service for this request alone, as its caller sent it.
pub(super) fn pass<S, E, ReqBody, ResBody>(
    shared: &Arc<Shared<E>>,
    call: &mut Option<(Request<ReqBody>, S)>,
) -> State<ResBody, S::Error>
where
    S: Origin<ReqBody, ResBody>,
    E: KeyExtractor<ReqBody>,
    ReqBody: Send + 'static,
{
    let (mut req, inner) = call.take().expect("a follower passes only once");
    req.extensions_mut().insert(Outcome::Pass);
    bump(&shared.counters.origin_calls);
    let grpc = crate::error::is_grpc(&req);
    let shared = Arc::clone(shared);
    State::Passing {
        future: Box::pin(
            async move { crate::direct::bounded(&shared, inner.oneshot(req), grpc).await },
        ),
    }
}
