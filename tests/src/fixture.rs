//! The Azure fixture of the harness ([`pxb_harness::azure::AzureFixture`]: a test CA, Azurite over
//! HTTPS, a fake Entra ID and a projected token file) with the product-side settings built from it:
//! store configurations and Workload Identity options.

use std::ops::{Deref, DerefMut};

use pxb_azure::{AzureAuth, AzureConfig, HttpSettings, WorkloadIdentityOptions};
pub use pxb_harness::azure::{CLIENT_ID, SECOND_CLIENT_ID, TENANT_ID};

use crate::azurite;

/// CA, Azurite, fake Entra ID and token file; everything stops when dropped. Dereferences to the
/// harness's fixture (`ca`, `azurite`, `entra`, `token_file()`, …).
#[derive(Debug)]
pub struct AzureFixture(pxb_harness::azure::AzureFixture);

impl Deref for AzureFixture {
    type Target = pxb_harness::azure::AzureFixture;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for AzureFixture {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl AzureFixture {
    /// Starts everything; Entra issues access tokens valid for `token_lifetime_secs`.
    pub fn start(token_lifetime_secs: u64) -> anyhow::Result<Self> {
        Ok(Self(pxb_harness::azure::AzureFixture::start(
            token_lifetime_secs,
        )?))
    }

    /// A new, empty container (created with the account key), named after `tag`.
    pub async fn new_container(&self, tag: &str) -> anyhow::Result<String> {
        let container = self.container_name(tag);
        pxb_azure::AzureBlobStore::new(self.key_config(&container))?
            .create_container()
            .await?;
        Ok(container)
    }

    /// Workload Identity options pointing at the fake Entra ID, for `client_id`.
    pub fn wi_options(&self, client_id: &str) -> WorkloadIdentityOptions {
        WorkloadIdentityOptions {
            client_id: Some(client_id.into()),
            tenant_id: Some(TENANT_ID.into()),
            token_file: Some(self.token_file()),
            authority_host: Some(self.entra.authority_host()),
        }
    }

    /// Store settings for `container` in Azurite with `auth`, trusting the test CA, with short retries.
    pub fn config(&self, container: &str, auth: AzureAuth) -> AzureConfig {
        let mut c = AzureConfig::new(azurite::ACCOUNT, container, auth);
        c.endpoint = Some(self.azurite.endpoint());
        c.ca_file = Some(self.ca.ca_file());
        c.http = HttpSettings {
            max_retries: 2,
            ..HttpSettings::default()
        };
        c
    }

    /// Store settings using Workload Identity with the known client id.
    pub fn wi_config(&self, container: &str) -> AzureConfig {
        self.config(container, AzureAuth::WorkloadIdentity(self.wi_options(CLIENT_ID)))
    }

    /// Store settings using the development account key.
    pub fn key_config(&self, container: &str) -> AzureConfig {
        self.config(
            container,
            AzureAuth::SharedKey {
                key: azurite::ACCOUNT_KEY.into(),
            },
        )
    }
}
