//! `pxb-server`: the central control plane. Reads `--config FILE` (YAML, each key overridable by
//! a `PXB_…` environment variable), serves the REST API, and shuts down gracefully on SIGTERM or
//! Ctrl-C. `--print-default-config` prints the commented defaults. `pxb-server catalog migrate`
//! copies a catalog to another store (SQLite to PostgreSQL) and verifies the copy.
//!
//! Config → build → spawn → drain; everything it wires is `pxb_daemon::server::ServerBuilder`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};

/// The pxb control plane.
#[derive(Parser)]
#[command(name = "pxb-server", version)]
struct Args {
    /// Configuration file (YAML). Without it, the defaults and PXB_… variables apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the commented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// DEVELOPMENT ONLY: accept the static bearer token in this file as a provider admin
    /// (`PXB_DEV_TOKEN` sets the token itself). Not taken on the command line, where every local
    /// user could read it. Accepted only when the API listens on a loopback address.
    #[arg(long, value_name = "FILE")]
    dev_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Copies every record of one catalog into another and verifies the copy, record by record.
    /// Stop the server first. A copy cut off halfway is finished by running it again; a
    /// destination record that differs from the source's is never overwritten.
    Migrate {
        /// The source: `sqlite:PATH` or `postgres://…`.
        #[arg(long)]
        from: String,
        /// The destination: `postgres://user@host:5432/db?sslmode=require` or `sqlite:PATH`.
        #[arg(long)]
        to: String,
        /// A file with the PostgreSQL password (for a `postgres://` source or destination).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// A PEM file with the CA certificates of the PostgreSQL server's TLS certificate.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

/// Opens the catalog `spec` names; a source SQLite file must exist.
async fn open_store(
    spec: &str,
    source: bool,
    password_file: &Option<PathBuf>,
    ca_file: &Option<PathBuf>,
) -> anyhow::Result<std::sync::Arc<dyn pxb_core::catalog::CatalogStore>> {
    let mut config = pxb_daemon::server::config::CatalogConfig::default();
    if let Some(path) = spec.strip_prefix("sqlite:") {
        if source && !std::path::Path::new(path).is_file() {
            anyhow::bail!("the source catalog {path} does not exist");
        }
        config.path = path.to_owned();
    } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        config.url = spec.to_owned();
        config.password_file = password_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        config.ca_file = ca_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
    } else {
        anyhow::bail!("{spec:?}: give sqlite:PATH or postgres://user@host:5432/database");
    }
    Ok(pxb_daemon::server::open_catalog(&config).await?)
}

async fn migrate(
    from: &str,
    to: &str,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let source = open_store(from, true, &password_file, &ca_file).await?;
    let dest = open_store(to, false, &password_file, &ca_file).await?;
    // The same database again, as PostgreSQL, for its statistics after the copy.
    let pg_dest = if to.starts_with("postgres") {
        let mut options = pxb_daemon::server::postgres::PostgresOptions::new(to);
        if let Some(p) = &password_file {
            options = options.with_password_file(p);
        }
        if let Some(c) = &ca_file {
            options = options.with_ca_file(c);
        }
        Some(pxb_daemon::server::postgres::PostgresCatalog::connect(&options).await?)
    } else {
        None
    };
    eprintln!("copying the catalog {source:?} to {dest:?}");
    let mut last = std::time::Instant::now();
    let report =
        pxb_daemon::server::catalog_copy::copy(source.as_ref(), dest.as_ref(), &mut |kind, done, total| {
            if done == total || last.elapsed().as_secs() >= 2 {
                last = std::time::Instant::now();
                eprintln!("  {kind}: {done} of {total}");
            }
        })
        .await?;
    if let Some(pg) = &pg_dest {
        pg.analyze().await?;
    }
    let copied: u64 = report.copied.values().sum();
    let present: u64 = report.present.values().sum();
    println!(
        "copied {copied} records ({present} were there already); verified {} records: the          destination holds exactly the source's",
        report.verified
    );
    Ok(())
}

/// The development token: the content of `--dev-token-file`, else `PXB_DEV_TOKEN`.
fn dev_token(args: &Args) -> anyhow::Result<Option<String>> {
    Ok(match &args.dev_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading --dev-token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("PXB_DEV_TOKEN").ok(),
    })
}

/// SIGTERM or Ctrl-C.
async fn stop_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// One of several replicas on the shared catalog: standby until it holds the lease, then
/// active; an error (exit) when it loses the lease.
async fn run_replica(config: ServerConfig, builder: impl Fn() -> ServerBuilder) -> anyhow::Result<()> {
    use pxb_daemon::server::replicas;
    let store = pxb_daemon::server::open_catalog(&config.catalog).await?;
    let listener = std::net::TcpListener::bind(&config.api.listen)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.api.listen))?;
    let addr = listener.local_addr()?;
    let r = &config.replicas;
    let name = if r.name.is_empty() {
        format!("pxb-server-{:016x}", rand::random::<u64>())
    } else {
        r.name.clone()
    };
    let advertise = if r.advertise.is_empty() {
        format!("http://{addr}")
    } else {
        r.advertise.clone()
    };
    println!("READY http://{addr}");
    let options = replicas::ReplicaOptions {
        me: name,
        advertise,
        lease: std::time::Duration::from_secs(r.lease_secs),
        max_body_bytes: config.api.max_body_bytes,
    };
    replicas::run(
        store,
        listener,
        options,
        |catalog| builder().catalog(catalog),
        stop_signal(),
    )
    .await?;
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Catalog(CatalogCommand::Migrate {
        from,
        to,
        password_file,
        ca_file,
    })) = args.command
    {
        return migrate(&from, &to, password_file, ca_file).await;
    }
    // Config.
    let config = ServerConfig::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    let replicas = config.replicas.clone();
    let replica_config = config.clone();
    let token = dev_token(&args)?;
    let key = std::env::var("PXB_SECRETS_KEY").ok();
    let builder = move || {
        let mut builder = ServerBuilder::new(config.clone());
        if let Some(token) = &token {
            builder = builder.dev_token(token.clone());
        }
        if let Some(key) = &key {
            builder = builder.secrets_key(key.clone());
        }
        builder
    };
    if replicas.enabled {
        return run_replica(replica_config, builder).await;
    }
    // Build, spawn.
    let daemon = builder().build().await?.spawn()?;
    println!("READY http://{}", daemon.addr);
    // Drain on SIGTERM or Ctrl-C.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    daemon.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_YAML}");
        return ExitCode::SUCCESS;
    }
    pxb_daemon::run_main("pxb-server", run(args))
}
