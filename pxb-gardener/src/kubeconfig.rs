//! Kubeconfigs issued by the garden, in memory only: parsing them into [`ClusterAccess`] and
//! building kube clients from that.

use std::time::SystemTime;

use base64::Engine as _;
use kube::config::Kubeconfig;
use pxb_core::cluster::ClusterAccess;
use pxb_core::{Error, Result};

fn decode_data(field: &str, data: Option<&str>) -> Result<String> {
    let data = data.ok_or_else(|| Error::invalid(format!("the issued kubeconfig has no {field}")))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| Error::invalid(format!("{field} of the issued kubeconfig is not base64: {e}")))?;
    String::from_utf8(raw)
        .map_err(|_| Error::invalid(format!("{field} of the issued kubeconfig is not PEM text")))
}

/// Reads the current context of a client-certificate kubeconfig (as `adminkubeconfig` returns it).
pub fn parse_access(yaml: &str, issued_at: SystemTime, expires_at: SystemTime) -> Result<ClusterAccess> {
    let kc = Kubeconfig::from_yaml(yaml)
        .map_err(|e| Error::invalid(format!("the issued kubeconfig is not valid: {e}")))?;
    let ctx_name = kc
        .current_context
        .clone()
        .ok_or_else(|| Error::invalid("the issued kubeconfig has no current-context"))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| Error::invalid(format!("the issued kubeconfig lacks context {ctx_name}")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| Error::invalid(format!("the issued kubeconfig lacks cluster {}", ctx.cluster)))?;
    let user_name = ctx.user.clone().unwrap_or_default();
    let user = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.as_ref())
        .ok_or_else(|| Error::invalid(format!("the issued kubeconfig lacks user {user_name}")))?;
    use secrecy::ExposeSecret as _;
    Ok(ClusterAccess {
        server: cluster
            .server
            .clone()
            .ok_or_else(|| Error::invalid("the issued kubeconfig names no server"))?,
        ca_pem: decode_data(
            "certificate-authority-data",
            cluster.certificate_authority_data.as_deref(),
        )?,
        client_cert_pem: decode_data("client-certificate-data", user.client_certificate_data.as_deref())?,
        client_key_pem: decode_data(
            "client-key-data",
            user.client_key_data.as_ref().map(|s| s.expose_secret()),
        )?,
        issued_at,
        expires_at,
    })
}

/// A kube client configuration for `access`; nothing touches the disk.
pub fn kube_config(access: &ClusterAccess) -> Result<kube::Config> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let url = access
        .server
        .parse()
        .map_err(|e| Error::invalid(format!("server URL {:?}: {e}", access.server)))?;
    let mut config = kube::Config::new(url);
    let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(access.ca_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(format!("the cluster CA is not PEM: {e}")))?;
    config.root_cert = Some(roots);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    config.auth_info.client_certificate_data = Some(b64(&access.client_cert_pem));
    config.auth_info.client_key_data = Some(b64(&access.client_key_pem).into());
    Ok(config)
}

/// A kube client for `access`.
pub fn kube_client(access: &ClusterAccess) -> Result<kube::Client> {
    kube::Client::try_from(kube_config(access)?)
        .map_err(|e| Error::invalid(format!("building a client for {}: {e}", access.server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_kubeconfigs_are_clear_errors() {
        let now = SystemTime::now();
        for (yaml, expect) in [
            ("{not yaml", "not valid"),
            (
                "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
                "no current-context",
            ),
            (
                "apiVersion: v1\nkind: Config\ncurrent-context: a\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n\
                 clusters:\n- name: c\n  cluster: {server: 'https://x', certificate-authority-data: '***'}\n\
                 users:\n- name: u\n  user: {client-certificate-data: 'YQ==', client-key-data: 'YQ=='}\n",
                "not base64",
            ),
            (
                "apiVersion: v1\nkind: Config\ncurrent-context: a\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n\
                 clusters:\n- name: c\n  cluster: {server: 'https://x', certificate-authority-data: 'YQ=='}\n\
                 users:\n- name: u\n  user: {token: abc}\n",
                "no client-certificate-data",
            ),
        ] {
            let err = parse_access(yaml, now, now).expect_err(yaml);
            assert_eq!(err.kind(), "invalid");
            assert!(err.to_string().contains(expect), "{err} should mention {expect}");
        }
    }
}
