//! The web page at `GET /`: one HTML page, its script and its style sheet, embedded in the binary
//! (`src/serve/web/`; vanilla JS and CSS, no build step, nothing fetched from elsewhere). The page
//! holds no data, so it is served without a key; it is one more client of `/v1/*`, sending
//! `Authorization: Bearer` with a key it keeps in `sessionStorage`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{self, HeaderValue};

use super::error::ApiError;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// Everything the page loads comes from this server; media and images may be blob URLs (videos
/// fetched with the bearer key).
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `/` (path segments `[]`) or `/ui/<file>`; 404 for any other file.
///
/// # Errors
/// [`ApiError::NotFound`] for an unknown `/ui/` file.
pub fn asset(segs: &[&str]) -> Result<Response<Full<Bytes>>, ApiError> {
    let (body, content_type) = match segs {
        [] => (INDEX_HTML, "text/html; charset=utf-8"),
        ["ui", "app.js"] => (APP_JS, "text/javascript; charset=utf-8"),
        ["ui", "app.css"] => (APP_CSS, "text/css; charset=utf-8"),
        _ => {
            return Err(ApiError::NotFound(format!(
                "No route for /{}",
                segs.join("/")
            )));
        }
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(r)
}
