//! Whether pxb serves a shoot, and why not.

use pxb_core::cluster::{ClusterId, ClusterInfo, Eligibility, IneligibleReason};

use crate::types::Shoot;

/// Addresses Gardener accepts for a kubeconfig, in its order of preference.
pub const KUBECONFIG_ADDRESSES: [&str; 4] = ["external", "wildcard-tls-seed-bound", "internal", "unmanaged"];

/// The shoot annotation that asks Gardener for a managed service-account issuer.
pub const ISSUER_ANNOTATION: &str = "authentication.gardener.cloud/issuer";
/// The value of [`ISSUER_ANNOTATION`] for a managed issuer.
pub const ISSUER_MANAGED: &str = "managed";
/// The name of the advertised address that holds the service-account issuer.
pub const ISSUER_ADDRESS: &str = "service-account-issuer";

/// The shoot's managed service-account issuer: `status.advertisedAddresses[name=
/// service-account-issuer].url` of a shoot annotated `authentication.gardener.cloud/issuer=
/// managed`, once Gardener has reconciled it (the URL has the managed issuer's form
/// `https://<discovery host>/projects/<project>/shoots/<uid>/issuer`). Gardener advertises an
/// issuer for other shoots too, but that one is the API server's own (`https://api.<domain>`),
/// whose discovery document is not public, so Entra cannot trust it: `None` for those, for a
/// shoot annotated but not reconciled yet, and for shoots that advertise none.
pub fn managed_issuer(shoot: &Shoot) -> Option<String> {
    let managed = shoot
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ISSUER_ANNOTATION))
        .is_some_and(|v| v == ISSUER_MANAGED);
    if !managed {
        return None;
    }
    let path = format!("/shoots/{}/issuer", identity(shoot).0);
    shoot
        .status
        .as_ref()?
        .advertised_addresses
        .iter()
        .find(|a| a.name == ISSUER_ADDRESS && a.url.starts_with("https://") && a.url.ends_with(&path))
        .map(|a| a.url.clone())
}

/// What makes a shoot eligible.
///
/// Non-exhaustive: start from [`Policy::default`] (Azure shoots on Kubernetes 1.30 or later) and
/// adjust it with the `with_…` setters or the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Policy {
    /// Required `spec.provider.type`.
    pub provider_type: String,
    /// Lowest Kubernetes version served; pre-releases of it count (`>= 1.30.0-0`).
    pub min_version: semver::Version,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            provider_type: "azure".into(),
            min_version: semver::Version::new(1, 30, 0),
        }
    }
}

impl Policy {
    /// Sets the required `spec.provider.type` ([`provider_type`](Self::provider_type)).
    pub fn with_provider_type(mut self, provider_type: impl Into<String>) -> Self {
        self.provider_type = provider_type.into();
        self
    }

    /// Sets the lowest Kubernetes version served ([`min_version`](Self::min_version)).
    pub fn with_min_version(mut self, version: semver::Version) -> Self {
        self.min_version = version;
        self
    }
}

/// The identity of a shoot: `status.uid`, falling back to `metadata.uid` (the value `status.uid`
/// is copied from), and to `namespace/name` for an object without either.
pub fn identity(shoot: &Shoot) -> ClusterId {
    let status_uid = shoot
        .status
        .as_ref()
        .and_then(|s| s.uid.clone())
        .filter(|u| !u.is_empty());
    let uid = status_uid.or_else(|| shoot.metadata.uid.clone().filter(|u| !u.is_empty()));
    ClusterId(uid.unwrap_or_else(|| {
        format!(
            "{}/{}",
            shoot.metadata.namespace.as_deref().unwrap_or(""),
            shoot.metadata.name.as_deref().unwrap_or("")
        )
    }))
}

fn ineligible(reason: IneligibleReason, message: String) -> Eligibility {
    Eligibility::Ineligible { reason, message }
}

