//! `pxb-azure`: an [`ObjectStore`] over Azure Blob Storage.
//!
//! Three ways to authenticate, chosen per location:
//! - [`AzureAuth::WorkloadIdentity`]: the pod's projected service-account token is exchanged for an
//!   Entra ID token ([`WorkloadIdentity`]); nothing secret is stored (federated mode);
//! - [`AzureAuth::SharedKey`]: the storage account key (classic mode);
//! - [`AzureAuth::Sas`]: a shared access signature.
//!
//! Large objects go up as staged blocks, several in parallel with bounded memory, committed at the
//! end; retries are short and bounded ([`HttpSettings`]); every SDK error is mapped onto a
//! `pxb_core::Error` variant with a message that says what to fix.
//!
//! Besides the store, [`oidc`] validates Entra ID (OpenID Connect) bearer tokens for the pxb-server API.
//!
//! # Quick start: open a container with Workload Identity
//!
//! In a pod with Azure Workload Identity (the webhook injects `AZURE_CLIENT_ID`,
//! `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and `AZURE_AUTHORITY_HOST`), name the account
//! in `AZURE_STORAGE_ACCOUNT` and open a container; [`AzureConfig::from_env`] lists every variable
//! it reads.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use pxb_azure::{AzureBlobStore, AzureConfig};
//! use pxb_core::backup::Repository;
//! use pxb_core::{ObjectPath, ObjectStore, PutOptions};
//!
//! # async fn example() -> pxb_core::Result<()> {
//! let config = AzureConfig::from_env("backups")?.with_prefix("cluster-1");
//! let store = AzureBlobStore::new(config)?;
//! store.create_container().await?;
//!
//! // An `ObjectStore` like any other ...
//! let path = ObjectPath::parse("hello.txt")?;
//! store.put(&path, "hello, pxb".into(), PutOptions::default()).await?;
//! // ... so a backup repository can live in it.
//! let repo = Repository::new(Arc::new(store));
//! println!("{} backups", repo.list().await?.len());
//! # Ok(())
//! # }
//! ```
//!
//! # Quick start: a shared key, a private endpoint, settings in code
//!
//! ```no_run
//! use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig, HttpSettings};
//! use pxb_core::ObjectStore;
//!
//! # async fn example() -> pxb_core::Result<()> {
//! let key = std::env::var("AZURE_STORAGE_KEY").unwrap_or_default();
//! let config = AzureConfig::new("tenanta", "backups", AzureAuth::SharedKey { key })
//!     .with_endpoint("https://tenanta.privatelink.blob.core.windows.net")
//!     .with_ca_file("/etc/pxb/private-ca.pem")
//!     .with_http(HttpSettings {
//!         max_retries: 5,
//!         ..HttpSettings::default()
//!     });
//! let store = AzureBlobStore::new(config)?;
//! let page = store.list("", None, 100).await?;
//! for object in page.objects {
//!     println!("{} ({} bytes)", object.path, object.size);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The same from the environment, with the key chosen explicitly (as with the `pxb` command
//! line's `--auth shared-key`):
//! `AzureConfig::from_env("backups")?.with_auth(AzureAuth::from_env("shared-key")?)`.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZero;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::http::Url;
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders, BlobContainerClientListBlobsOptions,
    BlockBlobClientCommitBlockListOptions, BlockBlobClientCommitBlockListResultHeaders,
    BlockBlobClientUploadOptions, BlockLookupList, ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobClient, BlobContainerClient, BlobContainerClientOptions, BlockBlobClient};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use pxb_core::redact::Redactor;
use pxb_core::store::{GetResult, ListPage, MAX_LIST_PAGE, PutReader, clamp_range, validate_metadata};
use pxb_core::{
    Error, Metadata, ObjectMeta, ObjectPath, ObjectStore, PutMode, PutOptions, PutResult, Result, TokenSource,
};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

mod auth;
mod config;
mod env;
mod error;
mod http;
pub mod oidc;

pub use auth::{
    DEFAULT_AUTHORITY_HOST, STORAGE_SCOPE, WorkloadIdentity, WorkloadIdentityOptions, account_sas,
};
pub use config::{
    AzureAuth, AzureConfig, ENV_ACCOUNT, ENV_CA_FILE, ENV_ENDPOINT, ENV_SAS_TOKEN, ENV_STORAGE_KEY,
    account_from_endpoint,
};
pub use http::HttpSettings;

use error::Op;

/// An object store in an Azure Blob container.
pub struct AzureBlobStore {
    container: BlobContainerClient,
    prefix: String,
    token: Option<Arc<dyn TokenSource>>,
    ctx: error::Context,
    part_size: usize,
    concurrency: usize,
    /// Removes the account key or SAS (and any token-shaped text) from every error.
    redactor: Redactor,
}

