//! [`MemoryExporter`]: the in-memory twin of the telemetry service and its wire (feature
//! `conformance`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::conformance::{Arrived, ServiceProbe};
use super::{Batch, ClientIdentity, ExportError, IssuedCertificate, RegistrationRequest, TelemetryExporter};

/// One call the [`MemoryExporter`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterCall {
    /// `"register"` or `"export"`.
    pub operation: &'static str,
    /// The installation of the request (of the CSR or of the identity).
    pub installation_id: String,
    /// When (tokio's clock, so paused-time tests can measure back-off).
    pub at: tokio::time::Instant,
    /// What it answered.
    pub result: Result<(), ExportError>,
}

struct Issued {
    installation_id: String,
    serial: u64,
    not_after: SystemTime,
}

#[derive(Default)]
struct State {
    down: bool,
    /// Registrations return certificates that expired an hour ago.
    issue_expired: bool,
    /// Every upload answers [`ExportError::Revoked`].
    revoke_uploads: bool,
    next_serial: u64,
    /// Issued leaf certificates by PEM.
    certs: HashMap<String, Issued>,
    revoked: HashSet<u64>,
    registrations: Vec<RegistrationRequest>,
    batches: BTreeMap<String, Vec<Batch>>,
    calls: Vec<ExporterCall>,
}

/// A telemetry service and its wire in memory: registrations sign the CSR with the exporter's
/// own CA (rcgen) after the checks the real service makes (the CSR parses and its signature
/// holds, its CN is the installation id, the id is a UUID); uploads are recorded per
/// installation when the identity's certificate is one it issued, not revoked and not expired.
/// [`MemoryExporter::set_down`] makes every call [`ExportError::Unavailable`];
/// [`MemoryExporter::set_issue_expired`] and [`MemoryExporter::set_revoke_uploads`] make it a
/// service whose clock is behind or that refuses every certificate. It is also its own
/// [`ServiceProbe`].
pub struct MemoryExporter {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    cert_lifetime: Duration,
    latency: Duration,
    state: Mutex<State>,
}

impl fmt::Debug for MemoryExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryExporter")
            .field("cert_lifetime", &self.cert_lifetime)
            .field("down", &state.down)
            .field("registrations", &state.registrations.len())
            .field("calls", &state.calls.len())
            .finish()
    }
}

impl Default for MemoryExporter {
    fn default() -> Self {
        MemoryExporter::new()
    }
}

