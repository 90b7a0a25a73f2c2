//! A real Kubernetes control plane for tests: upstream `etcd` and `kube-apiserver` started on
//! loopback ports in a temporary directory.
//!
//! - TLS with a CA generated at test time; the serving certificate is for `127.0.0.1` and
//!   `localhost`.
//! - Client-certificate authentication (`--client-ca-file`): the certificate's CN is the user and
//!   each O a group. [`RealCluster::admin_kubeconfig`] is `system:masters`;
//!   [`RealCluster::kubeconfig_for`] mints one for any user and groups.
//! - `--authorization-mode=RBAC`: a user without bindings may do nothing but what the default
//!   roles allow.
//! - A service-account issuer ([`RealCluster::issuer`]) and signing key, so TokenRequest works;
//!   the API audiences include `api://AzureADTokenExchange`.
//!
//! There is no controller manager, scheduler or kubelet: a test creates the namespaces and
//! service accounts it needs, and pods never run.
//!
//! The binaries are `$PXB_KUBE_APISERVER` and `$PXB_ETCD`, else the ones `scripts/build-kube`
//! (run by `scripts/install-deps`) caches under `$HOME/.cache/pxb/` for the versions in
//! `scripts/kube/VERSIONS`. A missing binary is an error that says so, never a skip. Both
//! processes are stopped by their own process ids when the fixture is dropped, and by a small
//! watcher process (which also removes the fixture's directory) when the test process ends
//! without dropping it, as it does for a fixture kept in a `static`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SigningKey as _,
};

/// `scripts/kube/VERSIONS`, the versions `scripts/build-kube` builds and caches.
const VERSIONS: &str = include_str!("../../../scripts/kube/VERSIONS");

/// How long the API server may take to answer `/readyz` with `ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The audiences the API server accepts and issues tokens for; the first is the default.
pub const API_AUDIENCES: [&str; 2] = ["https://kubernetes.default.svc", "api://AzureADTokenExchange"];

fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("scripts/kube/VERSIONS has no {key}"))
}

/// The kube-apiserver release the fixture runs (`KUBE_VERSION` of `scripts/kube/VERSIONS`).
pub fn kube_version() -> &'static str {
    version("KUBE_VERSION")
}

/// The etcd release the fixture runs (`ETCD_VERSION` of `scripts/kube/VERSIONS`).
pub fn etcd_version() -> &'static str {
    version("ETCD_VERSION")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/pxb")
}

/// The kube-apiserver binary: `$PXB_KUBE_APISERVER`, else
/// `$HOME/.cache/pxb/kube-<version>/kube-apiserver`.
pub fn kube_apiserver_binary() -> PathBuf {
    std::env::var_os("PXB_KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir()
                .join(format!("kube-{}", kube_version()))
                .join("kube-apiserver")
        })
}

/// The etcd binary: `$PXB_ETCD`, else `$HOME/.cache/pxb/etcd-<version>/etcd`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("PXB_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(format!("etcd-{}", etcd_version())).join("etcd"))
}

fn require_binary(path: &Path, var: &str) -> anyhow::Result<()> {
    if path.is_file() {
        return Ok(());
    }
    bail!(
        "{} is missing: run scripts/install-deps (it builds kube-apiserver {} and fetches etcd {} with \
         scripts/build-kube), or point {var} at a binary",
        path.display(),
        kube_version(),
        etcd_version()
    )
}

/// A client identity: a certificate signed by the cluster's CA and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

/// A process of the fixture, its watcher and its log file.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    watcher: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, logging to `log`. When the test process is gone without dropping the
    /// fixture (a fixture in a `static` never is), the watcher kills the process and, if
    /// `dir` is given, removes the fixture's directory.
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf, dir: Option<&Path>) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        // Kills the process by its id when the test process is gone without dropping the fixture
        // (and then removes the fixture's directory, only one named like ours); exits by itself
        // once the process has ended.
        let watcher = Command::new("sh")
            .arg("-c")
            .arg(
                r#"while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
kill -KILL "$2" 2>/dev/null
if ! kill -0 "$1" 2>/dev/null; then
  case "$3" in */pxb-real-cluster-*) sleep 1; rm -rf -- "$3" ;; esac
fi
exit 0"#,
            )
            .arg("pxb-real-cluster-watcher")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(dir.map(|d| d.display().to_string()).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Ok(Self {
            name,
            child,
            watcher,
            log,
        })
    }

    /// The last `n` lines of its log.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "--- last {} lines of {}'s log ---\n{tail}",
            n.min(lines.len()),
            self.name
        )
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM to its own pid, SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if self.exited().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        if let Some(mut w) = self.watcher.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A running etcd and kube-apiserver; both stopped when dropped.
#[derive(Debug)]
pub struct RealCluster {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_name_der: Vec<u8>,
    port: u16,
    etcd_port: u16,
    admin: ClientIdentity,
    apiserver: Option<Proc>,
    etcd: Option<Proc>,
    minted: AtomicU32,
}

