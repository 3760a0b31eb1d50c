//! From the command line to a running proxy's parts: the coalescing layer
//! (and the Redis it shares answers through), and the proxy service.

use crate::{proxy_key, proxy_service_with, Args, Proxy, ProxyLayer};
use std::time::Duration;
use tower_coalesce::{CoalesceConfig, CoalesceLayer, Freshness, OriginFreshness, RedisBackend};

/// What [`build`] makes of the arguments.
#[derive(Debug, Clone)]
pub struct Built {
    /// The proxy service, for [`serve`](crate::serve).
    pub proxy: Proxy,
    /// Its coalescing layer: counters, purges, shutdown.
    pub layer: ProxyLayer,
    /// The Redis answers are shared through, if any: for readiness checks.
    pub redis: Option<RedisBackend>,
}

/// The proxy the arguments describe: [`layer`], then
/// [`proxy_service_with`] the arguments' upstream options, answering
/// `PURGE` if they give a token.
pub async fn build(args: &Args) -> Result<Built, String> {
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
    Ok(Built {
        proxy,
        layer,
        redis,
    })
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
    let layer = CoalesceLayer::builder(config)
        .extractor(proxy_key(&args.upstream, &args.forwarding))
        .build()
        .map_err(|e| e.to_string())?;
    Ok((layer, shared))
}
