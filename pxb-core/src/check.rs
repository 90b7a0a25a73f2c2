//! Location validation: can this identity list, write, read back and delete in this location?
//!
//! [`check_location`] runs the steps in order and reports each one with its outcome and, on
//! failure, the backend's explanation (which says which permission or setting is missing).
//! It leaves nothing behind: the probe object it writes is deleted even if reading it back fails.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::credential::TokenSource;
use crate::store::{ObjectStore, PutOptions};
use crate::{Error, ObjectPath, Result};

/// Where probe objects are written, under the location's root.
pub const PROBE_PREFIX: &str = "pxb-probe";

/// One step of a location check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStep {
    /// Reading the settings and building the client (credential files, URLs, certificates).
    Configure,
    /// Obtaining an access token for the location's identity.
    Authenticate,
    /// Listing objects.
    List,
    /// Writing a probe object.
    Write,
    /// Reading the probe back and comparing it.
    Read,
    /// Deleting the probe.
    Delete,
}

impl CheckStep {
    /// The step's name as printed.
    pub fn name(self) -> &'static str {
        match self {
            CheckStep::Configure => "configure",
            CheckStep::Authenticate => "authenticate",
            CheckStep::List => "list",
            CheckStep::Write => "write",
            CheckStep::Read => "read",
            CheckStep::Delete => "delete",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It worked.
    Passed,
    /// It failed; the detail says why.
    Failed,
    /// It was not attempted because an earlier step failed.
    Skipped,
}

/// The report of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Which step.
    pub step: CheckStep,
    /// How it ended.
    pub outcome: StepOutcome,
    /// What happened, in words.
    pub detail: String,
    /// The error's kind on failure (see [`Error::kind`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

/// The report of a whole check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The location checked.
    pub location: String,
    /// Whether every step passed.
    pub passed: bool,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
}

impl CheckReport {
    /// A report for a location whose client could not even be built.
    pub fn configuration_failed(location: impl Into<String>, err: &Error) -> Self {
        let mut r = Self {
            location: location.into(),
            passed: false,
            steps: Vec::new(),
        };
        r.steps.push(failed(CheckStep::Configure, err, Duration::ZERO));
        for step in [
            CheckStep::Authenticate,
            CheckStep::List,
            CheckStep::Write,
            CheckStep::Read,
            CheckStep::Delete,
        ] {
            r.steps.push(skipped(step));
        }
        r
    }

    /// The first failed step, if any.
    pub fn first_failure(&self) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.outcome == StepOutcome::Failed)
    }
}

/// One line per step (`PASS list  listed 3 object(s) (9 ms)`), then a verdict line.
impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checking {}", self.location)?;
        for s in &self.steps {
            let tag = match s.outcome {
                StepOutcome::Passed => "PASS",
                StepOutcome::Failed => "FAIL",
                StepOutcome::Skipped => "SKIP",
            };
            writeln!(
                f,
                "{tag} {:<12} {} ({} ms)",
                s.step.name(),
                s.detail,
                s.elapsed_ms
            )?;
        }
        match self.first_failure() {
            None => write!(f, "location OK: every step passed"),
            Some(s) => write!(f, "location check FAILED at step {:?}", s.step.name()),
        }
    }
}

/// Settings of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The longest any one step may take before it counts as failed.
    pub step_timeout: Duration,
    /// Scopes to request a token for in the authenticate step.
    pub scopes: Vec<String>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(8),
            scopes: Vec::new(),
        }
    }
}

fn failed(step: CheckStep, err: &Error, elapsed: Duration) -> StepReport {
    StepReport {
        step,
        outcome: StepOutcome::Failed,
        detail: err.to_string(),
        error_kind: Some(err.kind()),
        elapsed_ms: elapsed.as_millis() as u64,
    }
}

fn skipped(step: CheckStep) -> StepReport {
    StepReport {
        step,
        outcome: StepOutcome::Skipped,
        detail: "not attempted: an earlier step failed".into(),
        error_kind: None,
        elapsed_ms: 0,
    }
}

async fn run<T>(
    step: CheckStep,
    timeout: Duration,
    fut: impl Future<Output = Result<(T, String)>>,
) -> (Option<T>, StepReport) {
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::unavailable(format!(
            "no answer within {} s",
            timeout.as_secs_f32()
        ))),
    };
    let elapsed = start.elapsed();
    match result {
        Ok((value, detail)) => (
            Some(value),
            StepReport {
                step,
                outcome: StepOutcome::Passed,
                detail,
                error_kind: None,
                elapsed_ms: elapsed.as_millis() as u64,
            },
        ),
        Err(e) => (None, failed(step, &e, elapsed)),
    }
}

