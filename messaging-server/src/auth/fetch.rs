//! GET of a JWKS document over http or https, bounded in size and time.
//! TLS is rustls on aws-lc with Mozilla's roots, named here rather than
//! taken from a process-wide default.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("bad URL {0}")]
    Url(String),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("answered {0}")]
    Status(axum::http::StatusCode),
    #[error("reading the body failed or it is larger than allowed: {0}")]
    Body(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

#[derive(Clone)]
pub struct JwksClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl JwksClient {
    pub fn new() -> Result<Self, GetError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The body of `url` if it answers 2xx within `timeout` with at most `max` bytes.
    pub async fn get(&self, url: &str, max: usize, timeout: Duration) -> Result<Vec<u8>, GetError> {
        let uri: axum::http::Uri = url.parse().map_err(|_| GetError::Url(url.to_owned()))?;
        let fetch = async {
            let resp = self.client.get(uri).await?;
            if !resp.status().is_success() {
                return Err(GetError::Status(resp.status()));
            }
            let body = Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|e| GetError::Body(e.to_string()))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| GetError::Timeout(timeout))?
    }
}
