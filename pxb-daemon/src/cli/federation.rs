//! `pxb clusters federation`: the `az` commands that let one cluster's agent reach one Azure
//! location with Workload Identity: a user-assigned managed identity, its federated credential
//! for the cluster's service-account issuer and the agent's service account, and the blob data
//! role on the location's container only.
//!
//! Everything printed comes from the server (cluster name, issuer, account, container, client
//! ids) or from flags, so every value is shell-quoted ([`shlex`]), values that would change the
//! meaning of a line (control and invisible characters, a leading `-`) are refused, and the
//! storage names that go into the role's scope must be Azure's storage names.

use pxb_core::api::crd::AGENT_NAMESPACE;
use pxb_core::api::rest::LocationView;
use pxb_core::catalog::records::{ClusterRecord, Mode};
use serde::Serialize;

/// The agent's service account in [`AGENT_NAMESPACE`] (deploy/agent and the Helm chart create it
/// under this fixed name).
pub const AGENT_SERVICE_ACCOUNT: &str = "pxb-agent";
/// The audience Entra ID requires in the service-account tokens it exchanges.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// The role the agent needs on the location's container.
pub const BLOB_ROLE: &str = "Storage Blob Data Contributor";
/// The managed identity's name when `--identity` is not given.
pub const DEFAULT_IDENTITY: &str = "pxb-agent";
/// What stands for the identity's resource group when `--resource-group` is not given.
pub const RESOURCE_GROUP_PLACEHOLDER: &str = "<resource-group>";
/// The shoot annotation that makes Gardener publish a managed service-account issuer.
const MANAGED_ISSUER_ANNOTATION: &str = "authentication.gardener.cloud/issuer=managed";
/// Longest line of the script before flags continue on the next one.
const LINE: usize = 100;

/// The subject of the agent's service-account tokens:
/// `system:serviceaccount:pxb-system:pxb-agent`.
pub fn agent_subject() -> String {
    format!("system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SERVICE_ACCOUNT}")
}

/// What only the caller knows: where the identity lives, and the storage account's subscription
/// and resource group (without both, the script looks the account up by name).
#[derive(Debug, Clone, Default)]
pub struct FederationOptions {
    /// The managed identity's resource group ([`RESOURCE_GROUP_PLACEHOLDER`] when unset).
    pub resource_group: Option<String>,
    /// The managed identity's name ([`DEFAULT_IDENTITY`] when unset).
    pub identity: Option<String>,
    /// The subscription: every command gets `--subscription`, and with
    /// `storage_resource_group` the role's scope is written out.
    pub subscription: Option<String>,
    /// The storage account's resource group.
    pub storage_resource_group: Option<String>,
}

/// The federation of one cluster with one location, and the commands that set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Federation {
    /// The cluster's name.
    pub cluster: String,
    /// The location's name.
    pub location: String,
    /// The issuer the federated credential trusts: the cluster's service-account issuer.
    pub issuer: String,
    /// The subject: the agent's service account.
    pub subject: String,
    /// The audience.
    pub audience: String,
    /// The federated credential's name: the cluster's name in Azure's allowed characters.
    pub credential_name: String,
    /// The managed identity's resource group (or the placeholder).
    pub resource_group: String,
    /// The managed identity's name.
    pub identity: String,
    /// The client id the location already names for this cluster (`clusterClientIds[cluster]`,
    /// else `clientId`): the identity exists and is not created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The role assigned.
    pub role: String,
    /// The role's scope, when subscription and storage resource group were given (else the
    /// script reads the account's id with `az storage account show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The commands, one POSIX shell script (for sh, bash or zsh).
    pub script: String,
}

/// A piece of a shell word: literal text (quoted when printed) or a variable the script set.
enum Part {
    Lit(String),
    Var(&'static str),
}

/// One shell word, made of parts written next to each other.
struct Word(Vec<Part>);

impl Word {
    fn lit(s: impl Into<String>) -> Self {
        Word(vec![Part::Lit(s.into())])
    }

