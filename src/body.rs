//! [`CoalesceBody`]: the body of every response that leaves the layer.
//!
//! It is one of these: shared bytes (an [`Entry`](crate::Entry) given to a
//! follower, a hit, or the flight's leader), the inner service's own body
//! (bypass and pass-through, untouched), a flight's answer read as it
//! arrives (a tape, shared by every caller of the flight), a replay — the
//! chunks already read followed by the rest of the inner body, or by the
//! error that cut it short — or a byte range of one of these. None ends
//! early without an error, so a body that failed is never presented as a
//! complete one.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The error type of [`CoalesceBody`], as in `tower` and `hyper`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The response body produced by [`CoalesceService`](crate::CoalesceService).
    pub struct CoalesceBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full {
            data: Option<Bytes>,
            // Boxed: most answers have none, and a response is moved
            // several times on its way to each caller.
            trailers: Option<Box<HeaderMap>>,
        },
        Inner {
            #[pin]
            body: B,
        },
        Tape {
            reader: crate::tape::TapeReader,
        },
        Replay {
            prefix: VecDeque<Bytes>,
            // Boxed: the leader had already pinned the body to read its start.
            rest: Option<Pin<Box<B>>>,
            error: Option<BoxError>,
        },
        // One byte range of another body: `skip` bytes dropped, then `left`
        // bytes given, then the end (trailers dropped). A body that ends
        // before them ends in an error, never in a short success.
        Range {
            body: Pin<Box<CoalesceBody<B>>>,
            skip: u64,
            left: u64,
        },
    }
}

impl<B> CoalesceBody<B> {
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full {
                data,
                trailers: trailers.map(Box::new),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new(), None)
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A flight's answer, read from `reader`'s place on as it arrives.
    pub(crate) fn tape(reader: crate::tape::TapeReader) -> Self {
        Self {
            kind: Kind::Tape { reader },
        }
    }

    /// The already-read `prefix`, then either the rest of the body or `error`.
    pub(crate) fn replay(
        prefix: Vec<Bytes>,
        rest: Option<Pin<Box<B>>>,
        error: Option<BoxError>,
    ) -> Self {
        Self {
            kind: Kind::Replay {
                prefix: prefix.into(),
                rest,
                error,
            },
        }
    }

    /// The bytes `start..start + len` of `body`, read through.
    pub(crate) fn range(body: Self, start: u64, len: u64) -> Self {
        Self {
            kind: Kind::Range {
                body: Box::pin(body),
                skip: start,
                left: len,
            },
        }
    }

    /// The shared bytes of a body made from an entry.
    #[cfg(test)]
    pub(crate) fn shared_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full { data, .. } => data.as_ref(),
            _ => None,
        }
    }
}

impl<B> Body for CoalesceBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Tape { reader } => reader.poll_frame(cx),
            KindProj::Replay {
                prefix,
                rest,
                error,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(None),
                }
            }
            KindProj::Range { body, skip, left } => loop {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let Some(frame) = std::task::ready!(body.as_mut().poll_frame(cx)?) else {
                    return Poll::Ready(Some(Err("the body ended before the range".into())));
                };
                let Ok(mut chunk) = frame.into_data() else {
                    continue;
                };
                let len = chunk.len() as u64;
                if len <= *skip {
                    *skip -= len;
                    continue;
                }
                // Both below `len`, a `usize`.
                let from = *skip as usize;
                let to = len.min(*skip + *left) as usize;
                *skip = 0;
                *left -= (to - from) as u64;
                chunk = chunk.slice(from..to);
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Tape { reader } => reader.is_end_stream(),
            Kind::Replay {
                prefix,
                rest,
                error,
            } => {
                prefix.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
            Kind::Range { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Tape { reader } => reader.size_hint(),
            Kind::Replay { prefix, rest, .. } => {
                let buffered: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let mut hint = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                // Upper first: `set_lower` asserts it does not pass the upper bound.
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper.saturating_add(buffered));
                }
                hint.set_lower(hint.lower().saturating_add(buffered));
                hint
            }
            Kind::Range { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

impl<B> std::fmt::Debug for CoalesceBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Tape { .. } => "Tape",
            Kind::Replay { .. } => "Replay",
            Kind::Range { .. } => "Range",
        };
        f.debug_struct("CoalesceBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Inner = Full<Bytes>;

    #[test]
    fn a_body_held_whole_is_no_larger_than_a_replay() {
        // Every response is moved several times on its way to its caller:
        // the body's size is copied each time. Its largest kind is the
        // replay of a body the leader began to read (a queue, a box, an
        // error); a whole body's rare trailers must not outgrow it.
        let size = std::mem::size_of::<CoalesceBody<Inner>>();
        assert!(size <= 56, "CoalesceBody is {size} bytes");
    }

    #[tokio::test]
    async fn full_body_yields_data_then_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = CoalesceBody::<Inner>::full(Bytes::from_static(b"abc"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(3));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "abc");
    }

    #[tokio::test]
    async fn empty_body_is_end_of_stream() {
        let body = CoalesceBody::<Inner>::empty();
        assert!(body.is_end_stream());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn replay_gives_prefix_then_rest() {
        let body = CoalesceBody::replay(
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")],
            Some(Box::pin(Full::new(Bytes::from_static(b"ef")))),
            None,
        );
        assert_eq!(body.size_hint().exact(), Some(6));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn replay_of_a_failed_body_ends_in_its_error() {
        let body = CoalesceBody::<Inner>::replay(
            vec![Bytes::from_static(b"ab")],
            None,
            Some("broken".into()),
        );
        let mut body = std::pin::pin!(body);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "broken");
    }

    #[tokio::test]
    async fn a_range_of_a_streamed_body_gives_exactly_its_bytes() {
        let chunks = || {
            futures_util::stream::iter(
                ["abc", "def", "ghij"]
                    .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from(c)))),
            )
        };
        let range = |start, len| {
            CoalesceBody::range(CoalesceBody::inner(StreamBody::new(chunks())), start, len)
        };
        assert_eq!(range(2, 5).collect().await.unwrap().to_bytes(), "cdefg");
        assert_eq!(
            range(0, 10).collect().await.unwrap().to_bytes(),
            "abcdefghij"
        );
        assert_eq!(range(9, 1).collect().await.unwrap().to_bytes(), "j");
        assert_eq!(range(3, 3).size_hint().exact(), Some(3));
        // Past the end: an error, not a short body.
        assert!(range(8, 5).collect().await.is_err());
    }

    #[tokio::test]
    async fn inner_body_errors_pass_through() {
        let stream = futures_util::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Err(std::io::Error::other("cut")),
        ]);
        let body = CoalesceBody::inner(StreamBody::new(stream));
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.to_string(), "cut");
    }
}
