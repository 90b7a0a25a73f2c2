//! The credential seam's conformance suite (`pxb_core::credential::conformance`), run by Workload
//! Identity against the fake Entra ID: the projected service-account token exchanged for an access
//! token. The in-memory twin (`StaticToken`) runs the same suite in pxb-core's unit tests.

use std::time::Duration;

use pxb_azure::{HttpSettings, STORAGE_SCOPE, WorkloadIdentity};
use pxb_core::credential::conformance;
use pxb_core::{Error, SystemClock};
use pxb_tests::fixture::{AzureFixture, CLIENT_ID, SECOND_CLIENT_ID};

fn workload_identity(fx: &AzureFixture, client_id: &str) -> WorkloadIdentity {
    WorkloadIdentity::new(
        fx.wi_options(client_id),
        &HttpSettings::default(),
        Some(fx.ca.ca_pem.as_bytes()),
    )
    .expect("workload identity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_conforms() {
    let fx = AzureFixture::start(3600).expect("fixture");
    for client_id in [CLIENT_ID, SECOND_CLIENT_ID] {
        let wi = workload_identity(&fx, client_id);
        conformance::run_all(&wi, &[STORAGE_SCOPE], &SystemClock, Duration::from_secs(60)).await;
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

/// Entra tokens of 240 s, under the SDK's 300 s refresh margin: no token is reused, so every call
/// of the suite (the repeated and the concurrent ones included) is an exchange of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_conforms_when_every_call_exchanges() {
    let fx = AzureFixture::start(240).expect("fixture");
    let wi = workload_identity(&fx, CLIENT_ID);
    conformance::run_all(&wi, &[STORAGE_SCOPE], &SystemClock, Duration::from_secs(60)).await;
    let exchanges = fx.entra.exchanges();
    assert!(exchanges.iter().all(|e| e.granted), "{exchanges:?}");
    assert!(
        exchanges.len() > 1 + conformance::REPEATED_CALLS,
        "short-lived tokens are exchanged again: {} exchanges",
        exchanges.len()
    );
}

/// An identity Entra does not know fails as the trait documents: unauthenticated, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_workload_identity_fails_as_documented() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let wi = workload_identity(&fx, "00000000-dead-beef-0000-000000000000");
    let err = conformance::fails_as_documented(&wi, &[STORAGE_SCOPE]).await;
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    assert!(err.to_string().contains("AADSTS700016"), "{err}");
}
