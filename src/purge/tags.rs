//! An answer's tags: from the configured response header (removed from the
//! answer unless kept) and the configured function.

use super::{Digest16, Tag, MAX_TAGS};
use crate::CoalesceConfig;

/// The digests of the answer's tags, at most [`MAX_TAGS`], without
/// duplicates; the tag header is taken off `head` unless the config keeps
/// it. `request` is the flight's request head, when a tags function needs it.
pub(crate) fn tags_of(
    config: &CoalesceConfig,
    request: Option<&http::request::Parts>,
    head: &mut http::response::Parts,
) -> Vec<Digest16> {
    let mut tags: Vec<Tag> = Vec::new();
    if let Some(name) = &config.tag_header {
        for value in head.headers.get_all(name) {
            tags.extend(Tag::parse_list(value.as_bytes()));
        }
        if !config.keep_tag_header {
            head.headers.remove(name);
        }
    }
    if let (Some(of), Some(request)) = (&config.tags, request) {
        let named = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| of(request, head)));
        match named {
            Ok(named) => tags.extend(named.into_iter().filter_map(|t| Tag::new(t).ok())),
            Err(panic) => tracing::error!(
                panic = %crate::error::panic_message(&*panic),
                "the tags function panicked; the answer carries the header's tags only"
            ),
        }
    }
    let mut digests: Vec<Digest16> = Vec::with_capacity(tags.len().min(MAX_TAGS));
    for tag in &tags {
        let digest = tag.digest();
        if !digests.contains(&digest) {
            if digests.len() == MAX_TAGS {
                tracing::warn!("an answer carries more than {MAX_TAGS} tags; the rest are ignored");
                break;
            }
            digests.push(digest);
        }
    }
    digests
}
