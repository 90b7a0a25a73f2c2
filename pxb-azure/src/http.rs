//! The HTTP client and retry settings shared by the blob client and the identity client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use pxb_core::{Error, Result};

/// Timeouts and retries of requests to storage and to Entra ID.
///
/// The defaults give up on an unreachable or misconfigured endpoint within seconds: a bad
/// setup must surface as a clear error, not as minutes of silent retries.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Retries of a request that failed transiently (connection errors, 408, 429, 5xx).
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each following one.
    pub initial_delay: Duration,
    /// Longest delay between two tries.
    pub max_delay: Duration,
    /// Longest time spent retrying one request.
    pub max_total: Duration,
    /// Longest time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest silence while waiting for response bytes.
    pub read_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            max_total: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
        }
    }
}

fn to_time(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

impl HttpSettings {
    /// The SDK client options for these settings, trusting the extra CA certificates in `ca_pem`.
    pub(crate) fn client_options(&self, ca_pem: Option<&[u8]>) -> Result<ClientOptions> {
        let mut builder = reqwest::Client::builder()
            // Ranged and partitioned downloads need the raw bytes: never decompress.
            .no_gzip()
            .no_deflate()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::invalid("the CA file is not valid PEM").with_source(e))?;
            if certs.is_empty() {
                return Err(Error::invalid("the CA file holds no certificate"));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| Error::invalid("cannot build the HTTP client").with_source(e))?;
        Ok(ClientOptions {
            transport: Some(Transport::new(Arc::new(client))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: to_time(self.initial_delay),
                max_retries: self.max_retries,
                max_total_elapsed: to_time(self.max_total),
                max_delay: to_time(self.max_delay),
            }),
            ..Default::default()
        })
    }
}

/// Reads a PEM file of extra trusted CA certificates.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read the CA file {}", path.display()), e))
}