    fn var(name: &'static str) -> Self {
        Word(vec![Part::Var(name)])
    }

    fn is_flag(&self) -> bool {
        matches!(self.0.as_slice(), [Part::Lit(s)] if s.starts_with("--"))
    }

    fn render(&self) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => {
                    out.push_str(&shlex::try_quote(s).map_err(|e| format!("cannot quote {s:?}: {e}"))?)
                }
                Part::Var(v) => out.push_str(&format!("\"${v}\"")),
            }
        }
        Ok(out)
    }
}

/// One line of the script: a comment, or a command whose output may be kept in a variable.
enum Line {
    Comment(String),
    Run {
        into: Option<&'static str>,
        words: Vec<Word>,
    },
}

/// `az` and `args`, with `--subscription` when one was given.
fn az(args: &[&str], subscription: Option<&str>) -> Vec<Word> {
    let mut words: Vec<Word> = std::iter::once("az")
        .chain(args.iter().copied())
        .map(Word::lit)
        .collect();
    if let Some(s) = subscription {
        words.push(Word::lit("--subscription"));
        words.push(Word::lit(s));
    }
    words
}

/// The command and its flags, flags continuing on further lines (` \`) past [`LINE`].
fn render(words: &[Word], prefix: &str) -> Result<String, String> {
    // Units: the command and its subcommands, then each flag with its value.
    let mut units: Vec<String> = Vec::new();
    let mut i = 0;
    let mut head = Vec::new();
    while i < words.len() && !words[i].is_flag() {
        head.push(words[i].render()?);
        i += 1;
    }
    units.push(head.join(" "));
    while i < words.len() {
        let mut unit = words[i].render()?;
        i += 1;
        if i < words.len() && !words[i].is_flag() {
            unit.push(' ');
            unit.push_str(&words[i].render()?);
            i += 1;
        }
        units.push(unit);
    }
    let mut out = String::from(prefix);
    let mut width = prefix.len();
    for (n, unit) in units.iter().enumerate() {
        if n > 0 {
            if width + 1 + unit.len() > LINE {
                out.push_str(" \\\n  ");
                width = 2;
            } else {
                out.push(' ');
                width += 1;
            }
        }
        out.push_str(unit);
        width += unit.len();
    }
    Ok(out)
}

fn script(lines: &[Line]) -> Result<String, String> {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Comment(c) => {
                out.push_str("# ");
                out.push_str(c);
            }
            Line::Run { into: None, words } => out.push_str(&render(words, "")?),
            Line::Run { into: Some(v), words } => {
                out.push_str(&render(words, &format!("{v}=$("))?);
                out.push(')');
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Refuses a value that is empty, starts with `-` (it would read as a flag), or holds control
/// or invisible characters (a line break, a terminal escape, a bidirectional override): those
/// could make the printed script differ from what it looks like.
fn plain<'a>(what: &str, s: &'a str) -> Result<&'a str, String> {
    let sneaky = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.starts_with('-') {
        return Err(format!("{what} {s:?} starts with '-'"));
    }
    if s.chars().any(sneaky) {
        return Err(format!(
            "{what} {s:?} holds control or invisible characters; no commands are printed with it"
        ));
    }
    Ok(s)
}

/// Azure storage account names: 3 to 24 lower-case letters and digits.
fn is_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Azure blob container names: 3 to 63 lower-case letters, digits and single hyphens, starting
/// and ending with a letter or digit.
fn is_container_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !s.contains("--")
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The client id the location names for `cluster`: its entry in `clusterClientIds`, else
/// `clientId`.
fn client_id_for<'a>(location: &'a LocationView, cluster: &str) -> Option<&'a str> {
    location
        .cluster_client_ids
        .get(cluster)
        .or(location.client_id.as_ref())
        .map(String::as_str)
        .filter(|c| !c.is_empty())
}

