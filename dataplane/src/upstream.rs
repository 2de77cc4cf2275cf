//! Calls to the provider: one pooled HTTP client (HTTP/1.1 and HTTP/2, TLS
//! by rustls) and the rules for which headers cross the proxy.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::Api;
use crate::config::DataPlaneConfig;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus
/// the ones the proxy recomputes.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// Client headers that carry credentials for parties other than the provider called: a proxy
/// (`proxy-authorization`), a browser session (`cookie`), other providers' SDKs (`api-key` as
/// Azure's send it, `x-goog-api-key`). Not forwarded unless `--forward-headers` names them.
const OTHER_PARTIES_CREDENTIALS: [&str; 4] =
    ["proxy-authorization", "cookie", "api-key", "x-goog-api-key"];

/// The pooled client and the upstream endpoints.
#[derive(Clone)]
pub struct Upstream {
    client: Client<Connector, Full<Bytes>>,
    /// The base URLs without a trailing `/`.
    openai_base: String,
    anthropic_base: String,
    openai_url: String,
    responses_url: String,
    anthropic_url: String,
    openai_key: Option<HeaderValue>,
    anthropic_key: Option<HeaderValue>,
    /// [`OTHER_PARTIES_CREDENTIALS`] but those `--forward-headers` names.
    withheld: Vec<HeaderName>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("no TLS root certificates: {0}")]
    Tls(std::io::Error),
    #[error("{0} is not a valid header value")]
    BadKey(&'static str),
}

/// Why an upstream request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the path or query string is not valid in a URL")]
    InvalidUri,
    #[error("upstream request failed: {0}")]
    Failed(hyper_util::client::legacy::Error),
}

