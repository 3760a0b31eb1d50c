//! From the command line to a running proxy's parts: the coalescing layer
//! (and the Redis it shares answers through), and the proxy service.

use crate::routes::Routes;
use crate::{proxy_key, proxy_service_with, Args, Proxy, ProxyLayer};
use std::time::Duration;
use tower_coalesce::{CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, RedisBackend};

/// What [`build`] makes of the arguments.
#[derive(Debug, Clone)]
pub struct Built {
    /// The proxy service with its routes, for [`serve`](crate::serve).
    pub proxy: Routes,
    /// The coalescing layer of requests no route takes (`--upstream`):
    /// counters, purges, shutdown.
    pub layer: ProxyLayer,
    /// The Redis answers are shared through, if any: for readiness checks.
    pub redis: Option<RedisBackend>,
    /// Every route's coalescing layer, in the file's order.
    pub route_layers: Vec<ProxyLayer>,
}

impl Built {
    /// Every coalescing layer: the routes', then `--upstream`'s.
    pub fn layers(&self) -> impl Iterator<Item = &ProxyLayer> {
        self.route_layers.iter().chain(std::iter::once(&self.layer))
    }
}

/// The proxy the arguments describe: for `--upstream` and for each route of
/// the config file, [`layer`], then [`proxy_service_with`] the upstream
/// options, answering `PURGE` if a token is given.
pub async fn build(args: &Args) -> Result<Built, String> {
    let (proxy, layer, redis) = build_one(args).await?;
    let (routes, parts) = Routes::build(&args.routes, args, proxy).await?;
    Ok(Built {
        proxy: routes,
        layer,
        redis,
        route_layers: parts.into_iter().map(|(_, layer, _)| layer).collect(),
    })
}

/// One proxy, its layer and its Redis: `--upstream`'s, or a route's.
pub(crate) async fn build_one(
    args: &Args,
) -> Result<(Proxy, ProxyLayer, Option<RedisBackend>), String> {
    let (layer, redis) = layer_and_backend(args).await?;
    let proxy = proxy_service_with(
        args.upstream.clone(),
        args.forwarding.clone(),
        layer.clone(),
        &args.upstream_options,
    )?;
    let proxy = match &args.purge_token {
        Some(token) => proxy.with_purge_token(token),
        None => proxy,
    };
    Ok((proxy, layer, redis))
}

/// The coalescing layer the arguments describe: connects to Redis if asked.
pub async fn layer(args: &Args) -> Result<ProxyLayer, String> {
    Ok(layer_and_backend(args).await?.0)
}

/// The layer, and the Redis backend it shares answers through, if any.
async fn layer_and_backend(args: &Args) -> Result<(ProxyLayer, Option<RedisBackend>), String> {
    let freshness = match args.ttl {
        Some(ttl) => Freshness::Fixed(ttl),
        None => Freshness::Origin(
            OriginFreshness::new()
                .default_ttl(args.default_ttl)
                .max_ttl(args.max_ttl)
                .max_stale(args.stale),
        ),
    };
    let mut config = CoalesceConfig::new()
        .metrics_label(args.metrics_label.clone())
        .freshness(freshness)
        .stale_while_revalidate(if args.ttl.is_some() {
            args.stale
        } else {
            Duration::ZERO
        })
        .early_refresh(args.early_refresh)
        // Every upstream request is bounded by `Forward` (its options'
        // timeout); the flight's wait is the operator's too.
        .wait_timeout(args.flight_timeout)
        .invalidate_on_unsafe(args.invalidate_on_unsafe)
        .store_server_errors(args.store_server_errors)
        .normalize_accept_encoding(args.normalize_accept_encoding)
        .revalidation_retention(args.revalidation_retention)
        .max_stored_bytes(args.max_stored_bytes)
        .outcome_header_name(args.header.clone());
    if args.cache_status {
        config = config.cache_status("coalesce-proxy");
    }
    if args.cdn_cache_control {
        config =
            config.targeted_cache_control([http::HeaderName::from_static("cdn-cache-control")]);
    }
    if let Some(name) = &args.tag_header {
        config = config.tag_header(name.clone());
    }
    if let Some(lease) = args.lease {
        config = config.lease(lease);
    }
    let redis = match &args.redis {
        Some(url) => Some(RedisBackend::builder(url.clone())),
        None if !args.redis_cluster.is_empty() => {
            Some(RedisBackend::cluster_builder(args.redis_cluster.clone()))
        }
        None => None,
    };
    let mut shared = None;
    if let Some(mut redis) = redis {
        if let Some(namespace) = &args.namespace {
            redis = redis.namespace(namespace.clone());
        }
        let backend = redis
            .connect()
            .await
            .map_err(|e| format!("{}: {e}", args.redis_shown()))?;
        config = config.backend(backend.clone());
        shared = Some(backend);
    }
    let mut key = proxy_key(&args.upstream, &args.forwarding).vary(&args.key_headers);
    if let Some(body) = &args.body_keys {
        key = key.body_route(body.route(&args.key_headers));
    }
    let layer = CoalesceLayer::builder(config.methods(key.methods()))
        // A route in bypass mode keys no request: every one goes on alone.
        .extractor(key.keying(args.coalesce))
        .build()
        .map_err(|e| e.to_string())?;
    Ok((layer, shared))
}