impl RealCluster {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers `ok` (at most ~60 s; the
    /// error then holds the tails of both logs). Blocks for the few seconds that takes.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(None)
    }

    /// [`start`](Self::start), with etcd compacted every `interval` instead of kube-apiserver's
    /// 5 minutes, so an old resourceVersion or continue token expires (410) within a test's
    /// time. Only for tests of expiry: a continue token then lives only `interval` to
    /// `2 × interval`.
    pub fn start_compacting_every(interval: Duration) -> anyhow::Result<Self> {
        Self::start_inner(Some(interval))
    }

    fn start_inner(compaction: Option<Duration>) -> anyhow::Result<Self> {
        let apiserver_bin = kube_apiserver_binary();
        let etcd_bin = etcd_binary();
        require_binary(&apiserver_bin, "PXB_KUBE_APISERVER")?;
        require_binary(&etcd_bin, "PXB_ETCD")?;

        let dir = tempfile::Builder::new().prefix("pxb-real-cluster-").tempdir()?;
        let d = dir.path();

        // The CA, the serving certificate and the service-account signing key.
        let ca_name = "pxb real cluster CA";
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        ca_params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(2);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let ca_name_der = der::name(&[(der::OID_CN, ca_name)]);
        anyhow::ensure!(
            ca.der().windows(ca_name_der.len()).any(|w| w == ca_name_der),
            "the CA's subject is not encoded as expected; client certificates would not chain"
        );
        std::fs::write(d.join("ca.crt"), ca.pem())?;

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let server = params.signed_by(&server_key, &ca)?;
        std::fs::write(d.join("apiserver.crt"), server.pem())?;
        std::fs::write(d.join("apiserver.key"), server_key.serialize_pem())?;

        let sa_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        std::fs::write(d.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(d.join("sa.pub"), sa_key.public_key_pem())?;

        let port = crate::free_port()?;
        let etcd_port = crate::free_port()?;
        let peer_port = crate::free_port()?;
        let mut me = Self {
            admin: ClientIdentity {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            dir,
            ca,
            ca_name_der,
            port,
            etcd_port,
            apiserver: None,
            etcd: None,
            minted: AtomicU32::new(0),
        };
        me.admin = me.client_identity("pxb-admin", &["system:masters"])?;
        let d = me.dir.path().to_path_buf();
        me.write_kubeconfig(&d.join("admin.kubeconfig"), "pxb-admin", &me.admin)?;

        // etcd.
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(&etcd_bin);
        etcd.arg("--name=pxb")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=pxb={peer_url}"));
        me.etcd = Some(Proc::spawn("etcd", etcd, d.join("etcd.log"), Some(d.as_path()))?);
        me.wait_for_etcd(Duration::from_secs(20))?;

        // kube-apiserver.
        let mut api = Command::new(&apiserver_bin);
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg(format!("--tls-cert-file={}", d.join("apiserver.crt").display()))
            .arg(format!(
                "--tls-private-key-file={}",
                d.join("apiserver.key").display()
            ))
            .arg(format!("--client-ca-file={}", d.join("ca.crt").display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={}", me.issuer()))
            .arg(format!(
                "--service-account-key-file={}",
                d.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ))
            .arg(format!("--api-audiences={}", API_AUDIENCES.join(",")))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // The `kubernetes` Service would get a loopback endpoint, which validation refuses.
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=true")
            // PodTemplates skip the watch cache, so a watch from a compacted resourceVersion is
            // answered from etcd: 410 Gone (the cache would replay its own window instead).
            .arg("--watch-cache-sizes=podtemplates#0")
            .arg("--profiling=false");
        if let Some(interval) = compaction {
            api.arg(format!(
                "--etcd-compaction-interval={}s",
                interval.as_secs().max(1)
            ));
        }
        me.apiserver = Some(Proc::spawn(
            "kube-apiserver",
            api,
            d.join("kube-apiserver.log"),
            None,
        )?);
        me.wait_ready(READY_TIMEOUT)?;
        Ok(me)
    }

    fn logs(&self) -> String {
        [&self.etcd, &self.apiserver]
            .into_iter()
            .flatten()
            .map(|p| p.log_tail(30))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        let mut exited = None;
        for p in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
            if let Some(status) = p.exited() {
                exited = Some((p.name, status));
                break;
            }
        }
        if let Some((name, status)) = exited {
            bail!("{name} exited with {status}\n{}", self.logs());
        }
        Ok(())
    }

    fn wait_for_etcd(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.check_running()?;
            if TcpStream::connect(("127.0.0.1", self.etcd_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "etcd did not listen on 127.0.0.1:{} within {timeout:?}\n{}",
            self.etcd_port,
            self.logs()
        )
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < timeout {
            self.check_running()?;
            match self.get("/readyz") {
                Ok((200, body)) if body.trim() == "ok" => return Ok(()),
                Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "kube-apiserver on 127.0.0.1:{} was not ready within {timeout:?} (last /readyz: {last})\n{}",
            self.port,
            self.logs()
        )
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The service-account issuer (`iss` of the tokens the API server issues).
    pub fn issuer(&self) -> String {
        self.server_url()
    }

    /// The CA certificate (PEM file) that signed the serving and client certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A kubeconfig of `pxb-admin` in group `system:masters`.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The admin's client certificate and key.
    pub fn admin_identity(&self) -> &ClientIdentity {
        &self.admin
    }

    /// The directory holding the certificates, kubeconfigs, etcd's data and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kube-apiserver's log so far.
    pub fn apiserver_log(&self) -> String {
        self.apiserver
            .as_ref()
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// A client certificate for `user` (CN) in `groups` (one O each), valid for a day.
    pub fn client_identity(&self, user: &str, groups: &[&str]) -> anyhow::Result<ClientIdentity> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut subject = vec![(der::OID_CN, user)];
        subject.extend(groups.iter().map(|g| (der::OID_O, *g)));
        let now = time::OffsetDateTime::now_utc();
        let tbs = der::tbs_client_certificate(
            &rand::random::<[u8; 16]>(),
            &self.ca_name_der,
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
            &der::name(&subject),
            &key.subject_public_key_info(),
        );
        let signature = self.ca.key().sign(&tbs)?;
        let cert = der::certificate(&tbs, &signature);
        Ok(ClientIdentity {
            cert_pem: pem("CERTIFICATE", &cert),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `user` (CN) in `groups` (one O each) that expires `ttl` from now
    /// (to the second, rounded down, as X.509 times are written); valid from a minute ago, so a
    /// clock a little behind accepts it at once. For credentials whose expiry a test watches, such
    /// as the ones a simulated garden issues with the request's `expirationSeconds`.
    pub fn client_identity_valid_for(
        &self,
        user: &str,
        groups: &[&str],
        ttl: Duration,
    ) -> anyhow::Result<ClientIdentity> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut subject = vec![(der::OID_CN, user)];
        subject.extend(groups.iter().map(|g| (der::OID_O, *g)));
        let now = time::OffsetDateTime::now_utc();
        let ttl = time::Duration::try_from(ttl).context("the certificate's lifetime is too long")?;
        let tbs = der::tbs_client_certificate(
            &rand::random::<[u8; 16]>(),
            &self.ca_name_der,
            now - time::Duration::minutes(1),
            now + ttl,
            &der::name(&subject),
            &key.subject_public_key_info(),
        );
        let signature = self.ca.key().sign(&tbs)?;
        let cert = der::certificate(&tbs, &signature);
        Ok(ClientIdentity {
            cert_pem: pem("CERTIFICATE", &cert),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes a kubeconfig for `user` in `groups` (client-certificate authentication) and returns
    /// its path.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let identity = self.client_identity(user, groups)?;
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.path().join(format!("user-{n}-{safe}.kubeconfig"));
        self.write_kubeconfig(&path, user, &identity)?;
        Ok(path)
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, identity: &ClientIdentity) -> anyhow::Result<()> {
        // JSON is YAML; every kubeconfig reader takes it.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "real", "cluster": {
                "server": self.server_url(),
                "certificate-authority-data": STANDARD.encode(self.ca.pem()),
            }}],
            "users": [{"name": user, "user": {
                "client-certificate-data": STANDARD.encode(&identity.cert_pem),
                "client-key-data": STANDARD.encode(&identity.key_pem),
            }}],
            "contexts": [{"name": "real", "context": {"cluster": "real", "user": user}}],
            "current-context": "real",
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// `GET path` as the admin; the status code and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.request_as(&self.admin, "GET", path, None)
    }

    /// A request with `identity`'s client certificate (a JSON body when given); the status code
    /// and body. Blocking, HTTP/1.1, one connection per request.
    pub fn request_as(
        &self,
        identity: &ClientIdentity,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca.pem().as_bytes())?)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes())?],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?,
            )?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1")?.to_owned())?;
        let sock = TcpStream::connect(("127.0.0.1", self.port))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.port
        );
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        tls.write_all(req.as_bytes())?;
        tls.flush()?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify still sent the whole response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e).context(format!("{method} {path}")),
        }
        parse_response(&raw).with_context(|| format!("{method} {path}"))
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut p) = self.etcd.take() {
            p.stop(Duration::from_secs(5));
        }
    }
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("truncated chunk")?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            anyhow::ensure!(rest.len() >= size, "truncated chunk");
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Just enough DER to write a client certificate whose subject has several O (group) attributes,
/// which rcgen's distinguished names (one value per attribute type) cannot express.
mod der {
    /// 2.5.4.3, commonName.
    pub(super) const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    /// 2.5.4.10, organizationName.
    pub(super) const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
    /// 1.2.840.10045.4.3.2, ecdsa-with-SHA256.
    const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    /// 2.5.29.15, keyUsage.
    const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    /// 2.5.29.37, extKeyUsage.
    const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    /// 1.3.6.1.5.5.7.3.2, id-kp-clientAuth.
    const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn oid(encoded: &[u8]) -> Vec<u8> {
        tlv(0x06, encoded)
    }