impl Upstream {
    pub fn new(config: &DataPlaneConfig) -> Result<Self, UpstreamSetupError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(UpstreamSetupError::Tls)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        let bearer = |key: &Option<String>, what| {
            key.as_deref()
                .map(|key| {
                    HeaderValue::from_str(&format!("Bearer {key}"))
                        .map_err(|_| UpstreamSetupError::BadKey(what))
                })
                .transpose()
        };
        let plain = |key: &Option<String>, what| {
            key.as_deref()
                .map(|key| HeaderValue::from_str(key).map_err(|_| UpstreamSetupError::BadKey(what)))
                .transpose()
        };
        let openai_base = config.openai_base_url.trim_end_matches('/').to_owned();
        let anthropic_base = config.anthropic_base_url.trim_end_matches('/').to_owned();
        Ok(Self {
            client,
            openai_url: format!("{openai_base}/chat/completions"),
            responses_url: format!("{openai_base}/responses"),
            anthropic_url: format!("{anthropic_base}/v1/messages"),
            openai_base,
            anthropic_base,
            openai_key: bearer(&config.openai_api_key, "OPENAI_API_KEY")?,
            anthropic_key: plain(&config.anthropic_api_key, "ANTHROPIC_API_KEY")?,
            withheld: OTHER_PARTIES_CREDENTIALS
                .iter()
                .filter(|name| {
                    !config
                        .edge
                        .forward_headers
                        .iter()
                        .any(|forwarded| forwarded.trim().eq_ignore_ascii_case(name))
                })
                .map(|name| HeaderName::from_static(name))
                .collect(),
        })
    }

    /// Sends a call's request upstream; resolves when the response headers
    /// arrive.
    pub async fn send(
        &self,
        api: Api,
        query: Option<&str>,
        client_headers: &HeaderMap,
        stripped_credential: Option<&HeaderName>,
        body: Bytes,
        trace: Option<&luthien_telemetry::propagation::W3cContext>,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let base = match api {
            Api::OpenAiChat => &self.openai_url,
            Api::AnthropicMessages => &self.anthropic_url,
            Api::OpenAiResponses => &self.responses_url,
        };
        let mut headers = self.request_headers(api, client_headers, stripped_credential, trace);
        // Policies read the response: it must not arrive compressed.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.dispatch(Method::POST, with_query(base, query), headers, body)
            .await
    }

    /// Sends the request of an auxiliary endpoint (one that generates
    /// nothing, e.g. `/v1/models`) to the provider of `api`, keeping the
    /// client's method, path under `/v1`, query string and content
    /// negotiation. The OpenAI base URL already ends in `/v1`; the Anthropic
    /// one does not.
    pub async fn send_auxiliary(
        &self,
        api: Api,
        client: &http::request::Parts,
        stripped_credential: Option<&HeaderName>,
        body: Bytes,
        trace: Option<&luthien_telemetry::propagation::W3cContext>,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let path = client.uri.path();
        let url = match api {
            Api::OpenAiChat | Api::OpenAiResponses => format!(
                "{}{}",
                self.openai_base,
                path.strip_prefix("/v1").unwrap_or(path)
            ),
            Api::AnthropicMessages => format!("{}{path}", self.anthropic_base),
        };
        let headers = self.request_headers(api, &client.headers, stripped_credential, trace);
        self.dispatch(
            client.method.clone(),
            with_query(&url, client.uri.query()),
            headers,
            body,
        )
        .await
    }

    /// The headers of an upstream request, shared by every route: the
    /// client's end-to-end headers without the Luthien key, the configured
    /// provider key in place of the client's credentials, and the trace
    /// context to continue.
    fn request_headers(
        &self,
        api: Api,
        client_headers: &HeaderMap,
        stripped_credential: Option<&HeaderName>,
        trace: Option<&luthien_telemetry::propagation::W3cContext>,
    ) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(client_headers.len() + 2);
        copy_forwardable(client_headers, &mut headers);
        if let Some(name) = stripped_credential {
            headers.remove(name);
        }
        for name in &self.withheld {
            headers.remove(name);
        }
        match api {
            Api::OpenAiChat | Api::OpenAiResponses => {
                if let Some(key) = &self.openai_key {
                    headers.remove("x-api-key");
                    headers.insert(header::AUTHORIZATION, key.clone());
                }
            }
            Api::AnthropicMessages => {
                if let Some(key) = &self.anthropic_key {
                    headers.remove(header::AUTHORIZATION);
                    headers.insert("x-api-key", key.clone());
                }
            }
        }
        if let Some(trace) = trace {
            for (name, value) in [
                ("traceparent", &trace.traceparent),
                ("tracestate", &trace.tracestate),
            ] {
                match HeaderValue::from_str(value) {
                    Ok(value) if !value.is_empty() => {
                        headers.insert(name, value);
                    }
                    _ => {
                        headers.remove(name);
                    }
                }
            }
        }
        headers
    }

    async fn dispatch(
        &self,
        method: Method,
        uri: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        // The base URLs were validated at start-up; only the client's path
        // and query string can make this fail.
        *request.uri_mut() = uri.parse::<Uri>().map_err(|_| SendError::InvalidUri)?;
        *request.headers_mut() = headers;
        self.client
            .request(request)
            .await
            .map_err(SendError::Failed)
    }

    /// Checks the configured URLs once at start-up.
    pub fn validate(&self) -> Result<(), String> {
        for url in [&self.openai_url, &self.anthropic_url] {
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("invalid upstream URL `{url}`: {e}"))?;
            if uri.host().is_none() {
                return Err(format!("upstream URL `{url}` has no host"));
            }
        }
        Ok(())
    }
}

fn with_query(url: &str, query: Option<&str>) -> String {
    match query {
        Some(query) => format!("{url}?{query}"),
        None => url.to_owned(),
    }
}

/// Copies every end-to-end header (including unknown ones such as
/// `anthropic-beta`), dropping hop-by-hop ones.
pub fn copy_forwardable(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_copied() {
        let mut from = HeaderMap::new();
        from.insert("connection", HeaderValue::from_static("keep-alive"));
        from.insert("host", HeaderValue::from_static("luthien"));
        from.insert("anthropic-beta", HeaderValue::from_static("tools-2024"));
        let mut to = HeaderMap::new();
        copy_forwardable(&from, &mut to);
        assert_eq!(to.len(), 1);
        assert_eq!(to["anthropic-beta"], "tools-2024");
    }
}
