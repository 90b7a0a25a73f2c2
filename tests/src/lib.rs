//! pxb's scenarios and benchmarks: the product crates driven end to end, on the harness
//! ([`pxb_harness`]: Azurite, the Entra ID stand-in, issuers, TLS) and the fleet simulator
//! ([`pxb_sim`]).
//!
//! - [`fixture::AzureFixture`]: the harness's Azure fixture with the product's store settings;
//! - [`control::ControlPlane`]: a simulated fleet, Azurite, an OIDC issuer, a real `pxb-server`
//!   and real agents, for server scenarios;
//! - [`external`]: those fixtures served to tests in other languages (the `pxb-fixture` binary);
//! - [`engine`]: the volume and resource engines on generated data;
//! - [`objects`]: Kubernetes objects from JSON, claims bound as the control plane would, file trees;
//! - [`kube_conformance`]: a Kubernetes API suite run against the real server and the simulator;
//! - [`helm`]: the real Helm, built by `scripts/build-helm`, and server-side dry runs;
//! - [`real`]: the real kube-apiserver and etcd ([`real::RealCluster`]) with kubectl and pxb's
//!   manifests;
//! - [`bench`]: the benchmarks behind `BENCHMARKS.md`.
//!
//! The harness's modules are re-exported under their names, so scenarios say
//! `pxb_tests::tls::TestCa` or `pxb_tests::sim::Fleet`.

pub mod bench;
pub mod control;
pub mod engine;
pub mod external;
pub mod fixture;
pub mod helm;
pub mod kube_conformance;
pub mod objects;
pub mod real;
pub mod replicas;

pub use pxb_harness::{
    entra, free_port, jwt, logs, oidc, promtool, promtool_check_metrics, server, tls, workspace_root,
};
pub use pxb_sim as sim;

/// Simulated shoots reached the way pxb reaches them ([`pxb_daemon::sim`]).
pub mod shoots {
    pub use pxb_daemon::sim::{ShootFixture, install_pxb};
}

/// Azurite ([`pxb_harness::azurite`]) and a SAS for its development account.
pub mod azurite {
    pub use pxb_harness::azurite::*;

    /// An account SAS for the development account, valid for an hour, and its signature (the part
    /// that is secret), for tests that check where a SAS may and may not show up.
    pub fn dev_sas() -> anyhow::Result<(String, String)> {
        let sas = pxb_azure::account_sas(
            ACCOUNT,
            ACCOUNT_KEY,
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        )?;
        let sig = sas
            .split('&')
            .find_map(|kv| kv.strip_prefix("sig="))
            .ok_or_else(|| anyhow::anyhow!("the SAS has no signature"))?
            .to_owned();
        Ok((sas, sig))
    }
}
