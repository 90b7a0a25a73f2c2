//! Typed `core.gardener.cloud/v1beta1` Shoot and Project, with the fields pxb reads. Every other
//! field is kept in `extra`, so nothing is lost when an object is read and written back.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fields not modelled here, kept verbatim.
pub type Extra = BTreeMap<String, Value>;

macro_rules! gardener_resource {
    ($ty:ident, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("core.gardener.cloud")
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1beta1")
            }
            fn api_version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("core.gardener.cloud/v1beta1")
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Gardener project.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Project {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: ProjectSpec,
    /// Everything else (apiVersion, kind, status).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Spec of a project.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProjectSpec {
    /// The project's namespace in the garden (where its shoots live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

gardener_resource!(Project, "Project", "projects", k8s_openapi::ClusterResourceScope);

/// A Gardener shoot cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Shoot {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default)]
    pub spec: ShootSpec,
    /// Observed state; absent until the first reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ShootStatus>,
    /// Everything else (apiVersion, kind).
    #[serde(flatten)]
    pub extra: Extra,
}

gardener_resource!(Shoot, "Shoot", "shoots", k8s_openapi::NamespaceResourceScope);

/// A reference to a cloud profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CloudProfileRef {
    /// `CloudProfile` or `NamespacedCloudProfile`.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// Spec of a shoot (the fields pxb reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShootSpec {
    /// Cloud profile (preferred over the deprecated `cloudProfileName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_profile: Option<CloudProfileRef>,
    /// Deprecated cloud profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_profile_name: Option<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Desired hibernation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation: Option<Hibernation>,
    /// Kubernetes settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSpec>,
    /// Infrastructure provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSpec>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Desired hibernation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hibernation {
    /// Whether the shoot should be hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Everything else (schedules).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Kubernetes settings of a shoot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KubernetesSpec {
    /// Full semver without `v`, e.g. `1.33.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Infrastructure provider of a shoot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderSpec {
    /// Provider type, e.g. `azure`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Everything else (workers, configs).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Observed state of a shoot (the fields pxb reads).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShootStatus {
    /// Whether the shoot is hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated: Option<bool>,
    /// The shoot's uid, copied on the first reconcile: pxb's cluster identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Technical id (`shoot--<project>--<name>`).
    #[serde(default, rename = "technicalID", skip_serializing_if = "Option::is_none")]
    pub technical_id: Option<String>,
    /// The last operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<LastOperation>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Addresses of the API server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertised_addresses: Vec<AdvertisedAddress>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A shoot's last operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastOperation {
    /// `Create`, `Reconcile`, `Delete`, `Migrate`, `Restore`, `LiveMigrate`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// `Processing`, `Succeeded`, `Error`, `Failed`, `Pending`, `Aborted`.
    #[serde(default)]
    pub state: String,
    /// Percent done.
    #[serde(default)]
    pub progress: i64,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A shoot condition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Condition {
    /// Condition type, e.g. `APIServerAvailable`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`, `Progressing`.
    #[serde(default)]
    pub status: String,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An address of a shoot's API server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdvertisedAddress {
    /// `external`, `internal`, `wildcard-tls-seed-bound`, `unmanaged`, `service-account-issuer`.
    #[serde(default)]
    pub name: String,
    /// URL.
    #[serde(default)]
    pub url: String,
}