/// Classifies a shoot. Checks run in a fixed order so the reason is stable: deletion, missing
/// status, provider, version, hibernation, reconciliation, addresses.
pub fn classify(shoot: &Shoot, policy: &Policy) -> ClusterInfo {
    let provider_type = shoot
        .spec
        .provider
        .as_ref()
        .and_then(|p| p.type_.clone())
        .unwrap_or_default();
    let version = shoot
        .spec
        .kubernetes
        .as_ref()
        .and_then(|k| k.version.clone())
        .unwrap_or_default();
    let info = |eligibility| {
        let mut info = ClusterInfo::new(
            identity(shoot),
            shoot.metadata.name.clone().unwrap_or_default(),
            shoot.metadata.namespace.clone().unwrap_or_default(),
        )
        .with_provider_type(provider_type.clone())
        .with_kubernetes_version(version.clone())
        .with_region(shoot.spec.region.clone().unwrap_or_default())
        .with_labels(shoot.metadata.labels.clone().unwrap_or_default())
        .with_eligibility(eligibility);
        info.service_account_issuer = managed_issuer(shoot);
        info
    };
    let last_op = shoot.status.as_ref().and_then(|s| s.last_operation.as_ref());
    if shoot.metadata.deletion_timestamp.is_some() || last_op.is_some_and(|o| o.type_ == "Delete") {
        return info(ineligible(
            IneligibleReason::Deleting,
            "the shoot is being deleted".into(),
        ));
    }
    let Some(status) = shoot.status.as_ref() else {
        return info(ineligible(
            IneligibleReason::Malformed,
            "the shoot has no status (never reconciled, or malformed)".into(),
        ));
    };
    if provider_type != policy.provider_type {
        let shown = if provider_type.is_empty() {
            "none"
        } else {
            provider_type.as_str()
        };
        return info(ineligible(
            IneligibleReason::ProviderType,
            format!("provider type {shown} is not {}", policy.provider_type),
        ));
    }
    let parsed = match semver::Version::parse(version.trim_start_matches('v')) {
        Ok(v) => v,
        Err(e) => {
            return info(ineligible(
                IneligibleReason::Malformed,
                format!("spec.kubernetes.version {version:?} is not a version: {e}"),
            ));
        }
    };
    // Ordered as semver against `<floor>-0`, so pre-releases of the floor and later count.
    let old_enough = parsed >= floor_version(&policy.min_version);
    if !old_enough {
        return info(ineligible(
            IneligibleReason::KubernetesVersion,
            format!(
                "Kubernetes {version} is below the supported {}.{}",
                policy.min_version.major, policy.min_version.minor
            ),
        ));
    }
    let hibernating = shoot.spec.hibernation.as_ref().and_then(|h| h.enabled) == Some(true);
    if status.hibernated == Some(true) || hibernating {
        let what = if status.hibernated == Some(true) {
            "hibernated"
        } else {
            "hibernating"
        };
        return info(ineligible(
            IneligibleReason::Hibernated,
            format!("the shoot is {what}"),
        ));
    }
    let reconciled = status.uid.as_deref().is_some_and(|u| !u.is_empty())
        && last_op.is_some_and(|o| !(o.type_ == "Create" && o.state != "Succeeded"));
    if !reconciled {
        let detail = match last_op {
            Some(o) => format!("last operation {} is {} ({}%)", o.type_, o.state, o.progress),
            None => "no operation has finished yet".into(),
        };
        return info(ineligible(
            IneligibleReason::NotReconciled,
            format!("the shoot is not reconciled yet: {detail}"),
        ));
    }
    if !status
        .advertised_addresses
        .iter()
        .any(|a| KUBECONFIG_ADDRESSES.contains(&a.name.as_str()) && !a.url.is_empty())
    {
        return info(ineligible(
            IneligibleReason::Malformed,
            "the shoot advertises no API server address".into(),
        ));
    }
    info(Eligibility::Eligible)
}

