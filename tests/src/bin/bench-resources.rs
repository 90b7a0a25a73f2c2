//! `bench-resources`: times a namespace resource backup (and optionally its restore) of many
//! objects, and measures the memory it takes.
//!
//! Usage: `bench-resources [--objects N] [--per-namespace M] [--restore]`
//!
//! It seeds N (default 300000) realistic namespaced objects (ConfigMaps, Secrets, Deployments,
//! ReplicaSets, Pods, Services, Endpoints, PVCs with their PVs, ServiceAccounts, RBAC), a few hundred
//! bytes to 2 KB each, into an `InMemoryCluster`, backs up every namespace into a
//! `LocalFileSystem` location in a temporary directory, and prints the elapsed time, objects per
//! second, the archive's size and the peak resident memory of the backup. The seeded cluster itself
//! lives in the same process, so the resident memory before the backup is printed too, and the
//! peak is measured from there: the kernel's high-water mark (VmHWM) is reset through
//! `/proc/self/clear_refs` just before the backup starts.

use std::time::Instant;

use anyhow::{Context, bail};
use pxb_core::resources::{
    InMemoryCluster, ResourceSelector, RestoreOptions, backup_resources, restore_resources,
};
use pxb_core::{LocalFileSystem, ObjectPath};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

struct Args {
    objects: usize,
    per_namespace: usize,
    restore: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        objects: 300_000,
        per_namespace: 1000,
        restore: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--objects" => args.objects = it.next().context("--objects needs a number")?.parse()?,
            "--per-namespace" => {
                args.per_namespace = it.next().context("--per-namespace needs a number")?.parse()?;
            }
            "--restore" => args.restore = true,
            "-h" | "--help" => {
                println!("usage: bench-resources [--objects N] [--per-namespace M] [--restore]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.per_namespace == 0 {
        bail!("--per-namespace must be at least 1");
    }
    Ok(args)
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Resets the peak resident set size (VmHWM) to the current one (Linux 4.0+).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn text(rng: &mut StdRng, len: usize) -> String {
    const WORDS: &[&str] = &[
        "server",
        "port",
        "timeout",
        "retries",
        "enabled",
        "cache",
        "log",
        "level",
        "info",
        "debug",
        "max",
        "connections",
        "pool",
        "size",
        "feature",
        "flag",
        "endpoint",
        "https",
        "api",
        "v2",
        "region",
        "west",
        "queue",
        "batch",
        "worker",
        "threads",
        "memory",
        "limit",
        "true",
        "false",
    ];
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        s.push_str(w);
        let sep = match rng.random_range(0..12) {
            0 | 1 => '\n',
            2..=6 => '=',
            _ => ' ',
        };
        s.push(sep);
        if rng.random_range(0..4) == 0 {
            s.push_str(&rng.random_range(0..100_000u32).to_string());
            s.push(' ');
        }
    }
    s
}

fn random_b64(rng: &mut StdRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn labels(app: &str, i: usize) -> Value {
    json!({"app.kubernetes.io/name": app, "app.kubernetes.io/instance": format!("{app}-{}", i % 7),
           "app.kubernetes.io/part-of": "shop", "team": format!("team-{}", i % 13)})
}

fn managed_fields() -> Value {
    json!([{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
            "time": "2025-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}])
}

fn container(app: &str, rng: &mut StdRng) -> Value {
    json!({
        "name": app, "image": format!("registry.example.com/{app}:1.{}.{}", rng.random_range(0..40), rng.random_range(0..9)),
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "westeurope"},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": format!("{app}-db"), "key": "password"}}}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": 8080}, "initialDelaySeconds": 15},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
    })
}

/// Seeds the cluster: `objects` namespaced objects in namespaces of `per_namespace` objects.
/// Returns (namespaces, persistent volumes).
fn seed(
    cluster: &InMemoryCluster,
    objects: usize,
    per_namespace: usize,
) -> anyhow::Result<(Vec<String>, usize)> {
    let mut rng = StdRng::seed_from_u64(42);
    for sc in ["standard", "premium", "archive"] {
        cluster.seed(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": sc}, "provisioner": "disk.csi.azure.com",
            "parameters": {"skuName": "Premium_LRS"}, "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"}))?;
    }
    let mut namespaces = Vec::new();
    let mut pvs = 0;
    let mut deployment_uid = String::new();
    let mut rs_uid = String::new();
    for i in 0..objects {
        let ns = format!("tenant-{:04}", i / per_namespace);
        if i % per_namespace == 0 {
            cluster.seed(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "tenant": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))?;
            namespaces.push(ns.clone());
        }
        let app = format!("app-{}", (i / 20) % 50);
        // Endpoints (i % 20 == 18) share the name of the Service six objects earlier.
        let name = if i % 20 == 18 {
            format!("{app}-{}", i - 6)
        } else {
            format!("{app}-{i}")
        };
        let meta = |extra: Value| {
            let mut m = json!({"name": name, "namespace": ns, "labels": labels(&app, i),
                               "annotations": {"deployment.kubernetes.io/revision": "3"},
                               "managedFields": managed_fields()});
            if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
                m.extend(extra.clone());
            }
            m
        };
        let obj = match i % 20 {
            0..=5 => {
                let keys = rng.random_range(2..6);
                let data: serde_json::Map<String, Value> = (0..keys)
                    .map(|k| {
                        let len = rng.random_range(60..380);
                        (
                            format!("config-{k}.properties"),
                            Value::String(text(&mut rng, len)),
                        )
                    })
                    .collect();
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(json!({})), "data": data})
            }
            6..=9 => {
                let len = rng.random_range(40..900);
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta(json!({})),
                       "data": {"password": random_b64(&mut rng, 32), "tls.key": random_b64(&mut rng, len)}})
            }
            10 | 11 => {
                let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(json!({"generation": 3})),
                    "spec": {"replicas": 3, "revisionHistoryLimit": 10,
                             "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
                             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                             "template": {"metadata": {"labels": {"app.kubernetes.io/name": app}},
                                          "spec": {"serviceAccountName": app, "containers": [container(&app, &mut rng)],
                                                   "volumes": [{"name": "config", "configMap": {"name": format!("{app}-config")}}]}}},
                    "status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "observedGeneration": 3}});
                let stored = cluster.seed(d)?;
                deployment_uid = stored.uid().unwrap_or_default().to_owned();
                continue;
            }
            12 | 13 => json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(json!({})),
                "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": app},
                         "clusterIP": format!("10.0.{}.{}", (i >> 8) & 0xff, i & 0xff),
                         "clusterIPs": [format!("10.0.{}.{}", (i >> 8) & 0xff, i & 0xff)],
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                         "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}}),
            14 => {
                let pv = format!("pvc-{i:08}");
                pvs += 1;
                cluster.seed(json!({"apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": pv, "annotations": {"pv.kubernetes.io/provisioned-by": "disk.csi.azure.com"}},
                    "spec": {"storageClassName": "premium", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                             "persistentVolumeReclaimPolicy": "Delete",
                             "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": "x"},
                             "csi": {"driver": "disk.csi.azure.com", "volumeHandle": format!("/subscriptions/s/disks/{pv}")}},
                    "status": {"phase": "Bound"}}))?;
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": meta(json!({"annotations": {"pv.kubernetes.io/bind-completed": "yes"}})),
                    "spec": {"storageClassName": "premium", "volumeName": pv, "accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "10Gi"}}, "volumeMode": "Filesystem"},
                    "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}}})
            }
            15 => json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(json!({}))}),
            16 => {
                let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": meta(json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": app, "uid": deployment_uid, "controller": true, "blockOwnerDeletion": true}]})),
                    "spec": {"replicas": 3, "selector": {"matchLabels": {"app.kubernetes.io/name": app}},
                             "template": {"metadata": {"labels": {"app.kubernetes.io/name": app}},
                                          "spec": {"containers": [container(&app, &mut rng)]}}}});
                let stored = cluster.seed(rs)?;
                rs_uid = stored.uid().unwrap_or_default().to_owned();
                continue;
            }
            17 => json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": meta(json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": app, "uid": rs_uid, "controller": true}]})),
                "spec": {"nodeName": "aks-node-1", "containers": [container(&app, &mut rng)]},
                "status": {"phase": "Running", "podIP": "10.244.1.7"}}),
            18 => json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": meta(json!({})),
                "subsets": [{"addresses": [{"ip": "10.244.1.7"}, {"ip": "10.244.2.9"}],
                             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}),
            _ if i % 40 == 19 => {
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(json!({})),
                "rules": [{"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch"]}]})
            }
            _ => {
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(json!({})),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": app},
                "subjects": [{"kind": "ServiceAccount", "name": app, "namespace": ns}]})
            }
        };
        cluster.seed(obj)?;
    }
    Ok((namespaces, pvs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cluster = InMemoryCluster::new();
    let t = Instant::now();
    let (namespaces, pvs) = seed(&cluster, args.objects, args.per_namespace)?;
    println!(
        "seeded {} namespaced objects in {} namespaces (+ {pvs} PersistentVolumes, 3 StorageClasses) in {:.1} s",
        args.objects,
        namespaces.len(),
        t.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let store = LocalFileSystem::new(dir.path())?;
    let path = ObjectPath::parse("backups/bench/resources.jsonl.zst")?;
    let selector = ResourceSelector::namespaces(namespaces.iter().cloned());

    let rss_before = status_kib("VmRSS:");
    let reset = reset_peak();
    let t = Instant::now();
    let stats = backup_resources(&cluster, &selector, &store, &path).await?;
    let secs = t.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    let skipped: u64 = stats.skipped.values().sum();
    println!("backup: {:.2} s", secs);
    println!(
        "  objects: {} written, {skipped} skipped ({:?}); {:.0} objects/s (listed objects / s: {:.0})",
        stats.objects,
        stats.skipped,
        stats.objects as f64 / secs,
        (stats.objects + skipped) as f64 / secs
    );
    println!(
        "  archive: {} bytes compressed ({:.1} MiB), {} bytes raw ({:.1} MiB), ratio {:.1}",
        stats.compressed_bytes,
        stats.compressed_bytes as f64 / 1048576.0,
        stats.raw_bytes,
        stats.raw_bytes as f64 / 1048576.0,
        stats.raw_bytes as f64 / stats.compressed_bytes.max(1) as f64
    );
    println!("  owner references removed: {}", stats.owner_references_removed);
    println!("  RSS before backup (seeded cluster): {:.1} MiB", mib(rss_before));
    if reset {
        println!(
            "  peak RSS during backup: {:.1} MiB (increase over before: {:.1} MiB)",
            mib(peak),
            mib(peak.saturating_sub(rss_before))
        );
    } else {
        println!(
            "  peak RSS of the process (could not reset VmHWM, so this includes seeding): {:.1} MiB",
            mib(peak)
        );
    }

    if args.restore {
        let target = InMemoryCluster::new();
        let rss_before = status_kib("VmRSS:");
        let reset = reset_peak();
        let t = Instant::now();
        let report = restore_resources(&store, &path, &target, &RestoreOptions::default()).await?;
        let secs = t.elapsed().as_secs_f64();
        let peak = status_kib("VmHWM:");
        println!("restore: {:.2} s", secs);
        println!(
            "  objects: {} created, {} replaced, {} retained, {} failed; {:.0} objects/s",
            report.created,
            report.replaced,
            report.retained,
            report.failed,
            report.objects.len() as f64 / secs
        );
        if let Some(f) = report.failures().next() {
            println!("  first failure: {} {:?}", f.object, f.outcome);
        }
        println!("  RSS before restore: {:.1} MiB", mib(rss_before));
        if reset {
            println!(
                "  peak RSS during restore: {:.1} MiB (increase: {:.1} MiB, which includes the {} objects \
                 now held by the target in-memory cluster and the per-object report)",
                mib(peak),
                mib(peak.saturating_sub(rss_before)),
                target.len()
            );
        }
    }
    Ok(())
}
