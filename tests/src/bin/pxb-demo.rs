//! `pxb-demo`: `pxb demo` ([`pxb_daemon::demo`]) with the test harness at hand, so that
//! `--location azurite` runs the demo's location on Azurite over HTTPS, reached by every agent with
//! Workload Identity through a fake Entra ID (`pxb demo --location azurite` runs this program when
//! it is installed next to `pxb`).
//!
//! `pxb-demo [--shoots N] [--location file|azurite] [--exit] [--listen 127.0.0.1:PORT] [--support-channel]`
//! (`--support-channel` starts the stand-in telemetry service the demo's support channel talks to;
//! `--entra-login` a stand-in Entra ID the console and the API sign users in with)

use std::process::ExitCode;
use std::sync::Arc;

use pxb_daemon::demo::{AzureDemoLocation, DemoLocation};
use pxb_harness::oidc::BrowserLogin;
use pxb_tests::fixture::{AzureFixture, CLIENT_ID};

async fn run(args: Vec<String>) -> anyhow::Result<bool> {
    let (mut options, azurite) = pxb_daemon::demo::parse_args(&args).map_err(anyhow::Error::msg)?;
    let _fixture = if azurite {
        println!("starting Azurite (HTTPS, --oauth basic) and a fake Entra ID on 127.0.0.1 ...");
        let fx = Arc::new(AzureFixture::start(3600)?);
        let container = fx.new_container("demo").await?;
        let seen = fx.clone();
        options.location = DemoLocation::Azure(Box::new(AzureDemoLocation {
            account: pxb_tests::azurite::ACCOUNT.into(),
            container,
            endpoint: fx.azurite.endpoint(),
            workload_identity: fx.wi_options(CLIENT_ID),
            ca_file: Some(fx.ca.ca_file()),
            note: Some(Box::new(move || {
                let granted = seen.entra.exchanges().iter().filter(|e| e.granted).count();
                format!(
                    "Entra ID token exchanges granted: {granted} (no storage key, no client secret anywhere)"
                )
            })),
        }));
        Some(fx)
    } else {
        None
    };
    let _service = if pxb_daemon::demo::wants_support_channel(&args) {
        let service = Arc::new(pxb_harness::telemetry_service::TelemetryService::start().await);
        let ca = tempfile::NamedTempFile::new()?;
        std::fs::write(ca.path(), service.ca_pem())?;
        let seen = service.clone();
        options.support = Some(pxb_daemon::demo::DemoSupport {
            endpoint: service.endpoint(),
            ca_file: ca.path().to_path_buf(),
            note: Box::new(move || {
                format!(
                    "the service received {} bytes over {} connection(s), {} registration(s), {} metric and {} log upload(s), cluster ids {}",
                    seen.bytes_received(),
                    seen.connections(),
                    seen.registrations().len(),
                    seen.metrics().len(),
                    seen.logs().len(),
                    seen.cluster_uuids().len()
                )
            }),
        });
        Some((service, ca))
    } else {
        None
    };
    let _issuer = if pxb_daemon::demo::wants_entra_login(&args) {
        // The console's redirect URI names the API's port, so the port is fixed before the start.
        if options.listen.ends_with(":0") {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            options.listen = probe.local_addr()?.to_string();
        }
        let ca = pxb_harness::tls::TestCa::generate()?;
        let issuer = pxb_harness::oidc::TestIssuer::start(&ca)?;
        let redirect = format!("http://{}/", options.listen);
        issuer.set_browser_login(
            BrowserLogin::new(CONSOLE_CLIENT_ID, &redirect, "operator", API_AUDIENCE)
                .roles(&[PROVIDER_ADMIN_ROLE])
                .also("viewer", &[VIEWER_GROUP], &[]),
        );
        let ca_file = tempfile::NamedTempFile::new()?;
        std::fs::write(ca_file.path(), issuer.ca_pem())?;
        println!(
            "stand-in Entra ID at {} (user `operator`, a provider admin)",
            issuer.issuer()
        );
        options.entra = Some(pxb_daemon::demo::DemoEntra {
            issuer: issuer.issuer(),
            audience: API_AUDIENCE.into(),
            console_client_id: CONSOLE_CLIENT_ID.into(),
            ca_file: ca_file.path().to_path_buf(),
            provider_admin_role: PROVIDER_ADMIN_ROLE.into(),
            viewer_group: VIEWER_GROUP.into(),
        });
        Some((issuer, ca_file))
    } else {
        None
    };
    pxb_daemon::demo::run(options).await
}

/// The console's client id at the stand-in Entra ID (`--entra-login`).
const CONSOLE_CLIENT_ID: &str = "pxb-console-demo";
/// The API's audience there.
const API_AUDIENCE: &str = "api://pxb-demo";
/// The group of the demo org's viewers there.
const VIEWER_GROUP: &str = "demo-viewers";
/// The app role of provider admins there.
const PROVIDER_ADMIN_ROLE: &str = "pxb.provider-admin";

fn main() -> ExitCode {
    // Logs of the server and the agents on stderr, only with PXB_LOG (e.g. PXB_LOG=info), in the
    // format of PXB_LOG_FORMAT.
    if std::env::var_os("PXB_LOG").is_some()
        && let Err(e) = pxb_daemon::init_logging("off")
    {
        eprintln!("pxb-demo: {e}");
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if pxb_daemon::demo::wants_help(&args) {
        println!("{}", pxb_daemon::demo::USAGE);
        return ExitCode::SUCCESS;
    }
    if let Err(e) = pxb_daemon::demo::parse_args(&args) {
        eprintln!("pxb-demo: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pxb-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pxb-demo: the fleet did not come out as expected");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pxb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
