//! A complete response that may be given to many requests: status, headers,
//! body and trailers, all cheap to share.
//!
//! An entry is immutable once built. Handing it to a follower clones the
//! header map and bumps the body's reference count; the body bytes are never
//! copied per follower.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, Version};
use std::sync::Arc;

/// A buffered response, shared by every request that receives it.
#[derive(Debug, Clone)]
pub struct Entry {
    inner: Arc<Parts>,
}

#[derive(Debug)]
struct Parts {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Entry {
    /// Builds an entry from a response head, its whole body and its trailers.
    pub fn new(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            inner: Arc::new(Parts {
                status,
                version,
                headers,
                body,
                trailers,
            }),
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The HTTP version of the response.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The whole response body.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The response trailers, if the body had any (gRPC status lives there).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.inner.trailers.as_ref()
    }

    /// How many bytes the entry holds: body, header and trailer names and
    /// values. The memory backend weighs entries by this.
    pub fn weight(&self) -> usize {
        fn map_len(map: &HeaderMap) -> usize {
            map.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
        }
        self.inner.body.len()
            + map_len(&self.inner.headers)
            + self.inner.trailers.as_ref().map_or(0, map_len)
    }

    /// A fresh response carrying this entry; the body shares the entry's bytes.
    pub(crate) fn to_response<B>(&self) -> Response<crate::CoalesceBody<B>> {
        let mut res = Response::new(crate::CoalesceBody::full(
            self.inner.body.clone(),
            self.inner.trailers.clone(),
        ));
        *res.status_mut() = self.inner.status;
        *res.version_mut() = self.inner.version;
        *res.headers_mut() = self.inner.headers.clone();
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    #[test]
    fn responses_share_the_entry_body() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        let entry = Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            headers,
            Bytes::from_static(b"hello"),
            None,
        );
        let a = entry.to_response::<()>();
        let b = entry.to_response::<()>();
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(a.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(
            a.body().shared_bytes().unwrap().as_ptr(),
            entry.body().as_ptr()
        );
        assert_eq!(
            b.body().shared_bytes().unwrap().as_ptr(),
            entry.body().as_ptr()
        );
        assert_eq!(
            entry.weight(),
            5 + "content-type".len() + "text/plain".len()
        );
    }
}
