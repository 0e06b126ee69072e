//! The web console: one page, its script and its style, built into the binary and served by the
//! management listener under the same guard as the API (a page of another site can neither load
//! it into a frame nor read what it reads). The page reads the API itself, every two seconds.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use clusterlink_api::rest::CONSOLE_PATH;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only this origin's script, style and API; no inline code, no frames, no forms. What the page
/// shows comes partly from peers (names, refusal messages), so it is set as text, and even a
/// mistake there could not load or send anything elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to(CONSOLE_PATH) }))
        .route(
            CONSOLE_PATH,
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            &format!("{CONSOLE_PATH}/console.js"),
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            &format!("{CONSOLE_PATH}/console.css"),
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the page shows comes partly from peers: the script sets text, never markup, and
    /// the page has no inline script for the policy to have to allow.
    #[test]
    fn the_script_never_writes_markup_and_the_page_has_no_inline_code() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
        ] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        assert!(!PAGE.contains("<script>"), "inline script in the page");
        let handler = PAGE.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(
            !handler,
            "an inline event handler (onclick=...) in the page"
        );
        assert!(PAGE.contains("lang=\"en\""));
    }
}
