//! The pipe-cleaner verdict, purely: what kernelci-backend reported for a revision (its
//! builds, test cases and regressions, counted and keyed), compared with the previous
//! revisions of the branch — "the number of builds and test results as well as their pass
//! rates should be similar" made into numbers, thresholds and named differences.
//!
//! The input model is here; `prod::verify` fills it from the backend API.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A build, as the dashboard tells builds apart: `(arch, defconfig_full, build_environment)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BuildKey {
    pub arch: String,
    pub defconfig_full: String,
    pub build_environment: String,
}

/// Where tests ran: `(plan, device_type, lab_name)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TestKey {
    pub plan: String,
    pub device_type: String,
    pub lab_name: String,
}

/// Builds of a revision by outcome (`status` and `warnings` of `/build`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildCounts {
    pub total: u64,
    /// `PASS` without warnings.
    pub pass: u64,
    /// `PASS` with warnings.
    pub pass_warnings: u64,
    pub fail: u64,
    /// `BUILD`, `UNKNOWN`, anything else.
    pub other: u64,
}

/// Test cases of a revision by `status` (`/test/case`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub total: u64,
    pub pass: u64,
    pub fail: u64,
    pub skip: u64,
    /// `ERROR`, `UNKNOWN`, anything else.
    pub other: u64,
}

/// What one test key reported in a revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResults {
    pub pass: u64,
    pub fail: u64,
    /// Every other status.
    pub other: u64,
}

/// Everything the comparison needs of one revision of the branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// `kernel` of the backend: `git describe` of the revision (the tag for a pipe cleaner).
    pub kernel: String,
    pub git_commit: String,
    /// `created_on` of its `/job` document, ms since the epoch.
    pub created_ms: u64,
    pub builds: BuildCounts,
    pub tests: TestCounts,
    /// `/count/test_regression` for the revision.
    pub regressions: u64,
    /// Each build's `status`.
    pub build_keys: BTreeMap<BuildKey, String>,
    pub test_keys: BTreeMap<TestKey, KeyResults>,
    /// Labs that reported any test group.
    pub labs: BTreeSet<String>,
}

impl Revision {
    /// Builds that passed (with or without warnings) over all builds; `None` without builds.
    pub fn build_pass_rate(&self) -> Option<f64> {
        let b = &self.builds;
        (b.total > 0).then(|| (b.pass + b.pass_warnings) as f64 / b.total as f64)
    }

    /// Test cases that passed over all test cases; `None` without tests.
    pub fn test_pass_rate(&self) -> Option<f64> {
        let t = &self.tests;
        (t.total > 0).then(|| t.pass as f64 / t.total as f64)
    }
}