/// Classifies a shoot as the API returned it, untyped: one that does not fit [`Shoot`] (a field
/// of the wrong type) is reported as malformed instead of failing the whole list.
pub fn classify_object(obj: &kube::api::DynamicObject, policy: &Policy) -> ClusterInfo {
    let typed = serde_json::to_value(obj).and_then(serde_json::from_value::<Shoot>);
    match typed {
        Ok(shoot) => classify(&shoot, policy),
        Err(e) => {
            let meta = obj.metadata.clone();
            let name = meta.name.clone().unwrap_or_default();
            let namespace = meta.namespace.clone().unwrap_or_default();
            let id = meta
                .uid
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            ClusterInfo::new(ClusterId(id), name, namespace)
                .with_labels(meta.labels.unwrap_or_default())
                .with_eligibility(ineligible(
                    IneligibleReason::Malformed,
                    format!("the shoot cannot be read: {e}"),
                ))
        }
    }
}

fn floor_version(min: &semver::Version) -> semver::Version {
    let mut v = min.clone();
    v.pre = semver::Prerelease::new("0").unwrap_or(semver::Prerelease::EMPTY);
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shoot(version: &str) -> serde_json::Value {
        json!({
            "metadata": {"name": "s1", "namespace": "garden-dev", "uid": "u-1"},
            "spec": {"provider": {"type": "azure"}, "kubernetes": {"version": version}, "hibernation": {"enabled": false}},
            "status": {"uid": "u-1", "hibernated": false,
                       "lastOperation": {"type": "Reconcile", "state": "Succeeded", "progress": 100},
                       "advertisedAddresses": [{"name": "external", "url": "https://api.example"}]}
        })
    }

    fn reason(v: serde_json::Value) -> Option<IneligibleReason> {
        let s: Shoot = serde_json::from_value(v).expect("shoot");
        match classify(&s, &Policy::default()).eligibility {
            Eligibility::Eligible => None,
            Eligibility::Ineligible { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn versions_compare_as_semver_with_prereleases() {
        assert_eq!(reason(shoot("1.33.4")), None);
        assert_eq!(reason(shoot("1.30.0")), None);
        assert_eq!(
            reason(shoot("1.30.0-rc.1")),
            None,
            "pre-releases of the floor count"
        );
        assert_eq!(reason(shoot("1.31.0-alpha.2")), None);
        assert_eq!(reason(shoot("1.100.0")), None, "no string comparison");
        assert_eq!(
            reason(shoot("1.29.15")),
            Some(IneligibleReason::KubernetesVersion)
        );
        assert_eq!(reason(shoot("1.3.0")), Some(IneligibleReason::KubernetesVersion));
        assert_eq!(reason(shoot("one.two")), Some(IneligibleReason::Malformed));
        assert_eq!(reason(shoot("")), Some(IneligibleReason::Malformed));
    }

    #[test]
    fn each_reason_is_reported() {
        let mut s = shoot("1.33.4");
        s["spec"]["provider"]["type"] = "aws".into();
        assert_eq!(reason(s), Some(IneligibleReason::ProviderType));

        let mut s = shoot("1.33.4");
        s["status"]["hibernated"] = true.into();
        assert_eq!(reason(s), Some(IneligibleReason::Hibernated));

        let mut s = shoot("1.33.4");
        s["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert_eq!(reason(s), Some(IneligibleReason::Deleting));

        let mut s = shoot("1.33.4");
        s["status"]["lastOperation"] = json!({"type": "Create", "state": "Processing", "progress": 40});
        assert_eq!(reason(s), Some(IneligibleReason::NotReconciled));

        let mut s = shoot("1.33.4");
        s["status"]["uid"] = "".into();
        assert_eq!(reason(s), Some(IneligibleReason::NotReconciled));

        let mut s = shoot("1.33.4");
        s["status"]["advertisedAddresses"] = json!([{"name": "service-account-issuer", "url": "https://x"}]);
        assert_eq!(reason(s), Some(IneligibleReason::Malformed));

        let mut s = shoot("1.33.4");
        s.as_object_mut().expect("object").remove("status");
        assert_eq!(reason(s), Some(IneligibleReason::Malformed));
    }

    #[test]
    fn only_a_managed_issuer_is_recorded() {
        let info = |v: serde_json::Value| {
            let s: Shoot = serde_json::from_value(v).expect("shoot");
            classify(&s, &Policy::default())
        };
        let issuer = "https://discovery.example/projects/dev/shoots/u-1/issuer";
        let mut s = shoot("1.33.4");
        s["status"]["advertisedAddresses"] = json!([
            {"name": "external", "url": "https://api.example"},
            {"name": "service-account-issuer", "url": issuer},
        ]);
        // Gardener advertises the API server's own issuer without the annotation: not public.
        assert_eq!(info(s.clone()).service_account_issuer, None);
        s["metadata"]["annotations"] = json!({"authentication.gardener.cloud/issuer": "managed"});
        let managed = info(s.clone());
        assert_eq!(managed.service_account_issuer.as_deref(), Some(issuer));
        assert_eq!(managed.eligibility, Eligibility::Eligible);
        // Annotated, but not reconciled with it yet: the API server's issuer, or none at all.
        s["status"]["advertisedAddresses"] = json!([
            {"name": "external", "url": "https://api.example"},
            {"name": "service-account-issuer", "url": "https://api.example"},
        ]);
        assert_eq!(info(s.clone()).service_account_issuer, None);
        s["status"]["advertisedAddresses"] = json!([{"name": "external", "url": "https://api.example"}]);
        assert_eq!(info(s.clone()).service_account_issuer, None);
        // Another shoot's issuer is not this one's.
        s["status"]["advertisedAddresses"] = json!([
            {"name": "service-account-issuer", "url": "https://discovery.example/projects/dev/shoots/u-2/issuer"},
        ]);
        assert_eq!(info(s.clone()).service_account_issuer, None);
        // Another value of the annotation is not the managed issuer.
        s["metadata"]["annotations"] = json!({"authentication.gardener.cloud/issuer": "unmanaged"});
        s["status"]["advertisedAddresses"] = json!([
            {"name": "external", "url": "https://api.example"},
            {"name": "service-account-issuer", "url": issuer},
        ]);
        assert_eq!(info(s).service_account_issuer, None);
    }

    #[test]
    fn a_shoot_of_the_wrong_shape_is_malformed_not_fatal() {
        let mut v = shoot("1.33.4");
        v["spec"]["kubernetes"]["version"] = 133.into();
        v["apiVersion"] = "core.gardener.cloud/v1beta1".into();
        v["kind"] = "Shoot".into();
        let obj: kube::api::DynamicObject = serde_json::from_value(v).expect("object");
        let info = classify_object(&obj, &Policy::default());
        assert_eq!(info.id.0, "u-1");
        assert_eq!(info.name, "s1");
        match info.eligibility {
            Eligibility::Ineligible { reason, message } => {
                assert_eq!(reason, IneligibleReason::Malformed);
                assert!(message.contains("cannot be read"), "{message}");
            }
            Eligibility::Eligible => panic!("must be malformed"),
        }
        let ok: kube::api::DynamicObject = serde_json::from_value(shoot("1.33.4")).expect("object");
        assert!(classify_object(&ok, &Policy::default()).eligibility.is_eligible());
    }

    #[test]
    fn identity_prefers_status_uid() {
        let s: Shoot = serde_json::from_value(shoot("1.33.4")).expect("shoot");
        assert_eq!(identity(&s).0, "u-1");
        let mut v = shoot("1.33.4");
        v["status"]["uid"] = "".into();
        v["metadata"]["uid"] = "m-1".into();
        let s: Shoot = serde_json::from_value(v).expect("shoot");
        assert_eq!(identity(&s).0, "m-1");
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let mut v = shoot("1.33.4");
        v["spec"]["networking"] = json!({"type": "calico"});
        v["status"]["constraints"] = json!([{"type": "X"}]);
        let s: Shoot = serde_json::from_value(v.clone()).expect("shoot");
        let back = serde_json::to_value(&s).expect("encode");
        assert_eq!(back["spec"]["networking"], v["spec"]["networking"]);
        assert_eq!(back["status"]["constraints"], v["status"]["constraints"]);
    }
}
