//! What a web page cannot make the management API do.
//!
//! Loopback is no credential: any page the administrator opens can send requests to 127.0.0.1,
//! and a DNS name an attacker controls can be re-pointed at 127.0.0.1 after the page loaded
//! (DNS rebinding), making the attacker's page same-origin with it. So every request must pass:
//!
//! - **Host** names this server: an IP literal, `localhost`, or the gateway's peer name. A
//!   rebinding page always sends its own DNS name. Over mutual TLS the admin certificate is the
//!   credential and a page cannot present it, so there any name may reach the API (an admin may
//!   use a DNS name of their choosing).
//! - **Origin** and **Sec-Fetch-Site**, when a browser sends them, say same-origin.
//! - A write's **Content-Type** is JSON or YAML. None of these is a CORS "simple" type, so a page
//!   on another origin cannot send one without a preflight, which this API never approves.
//!
//! Clients that are not browsers (gwctl, curl, controllers) send none of the browser headers and
//! pass unchanged.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The media types a write may carry.
pub const WRITE_CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
];

/// The names this management API answers to, besides IP literals and `localhost`.
#[derive(Debug, Clone)]
pub struct ServedNames {
    /// The gateway's peer name: what its certificate names.
    pub peer: String,
    /// Whether any name is served: clients authenticate with certificates (mutual TLS).
    pub any: bool,
}

pub(super) async fn refuse_cross_site(
    State(names): State<Arc<ServedNames>>,
    request: Request,
    next: Next,
) -> Response {
    match check(&names, request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            tracing::warn!(method = %request.method(), path = %request.uri().path(), "management request refused: {}", refusal.message);
            refusal.into_response()
        }
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
}

fn check(names: &ServedNames, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<&str>, ApiError> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| forbidden(format!("the {name} header is not text")))
            })
            .transpose()
    };
    let host = text(header::HOST)?;
    if let Some(host) = host {
        let name =
            host_name(host).ok_or_else(|| forbidden(format!("Host {host:?} is malformed")))?;
        let served = names.any
            || name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || name.eq_ignore_ascii_case(&names.peer);
        if !served {
            return Err(forbidden(format!(
                "Host {host:?} is not a name this gateway serves (an IP address, localhost or {:?})",
                names.peer
            )));
        }
    }
    if let Some(origin) = text(header::ORIGIN)? {
        let same = host.is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        });
        if !same {
            return Err(forbidden(format!(
                "cross-origin request from {origin:?}: the management API serves no other site"
            )));
        }
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))?
        && site != "same-origin"
        && site != "none"
    {
        return Err(forbidden(format!(
            "a {site} request from a web page: the management API serves no other site"
        )));
    }
    if [Method::POST, Method::PUT, Method::PATCH].contains(method) {
        let media = text(header::CONTENT_TYPE)?.map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        if !media
            .as_deref()
            .is_some_and(|m| WRITE_CONTENT_TYPES.contains(&m))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "Content-Type {} is not accepted; send one of {}",
                    media.map_or("(none)".to_string(), |m| format!("{m:?}")),
                    WRITE_CONTENT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The host part of a Host header (`name`, `name:port`, `[v6]:port`), without brackets.
fn host_name(host: &str) -> Option<String> {
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    fn verdict(method: Method, pairs: &[(&str, &str)]) -> Result<(), u16> {
        let names = ServedNames {
            peer: "server1".into(),
            any: false,
        };
        check(&names, &method, &headers(pairs)).map_err(|e| e.code.as_u16())
    }

    #[test]
    fn command_line_clients_pass() {
        let json = ("content-type", "application/json");
        assert_eq!(verdict(Method::GET, &[("host", "127.0.0.1:8443")]), Ok(()));
        assert_eq!(verdict(Method::GET, &[]), Ok(()));
        assert_eq!(
            verdict(Method::PUT, &[("host", "[::1]:8443"), json]),
            Ok(())
        );
        assert_eq!(
            verdict(Method::POST, &[("host", "localhost"), json]),
            Ok(())
        );
        assert_eq!(
            verdict(
                Method::POST,
                &[
                    ("host", "server1:443"),
                    ("content-type", "application/yaml; charset=utf-8")
                ]
            ),
            Ok(())
        );
        assert_eq!(verdict(Method::DELETE, &[("host", "127.0.0.1")]), Ok(()));
    }

    #[test]
    fn rebinding_names_are_refused_even_for_reads() {
        for host in [
            "attacker.example:8443",
            "attacker.example",
            "127.0.0.1.nip.io",
        ] {
            assert_eq!(verdict(Method::GET, &[("host", host)]), Err(403), "{host}");
        }
    }

    #[test]
    fn over_mutual_tls_any_name_is_served_but_pages_are_still_refused() {
        let names = ServedNames {
            peer: "server1".into(),
            any: true,
        };
        let check = |pairs: &[(&str, &str)]| check(&names, &Method::GET, &headers(pairs));
        assert!(check(&[("host", "gw.example.com:8443")]).is_ok());
        assert!(
            check(&[
                ("host", "gw.example.com"),
                ("origin", "http://attacker.example")
            ])
            .is_err()
        );
    }

    #[test]
    fn pages_of_other_origins_are_refused() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:8443");
        for origin in ["http://attacker.example", "null", "http://127.0.0.1:9999"] {
            assert_eq!(
                verdict(Method::POST, &[host, json, ("origin", origin)]),
                Err(403),
                "{origin}"
            );
        }
        assert_eq!(
            verdict(Method::GET, &[host, ("sec-fetch-site", "cross-site")]),
            Err(403)
        );
        // The same origin (a console served here) is allowed.
        assert_eq!(
            verdict(
                Method::POST,
                &[
                    host,
                    json,
                    ("origin", "http://127.0.0.1:8443"),
                    ("sec-fetch-site", "same-origin")
                ]
            ),
            Ok(())
        );
    }

    #[test]
    fn writes_need_a_json_or_yaml_content_type() {
        let host = ("host", "127.0.0.1:8443");
        for media in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert_eq!(
                verdict(Method::POST, &[host, ("content-type", media)]),
                Err(415),
                "{media}"
            );
        }
        assert_eq!(verdict(Method::PUT, &[host]), Err(415));
    }
}
