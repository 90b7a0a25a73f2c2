//! The credential seam's conformance suite (`pxb_core::credential::conformance`), run by Workload
//! Identity against the fake Entra ID: the projected service-account token exchanged for an access
//! token. The in-memory twin (`StaticToken`) runs the same suite in pxb-core's unit tests.

use std::time::Duration;

use pxb_azure::{HttpSettings, STORAGE_SCOPE, WorkloadIdentity};
use pxb_core::credential::conformance;
use pxb_tests::fixture::{AzureFixture, CLIENT_ID, SECOND_CLIENT_ID};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_conforms() {
    let fx = AzureFixture::start(3600).expect("fixture");
    for client_id in [CLIENT_ID, SECOND_CLIENT_ID] {
        let wi = WorkloadIdentity::new(
            fx.wi_options(client_id),
            &HttpSettings::default(),
            Some(fx.ca.ca_pem.as_bytes()),
        )
        .expect("workload identity");
        conformance::issues_a_valid_token(&wi, &[STORAGE_SCOPE], Duration::from_secs(60)).await;
    }
    // Each token came from an exchange Entra granted, one per identity.
    let exchanges = fx.entra.exchanges();
    assert!(exchanges.iter().all(|e| e.granted), "{exchanges:?}");
    for client_id in [CLIENT_ID, SECOND_CLIENT_ID] {
        assert!(
            exchanges.iter().any(|e| e.client_id == client_id),
            "no exchange for {client_id}: {exchanges:?}"
        );
    }
}
