//! The explorer: a read-only web page over the ledger's JSON API, served by the
//! ledger itself under `/` (issue 18).
//!
//! Its files (one HTML page, a stylesheet, a script and an icon; no framework, no
//! CDN) are compiled into the binary, so a ledger needs nothing beside it on disk
//! and serves exactly what was reviewed. Everything the page shows comes from the
//! public `/v1/...` GET endpoints, which anyone can already read; the page never
//! signs or submits anything. The answers carry a strict Content-Security-Policy
//! (only this origin's scripts, styles and fetches; no inline code, no frames), so
//! text that came from the chain (farm names, locations) can never run as script.
//! Only the paths listed here exist: anything else under `/explorer/` is a 404, and
//! `/v1/...` is never shadowed.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// An embedded file: its URL name, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("explorer/index.html"),
};

/// What `/explorer/{name}` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("explorer/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("explorer/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("explorer/icon.svg"),
    },
];

/// Only this origin's files and API; no inline script or style, no plugins, no
/// frames, no `<base>` rewriting, no form posts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The explorer's routes, to merge into the ledger's router.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route("/explorer/{name}", get(asset))
}

async fn asset(Path(name): Path<String>, h: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &h),
        None => super::ApiError::not_found(format!("no explorer file {name:?}")).into_response(),
    }
}

/// The file with its headers, or 304 when the browser's copy is current. Browsers
/// revalidate every time (`no-cache`): a ledger upgraded in place must not run a
/// stale script against a newer API, and the check costs one small request.
fn serve(a: &Asset, h: &HeaderMap) -> Response {
    let etag = format!(
        "\"{}\"",
        &crate::types::Hash::of(a.body.as_bytes()).to_hex()[..16]
    );
    let fresh = h
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
        ),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, a.body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_served() {
        // index.html and the script refer to the other files by these URLs.
        for a in ASSETS {
            let url = format!("/explorer/{}", a.name);
            assert!(
                INDEX.body.contains(&url),
                "index.html does not refer to {url}"
            );
        }
        // No inline script or style: the CSP would block it.
        assert!(!INDEX.body.contains("<script>") && !INDEX.body.contains("<style"));
        assert!(!INDEX.body.contains(" style=") && !INDEX.body.contains(" onclick="));
    }
}
