//! The effective settings as `coalesce-proxy check` prints them.

use crate::Args;
use std::time::Duration;

impl Args {
    /// The effective settings, one `name = value` line each, as
    /// `coalesce-proxy check` prints them: never a secret (the purge token
    /// is not shown, Redis passwords are masked).
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_millis().to_string();
        let freshness = match self.ttl {
            Some(ttl) => format!("ttl {} ms, stale {} ms", ttl.as_millis(), self.stale.as_millis()),
            None => format!(
                "from the upstream (at most {} ms; {} ms without; stale-while-revalidate up to {} ms)",
                self.max_ttl.as_millis(),
                self.default_ttl.as_millis(),
                self.stale.as_millis()
            ),
        };
        let lines = [
            ("listen", self.listen.to_string()),
            (
                "tls",
                self.tls.as_ref().map_or("off".into(), |(c, k)| {
                    format!("{} {}", c.display(), k.display())
                }),
            ),
            (
                "admin-listen",
                self.admin_listen.map_or("off".into(), |a| a.to_string()),
            ),
            ("upstream", self.upstream.to_string()),
            ("upstream-http2", self.upstream_options.http2.to_string()),
            (
                "shared",
                if self.shares() {
                    self.redis_shown()
                } else {
                    "no (in-process)".into()
                },
            ),
            (
                "namespace",
                self.namespace.clone().unwrap_or_else(|| "coalesce".into()),
            ),
            ("freshness", freshness),
            (
                "key-header",
                if self.key_headers.is_empty() {
                    "none".into()
                } else {
                    let names: Vec<&str> = self.key_headers.iter().map(|h| h.as_str()).collect();
                    names.join(",")
                },
            ),
            ("upstream-timeout-ms", ms(self.upstream_options.timeout)),
            ("flight-timeout-ms", ms(self.flight_timeout)),
            ("max-connections", self.max_connections.to_string()),
            (
                "header-read-timeout-ms",
                ms(self.connections.header_read_timeout),
            ),
            ("idle-timeout-ms", ms(self.connections.idle_timeout)),
            (
                "h2-max-concurrent-streams",
                self.connections.h2_max_concurrent_streams.to_string(),
            ),
            (
                "h2-keep-alive",
                format!(
                    "every {} ms, {} ms to answer",
                    ms(self.connections.h2_keep_alive.0),
                    ms(self.connections.h2_keep_alive.1)
                ),
            ),
            (
                "h2-reset-limits",
                format!(
                    "{} pending-accept, {} local-error",
                    self.connections.h2_max_pending_accept_reset_streams,
                    self.connections.h2_max_local_error_reset_streams
                ),
            ),
            (
                "max-request-body-bytes",
                self.upstream_options.max_request_body.to_string(),
            ),
            ("max-stored-bytes", self.max_stored_bytes.to_string()),
            (
                "purge",
                if self.purge_token.is_some() {
                    "with a token".into()
                } else {
                    "off".into()
                },
            ),
            (
                "access-log",
                self.access_log.map_or("off".into(), |q| {
                    if q {
                        "with queries".into()
                    } else {
                        "on".into()
                    }
                }),
            ),
            (
                "log-format",
                if self.log_json {
                    "json".into()
                } else {
                    "text".into()
                },
            ),
        ];
        let mut out: String = lines
            .iter()
            .map(|(name, value)| format!("{name} = {value}\n"))
            .collect();
        for (n, route) in self.routes.iter().enumerate() {
            out.push_str(&format!("route {} = {}\n", n + 1, route.describe(self)));
        }
        out
    }
}