/// The federation of `cluster` with `location` and the `az` commands that set it up; an error
/// says why there is none (no issuer yet, not an Azure or not a federated location, a value
/// that cannot be printed safely).
pub fn federation(
    cluster: &ClusterRecord,
    location: &LocationView,
    opts: &FederationOptions,
) -> Result<Federation, String> {
    let name = plain("the cluster name", &cluster.name)?;
    if cluster.retired_at.is_some() {
        return Err(format!("cluster {name} is retired: its shoot was deleted"));
    }
    let loc = plain("the location name", &location.name)?;
    if location.provider != "azure" {
        return Err(format!(
            "location {loc} is a {:?} location; Workload Identity is for azure locations",
            location.provider
        ));
    }
    if location.mode == Mode::Classic {
        return Err(format!(
            "location {loc} is in classic mode: agents use its stored credential, no federated credential"
        ));
    }
    let Some(issuer) = cluster.service_account_issuer.as_deref() else {
        let how = match cluster.namespace.as_deref() {
            Some(ns) => {
                let annotate = [
                    "kubectl",
                    "annotate",
                    "shoot",
                    name,
                    "-n",
                    ns,
                    MANAGED_ISSUER_ANNOTATION,
                ]
                .iter()
                .map(|w| shlex::try_quote(w).map(|q| q.into_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?
                .join(" ");
                format!(
                    "annotate its shoot with {MANAGED_ISSUER_ANNOTATION} (in the garden: {annotate}), \
                     and run this again once Gardener has reconciled the shoot and discovery has seen it"
                )
            }
            None => format!(
                "it is not a Gardener shoot ({} cluster); pxb knows no issuer for it",
                cluster.source
            ),
        };
        return Err(format!(
            "cluster {name} publishes no service-account issuer: {how}"
        ));
    };
    let issuer = plain("the cluster's issuer", issuer)?;
    match url::Url::parse(issuer) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
        _ => {
            return Err(format!(
                "the issuer of cluster {name}, {issuer:?}, is not an https URL (Entra ID trusts only those)"
            ));
        }
    }
    let account = location.account.as_deref().unwrap_or_default();
    if !is_account_name(account) {
        return Err(format!(
            "location {loc} has storage account {account:?}, not an Azure storage account name"
        ));
    }
    let container = location.container.as_str();
    if !is_container_name(container) {
        return Err(format!(
            "location {loc} has container {container:?}, not an Azure blob container name"
        ));
    }
    let client_id = match client_id_for(location, &cluster.name) {
        Some(c) => Some(plain("the location's client id", c)?),
        None => None,
    };
    let rg = match &opts.resource_group {
        Some(rg) => plain("--resource-group", rg)?,
        None => RESOURCE_GROUP_PLACEHOLDER,
    };
    let identity = match &opts.identity {
        Some(i) => plain("--identity", i)?,
        None => DEFAULT_IDENTITY,
    };
    let sub = match &opts.subscription {
        Some(s) if s.contains('/') => return Err(format!("--subscription {s:?} holds '/'")),
        Some(s) => Some(plain("--subscription", s)?),
        None => None,
    };
    let storage_rg = match &opts.storage_resource_group {
        Some(g) if g.contains('/') => {
            return Err(format!("--storage-resource-group {g:?} holds '/'"));
        }
        Some(g) => Some(plain("--storage-resource-group", g)?),
        None => None,
    };
    let container_path = format!("/blobServices/default/containers/{container}");
    let scope = match (sub, storage_rg) {
        (Some(s), Some(g)) => Some(format!(
            "/subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Storage/storageAccounts/{account}{container_path}"
        )),
        _ => None,
    };
    let credential_name = crate::names::federated_credential_name(name);
    let subject = agent_subject();
    let show = |query: &str| {
        az(
            &[
                "identity",
                "show",
                "--resource-group",
                rg,
                "--name",
                identity,
                "--query",
                query,
                "--output",
                "tsv",
            ],
            sub,
        )
    };

    let mut lines = vec![Line::Comment(format!(
        "Cluster {name}, location {loc}: storage account {account}, container {container}."
    ))];
    if rg == RESOURCE_GROUP_PLACEHOLDER {
        lines.push(Line::Comment(format!(
            "Replace {RESOURCE_GROUP_PLACEHOLDER} (or pass --resource-group)."
        )));
    }
    match client_id {
        None => {
            lines.push(Line::Comment("1. A managed identity for the agent.".into()));
            lines.push(Line::Run {
                into: None,
                words: az(
                    &["identity", "create", "--resource-group", rg, "--name", identity],
                    sub,
                ),
            });
        }
        Some(id) => {
            lines.push(Line::Comment(format!(
                "1. The location names client id {id} for this cluster: that identity exists. Check that"
            )));
            lines.push(Line::Comment(format!(
                "   it is {identity} in {rg} (this prints {id}), else pass --resource-group/--identity:"
            )));
            lines.push(Line::Run {
                into: None,
                words: show("clientId"),
            });
        }
    }
    lines.push(Line::Comment(
        "2. The federated credential: the cluster's issuer, the agent's service account, Entra's audience."
            .into(),
    ));
    let mut fic = az(
        &[
            "identity",
            "federated-credential",
            "create",
            "--resource-group",
            rg,
            "--identity-name",
            identity,
        ],
        None,
    );
    fic.extend(
        [
            "--name",
            &credential_name,
            "--issuer",
            issuer,
            "--subject",
            &subject,
            "--audiences",
            TOKEN_EXCHANGE_AUDIENCE,
        ]
        .map(Word::lit),
    );
    if let Some(s) = sub {
        fic.extend(["--subscription", s].map(Word::lit));
    }
    lines.push(Line::Run {
        into: None,
        words: fic,
    });
    lines.push(Line::Comment(format!(
        "3. {BLOB_ROLE} on the location's container only."
    )));
    lines.push(Line::Run {
        into: Some("PRINCIPAL_ID"),
        words: show("principalId"),
    });
    let scope_word = match &scope {
        Some(s) => Word::lit(s.clone()),
        None => {
            let mut args = vec!["storage", "account", "show", "--name", account];
            if let Some(g) = storage_rg {
                args.extend(["--resource-group", g]);
            }
            args.extend(["--query", "id", "--output", "tsv"]);
            lines.push(Line::Run {
                into: Some("ACCOUNT_ID"),
                words: az(&args, sub),
            });
            Word(vec![Part::Var("ACCOUNT_ID"), Part::Lit(container_path)])
        }
    };
    let mut role = az(&["role", "assignment", "create"], None);
    role.push(Word::lit("--assignee-object-id"));
    role.push(Word::var("PRINCIPAL_ID"));
    role.extend(
        [
            "--assignee-principal-type",
            "ServicePrincipal",
            "--role",
            BLOB_ROLE,
            "--scope",
        ]
        .map(Word::lit),
    );
    role.push(scope_word);
    if let Some(s) = sub {
        role.extend(["--subscription", s].map(Word::lit));
    }
    lines.push(Line::Run {
        into: None,
        words: role,
    });
    if client_id.is_none() {
        lines.push(Line::Comment(format!(
            "4. The identity's client id: the location's clientId, or its clusterClientIds[\"{name}\"]."
        )));
        lines.push(Line::Run {
            into: None,
            words: show("clientId"),
        });
    }

    Ok(Federation {
        cluster: name.to_owned(),
        location: loc.to_owned(),
        issuer: issuer.to_owned(),
        subject,
        audience: TOKEN_EXCHANGE_AUDIENCE.to_owned(),
        credential_name,
        resource_group: rg.to_owned(),
        identity: identity.to_owned(),
        client_id: client_id.map(str::to_owned),
        role: BLOB_ROLE.to_owned(),
        scope,
        script: script(&lines)?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://discovery.example.com/projects/dev/shoots/0c2d1f8e/issuer";

    fn cluster(name: &str, issuer: Option<&str>) -> ClusterRecord {
        ClusterRecord {
            org: "tenant".into(),
            id: "0c2d1f8e".into(),
            name: name.into(),
            source: "gardener".into(),
            namespace: Some("garden-dev".into()),
            service_account_issuer: issuer.map(str::to_owned),
            ..ClusterRecord::default()
        }
    }

    fn location(extra: serde_json::Value) -> LocationView {
        let mut v = json!({
            "id": "l-1", "name": "primary", "provider": "azure", "account": "tenantbackups",
            "container": "backups", "mode": "federated", "hasCredential": false,
            "clusters": {"all": true}, "sync": false, "createdAt": "2026-01-01T00:00:00Z",
        });
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).expect("a location view")
    }

    fn opts(rg: &str) -> FederationOptions {
        FederationOptions {
            resource_group: Some(rg.into()),
            ..FederationOptions::default()
        }
    }

    #[test]
    fn the_commands_create_the_identity_its_credential_and_the_role() {
        let f = federation(
            &cluster("shoot-a", Some(ISSUER)),
            &location(json!({})),
            &opts("tenant-rg"),
        )
        .expect("federation");
        let want = "\
# Cluster shoot-a, location primary: storage account tenantbackups, container backups.
# 1. A managed identity for the agent.
az identity create --resource-group tenant-rg --name pxb-agent
# 2. The federated credential: the cluster's issuer, the agent's service account, Entra's audience.
az identity federated-credential create --resource-group tenant-rg --identity-name pxb-agent \\
  --name shoot-a --issuer https://discovery.example.com/projects/dev/shoots/0c2d1f8e/issuer \\
  --subject system:serviceaccount:pxb-system:pxb-agent --audiences api://AzureADTokenExchange
# 3. Storage Blob Data Contributor on the location's container only.
PRINCIPAL_ID=$(az identity show --resource-group tenant-rg --name pxb-agent --query principalId \\
  --output tsv)
ACCOUNT_ID=$(az storage account show --name tenantbackups --query id --output tsv)
az role assignment create --assignee-object-id \"$PRINCIPAL_ID\" \\
  --assignee-principal-type ServicePrincipal --role 'Storage Blob Data Contributor' \\
  --scope \"$ACCOUNT_ID\"/blobServices/default/containers/backups
# 4. The identity's client id: the location's clientId, or its clusterClientIds[\"shoot-a\"].
az identity show --resource-group tenant-rg --name pxb-agent --query clientId --output tsv
";
        assert_eq!(f.script, want);
        assert_eq!(f.issuer, ISSUER);
        assert_eq!(f.subject, "system:serviceaccount:pxb-system:pxb-agent");
        assert_eq!(f.audience, "api://AzureADTokenExchange");
        assert_eq!(f.credential_name, "shoot-a");
        assert_eq!(f.client_id, None);
        assert_eq!(f.scope, None);
        for line in f.script.lines() {
            assert!(line.len() <= LINE, "{line:?} is longer than {LINE}");
        }
        // What the shell runs, with `az` recorded.
        let calls = run(&f.script, "sh");
        assert_eq!(
            calls,
            [
                argv("identity create --resource-group tenant-rg --name pxb-agent"),
                argv(&format!(
                    "identity federated-credential create --resource-group tenant-rg --identity-name pxb-agent \
                     --name shoot-a --issuer {ISSUER} --subject system:serviceaccount:pxb-system:pxb-agent \
                     --audiences api://AzureADTokenExchange"
                )),
                argv(
                    "identity show --resource-group tenant-rg --name pxb-agent --query principalId --output tsv"
                ),
                argv("storage account show --name tenantbackups --query id --output tsv"),
                [
                    "role",
                    "assignment",
                    "create",
                    "--assignee-object-id",
                    PRINCIPAL,
                    "--assignee-principal-type",
                    "ServicePrincipal",
                    "--role",
                    "Storage Blob Data Contributor",
                    "--scope",
                    &format!("{ACCOUNT}/blobServices/default/containers/backups"),
                ]
                .map(str::to_owned)
                .to_vec(),
                argv(
                    "identity show --resource-group tenant-rg --name pxb-agent --query clientId --output tsv"
                ),
            ]
        );
    }

    #[test]
    fn a_known_client_id_is_checked_not_created() {
        let loc = location(json!({"clientId": "11111111-1111-1111-1111-111111111111",
                                  "clusterClientIds": {"shoot-a": "22222222-2222-2222-2222-222222222222"}}));
        let f = federation(&cluster("shoot-a", Some(ISSUER)), &loc, &opts("tenant-rg")).expect("federation");
        assert_eq!(
            f.client_id.as_deref(),
            Some("22222222-2222-2222-2222-222222222222"),
            "per cluster first"
        );
        assert!(!f.script.contains("identity create"), "{}", f.script);
        assert!(
            f.script
                .contains("client id 22222222-2222-2222-2222-222222222222"),
            "{}",
            f.script
        );
        let calls = run(&f.script, "sh");
        assert_eq!(
            calls[0],
            argv("identity show --resource-group tenant-rg --name pxb-agent --query clientId --output tsv")
        );
        assert_eq!(
            calls.len(),
            5,
            "show, credential, principal, account, role: {calls:?}"
        );
        // Another cluster gets the location's clientId.
        let f = federation(&cluster("shoot-b", Some(ISSUER)), &loc, &opts("tenant-rg")).expect("federation");
        assert_eq!(
            f.client_id.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
    }

    #[test]
    fn subscription_and_storage_group_write_the_scope_out() {
        let o = FederationOptions {
            resource_group: Some("ids".into()),
            identity: Some("pxb-agent-a".into()),
            subscription: Some("3f1c0000-0000-0000-0000-000000000000".into()),
            storage_resource_group: Some("storage".into()),
        };
        let f = federation(&cluster("shoot-a", Some(ISSUER)), &location(json!({})), &o).expect("federation");
        let scope = "/subscriptions/3f1c0000-0000-0000-0000-000000000000/resourceGroups/storage/providers/\
                     Microsoft.Storage/storageAccounts/tenantbackups/blobServices/default/containers/backups";
        assert_eq!(f.scope.as_deref(), Some(scope));
        assert!(!f.script.contains("ACCOUNT_ID"), "{}", f.script);
        let calls = run(&f.script, "bash");
        assert_eq!(calls.len(), 5, "{calls:?}");
        for c in &calls {
            let at = c
                .iter()
                .position(|a| a == "--subscription")
                .expect("--subscription on every call");
            assert_eq!(c[at + 1], "3f1c0000-0000-0000-0000-000000000000");
        }
        assert!(
            calls[1]
                .windows(2)
                .any(|w| w == ["--identity-name", "pxb-agent-a"])
        );
        assert!(
            calls[3].windows(2).any(|w| w[0] == "--scope" && w[1] == scope),
            "{:?}",
            calls[3]
        );
    }

    #[test]
    fn without_an_issuer_the_error_says_to_annotate_the_shoot() {
        let e =
            federation(&cluster("shoot-a", None), &location(json!({})), &opts("rg")).expect_err("no issuer");
        assert!(e.contains("publishes no service-account issuer"), "{e}");
        assert!(
            e.contains(
                "kubectl annotate shoot shoot-a -n garden-dev 'authentication.gardener.cloud/issuer=managed'"
            ),
            "{e}"
        );
        let mut imported = cluster("old", None);
        imported.source = "imported".into();
        imported.namespace = None;
        let e = federation(&imported, &location(json!({})), &opts("rg")).expect_err("imported");
        assert!(e.contains("not a Gardener shoot (imported cluster)"), "{e}");
    }

    #[test]
    fn only_azure_federated_locations_and_live_clusters() {
        let c = cluster("shoot-a", Some(ISSUER));
        let e = federation(&c, &location(json!({"mode": "classic"})), &opts("rg")).expect_err("classic");
        assert!(e.contains("classic mode"), "{e}");
        let e = federation(
            &c,
            &location(json!({"provider": "file", "account": null})),
            &opts("rg"),
        )
        .expect_err("file");
        assert!(e.contains("azure locations"), "{e}");
        let e = federation(&c, &location(json!({"account": null})), &opts("rg")).expect_err("no account");
        assert!(e.contains("not an Azure storage account name"), "{e}");
        let mut retired = c.clone();
        retired.retired_at = Some("2026-01-02T00:00:00Z".into());
        let e = federation(&retired, &location(json!({})), &opts("rg")).expect_err("retired");
        assert!(e.contains("retired"), "{e}");
        let e = federation(
            &cluster("shoot-a", Some("http://plain.example/issuer")),
            &location(json!({})),
            &opts("rg"),
        )
        .expect_err("http");
        assert!(e.contains("not an https URL"), "{e}");
        // Without --resource-group, a placeholder that no resource group can be named.
        let f = federation(&c, &location(json!({})), &FederationOptions::default()).expect("federation");
        assert!(f.script.contains("# Replace <resource-group>"), "{}", f.script);
        assert!(
            f.script.contains("--resource-group '<resource-group>'"),
            "{}",
            f.script
        );
    }

    /// Hostile values from the server (cluster name, issuer) and from flags become single
    /// arguments of `az`, exactly as given; nothing in them runs.
    #[test]
    fn hostile_values_cannot_inject_shell() {
        // `run` fails when anything but `az` wrote a file into the shell's working directory.
        let p = "pwned";
        let name = format!("a$(touch {p})`touch {p}`'\"; touch {p} #");
        let issuer = format!("https://evil.example/x'$(touch {p})\"$(touch {p})\"`touch {p}`;touch {p}");
        let rg = format!("rg' ; touch {p} ; '");
        let identity = format!("id$(touch {p})\\");
        let o = FederationOptions {
            resource_group: Some(rg.clone()),
            identity: Some(identity.clone()),
            subscription: Some(format!("sub$(touch {p})")),
            storage_resource_group: None,
        };
        let f = federation(&cluster(&name, Some(&issuer)), &location(json!({})), &o).expect("federation");
        assert!(crate::names::is_federated_credential_name(&f.credential_name));
        for shell in ["sh", "bash"] {
            let calls = run(&f.script, shell);
            assert_eq!(calls.len(), 6, "{shell}: {calls:?}");
            let fic = &calls[1];
            let after = |flag: &str| {
                let at = fic.iter().position(|a| a == flag).expect(flag);
                fic[at + 1].clone()
            };
            assert_eq!(after("--issuer"), issuer, "{shell}");
            assert_eq!(after("--resource-group"), rg, "{shell}");
            assert_eq!(after("--identity-name"), identity, "{shell}");
            assert_eq!(after("--name"), f.credential_name, "{shell}");
            assert_eq!(after("--subscription"), format!("sub$(touch {p})"), "{shell}");
        }
        // Line breaks, terminal escapes, bidirectional overrides and flags are refused.
        for bad in [
            "a\nrm -rf ~",
            "a\rb",
            "a\u{1b}[2Jb",
            "a\u{202e}b",
            "a\u{2028}b",
            "--scope",
        ] {
            let e =
                federation(&cluster(bad, Some(ISSUER)), &location(json!({})), &opts("rg")).expect_err(bad);
            assert!(e.contains("the cluster name"), "{e}");
            let e = federation(
                &cluster("ok", Some(&format!("https://x.example/{bad}"))),
                &location(json!({})),
                &opts("rg"),
            );
            if !bad.starts_with('-') {
                assert!(e.expect_err(bad).contains("the cluster's issuer"));
            }
            let e =
                federation(&cluster("ok", Some(ISSUER)), &location(json!({})), &opts(bad)).expect_err(bad);
            assert!(e.contains("--resource-group"), "{e}");
            let loc = location(json!({"clientId": bad}));
            let e = federation(&cluster("ok", Some(ISSUER)), &loc, &opts("rg")).expect_err(bad);
            assert!(e.contains("client id"), "{e}");
        }
        // Storage names go into the role's scope: only Azure's names.
        for (account, container) in [
            ("acct/../x", "backups"),
            ("tenantbackups", "b/../../x"),
            ("Upper", "backups"),
        ] {
            let loc = location(json!({"account": account, "container": container}));
            let e = federation(&cluster("ok", Some(ISSUER)), &loc, &opts("rg")).expect_err(account);
            assert!(e.contains("not an Azure"), "{e}");
        }
        let e = federation(
            &cluster("ok", Some(ISSUER)),
            &location(json!({})),
            &FederationOptions {
                subscription: Some("s/resourceGroups/x".into()),
                ..opts("rg")
            },
        )
        .expect_err("slash");
        assert!(e.contains("--subscription"), "{e}");
    }

    #[test]
    fn the_subject_is_the_agents_service_account_as_deployed() {
        let sa = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent/10-serviceaccount.yaml"),
        )
        .expect("deploy/agent/10-serviceaccount.yaml");
        let v: serde_json::Value = serde_saphyr::from_str(&sa).expect("yaml");
        assert_eq!(v["kind"], "ServiceAccount");
        assert_eq!(v["metadata"]["name"], AGENT_SERVICE_ACCOUNT);
        assert_eq!(v["metadata"]["namespace"], AGENT_NAMESPACE);
    }

    /// The README's example is this function's output for its inputs.
    #[test]
    fn the_readme_shows_what_is_printed() {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
        let issuer = "https://discovery.ingress.garden.example.com/projects/acme-prod/shoots/\
                      6f1e2b7c-3d4a-4b8e-9f10-2a5c7d9e0b14/issuer";
        let loc = location(json!({"account": "acmebackups"}));
        let f = federation(&cluster("shoot-a", Some(issuer)), &loc, &opts("acme-identities"))
            .expect("federation");
        let shown = format!(
            "$ pxb clusters federation shoot-a --location primary --resource-group acme-identities\n{}```",
            f.script
        );
        assert!(readme.contains(&shown), "README.md should show:\n{shown}");
    }

    const PRINCIPAL: &str = "9a6b0000-0000-0000-0000-00000000beef";
    const ACCOUNT: &str =
        "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/tenantbackups";

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    /// Runs `script` with `shell`, an `az` on `PATH` that records its arguments and answers the
    /// lookups; returns the arguments of each call.
    fn run(script: &str, shell: &str) -> Vec<Vec<String>> {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("calls");
        let az = dir.path().join("az");
        std::fs::write(
            &az,
            format!(
                "#!/bin/sh\n\
                 for a in \"$@\"; do printf '%s\\036' \"$a\" >> \"$AZ_LOG\"; done\n\
                 printf '\\035' >> \"$AZ_LOG\"\n\
                 case \"$1 $2 $3\" in\n\
                 'identity show --resource-group') case \"$*\" in *principalId*) echo {PRINCIPAL};; *) echo client-id;; esac;;\n\
                 'storage account show') echo {ACCOUNT};;\n\
                 esac\n"
            ),
        )
        .expect("az");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(shell)
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .env("AZ_LOG", &log)
            .current_dir(dir.path())
            .output()
            .expect(shell);
        assert!(
            out.status.success(),
            "{shell} failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["az", "calls"], "{shell} ran more than az:\n{script}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.split('\u{1d}')
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.split('\u{1e}')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }
}