    /// A Name of one RDN per attribute, each a UTF8String (as rcgen writes `&str` values).
    pub(super) fn name(attrs: &[(&[u8], &str)]) -> Vec<u8> {
        let rdns: Vec<Vec<u8>> = attrs
            .iter()
            .map(|(o, v)| tlv(0x31, &seq(&[oid(o), tlv(0x0c, v.as_bytes())])))
            .collect();
        seq(&rdns)
    }

    fn utc_time(t: time::OffsetDateTime) -> Vec<u8> {
        let t = t.to_offset(time::UtcOffset::UTC);
        let text = format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            t.year() % 100,
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        tlv(0x17, text.as_bytes())
    }

    fn sig_alg() -> Vec<u8> {
        seq(&[oid(OID_ECDSA_SHA256)])
    }

    /// The to-be-signed part of an X.509 v3 client certificate (digitalSignature, clientAuth),
    /// signed with ECDSA P-256 SHA-256.
    pub(super) fn tbs_client_certificate(
        serial: &[u8; 16],
        issuer: &[u8],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
        subject: &[u8],
        spki: &[u8],
    ) -> Vec<u8> {
        let mut serial = serial.to_vec();
        serial[0] = (serial[0] & 0x7f) | 0x01; // positive, no leading zero byte
        let key_usage = seq(&[
            oid(OID_KEY_USAGE),
            tlv(0x01, &[0xff]),
            tlv(0x04, &tlv(0x03, &[0x07, 0x80])),
        ]);
        let ext_key_usage = seq(&[oid(OID_EXT_KEY_USAGE), tlv(0x04, &seq(&[oid(OID_CLIENT_AUTH)]))]);
        seq(&[
            tlv(0xa0, &tlv(0x02, &[0x02])),
            tlv(0x02, &serial),
            sig_alg(),
            issuer.to_vec(),
            seq(&[utc_time(not_before), utc_time(not_after)]),
            subject.to_vec(),
            spki.to_vec(),
            tlv(0xa3, &seq(&[key_usage, ext_key_usage])),
        ])
    }

