//! A throw-away PostgreSQL server from Debian's packages: `initdb` into a temporary directory,
//! the postmaster on a loopback port, stopped by its own process id when dropped.
//!
//! PostgreSQL refuses to run as root; when the tests run as root, the server runs as the
//! `postgres` user that Debian's package creates (through `setpriv`), with its data directory
//! handed to that user. Authentication is `trust` for the superuser `pxb` on 127.0.0.1: the
//! server lives only as long as the test and listens nowhere else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The directory with `initdb`, `postgres` and `psql`: `$PXB_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PXB_POSTGRES_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is needed (scripts/install-deps installs Debian's postgresql)")?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no /usr/lib/postgresql/<version>/bin/initdb: install Debian's postgresql (scripts/install-deps)",
    )
}

/// TLS for the server: its certificate and key files (PEM).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// A running PostgreSQL server. Dropping it stops the server (SIGINT to its process id: a fast
/// shutdown) and removes its files.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The user to run as when this process is root (`postgres`), else `None`.
    run_as: Option<String>,
}

impl Postgres {
    /// Initialises a cluster and starts its server on a free loopback port.
    pub fn start() -> anyhow::Result<Postgres> {
        Self::start_with(None)
    }

    /// As [`Postgres::start`], with TLS on (`ssl = on`, the given certificate and key); clients may
    /// still connect without TLS.
    pub fn start_with(tls: Option<ServerTls>) -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        let root = is_root();
        let run_as = root.then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new().prefix("pxb-postgres-").tempdir()?;
        if let Some(user) = &run_as {
            chown_to(dir.path(), user)?;
        }
        let data = dir.path().join("data");
        let out = Self::command(&bin, "initdb", &run_as)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "pxb",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut tls_args = Vec::new();
        if let Some(tls) = tls {
            // The key must be the server user's and unreadable by others.
            let cert = dir.path().join("server.crt");
            let key = dir.path().join("server.key");
            std::fs::copy(&tls.cert_file, &cert)?;
            std::fs::copy(&tls.key_file, &key)?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            if let Some(user) = &run_as {
                chown_to(&cert, user)?;
                chown_to(&key, user)?;
            }
            tls_args = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        // A port may be taken between choosing and binding: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = crate::free_port()?;
            let mut child = Self::command(&bin, "postgres", &run_as)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=64MB",
                ])
                .args(&tls_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting postgres")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read as _;
                        let _ = e.read_to_string(&mut err);
                    }
                    last = format!("postgres exited ({status}): {err}");
                    break;
                }
                let ready = Command::new(bin.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "pxb"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    // Its log is not read from here on: let it go nowhere rather than fill a pipe.
                    drop(child.stderr.take());
                    return Ok(Postgres {
                        dir,
                        bin,
                        port,
                        child: Some(child),
                        run_as,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("postgres did not accept connections on 127.0.0.1:{port} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!("postgres did not start: {last}")
    }

    /// `tool` through `setpriv`: as `run_as` when given, and killed when the thread that started
    /// it ends, so that a test that dies (or forgets its handle in a `static`) leaves no server.
    fn command(bin: &Path, tool: &str, run_as: &Option<String>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg("--pdeathsig=KILL");
        if let Some(user) = run_as {
            c.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--clear-groups",
            ]);
        }
        c.arg("--").arg(bin.join(tool));
        c
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A URL for `database` as the superuser `pxb`, without TLS.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://pxb@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL in `database` with `psql` (stopping at the first error); its output.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "pxb",
                "-d",
                database,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates an empty database `name` (a fresh one per test keeps tests apart).
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("database name {name:?}: letters, digits and '_' only");
        }
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .map(drop)
    }

    /// Stops the server: SIGINT (fast shutdown) to its process id, SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            let _ = Command::new("kill").args(["-INT", &pid]).status();
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

    /// The directory holding the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server runs as another user than this process.
    pub fn runs_as(&self) -> Option<&str> {
        self.run_as.as_deref()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    // `id -u` rather than a libc binding: the harness has no unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn chown_to(path: &Path, user: &str) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()
        .context("chown")?;
    if !status.success() {
        bail!(
            "chown {user} {}: is Debian's postgresql installed (it creates the user)?",
            path.display()
        );
    }
    Ok(())
}