/// Checks that `store` can be listed, written, read back and deleted from, and, given a
/// `credential`, that a token can be obtained first.
pub async fn check_location(
    location: &str,
    store: &dyn ObjectStore,
    credential: Option<&dyn TokenSource>,
    opts: &CheckOptions,
) -> CheckReport {
    let t = opts.step_timeout;
    let mut steps = vec![StepReport {
        step: CheckStep::Configure,
        outcome: StepOutcome::Passed,
        detail: format!("client for {store} built"),
        error_kind: None,
        elapsed_ms: 0,
    }];
    let report = |steps: Vec<StepReport>| CheckReport {
        location: location.to_owned(),
        passed: steps.iter().all(|s| s.outcome == StepOutcome::Passed),
        steps,
    };

    if let Some(cred) = credential {
        let scopes: Vec<&str> = opts.scopes.iter().map(String::as_str).collect();
        let (ok, r) = run(CheckStep::Authenticate, t, async {
            let token = cred.token(&scopes).await?;
            let left = token
                .expires_at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Ok((
                (),
                format!(
                    "token issued for {}, valid for {} more minutes",
                    cred.describe(),
                    left.as_secs() / 60
                ),
            ))
        })
        .await;
        steps.push(r);
        if ok.is_none() {
            steps.extend(
                [
                    CheckStep::List,
                    CheckStep::Write,
                    CheckStep::Read,
                    CheckStep::Delete,
                ]
                .map(skipped),
            );
            return report(steps);
        }
    }

    let (_, r) = run(CheckStep::List, t, async {
        let page = store.list("", None, 10).await?;
        let more = if page.next.is_some() { " (and more)" } else { "" };
        Ok(((), format!("listed {} object(s){more}", page.objects.len())))
    })
    .await;
    steps.push(r);

    let probe = probe_path();
    let body = Bytes::from(format!("pxb location probe {probe}\n"));
    let (written, r) = run(CheckStep::Write, t, async {
        let put = store.put(&probe, body.clone(), PutOptions::create()).await?;
        Ok(((), format!("wrote probe {probe} ({} bytes)", put.size)))
    })
    .await;
    steps.push(r);
    if written.is_none() {
        steps.extend([CheckStep::Read, CheckStep::Delete].map(skipped));
        return report(steps);
    }

    let (_, r) = run(CheckStep::Read, t, async {
        let got = store.get(&probe).await?.bytes_at_most(body.len() as u64).await?;
        if got != body {
            return Err(Error::corrupt(format!(
                "probe {probe} read back differs from what was written"
            )));
        }
        Ok(((), format!("read probe back ({} bytes, identical)", got.len())))
    })
    .await;
    steps.push(r);

    let (_, r) = run(CheckStep::Delete, t, async {
        store.delete(&probe).await?;
        match store.head(&probe).await {
            Err(Error::NotFound { .. }) => Ok(((), format!("deleted probe {probe}"))),
            Ok(_) => Err(Error::other(format!("probe {probe} is still there after delete"))),
            Err(e) => Err(e),
        }
    })
    .await;
    steps.push(r);
    report(steps)
}

fn probe_path() -> ObjectPath {
    let name = format!("{PROBE_PREFIX}/{:016x}", rand::random::<u64>());
    // Hex digits under a constant prefix always form a valid name.
    ObjectPath::parse(name).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemory;

    #[tokio::test]
    async fn passes_on_a_working_store_and_cleans_up() {
        let store = InMemory::new();
        let r = check_location("memory://", &store, None, &CheckOptions::default()).await;
        assert!(r.passed, "{r:?}");
        let names: Vec<_> = r.steps.iter().map(|s| s.step.name()).collect();
        assert_eq!(names, ["configure", "list", "write", "read", "delete"]);
        assert!(store.is_empty(), "probe left behind");
        let text = r.to_string();
        assert!(text.starts_with("checking memory://\nPASS configure"), "{text}");
        assert!(text.ends_with("location OK: every step passed"), "{text}");
    }

    #[test]
    fn configuration_failure_skips_the_rest() {
        let r = CheckReport::configuration_failed("x", &Error::invalid("no token file"));
        assert!(!r.passed);
        assert_eq!(r.first_failure().map(|s| s.step), Some(CheckStep::Configure));
        assert!(r.steps[1..].iter().all(|s| s.outcome == StepOutcome::Skipped));
    }
}