/// Whether `s` is a UUID in its 8-4-4-4-12 hexadecimal form.
pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl MemoryExporter {
    /// A service issuing certificates valid for 24 hours.
    ///
    /// # Panics
    ///
    /// When rcgen cannot make a CA (it always can with its P-256 keys).
    pub fn new() -> MemoryExporter {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating the CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pxb memory telemetry CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params.self_signed(&key).expect("self-signing the CA").pem();
        MemoryExporter {
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
            cert_lifetime: Duration::from_secs(24 * 3600),
            latency: Duration::ZERO,
            state: Mutex::new(State::default()),
        }
    }

    /// This service, issuing certificates valid for `lifetime` (whole seconds).
    pub fn with_cert_lifetime(mut self, lifetime: Duration) -> MemoryExporter {
        self.cert_lifetime = lifetime;
        self
    }

    /// This service, taking `latency` (on tokio's clock) to answer each call, like a service
    /// over a network: a client calling it in a loop makes calls per second, not a busy loop.
    pub fn with_latency(mut self, latency: Duration) -> MemoryExporter {
        self.latency = latency;
        self
    }

    /// Makes registrations return certificates that expired an hour ago (`true`), as a service
    /// whose clock is behind this process' would, or valid ones again.
    pub fn set_issue_expired(&self, expired: bool) {
        self.lock().issue_expired = expired;
    }

    /// Makes every upload answer [`ExportError::Revoked`] (`true`), whatever the certificate,
    /// or check the certificate again.
    pub fn set_revoke_uploads(&self, revoke: bool) {
        self.lock().revoke_uploads = revoke;
    }

    /// The CA certificate that signs the client certificates, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Makes every call fail with [`ExportError::Unavailable`] (`true`) or work again.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Revokes every certificate issued to `installation_id` so far.
    pub fn revoke(&self, installation_id: &str) {
        let mut state = self.lock();
        let serials: Vec<u64> = state
            .certs
            .values()
            .filter(|c| c.installation_id == installation_id)
            .map(|c| c.serial)
            .collect();
        state.revoked.extend(serials);
    }

    /// The registrations that succeeded, oldest first.
    pub fn registrations(&self) -> Vec<RegistrationRequest> {
        self.lock().registrations.clone()
    }

    /// The batches recorded for `installation_id`, oldest first.
    pub fn batches(&self, installation_id: &str) -> Vec<Batch> {
        self.lock()
            .batches
            .get(installation_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every call answered, oldest first.
    pub fn calls(&self) -> Vec<ExporterCall> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sign(
        &self,
        req: &RegistrationRequest,
        serial: u64,
        expired: bool,
    ) -> Result<IssuedCertificate, ExportError> {
        let refused = |what: &str| ExportError::Refused(what.to_owned());
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem)
            .map_err(|e| refused(&format!("the CSR does not parse: {e}")))?;
        let cn = match csr.params.distinguished_name.get(&rcgen::DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
            Some(rcgen::DnValue::PrintableString(s)) => s.as_str().to_owned(),
            _ => return Err(refused("the CSR has no UTF-8 subject CN")),
        };
        if cn != req.installation_id {
            return Err(refused(&format!(
                "the CSR's CN {cn:?} is not the installation id {:?}",
                req.installation_id
            )));
        }
        if !is_uuid(&req.installation_id) {
            return Err(refused(&format!(
                "the installation id {:?} is not a UUID",
                req.installation_id
            )));
        }
        let now = SystemTime::now();
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let not_after = if expired {
            SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.saturating_sub(3600))
        } else {
            SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch + self.cert_lifetime.as_secs())
        };
        // rcgen's time type, reached from its epoch helper: the products use one date-time crate.
        let at = |t: SystemTime| {
            rcgen::date_time_ymd(1970, 1, 1) + t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
        };
        csr.params.not_before = at((now - Duration::from_secs(60)).min(not_after - Duration::from_secs(60)));
        csr.params.not_after = at(not_after);
        csr.params.serial_number = Some(rcgen::SerialNumber::from(serial));
        csr.params.is_ca = rcgen::IsCa::ExplicitNoCa;
        csr.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = csr
            .signed_by(&self.ca)
            .map_err(|e| ExportError::Local(format!("signing: {e}")))?;
        Ok(IssuedCertificate {
            cert_pem: format!("{}{}", cert.pem(), self.ca_pem),
            not_after,
        })
    }
}

#[async_trait]
impl TelemetryExporter for MemoryExporter {
    async fn register(&self, req: &RegistrationRequest) -> Result<IssuedCertificate, ExportError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut state = self.lock();
        let result = if state.down {
            Err(ExportError::Unavailable("the memory service is down".into()))
        } else {
            state.next_serial += 1;
            let serial = state.next_serial;
            let expired = state.issue_expired;
            self.sign(req, serial, expired).inspect(|issued| {
                state.certs.insert(
                    issued.cert_pem.clone(),
                    Issued {
                        installation_id: req.installation_id.clone(),
                        serial,
                        not_after: issued.not_after,
                    },
                );
                state.registrations.push(req.clone());
            })
        };
        state.calls.push(ExporterCall {
            operation: "register",
            installation_id: req.installation_id.clone(),
            at: tokio::time::Instant::now(),
            result: result.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        result
    }

    async fn export(&self, identity: &ClientIdentity, batch: &Batch) -> Result<(), ExportError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let mut state = self.lock();
        let result = if state.down {
            Err(ExportError::Unavailable("the memory service is down".into()))
        } else if state.revoke_uploads {
            Err(ExportError::Revoked)
        } else {
            match state.certs.get(&identity.cert_pem) {
                Some(c) if !state.revoked.contains(&c.serial) && c.not_after > SystemTime::now() => {
                    let installation = c.installation_id.clone();
                    state.batches.entry(installation).or_default().push(batch.clone());
                    Ok(())
                }
                _ => Err(ExportError::Revoked),
            }
        };
        state.calls.push(ExporterCall {
            operation: "export",
            installation_id: identity.installation_id.clone(),
            at: tokio::time::Instant::now(),
            result: result.clone(),
        });
        result
    }
}

#[async_trait]
impl ServiceProbe for MemoryExporter {
    async fn arrived(&self, installation_id: &str) -> Arrived {
        Arrived::from_batches(&self.batches(installation_id))
    }

    async fn revoke(&self, installation_id: &str) {
        MemoryExporter::revoke(self, installation_id);
    }

    async fn set_down(&self, down: bool) {
        MemoryExporter::set_down(self, down);
    }
}
