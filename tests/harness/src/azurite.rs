//! Azurite, the Azure Storage emulator (npm package `azurite`), started over HTTPS with
//! `--oauth basic` so bearer tokens (Workload Identity) are accepted.
//!
//! The package is installed with npm into `$PXB_AZURITE_DIR` (default `<workspace>/.cache/azurite`)
//! on first use; `.ci/run` installs it ahead of the tests.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::tls::TestCa;

/// Azurite's well-known development account (public, documented; not a secret).
pub const ACCOUNT: &str = "devstoreaccount1";
/// The development account's well-known key.
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The version range installed when Azurite is missing.
pub const NPM_PACKAGE: &str = "azurite@3";

/// Where the Azurite package is (or will be) installed.
pub fn install_dir() -> PathBuf {
    std::env::var_os("PXB_AZURITE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join(".cache").join("azurite"))
}

fn blob_main() -> PathBuf {
    install_dir().join("node_modules/azurite/dist/src/blob/main.js")
}

/// Whether `PXB_AZURITE_IN_MEMORY=1` asks for `--inMemoryPersistence`: Azurite keeps its
/// metadata in memory only instead of rewriting a JSON database on disk every few seconds. For
/// benchmarks that write 100,000 objects (the rewrite makes writing them take most of an hour);
/// the data does not survive [`Azurite::restart`]. Listing and serving are the same code either way.
/// In this mode Azurite's own extent GC runs once at start and then once a day instead of every
/// ten minutes: at 50,000 blobs one of its passes held the emulator's only thread for more than
/// ten minutes (a housekeeping of the emulator's; Azure's service has nothing like it).
pub fn in_memory() -> bool {
    std::env::var("PXB_AZURITE_IN_MEMORY").is_ok_and(|v| v == "1")
}

/// Installs Azurite with npm unless it is there already. Safe to call from parallel tests and
/// processes (an exclusive file lock serialises installs).
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    let main = blob_main();
    if main.exists() {
        return Ok(main);
    }
    let dir = install_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".install.lock"))?;
    lock.lock()?;
    if !main.exists() {
        let out = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .arg(NPM_PACKAGE)
            .output()
            .context("running npm (is Node.js installed?)")?;
        if !out.status.success() {
            bail!(
                "npm install {NPM_PACKAGE} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    lock.unlock()?;
    if !main.exists() {
        bail!("npm installed {NPM_PACKAGE} but {} is missing", main.display());
    }
    Ok(main)
}

/// A running Azurite blob service; stopped (by its process id) when dropped.
#[derive(Debug)]
pub struct Azurite {
    child: Option<Child>,
    port: u16,
    main: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    _data: tempfile::TempDir,
}

impl Azurite {
    /// Starts the blob service over HTTPS with the CA's server certificate and `--oauth basic`.
    pub fn start_https(ca: &TestCa) -> anyhow::Result<Self> {
        let main = ensure_installed()?;
        let data = tempfile::tempdir()?;
        let port = crate::free_port()?;
        let mut me = Self {
            child: None,
            port,
            main,
            cert: ca.server_cert_file(),
            key: ca.server_key_file(),
            _data: data,
        };
        me.restart()?;
        Ok(me)
    }

    /// Stops the emulator (by its process id): SIGTERM so it saves its data for
    /// [`Azurite::restart`], SIGKILL if it has not exited after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused emulator handles SIGTERM only once it runs again.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the emulator (SIGSTOP to its process id): connections are accepted by the kernel
    /// and never answered, as with a storage endpoint that hangs.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused emulator run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("Azurite is stopped")?;
        let status = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {sig} {} failed", child.id());
        Ok(())
    }

    /// Starts the emulator again on the same port with the same data (after [`Azurite::stop`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let data = self._data.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("azurite.log"))?;
        // A wrapper that loads Azurite and exits when this process is gone, so a killed test run
        // leaves no emulator behind (the argument vector keeps the shape Azurite parses).
        let wrapper = data.join("run-azurite.js");
        std::fs::write(
            &wrapper,
            "const parent = Number(process.env.PXB_PARENT_PID);\n\
             setInterval(() => { try { process.kill(parent, 0); } catch (e) { process.exit(0); } }, 1000).unref();\n\
             if (process.env.PXB_AZURITE_GC_MS) {\n\
               const main = process.env.PXB_AZURITE_MAIN;\n\
               require(main.replace(/main\\.js$/, 'utils/constants.js')).DEFAULT_GC_INTERVAL_MS = Number(process.env.PXB_AZURITE_GC_MS);\n\
             }\n\
             require(process.env.PXB_AZURITE_MAIN);\n",
        )?;
        let child = Command::new("node")
            .arg(&wrapper)
            .env("PXB_PARENT_PID", std::process::id().to_string())
            .env("PXB_AZURITE_MAIN", &self.main)
            .envs(in_memory().then_some(("PXB_AZURITE_GC_MS", "86400000")))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &self.port.to_string()])
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args([
                "--oauth",
                "basic",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--loose",
            ])
            .args(if in_memory() {
                vec!["--inMemoryPersistence".into()]
            } else {
                vec!["--location".into(), data.as_os_str().to_owned()]
            })
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting Azurite with node")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            let Some(child) = self.child.as_mut() else {
                bail!("Azurite is stopped");
            };
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self._data.path().join("azurite.log")).unwrap_or_default();
                bail!("Azurite exited with {status} before listening: {log}");
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "Azurite did not listen on 127.0.0.1:{} within {timeout:?}",
            self.port
        )
    }

    /// The blob endpoint, path-style: `https://127.0.0.1:<port>/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}