impl AzureBlobStore {
    /// Builds the store. Fails at once on bad settings: an unreadable CA or token file, missing
    /// Workload Identity settings, a bearer credential over plain http, a malformed key.
    ///
    /// No error of the store, from here or from any call, carries its credential: a SAS is part
    /// of every request URL the SDK names in its errors, so each error is redacted.
    pub fn new(config: AzureConfig) -> Result<Self> {
        let redactor = Redactor::new(config.auth.secrets());
        Self::build(config, redactor.clone()).map_err(|e| e.redacted(&redactor))
    }

    fn build(config: AzureConfig, redactor: Redactor) -> Result<Self> {
        let endpoint = config.endpoint();
        let ca = config.ca_file.as_deref().map(http::read_ca).transpose()?;
        let mut client_options = config.http.client_options(ca.as_deref())?;
        let mut url = Url::parse(&format!("{endpoint}/{}", config.container))
            .map_err(|e| Error::invalid(format!("storage endpoint {endpoint:?} is not a valid URL: {e}")))?;
        let (token, identity, auth_hint): (Option<Arc<dyn TokenSource>>, String, &'static str) =
            match &config.auth {
                AzureAuth::WorkloadIdentity(opts) => {
                    let wi = WorkloadIdentity::new(opts.clone(), &config.http, ca.as_deref())?;
                    let who = wi.describe();
                    (
                        Some(Arc::new(wi)),
                        who,
                        "check the identity's federated credential (issuer, subject, audience)",
                    )
                }
                AzureAuth::Token(source) => (
                    Some(source.clone()),
                    source.describe(),
                    "check the token's audience and expiry",
                ),
                AzureAuth::SharedKey { key } => {
                    let policy = auth::SharedKeyPolicy::new(&config.account, key)?;
                    client_options.per_try_policies.push(Arc::new(policy));
                    (
                        None,
                        format!("the account key of {:?}", config.account),
                        "the account key is wrong or was rotated (AZURE_STORAGE_KEY)",
                    )
                }
                AzureAuth::Sas { token } => {
                    url.set_query(Some(token.trim_start_matches('?')));
                    (
                        None,
                        "the SAS token".into(),
                        "the SAS token is wrong, expired or lacks permissions (AZURE_STORAGE_SAS_TOKEN)",
                    )
                }
            };
        if token.is_some() && url.scheme() != "https" {
            return Err(Error::invalid(format!(
                "refusing to send a bearer token over plain http to {endpoint}: {} needs an https endpoint",
                config.auth.name()
            )));
        }
        let credential = token.clone().map(|t| {
            Arc::new(auth::SourceCredential(t)) as Arc<dyn azure_core::credentials::TokenCredential>
        });
        let mut options = BlobContainerClientOptions {
            client_options,
            ..Default::default()
        };
        if let Some(v) = &config.api_version {
            options.version = v.clone();
        }
        let container = BlobContainerClient::new(url, credential, Some(options))
            .map_err(|e| Error::invalid(format!("storage endpoint {endpoint}: {}", error::chain(&e))))?;
        Ok(Self {
            container,
            prefix: config.prefix.trim_matches('/').to_owned(),
            token,
            ctx: error::Context {
                account: config.account.clone(),
                container: config.container.clone(),
                endpoint,
                identity,
                auth_hint,
            },
            part_size: config.part_size.max(1 << 20),
            concurrency: config.concurrency.max(1),
            redactor,
        })
    }

    /// The token source in use, for an explicit authentication check (none for key and SAS).
    pub fn token_source(&self) -> Option<Arc<dyn TokenSource>> {
        self.token.clone()
    }

    /// Creates the container; succeeds if it exists already.
    pub async fn create_container(&self) -> Result<()> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(self.err(
                Op {
                    verb: "create",
                    target: "",
                    create_only: false,
                },
                e,
            )),
        }
    }

    fn full(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_owned()
        } else {
            format!("{}/{path}", self.prefix)
        }
    }

    fn blob(&self, path: &ObjectPath) -> BlobClient {
        self.container.blob_client(&self.full(path.as_str()))
    }

    fn block(&self, path: &ObjectPath) -> BlockBlobClient {
        self.blob(path).block_blob_client()
    }

    fn err(&self, op: Op<'_>, e: azure_core::Error) -> Error {
        error::map(&self.ctx, op, e).redacted(&self.redactor)
    }

    async fn put_single(&self, path: &ObjectPath, data: Bytes, opts: &PutOptions) -> Result<PutResult> {
        let size = data.len() as u64;
        let mut options = BlockBlobClientUploadOptions {
            metadata: Some(to_map(&opts.metadata)),
            parallel: NonZero::new(1),
            partition_size: NonZero::new(size.max(1)),
            ..Default::default()
        };
        if opts.mode == PutMode::Create {
            options = options.if_not_exists();
        }
        let op = Op {
            verb: "write",
            target: path.as_str(),
            create_only: opts.mode == PutMode::Create,
        };
        let r = self
            .block(path)
            .upload(data.into(), Some(options))
            .await
            .map_err(|e| self.err(op, e))?;
        Ok(PutResult {
            size,
            e_tag: r.etag.map(|e| e.to_string()),
        })
    }
}