    /// The certificate: the TBS part, the algorithm, and the signature.
    pub(super) fn certificate(tbs: &[u8], signature: &[u8]) -> Vec<u8> {
        let mut bits = vec![0u8];
        bits.extend_from_slice(signature);
        seq(&[tbs.to_vec(), sig_alg(), tlv(0x03, &bits)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_file_the_script_uses() {
        assert!(kube_version().starts_with("v1."), "{}", kube_version());
        assert!(!etcd_version().is_empty());
    }

    #[test]
    fn chunked_and_plain_responses_parse() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).expect("plain"), (200, "ok".into()));
        let chunked =
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("chunked"), (403, "abcde".into()));
    }

    #[test]
    fn client_certificates_carry_every_group_and_parse() {
        // Parsed by rustls' own PEM reader and checked for both O values in the DER.
        let ca_name = der::name(&[(der::OID_CN, "x")]);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let subject = der::name(&[(der::OID_CN, "u"), (der::OID_O, "g1"), (der::OID_O, "g2")]);
        let now = time::OffsetDateTime::now_utc();
        let tbs = der::tbs_client_certificate(
            &[0xff; 16],
            &ca_name,
            now,
            now + time::Duration::days(1),
            &subject,
            &key.subject_public_key_info(),
        );
        let cert = der::certificate(&tbs, &key.sign(&tbs).expect("sign"));
        let text = pem("CERTIFICATE", &cert);
        use rustls::pki_types::pem::PemObject as _;
        let parsed = rustls::pki_types::CertificateDer::from_pem_slice(text.as_bytes()).expect("pem");
        assert_eq!(parsed.as_ref(), &cert[..]);
        for g in [&b"g1"[..], b"g2"] {
            assert!(cert.windows(2).any(|w| w == g));
        }
    }
}
