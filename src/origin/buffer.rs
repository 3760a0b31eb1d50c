//! A response body read as far as a limit allows: all of it, or what has
//! arrived.

use crate::BoxError;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use std::pin::Pin;

/// A response body read as far as the limit allows.
pub(super) enum Buffered<B> {
    /// All of it, within the limit.
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// What was read (more than the limit, or all that had arrived), and
    /// the unread rest.
    Unfinished {
        prefix: Vec<Bytes>,
        rest: Pin<Box<B>>,
    },
    /// The body failed after `prefix`.
    Failed { prefix: Vec<Bytes>, error: BoxError },
}

/// Reads `body` up to `limit` bytes: all of it, waiting for it (`wait`),
/// or only what has already arrived.
pub(super) async fn buffer<B>(body: B, limit: usize, wait: bool) -> Buffered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Boxed once per flight so the unread rest can be handed on after reading.
    let mut body = Box::pin(body);
    let mut prefix = Vec::new();
    if body.size_hint().lower() > limit as u64 {
        return Buffered::Unfinished { prefix, rest: body };
    }
    let mut len = 0usize;
    let mut trailers = None;
    loop {
        let next = if wait {
            body.frame().await
        } else {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => return Buffered::Unfinished { prefix, rest: body },
            }
        };
        let Some(frame) = next else {
            break;
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Buffered::Failed {
                    prefix,
                    error: error.into(),
                }
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                len = len.saturating_add(chunk.len());
                if !chunk.is_empty() {
                    prefix.push(chunk);
                }
                if len > limit {
                    return Buffered::Unfinished { prefix, rest: body };
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let data = match prefix.len() {
        0 => Bytes::new(),
        1 => prefix.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            prefix.iter().for_each(|c| joined.extend_from_slice(c));
            joined.freeze()
        }
    };
    Buffered::Whole { data, trailers }
}
