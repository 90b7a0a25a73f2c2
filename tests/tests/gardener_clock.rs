//! The Gardener provider's credential decisions read the injected clock: against the simulated
//! garden, a kubeconfig turns from fresh to expired, and its renewal starts, when a
//! [`ManualClock`] says so, not when the wall clock gets there.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pxb_core::cluster::{ClusterProvider, CredentialState};
use pxb_core::{Clock as _, ManualClock};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use pxb_tests::sim::{Fleet, FleetConfig, ProjectRole};

#[tokio::test]
async fn credential_state_and_renewal_follow_the_injected_clock() {
    let fleet = Fleet::start(FleetConfig::default()).expect("simulator starts");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 1).expect("shoot");
    let token = fleet
        .add_service_account("dev", "pxb-server", ProjectRole::Admin)
        .expect("service account");
    let clock = ManualClock::new(SystemTime::now());
    let config = GardenerConfig::new(GardenAuth::Kubeconfig(fleet.garden_kubeconfig(&token)), "dev")
        .with_expiration(Duration::from_secs(600))
        .with_renewal(0.8, 0.0)
        .with_eager(false)
        .with_request_timeout(Duration::from_secs(5))
        .with_clock(Arc::new(clock.clone()));
    let p = GardenerProvider::connect(config).await.expect("provider");
    let id = p.discover().await.expect("discover")[0].id.clone();

    // Issued now (by the manual clock), for the 600 s the garden granted.
    let first = p.access(&id).await.expect("access");
    assert_eq!(
        first.issued_at,
        clock.now(),
        "issued_at is read from the injected clock"
    );
    let CredentialState::Fresh { expires_at, renew_at } = p.credential_state(&id) else {
        panic!("fresh after issuance: {:?}", p.credential_state(&id));
    };
    assert_eq!(expires_at, first.expires_at);
    assert!(renew_at > first.issued_at && renew_at < first.expires_at);
    assert_eq!(p.renew_due(), 0);

    // The clock passes the expiry: expired at once, while the wall clock has moved on by less
    // than a second.
    clock.set(first.expires_at);
    assert_eq!(
        p.credential_state(&id),
        CredentialState::Expired {
            since: first.expires_at
        }
    );

    // Back to a second before renew_at: fresh, and not due yet.
    clock.set(renew_at - Duration::from_secs(1));
    assert!(matches!(p.credential_state(&id), CredentialState::Fresh { .. }));
    assert_eq!(p.renew_due(), 0);

    // At renew_at the renewal starts and a new kubeconfig is issued, minutes early by the wall
    // clock.
    clock.set(renew_at);
    assert_eq!(p.renew_due(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let renewed = loop {
        match p.credential_state(&id) {
            CredentialState::Renewing { .. } => {}
            state => break state,
        }
        assert!(Instant::now() < deadline, "the renewal finishes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let CredentialState::Fresh { renew_at: next, .. } = renewed else {
        panic!("fresh after renewal: {renewed:?}");
    };
    assert!(
        next > renew_at,
        "the next renewal is scheduled from the new issuance"
    );
    assert_eq!(p.stats().issued, 2);
    assert_eq!(p.access(&id).await.expect("access").issued_at, renew_at);
}
