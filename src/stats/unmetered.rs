//! Without the `metrics` feature: the layer's meter and its clock are
//! empty, and every report compiles to nothing — no clock read, no atomic,
//! no allocation anywhere on the request path.

use super::Outcome;
use crate::backend_call::Op;
use std::time::Duration;

/// When something timed began: nothing, here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started;

impl Started {
    #[inline(always)]
    pub(crate) fn now() -> Self {
        Self
    }
}

/// One layer's series: none, here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter;

impl Meter {
    #[inline(always)]
    pub(crate) fn of(_: &crate::CoalesceConfig) -> Self {
        Self
    }

    #[inline(always)]
    pub(crate) fn response(&self, _: Outcome) {}

    #[inline(always)]
    pub(crate) fn flight(&self, _: Started) {}

    #[inline(always)]
    pub(crate) fn follower_wait(&self, _: Started) {}

    #[inline(always)]
    pub(crate) fn origin(&self, _: Started) {}

    #[inline(always)]
    pub(crate) fn backend_call(&self, _: Op, _: Duration) {}

    #[inline(always)]
    pub(crate) fn flights(&self, _: usize) {}

    #[inline(always)]
    pub(crate) fn near_cache(&self) {}
}
