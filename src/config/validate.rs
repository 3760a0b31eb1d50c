//! Whether a configuration's settings can work together.

use super::CoalesceConfig;
use crate::Freshness;
use std::fmt;
use std::time::Duration;

/// A configuration that cannot work, from [`CoalesceConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid coalesce configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl CoalesceConfig {
    /// Checks that the settings can work together:
    /// - every duration is at most a year ([`MAX_DURATION`](Self::MAX_DURATION)),
    ///   so that no deadline or expiry computed from it can overflow;
    /// - the lease is at least 3 ms (it is renewed every third of it);
    /// - `wait_timeout` is above zero;
    /// - `backend_timeout` is above zero and below two thirds of the lease,
    ///   so a renewal sent a third of the way through a lease is answered (or
    ///   given up) before the lease ends;
    /// - at least one method may coalesce.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let freshness = match &self.freshness {
            Freshness::Fixed(ttl) => vec![("ttl", *ttl)],
            Freshness::Origin(origin) => origin.durations().to_vec(),
        };
        for (name, value) in freshness.into_iter().chain([
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
            ("wait_timeout", self.wait_timeout),
            ("backend_timeout", self.backend_timeout),
            ("backend_cooldown", self.backend_cooldown),
            ("lease", self.lease),
            ("pass_ttl", self.pass_ttl),
        ]) {
            if value > Self::MAX_DURATION {
                return Err(ConfigError(format!(
                    "{name} {value:?} is too long: at most {:?} (a year)",
                    Self::MAX_DURATION
                )));
            }
        }
        if !(0.0..=1000.0).contains(&self.early_refresh) {
            return Err(ConfigError(format!(
                "early_refresh {} is out of range: beta must be between 0 (off) and 1000",
                self.early_refresh
            )));
        }
        if let Some(name) = &self.cache_status {
            // An RFC 8941 token: the member's first item, unquoted.
            let mut bytes = name.bytes();
            let token = bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
            if !token {
                return Err(ConfigError(format!(
                    "cache_status {name:?} is not a token (letters first, then letters, digits or !#$%&'*+-.^_`|~:/)"
                )));
            }
        }
        if self.lease < Duration::from_millis(3) {
            return Err(ConfigError(format!(
                "lease {:?} is too short: it must be at least 3 ms, as it is renewed every third of it",
                self.lease
            )));
        }
        if self.backend_timeout.is_zero() {
            return Err(ConfigError(
                "backend_timeout must be greater than zero".into(),
            ));
        }
        if self.wait_timeout.is_zero() {
            return Err(ConfigError(
                "wait_timeout must be greater than zero: a flight needs time to answer".into(),
            ));
        }
        // Both at most a year, so neither product overflows.
        if self.backend_timeout * 3 >= self.lease * 2 {
            return Err(ConfigError(format!(
                "backend_timeout {:?} must be below two thirds of the lease {:?}: a renewal that may take longer could not keep the lease",
                self.backend_timeout, self.lease
            )));
        }
        if self.methods.is_empty() {
            return Err(ConfigError(
                "methods is empty: no request could coalesce".into(),
            ));
        }
        Ok(())
    }
}