impl fmt::Debug for AzureBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobStore")
            .field("ctx", &self.ctx)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for AzureBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "azblob://{}", self.ctx.container)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        write!(f, " at {}", self.ctx.endpoint)
    }
}

fn to_map(m: &Metadata) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn from_map(m: HashMap<String, String>) -> Metadata {
    m.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect()
}

fn to_system(t: Option<azure_core::time::OffsetDateTime>) -> SystemTime {
    t.map(SystemTime::from).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Reads up to `size` bytes; fewer only at the end of the input.
async fn read_part(reader: &mut PutReader, size: usize, path: &ObjectPath) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = reader
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading the data for {path}"), e))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

#[async_trait]
impl ObjectStore for AzureBlobStore {
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        validate_metadata(&opts.metadata)?;
        if data.len() <= self.part_size {
            return self.put_single(path, data, &opts).await;
        }
        self.put_stream(path, Box::new(std::io::Cursor::new(data)), opts)
            .await
    }

    async fn put_stream(
        &self,
        path: &ObjectPath,
        mut reader: PutReader,
        opts: PutOptions,
    ) -> Result<PutResult> {
        validate_metadata(&opts.metadata)?;
        let create_only = opts.mode == PutMode::Create;
        let op = Op {
            verb: "write",
            target: path.as_str(),
            create_only,
        };
        let first = read_part(&mut reader, self.part_size, path).await?;
        if first.len() < self.part_size {
            return self.put_single(path, first, &opts).await;
        }
        if create_only {
            // Fail before uploading gigabytes; the commit's condition still decides races.
            match self.head(path).await {
                Ok(_) => return Err(Error::already_exists(path)),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Block ids are unique per upload, so concurrent uploads of one name never mix blocks.
        let upload_id: [u8; 16] = rand::random();
        let block = Arc::new(self.block(path));
        let mut ids: Vec<Vec<u8>> = Vec::new();
        let mut inflight: JoinSet<azure_core::Result<()>> = JoinSet::new();
        let mut size = 0u64;
        let mut part = first;
        while !part.is_empty() {
            let mut id = upload_id.to_vec();
            id.extend_from_slice(&u32::try_from(ids.len()).unwrap_or(u32::MAX).to_be_bytes());
            ids.push(id.clone());
            size += part.len() as u64;
            while inflight.len() >= self.concurrency {
                if let Some(done) = inflight.join_next().await {
                    done.map_err(|e| Error::other("upload task failed").with_source(e))?
                        .map_err(|e| self.err(op, e))?;
                }
            }
            let block = block.clone();
            let len = part.len() as u64;
            let body = part;
            inflight.spawn(async move { block.stage_block(&id, len, body.into(), None).await.map(|_| ()) });
            part = read_part(&mut reader, self.part_size, path).await?;
        }
        while let Some(done) = inflight.join_next().await {
            done.map_err(|e| Error::other("upload task failed").with_source(e))?
                .map_err(|e| self.err(op, e))?;
        }
        let list = BlockLookupList {
            latest: Some(ids),
            ..Default::default()
        };
        let options = BlockBlobClientCommitBlockListOptions {
            if_none_match: create_only.then(|| "*".into()),
            metadata: Some(to_map(&opts.metadata)),
            ..Default::default()
        };
        let content = list
            .try_into()
            .map_err(|e| Error::other("encoding the block list").with_source(e))?;
        let r = block
            .commit_block_list(content, Some(options))
            .await
            .map_err(|e| self.err(op, e))?;
        let e_tag = r.etag().ok().flatten().map(|e| e.to_string());
        Ok(PutResult { size, e_tag })
    }

    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        let op = Op {
            verb: "read",
            target: path.as_str(),
            create_only: false,
        };
        let options = BlobClientDownloadOptions {
            parallel: NonZero::new(self.concurrency),
            partition_size: NonZero::new(self.part_size),
            ..Default::default()
        };
        let r = self
            .blob(path)
            .download(Some(options))
            .await
            .map_err(|e| self.err(op, e))?;
        let total = r
            .headers
            .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
                "content-range",
            ))
            .and_then(|v| v.rsplit('/').next()?.parse::<u64>().ok())
            .or(r.properties.content_length)
            .unwrap_or(0);
        let meta = ObjectMeta {
            path: path.clone(),
            size: total,
            last_modified: to_system(r.properties.last_modified),
            e_tag: r.properties.etag.map(|e| e.to_string()),
            metadata: from_map(r.properties.metadata),
        };
        let target = path.to_string();
        let redactor = self.redactor.clone();
        let ctx_err = move |e: azure_core::Error| {
            error::transport(&format!("reading {target}"), &e)
                .context("the download was interrupted")
                .redacted(&redactor)
        };
        let body = r.body.map(move |c| c.map_err(&ctx_err)).boxed();
        Ok(GetResult { meta, body })
    }

    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes> {
        if range.start >= range.end {
            return Err(clamp_range(path, &range, u64::MAX)
                .err()
                .unwrap_or_else(|| Error::invalid("empty range")));
        }
        let op = Op {
            verb: "read",
            target: path.as_str(),
            create_only: false,
        };
        let options = BlobClientDownloadOptions {
            range: Some(range.clone().into()),
            parallel: NonZero::new(self.concurrency),
            partition_size: NonZero::new(self.part_size),
            ..Default::default()
        };
        let r = match self.blob(path).download(Some(options)).await {
            Ok(r) => r,
            Err(e) if e.http_status().is_none() => {
                // Some servers answer a range on an empty blob with an unparsable Content-Range:
                // decide from the object's size whether the range was past its end.
                let size = self.head(path).await?.size;
                clamp_range(path, &range, size)?;
                return Err(self.err(op, e));
            }
            Err(e) => return Err(self.err(op, e)),
        };
        let data = r.body.collect().await.map_err(|e| self.err(op, e))?;
        if data.is_empty() {
            // The SDK retries a 416 at offset 0 without a range: the object is empty.
            return Err(clamp_range(path, &range, 0)
                .err()
                .unwrap_or_else(|| Error::invalid("range past the end")));
        }
        Ok(data)
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let op = Op {
            verb: "read properties of",
            target: path.as_str(),
            create_only: false,
        };
        let r = self
            .blob(path)
            .get_properties(None)
            .await
            .map_err(|e| self.err(op, e))?;
        let bad = |e: azure_core::Error| {
            Error::corrupt(format!("{path}: unreadable properties: {e}")).redacted(&self.redactor)
        };
        Ok(ObjectMeta {
            path: path.clone(),
            size: r.content_length().map_err(bad)?.unwrap_or(0),
            last_modified: to_system(r.last_modified().map_err(bad)?),
            e_tag: r.etag().map_err(bad)?.map(|e| e.to_string()),
            metadata: from_map(r.metadata().map_err(bad)?),
        })
    }

    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        let op = Op {
            verb: "list",
            target: prefix,
            create_only: false,
        };
        let max = max_results.clamp(1, MAX_LIST_PAGE);
        let full_prefix = self.full(prefix);
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!full_prefix.is_empty()).then(|| full_prefix.clone()),
            maxresults: i32::try_from(max).ok(),
            marker: token.map(str::to_owned),
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let mut pages = self
            .container
            .list_blobs(Some(options))
            .map_err(|e| self.err(op, e))?
            .into_pages();
        let Some(page) = pages.try_next().await.map_err(|e| self.err(op, e))? else {
            return Ok(ListPage::default());
        };
        let page = page.into_model().map_err(|e| {
            Error::corrupt(format!("unreadable listing of {prefix:?}: {e}")).redacted(&self.redactor)
        })?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut objects = Vec::with_capacity(page.blob_items.len());
        for item in page.blob_items {
            let Some(name) = item.name else { continue };
            // Names outside pxb's rules (written by other tools) are not objects of this location.
            let Some(Ok(path)) = name.strip_prefix(&strip).map(ObjectPath::parse) else {
                tracing::debug!(%name, "skipping a blob whose name is not a valid object name");
                continue;
            };
            let props = item.properties.unwrap_or_default();
            objects.push(ObjectMeta {
                path,
                size: props.content_length.unwrap_or(0),
                last_modified: to_system(props.last_modified),
                e_tag: props.etag.map(|e| e.to_string()),
                metadata: from_map(item.metadata.and_then(|m| m.values).unwrap_or_default()),
            });
        }
        Ok(ListPage {
            objects,
            next: page.next_marker.filter(|m| !m.is_empty()),
        })
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        let op = Op {
            verb: "delete",
            target: path.as_str(),
            create_only: false,
        };
        match self
            .container
            .blob_client(&self.full(path.as_str()))
            .delete(None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(()),
            Err(e) => Err(self.err(op, e)),
        }
    }
}
