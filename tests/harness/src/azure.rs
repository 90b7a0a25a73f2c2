//! One fixture for Azure tests: a test CA, Azurite over HTTPS, a fake Entra ID endpoint and a
//! projected service-account token file, wired together. The product-side settings built from it
//! (store configurations, Workload Identity options) live with the scenarios, in `pxb-tests`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::azurite::Azurite;
use crate::entra::{EntraConfig, FakeEntra};
use crate::jwt;
use crate::tls::TestCa;

/// The tenant the fake Entra ID serves.
pub const TENANT_ID: &str = "7e57e57e-0000-4000-8000-000000000001";
/// The client id the fake Entra ID knows.
pub const CLIENT_ID: &str = "c11e9700-0000-4000-8000-0000000000a1";
/// A second managed identity the fake Entra ID knows (for per-location identities).
pub const SECOND_CLIENT_ID: &str = "c11e9700-0000-4000-8000-0000000000b2";

/// CA, Azurite, fake Entra ID and token file; everything stops when dropped.
#[derive(Debug)]
pub struct AzureFixture {
    /// The test CA (Azurite and Entra present certificates it signed).
    pub ca: TestCa,
    /// Azurite over HTTPS with `--oauth basic`.
    pub azurite: Azurite,
    /// The fake Entra ID token endpoint.
    pub entra: FakeEntra,
    token_dir: tempfile::TempDir,
}

static CONTAINERS: AtomicU32 = AtomicU32::new(0);

impl AzureFixture {
    /// Starts everything; Entra issues access tokens valid for `token_lifetime_secs`.
    pub fn start(token_lifetime_secs: u64) -> anyhow::Result<Self> {
        Self::start_with(token_lifetime_secs, |_| {})
    }

    /// Like [`start`](Self::start), with `configure` adjusting the Entra stand-in's settings
    /// (e.g. [`EntraConfig::federation`]) before it starts.
    pub fn start_with(
        token_lifetime_secs: u64,
        configure: impl FnOnce(&mut EntraConfig),
    ) -> anyhow::Result<Self> {
        let ca = TestCa::generate()?;
        let token_dir = tempfile::tempdir()?;
        let token_file = token_dir.path().join("azure-identity-token");
        std::fs::write(&token_file, jwt::service_account_token(3600))?;
        let azurite = Azurite::start_https(&ca)?;
        let mut config = EntraConfig {
            tenant_id: TENANT_ID.into(),
            client_ids: vec![CLIENT_ID.into(), SECOND_CLIENT_ID.into()],
            token_file: token_file.clone(),
            token_lifetime_secs,
            federation: None,
        };
        configure(&mut config);
        let entra = FakeEntra::start(&ca, config)?;
        Ok(Self {
            ca,
            azurite,
            entra,
            token_dir,
        })
    }

    /// The projected token file.
    pub fn token_file(&self) -> PathBuf {
        self.token_dir.path().join("azure-identity-token")
    }

    /// Replaces the token file the way kubelet rotates it (write aside, then rename).
    pub fn rotate_token(&self, lifetime_secs: i64) -> anyhow::Result<String> {
        let token = jwt::service_account_token(lifetime_secs);
        let tmp = self.token_dir.path().join(".rotating");
        std::fs::write(&tmp, &token)?;
        std::fs::rename(&tmp, self.token_file())?;
        Ok(token)
    }

    /// A fresh container name, unique within this process.
    pub fn container_name(&self, tag: &str) -> String {
        format!("{tag}-{}", CONTAINERS.fetch_add(1, Ordering::Relaxed))
    }
}
