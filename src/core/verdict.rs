//! The pipe-cleaner verdict, purely: what kernelci-backend reported for a revision (its
//! builds, test cases and regressions, counted and keyed), compared with the previous
//! revisions of the branch — "the number of builds and test results as well as their pass
//! rates should be similar" made into numbers, thresholds and named differences.
//!
//! Here: the input model (`Revision`, which `prod::verify` fills from the backend API), the
//! site's `[verify]` thresholds, [`compare`] (per-metric rows against the baseline's median
//! and spread, the differences by name — labs, build keys, test keys, new failures — and a
//! [`Reason`] for every threshold crossed), and the renderers: [`table`] for a terminal,
//! [`markdown`] for a report to paste, [`svg`] for the chart of the last revisions. Nothing
//! here reads a file, the network or the clock: deciding that a revision has settled is the
//! caller's ([`grown`] says which counts moved between two reads).

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

/// Slack for comparing floating-point drops with their thresholds: a drop exactly at the
/// threshold is within it ("at most 5 %").
const EPS: f64 = 1e-9;

impl std::fmt::Display for BuildKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}, {}, {})",
            self.arch, self.defconfig_full, self.build_environment
        )
    }
}

impl std::fmt::Display for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}, {}, {})",
            self.plan, self.device_type, self.lab_name
        )
    }
}

/// Which counts grew from one read of a revision to a later one: empty once the revision has
/// settled (results arrive from the labs for hours and nothing marks a revision finished,
/// so "settled" is "the same counts twice, some time apart" — the time is the caller's).
pub fn grown(earlier: &Revision, later: &Revision) -> Vec<Metric> {
    [
        Metric::Builds,
        Metric::TestCases,
        Metric::Regressions,
        Metric::Labs,
        Metric::BuildKeys,
        Metric::TestKeys,
    ]
    .into_iter()
    .filter(|m| m.value(later) != m.value(earlier))
    .collect()
}

// ---------------------------------------------------------------------------------------
// Thresholds
// ---------------------------------------------------------------------------------------

/// How far a revision may stray from its baseline and still be "similar": the site file's
/// `[verify]` table. Every field has a default (below, with why); an unknown field is an
/// error, and [`Thresholds::validate`] names a value that cannot be right.
///
/// Counts are judged against the baseline *median* (robust to one odd revision among the
/// previous ones), regressions against the baseline *maximum* (they wander from week to
/// week). Only drops count as differences: more builds or better pass rates are shown, not
/// judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Thresholds {
    /// Builds may be at most this many percent below the baseline median (default 5: the
    /// build matrix is fixed by `build-configs.yaml`, so a pipe cleaner builds the same set
    /// every week; 5 % of ~200 builds is already ten builds gone).
    pub build_total_drop_percent: f64,
    /// Test cases may be at most this many percent below the baseline median (default 10:
    /// devices go in and out of labs' health checks, so test totals wander more).
    pub test_total_drop_percent: f64,
    /// The build pass rate may be at most this many percentage points below the baseline
    /// median (default 3: builds are deterministic; a drop is a toolchain or image problem,
    /// which is what a pipe cleaner is for).
    pub build_pass_rate_drop_points: f64,
    /// The test pass rate may be at most this many percentage points below the baseline
    /// median (default 5: flaky tests and lab hiccups move it by a few points).
    pub test_pass_rate_drop_points: f64,
    /// Regressions may be at most the baseline maximum plus this (default 5).
    pub regressions_above_max: u64,
    /// Labs that reported before and nothing now, tolerated (default 0: a silent lab is
    /// always worth a look — its callback, its token or its LAVA is broken).
    pub missing_labs: u64,
    /// Build keys built before and missing now, tolerated (default 0: a build that
    /// disappeared is a configuration change or a broken builder, either way to be named).
    pub missing_build_keys: u64,
    /// Test keys reported before and missing now, in labs that did report, tolerated
    /// (default 3: a device type offline in one lab is routine; test keys of a lab that
    /// reported nothing are counted under `missing-labs`, not here).
    pub missing_test_keys: u64,
    /// Build keys that passed before and fail now, tolerated (default 0).
    pub new_build_failures: u64,
    /// Test keys whose failure count rose above anything the baseline saw, tolerated
    /// (default 5: flaky test cases push one key or another above its maximum now and then).
    pub new_test_failures: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            build_total_drop_percent: 5.0,
            test_total_drop_percent: 10.0,
            build_pass_rate_drop_points: 3.0,
            test_pass_rate_drop_points: 5.0,
            regressions_above_max: 5,
            missing_labs: 0,
            missing_build_keys: 0,
            missing_test_keys: 3,
            new_build_failures: 0,
            new_test_failures: 5,
        }
    }
}

/// A threshold that cannot be right; `field` is its name in the `[verify]` table
/// (kebab-case, without the table's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ThresholdError {
    pub field: String,
    pub reason: String,
}

impl Thresholds {
    /// Checks the percentages and points: finite, from 0 to 100.
    pub fn validate(&self) -> Result<(), ThresholdError> {
        let fields = [
            ("build-total-drop-percent", self.build_total_drop_percent),
            ("test-total-drop-percent", self.test_total_drop_percent),
            (
                "build-pass-rate-drop-points",
                self.build_pass_rate_drop_points,
            ),
            (
                "test-pass-rate-drop-points",
                self.test_pass_rate_drop_points,
            ),
        ];
        for (field, value) in fields {
            if !value.is_finite() || !(0.0..=100.0).contains(&value) {
                return Err(ThresholdError {
                    field: field.to_owned(),
                    reason: format!("must be a number from 0 to 100, not {value}"),
                });
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// One number of a revision, as a row of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    Builds,
    BuildsPass,
    BuildsPassWarnings,
    BuildsFail,
    BuildsOther,
    BuildPassRate,
    TestCases,
    TestCasesPass,
    TestCasesFail,
    TestCasesSkip,
    TestCasesOther,
    TestPassRate,
    Regressions,
    Labs,
    BuildKeys,
    TestKeys,
}

impl Metric {
    /// Every metric, in the order of the table.
    pub const ALL: [Metric; 16] = [
        Metric::Builds,
        Metric::BuildsPass,
        Metric::BuildsPassWarnings,
        Metric::BuildsFail,
        Metric::BuildsOther,
        Metric::BuildPassRate,
        Metric::TestCases,
        Metric::TestCasesPass,
        Metric::TestCasesFail,
        Metric::TestCasesSkip,
        Metric::TestCasesOther,
        Metric::TestPassRate,
        Metric::Regressions,
        Metric::Labs,
        Metric::BuildKeys,
        Metric::TestKeys,
    ];

    /// Its name for people.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Builds => "builds",
            Metric::BuildsPass => "builds PASS",
            Metric::BuildsPassWarnings => "builds PASS with warnings",
            Metric::BuildsFail => "builds FAIL",
            Metric::BuildsOther => "builds other",
            Metric::BuildPassRate => "build pass rate",
            Metric::TestCases => "test cases",
            Metric::TestCasesPass => "test cases PASS",
            Metric::TestCasesFail => "test cases FAIL",
            Metric::TestCasesSkip => "test cases SKIP",
            Metric::TestCasesOther => "test cases other",
            Metric::TestPassRate => "test pass rate",
            Metric::Regressions => "regressions",
            Metric::Labs => "labs",
            Metric::BuildKeys => "build keys",
            Metric::TestKeys => "test keys",
        }
    }

    /// A pass rate (in percent), not a count.
    pub fn is_rate(self) -> bool {
        matches!(self, Metric::BuildPassRate | Metric::TestPassRate)
    }

    /// Its value for `rev`: a count, or a pass rate in percent (`None` without builds/tests).
    pub fn value(self, rev: &Revision) -> Option<f64> {
        let (b, t) = (&rev.builds, &rev.tests);
        let count = |n: u64| Some(n as f64);
        match self {
            Metric::Builds => count(b.total),
            Metric::BuildsPass => count(b.pass),
            Metric::BuildsPassWarnings => count(b.pass_warnings),
            Metric::BuildsFail => count(b.fail),
            Metric::BuildsOther => count(b.other),
            Metric::BuildPassRate => rev.build_pass_rate().map(|r| r * 100.0),
            Metric::TestCases => count(t.total),
            Metric::TestCasesPass => count(t.pass),
            Metric::TestCasesFail => count(t.fail),
            Metric::TestCasesSkip => count(t.skip),
            Metric::TestCasesOther => count(t.other),
            Metric::TestPassRate => rev.test_pass_rate().map(|r| r * 100.0),
            Metric::Regressions => count(rev.regressions),
            Metric::Labs => count(rev.labs.len() as u64),
            Metric::BuildKeys => count(rev.build_keys.len() as u64),
            Metric::TestKeys => count(rev.test_keys.len() as u64),
        }
    }

    fn limit(self, th: &Thresholds) -> Option<Limit> {
        match self {
            Metric::Builds => Some(Limit::DropPercent {
                percent: th.build_total_drop_percent,
            }),
            Metric::TestCases => Some(Limit::DropPercent {
                percent: th.test_total_drop_percent,
            }),
            Metric::BuildPassRate => Some(Limit::DropPoints {
                points: th.build_pass_rate_drop_points,
            }),
            Metric::TestPassRate => Some(Limit::DropPoints {
                points: th.test_pass_rate_drop_points,
            }),
            Metric::Regressions => Some(Limit::AboveMax {
                by: th.regressions_above_max,
            }),
            _ => None,
        }
    }
}

/// The baseline of one metric over the previous revisions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The middle value (the mean of the two middle ones for an even number).
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The threshold of a metric row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Limit {
    /// At most this many percent below the baseline median.
    DropPercent { percent: f64 },
    /// At most this many percentage points below the baseline median.
    DropPoints { points: f64 },
    /// At most the baseline maximum plus this.
    AboveMax { by: u64 },
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::DropPercent { percent } => write!(f, "-{} %", num(*percent)),
            Limit::DropPoints { points } => write!(f, "-{} pt", num(*points)),
            Limit::AboveMax { by } => write!(f, "max+{by}"),
        }
    }
}

/// One metric of the new revision against its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub metric: Metric,
    /// Counts as counts, pass rates in percent.
    pub new: Option<f64>,
    /// `None` without previous revisions (or, for a pass rate, none with builds/tests).
    pub baseline: Option<Spread>,
    /// `new − median` (percentage points for a pass rate).
    pub delta: Option<f64>,
    /// `None`: shown, not judged.
    pub threshold: Option<Limit>,
    pub crossed: bool,
}

// ---------------------------------------------------------------------------------------
// Named differences
// ---------------------------------------------------------------------------------------

/// A lab that reported in the baseline and nothing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingLab {
    pub lab: String,
    /// In how many of the `of` previous revisions it reported.
    pub reported_in: usize,
    pub of: usize,
}

/// A build key built in the baseline and missing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingBuildKey {
    pub key: BuildKey,
    pub built_in: usize,
    pub of: usize,
}

/// A test key reported in the baseline and missing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingTestKey {
    pub key: TestKey,
    pub reported_in: usize,
    pub of: usize,
    /// Its lab reported nothing: the lab is the difference, this key is not counted alone.
    pub lab_missing: bool,
}

/// A build key that passed in the baseline and fails now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBuildFailure {
    pub key: BuildKey,
    /// In how many of the previous revisions that built it it passed.
    pub passed_in: usize,
    pub built_in: usize,
}

/// A test key whose failures rose above anything the baseline saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTestFailures {
    pub key: TestKey,
    pub fail: u64,
    /// The most failures of this key in a previous revision that reported it.
    pub previous_max: u64,
    pub reported_in: usize,
}

/// What differs, by name, whether or not a threshold is crossed.
///
/// A key (or lab) is *expected* when it was there in a strict majority of the previous
/// revisions or in the most recent one: a majority ignores a one-off (an experimental config
/// built once, a lab's bad week), the most recent catches what was added last week. "Passed
/// in the baseline" for a build key is likewise a majority of the previous revisions that
/// built it. A test key's failures are new when they are more than its maximum in any
/// previous revision that reported it (flaky tests stay within it); a key never seen before
/// is not judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differences {
    pub missing_labs: Vec<MissingLab>,
    pub missing_build_keys: Vec<MissingBuildKey>,
    pub missing_test_keys: Vec<MissingTestKey>,
    pub new_build_failures: Vec<NewBuildFailure>,
    pub new_test_failures: Vec<NewTestFailures>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.missing_labs.is_empty()
            && self.missing_build_keys.is_empty()
            && self.missing_test_keys.is_empty()
            && self.new_build_failures.is_empty()
            && self.new_test_failures.is_empty()
    }

    /// Missing test keys of labs that did report: the ones `missing-test-keys` counts.
    pub fn missing_test_keys_counted(&self) -> impl Iterator<Item = &MissingTestKey> {
        self.missing_test_keys.iter().filter(|m| !m.lab_missing)
    }

    fn of(new: &Revision, prev: &[&Revision]) -> Differences {
        let of = prev.len();
        let latest = prev.last();
        let expected = |seen: usize, in_latest: bool| seen * 2 > of || in_latest;

        let mut labs: BTreeMap<&String, usize> = BTreeMap::new();
        let mut builds: BTreeMap<&BuildKey, (usize, usize)> = BTreeMap::new();
        let mut tests: BTreeMap<&TestKey, (usize, u64)> = BTreeMap::new();
        for r in prev {
            for lab in &r.labs {
                *labs.entry(lab).or_default() += 1;
            }
            for (key, status) in &r.build_keys {
                let e = builds.entry(key).or_default();
                e.0 += 1;
                e.1 += usize::from(status == "PASS");
            }
            for (key, res) in &r.test_keys {
                let e = tests.entry(key).or_default();
                e.0 += 1;
                e.1 = e.1.max(res.fail);
            }
        }

        let missing_labs: Vec<MissingLab> = labs
            .iter()
            .filter(|(lab, &seen)| {
                !new.labs.contains(**lab)
                    && expected(seen, latest.is_some_and(|r| r.labs.contains(**lab)))
            })
            .map(|(lab, &seen)| MissingLab {
                lab: (*lab).clone(),
                reported_in: seen,
                of,
            })
            .collect();
        let missing_build_keys = builds
            .iter()
            .filter(|(key, &(seen, _))| {
                !new.build_keys.contains_key(**key)
                    && expected(
                        seen,
                        latest.is_some_and(|r| r.build_keys.contains_key(**key)),
                    )
            })
            .map(|(key, &(seen, _))| MissingBuildKey {
                key: (*key).clone(),
                built_in: seen,
                of,
            })
            .collect();
        let missing_test_keys = tests
            .iter()
            .filter(|(key, &(seen, _))| {
                !new.test_keys.contains_key(**key)
                    && expected(
                        seen,
                        latest.is_some_and(|r| r.test_keys.contains_key(**key)),
                    )
            })
            .map(|(key, &(seen, _))| MissingTestKey {
                key: (*key).clone(),
                reported_in: seen,
                of,
                lab_missing: missing_labs.iter().any(|l| l.lab == key.lab_name),
            })
            .collect();
        let new_build_failures = new
            .build_keys
            .iter()
            .filter(|(_, status)| *status == "FAIL")
            .filter_map(|(key, _)| {
                let &(built_in, passed_in) = builds.get(key)?;
                (passed_in * 2 > built_in).then(|| NewBuildFailure {
                    key: key.clone(),
                    passed_in,
                    built_in,
                })
            })
            .collect();
        let new_test_failures = new
            .test_keys
            .iter()
            .filter_map(|(key, res)| {
                let &(reported_in, previous_max) = tests.get(key)?;
                (res.fail > previous_max).then(|| NewTestFailures {
                    key: key.clone(),
                    fail: res.fail,
                    previous_max,
                    reported_in,
                })
            })
            .collect();
        Differences {
            missing_labs,
            missing_build_keys,
            missing_test_keys,
            new_build_failures,
            new_test_failures,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reasons
// ---------------------------------------------------------------------------------------

/// One threshold crossed, with its numbers. Key reasons carry how many of their kind there
/// are (`count`) and how many the threshold tolerates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// Builds or test cases dropped below the baseline median by more than allowed.
    CountDrop {
        metric: Metric,
        new: u64,
        median: f64,
        drop_percent: f64,
        threshold_percent: f64,
    },
    /// A pass rate dropped below the baseline median by more points than allowed.
    RateDrop {
        metric: Metric,
        new_percent: f64,
        median_percent: f64,
        drop_points: f64,
        threshold_points: f64,
    },
    /// More regressions than the baseline maximum plus the threshold.
    Regressions {
        new: u64,
        baseline_max: u64,
        above: u64,
        threshold: u64,
    },
    MissingLab {
        lab: String,
        reported_in: usize,
        of: usize,
        count: usize,
        threshold: u64,
    },
    MissingBuildKey {
        key: BuildKey,
        built_in: usize,
        of: usize,
        count: usize,
        threshold: u64,
    },
    MissingTestKey {
        key: TestKey,
        reported_in: usize,
        of: usize,
        count: usize,
        threshold: u64,
    },
    NewBuildFailure {
        key: BuildKey,
        passed_in: usize,
        built_in: usize,
        count: usize,
        threshold: u64,
    },
    NewTestFailures {
        key: TestKey,
        fail: u64,
        previous_max: u64,
        count: usize,
        threshold: u64,
    },
}

impl Reason {
    /// The field of the `[verify]` table this reason crossed.
    pub fn threshold(&self) -> &'static str {
        match self {
            Reason::CountDrop {
                metric: Metric::TestCases,
                ..
            } => "test-total-drop-percent",
            Reason::CountDrop { .. } => "build-total-drop-percent",
            Reason::RateDrop {
                metric: Metric::TestPassRate,
                ..
            } => "test-pass-rate-drop-points",
            Reason::RateDrop { .. } => "build-pass-rate-drop-points",
            Reason::Regressions { .. } => "regressions-above-max",
            Reason::MissingLab { .. } => "missing-labs",
            Reason::MissingBuildKey { .. } => "missing-build-keys",
            Reason::MissingTestKey { .. } => "missing-test-keys",
            Reason::NewBuildFailure { .. } => "new-build-failures",
            Reason::NewTestFailures { .. } => "new-test-failures",
        }
    }
}

/// `5` for 5.0, `12.5` for 12.5: counts and thresholds as people write them.
fn num(x: f64) -> String {
    if (x - x.round()).abs() < EPS {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::CountDrop {
                metric,
                new,
                median,
                drop_percent,
                threshold_percent,
            } => write!(
                f,
                "{}: {new} is {drop_percent:.1} % below the baseline median {} (threshold {} %)",
                metric.label(),
                num(*median),
                num(*threshold_percent)
            ),
            Reason::RateDrop {
                metric,
                new_percent,
                median_percent,
                drop_points,
                threshold_points,
            } => write!(
                f,
                "{}: {new_percent:.1} % is {drop_points:.1} points below the baseline median \
                 {median_percent:.1} % (threshold {} points)",
                metric.label(),
                num(*threshold_points)
            ),
            Reason::Regressions {
                new,
                baseline_max,
                above,
                threshold,
            } => write!(
                f,
                "regressions: {new} is {above} above the baseline maximum {baseline_max} \
                 (threshold {threshold})"
            ),
            Reason::MissingLab {
                lab,
                reported_in,
                of,
                count,
                threshold,
            } => write!(
                f,
                "lab {lab}: reported nothing (it reported in {reported_in} of {of} previous \
                 revisions); {} missing, threshold {threshold}",
                plural(*count, "lab", "labs")
            ),
            Reason::MissingBuildKey {
                key,
                built_in,
                of,
                count,
                threshold,
            } => write!(
                f,
                "build {key}: missing (built in {built_in} of {of} previous revisions); {} \
                 missing, threshold {threshold}",
                plural(*count, "build key", "build keys")
            ),
            Reason::MissingTestKey {
                key,
                reported_in,
                of,
                count,
                threshold,
            } => write!(
                f,
                "test {key}: missing (reported in {reported_in} of {of} previous revisions); \
                 {} missing in labs that reported, threshold {threshold}",
                plural(*count, "test key", "test keys")
            ),
            Reason::NewBuildFailure {
                key,
                passed_in,
                built_in,
                count,
                threshold,
            } => write!(
                f,
                "build {key}: FAIL now (it passed in {passed_in} of the {built_in} previous \
                 revisions that built it); {} newly failing, threshold {threshold}",
                plural(*count, "build key", "build keys")
            ),
            Reason::NewTestFailures {
                key,
                fail,
                previous_max,
                count,
                threshold,
            } => write!(
                f,
                "test {key}: {} (at most {previous_max} in a previous revision); {} with more \
                 failures, threshold {threshold}",
                plural(*fail as usize, "failure", "failures"),
                plural(*count, "test key", "test keys")
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The comparison
// ---------------------------------------------------------------------------------------

/// The outcome of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No threshold crossed.
    Similar,
    /// No previous revision to compare with: similar by default, and said so.
    NoBaseline,
    /// At least one threshold crossed; the reasons name them.
    Different,
}

/// A revision against the previous ones of its branch; `Serialize` for `--json` (each
/// reason with its `message`, the sentence people read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// `kernel` of the new revision.
    pub kernel: String,
    /// The previous revisions compared with, most recent first.
    pub baseline: Vec<String>,
    pub verdict: Verdict,
    pub metrics: Vec<MetricRow>,
    pub differences: Differences,
    #[serde(serialize_with = "reasons_with_messages")]
    pub reasons: Vec<Reason>,
    pub thresholds: Thresholds,
}

fn reasons_with_messages<S: serde::Serializer>(
    reasons: &[Reason],
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct WithMessage<'a> {
        #[serde(flatten)]
        reason: &'a Reason,
        message: String,
    }
    s.collect_seq(reasons.iter().map(|reason| WithMessage {
        reason,
        message: reason.to_string(),
    }))
}

impl Comparison {
    /// No threshold crossed (also true, by default, without previous revisions).
    pub fn similar(&self) -> bool {
        self.reasons.is_empty()
    }

    /// Every threshold crossed, in the order of the table, then labs, build keys, test
    /// keys, new build failures, new test failures.
    pub fn reasons(&self) -> Vec<Reason> {
        self.reasons.clone()
    }

    /// The `[verify]` fields crossed, each once, in the order of the reasons.
    pub fn thresholds_crossed(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for r in &self.reasons {
            if !out.contains(&r.threshold()) {
                out.push(r.threshold());
            }
        }
        out
    }

    /// There were previous revisions to compare with.
    pub fn has_baseline(&self) -> bool {
        !self.baseline.is_empty()
    }

    /// The row of `metric`.
    pub fn row(&self, metric: Metric) -> Option<&MetricRow> {
        self.metrics.iter().find(|r| r.metric == metric)
    }
}

/// `new` against `previous` (any order; a revision with `new`'s kernel is left out — a
/// revision is not its own baseline). Pure: the same inputs give the same comparison.
pub fn compare(new: &Revision, previous: &[Revision], th: &Thresholds) -> Comparison {
    let mut prev: Vec<&Revision> = previous.iter().filter(|r| r.kernel != new.kernel).collect();
    prev.sort_by_key(|r| r.created_ms);

    let metrics: Vec<MetricRow> = Metric::ALL
        .into_iter()
        .map(|metric| metric_row(metric, new, &prev, th))
        .collect();
    let differences = Differences::of(new, &prev);
    let mut reasons: Vec<Reason> = metrics.iter().filter_map(row_reason).collect();
    reasons.extend(key_reasons(&differences, th));

    let verdict = if !reasons.is_empty() {
        Verdict::Different
    } else if prev.is_empty() {
        Verdict::NoBaseline
    } else {
        Verdict::Similar
    };
    Comparison {
        kernel: new.kernel.clone(),
        baseline: prev.iter().rev().map(|r| r.kernel.clone()).collect(),
        verdict,
        metrics,
        differences,
        reasons,
        thresholds: th.clone(),
    }
}

fn metric_row(metric: Metric, new: &Revision, prev: &[&Revision], th: &Thresholds) -> MetricRow {
    let value = metric.value(new);
    let values: Vec<f64> = prev.iter().filter_map(|r| metric.value(r)).collect();
    let baseline = Spread::of(&values);
    let delta = value.zip(baseline).map(|(v, b)| v - b.median);
    let threshold = metric.limit(th);
    let crossed = match (threshold, value, baseline) {
        (Some(Limit::DropPercent { percent }), Some(v), Some(b)) if b.median > 0.0 => {
            (b.median - v) * 100.0 / b.median > percent + EPS
        }
        (Some(Limit::DropPoints { points }), Some(v), Some(b)) => b.median - v > points + EPS,
        // No pass rate now (nothing built or tested) where there was one: the totals'
        // rows judge the drop to nothing; the rate row says so too.
        (Some(Limit::DropPoints { .. }), None, Some(_)) => false,
        (Some(Limit::AboveMax { by }), Some(v), Some(b)) => v > b.max + by as f64 + EPS,
        _ => false,
    };
    MetricRow {
        metric,
        new: value,
        baseline,
        delta,
        threshold,
        crossed,
    }
}

fn row_reason(row: &MetricRow) -> Option<Reason> {
    if !row.crossed {
        return None;
    }
    let (v, b) = (row.new?, row.baseline?);
    Some(match row.threshold? {
        Limit::DropPercent { percent } => Reason::CountDrop {
            metric: row.metric,
            new: v as u64,
            median: b.median,
            drop_percent: (b.median - v) * 100.0 / b.median,
            threshold_percent: percent,
        },
        Limit::DropPoints { points } => Reason::RateDrop {
            metric: row.metric,
            new_percent: v,
            median_percent: b.median,
            drop_points: b.median - v,
            threshold_points: points,
        },
        Limit::AboveMax { by } => Reason::Regressions {
            new: v as u64,
            baseline_max: b.max as u64,
            above: (v - b.max) as u64,
            threshold: by,
        },
    })
}

fn key_reasons(d: &Differences, th: &Thresholds) -> Vec<Reason> {
    let mut out = Vec::new();
    let over = |count: usize, threshold: u64| count as u64 > threshold;

    let count = d.missing_labs.len();
    if over(count, th.missing_labs) {
        out.extend(d.missing_labs.iter().map(|m| Reason::MissingLab {
            lab: m.lab.clone(),
            reported_in: m.reported_in,
            of: m.of,
            count,
            threshold: th.missing_labs,
        }));
    }
    let count = d.missing_build_keys.len();
    if over(count, th.missing_build_keys) {
        out.extend(
            d.missing_build_keys
                .iter()
                .map(|m| Reason::MissingBuildKey {
                    key: m.key.clone(),
                    built_in: m.built_in,
                    of: m.of,
                    count,
                    threshold: th.missing_build_keys,
                }),
        );
    }
    let counted: Vec<&MissingTestKey> = d.missing_test_keys_counted().collect();
    if over(counted.len(), th.missing_test_keys) {
        out.extend(counted.iter().map(|m| Reason::MissingTestKey {
            key: m.key.clone(),
            reported_in: m.reported_in,
            of: m.of,
            count: counted.len(),
            threshold: th.missing_test_keys,
        }));
    }
    let count = d.new_build_failures.len();
    if over(count, th.new_build_failures) {
        out.extend(
            d.new_build_failures
                .iter()
                .map(|n| Reason::NewBuildFailure {
                    key: n.key.clone(),
                    passed_in: n.passed_in,
                    built_in: n.built_in,
                    count,
                    threshold: th.new_build_failures,
                }),
        );
    }
    let count = d.new_test_failures.len();
    if over(count, th.new_test_failures) {
        out.extend(d.new_test_failures.iter().map(|n| Reason::NewTestFailures {
            key: n.key.clone(),
            fail: n.fail,
            previous_max: n.previous_max,
            count,
            threshold: th.new_test_failures,
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Renderers: pure, `String` out; the caller colours and writes.
// ---------------------------------------------------------------------------------------

fn cell_value(metric: Metric, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if metric.is_rate() => format!("{v:.1} %"),
        Some(v) => num(v),
    }
}

fn cell_spread(metric: Metric, b: Option<Spread>) -> String {
    match b {
        None => "-".into(),
        Some(b) if metric.is_rate() => format!("{:.1}–{:.1} %", b.min, b.max),
        Some(b) => format!("{}–{}", num(b.min), num(b.max)),
    }
}

fn signed(x: f64) -> String {
    if x.abs() < EPS {
        "0".into()
    } else {
        format!("{}{}", if x > 0.0 { "+" } else { "-" }, num(x.abs()))
    }
}

fn cell_delta(row: &MetricRow) -> String {
    let (Some(d), Some(b)) = (row.delta, row.baseline) else {
        return "-".into();
    };
    if row.metric.is_rate() {
        if d.abs() < 0.05 {
            "0.0 pt".into()
        } else {
            format!("{d:+.1} pt")
        }
    } else if b.median > 0.0 && d.abs() >= EPS {
        format!("{} ({:+.1} %)", signed(d), d * 100.0 / b.median)
    } else {
        signed(d)
    }
}

fn cell_mark(row: &MetricRow, has_baseline: bool) -> &'static str {
    match (row.threshold, row.crossed) {
        (None, _) => "",
        (Some(_), true) => "differs",
        (Some(_), false) if has_baseline => "ok",
        (Some(_), false) => "",
    }
}

fn verdict_words(c: &Comparison) -> String {
    let n = c.reasons.len();
    match c.verdict {
        Verdict::Similar => format!(
            "similar to the {}",
            plural(c.baseline.len(), "previous revision", "previous revisions")
        ),
        Verdict::NoBaseline => {
            "no previous revisions: nothing to compare (similar by default)".into()
        }
        Verdict::Different => format!(
            "different from the {} ({}, {} crossed)",
            plural(c.baseline.len(), "previous revision", "previous revisions"),
            plural(n, "reason", "reasons"),
            plural(c.thresholds_crossed().len(), "threshold", "thresholds")
        ),
    }
}

/// Differences named but within their thresholds, as short phrases (for the table).
fn tolerated(c: &Comparison) -> Vec<String> {
    let d = &c.differences;
    let th = &c.thresholds;
    let mut out = Vec::new();
    let mut add = |n: usize, limit: u64, one: &str, many: &str| {
        if n > 0 && n as u64 <= limit {
            out.push(format!("{} (threshold {limit})", plural(n, one, many)));
        }
    };
    add(
        d.missing_labs.len(),
        th.missing_labs,
        "lab reported nothing",
        "labs reported nothing",
    );
    add(
        d.missing_build_keys.len(),
        th.missing_build_keys,
        "build key missing",
        "build keys missing",
    );
    add(
        d.missing_test_keys_counted().count(),
        th.missing_test_keys,
        "test key missing",
        "test keys missing",
    );
    add(
        d.new_build_failures.len(),
        th.new_build_failures,
        "build key newly failing",
        "build keys newly failing",
    );
    add(
        d.new_test_failures.len(),
        th.new_test_failures,
        "test key with more failures",
        "test keys with more failures",
    );
    out
}

/// The comparison for a terminal: a headline, aligned columns (metric, new, median,
/// min–max, delta, threshold, mark: `ok`, `differs`, or nothing for a row not judged),
/// then the reasons and what differs within its thresholds. No colour codes.
pub fn table(c: &Comparison) -> String {
    let has_baseline = c.has_baseline();
    let header = [
        "metric",
        "new",
        "median",
        "min–max",
        "delta",
        "threshold",
        "",
    ];
    let mut rows: Vec<[String; 7]> = vec![header.map(String::from)];
    for r in &c.metrics {
        rows.push([
            r.metric.label().to_owned(),
            cell_value(r.metric, r.new),
            cell_value(r.metric, r.baseline.map(|b| b.median)),
            cell_spread(r.metric, r.baseline),
            cell_delta(r),
            r.threshold.map(|t| t.to_string()).unwrap_or_default(),
            cell_mark(r, has_baseline).to_owned(),
        ]);
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..7).map(width).collect();

    let mut out = String::new();
    out.push_str(&format!("{}: {}\n", c.kernel, verdict_words(c)));
    if has_baseline {
        out.push_str(&format!(
            "baseline (most recent first): {}\n",
            c.baseline.join(", ")
        ));
    }
    out.push('\n');
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                line.push_str("  ");
            }
            if i == 0 || i == 6 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if !c.reasons.is_empty() {
        out.push_str(&format!(
            "\nthresholds crossed ({}):\n",
            c.thresholds_crossed().join(", ")
        ));
        for r in &c.reasons {
            out.push_str(&format!("  {r}\n"));
        }
    }
    let within = tolerated(c);
    if !within.is_empty() {
        out.push_str(&format!("\nwithin thresholds: {}\n", within.join(", ")));
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The comparison as a report to paste in an issue or a pull request: the verdict in one
/// line, the metric table, the reasons, every difference by name.
pub fn markdown(c: &Comparison) -> String {
    let has_baseline = c.has_baseline();
    let mut out = String::new();
    let word = match c.verdict {
        Verdict::Similar => "similar",
        Verdict::NoBaseline => "no baseline",
        Verdict::Different => "different",
    };
    out.push_str(&format!(
        "### Pipe cleaner `{}`: **{word}**\n\n{}.\n",
        c.kernel,
        md_cell(&verdict_words(c))
    ));
    if has_baseline {
        let kernels: Vec<String> = c.baseline.iter().map(|k| format!("`{k}`")).collect();
        out.push_str(&format!(
            "Baseline, most recent first: {}.\n",
            kernels.join(", ")
        ));
    }
    out.push_str("\n| metric | new | median | min–max | delta | threshold | |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|---|\n");
    for r in &c.metrics {
        let mark = match cell_mark(r, has_baseline) {
            "differs" => "**differs**",
            m => m,
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.metric.label(),
            cell_value(r.metric, r.new),
            cell_value(r.metric, r.baseline.map(|b| b.median)),
            cell_spread(r.metric, r.baseline),
            md_cell(&cell_delta(r)),
            r.threshold.map(|t| t.to_string()).unwrap_or_default(),
            mark
        ));
    }
    if !c.reasons.is_empty() {
        let crossed: Vec<String> = c
            .thresholds_crossed()
            .iter()
            .map(|t| format!("`{t}`"))
            .collect();
        out.push_str(&format!(
            "\n#### Thresholds crossed ({})\n\n",
            crossed.join(", ")
        ));
        for r in &c.reasons {
            out.push_str(&format!("- {}\n", md_cell(&r.to_string())));
        }
    }
    markdown_differences(&mut out, &c.differences, has_baseline);
    out
}

/// The "Differences by name" section of [`markdown`].
fn markdown_differences(out: &mut String, d: &Differences, has_baseline: bool) {
    out.push_str("\n#### Differences by name\n\n");
    if d.is_empty() {
        out.push_str(if has_baseline {
            "None: every lab and key of the baseline is there, no new failures.\n"
        } else {
            "None to name without previous revisions.\n"
        });
        return;
    }
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            out.push_str(&format!("**{title}** ({})\n\n", lines.len()));
            for l in lines {
                out.push_str(&format!("- {l}\n"));
            }
            out.push('\n');
        }
    };
    section(
        "Labs that reported nothing",
        d.missing_labs
            .iter()
            .map(|m| {
                format!(
                    "`{}`: reported in {} of {} previous revisions",
                    m.lab, m.reported_in, m.of
                )
            })
            .collect(),
    );
    section(
        "Build keys missing",
        d.missing_build_keys
            .iter()
            .map(|m| {
                format!(
                    "`{}`: built in {} of {} previous revisions",
                    m.key, m.built_in, m.of
                )
            })
            .collect(),
    );
    section(
        "Test keys missing",
        d.missing_test_keys
            .iter()
            .map(|m| {
                format!(
                    "`{}`: reported in {} of {} previous revisions{}",
                    m.key,
                    m.reported_in,
                    m.of,
                    if m.lab_missing {
                        " (its lab reported nothing)"
                    } else {
                        ""
                    }
                )
            })
            .collect(),
    );
    section(
        "Build keys newly failing",
        d.new_build_failures
            .iter()
            .map(|n| {
                format!(
                    "`{}`: FAIL now, passed in {} of the {} previous revisions that built it",
                    n.key, n.passed_in, n.built_in
                )
            })
            .collect(),
    );
    section(
        "Test keys with more failures than before",
        d.new_test_failures
            .iter()
            .map(|n| {
                format!(
                    "`{}`: {} now, at most {} in a previous revision",
                    n.key,
                    plural(n.fail as usize, "failure", "failures"),
                    n.previous_max
                )
            })
            .collect(),
    );
}

// --- the chart ---------------------------------------------------------------------------

const SVG_W: f64 = 960.0;
const PLOT_LEFT: f64 = 90.0;
const PLOT_RIGHT: f64 = 40.0;
const PLOT_INSET: f64 = 30.0;
const PANEL_H: f64 = 160.0;
const PANEL_TOP: f64 = 96.0;
const PANEL_STEP: f64 = 216.0;
const LABELS_H: f64 = 150.0;
const HIGHLIGHT: &str = "#d62728";
const BUILD_COLOUR: &str = "#1f77b4";
const TEST_COLOUR: &str = "#2ca02c";

struct Series {
    id: &'static str,
    label: &'static str,
    metric: Metric,
    colour: &'static str,
}

struct Panel {
    id: &'static str,
    title: &'static str,
    axis: &'static str,
    series: &'static [Series],
}

const PANELS: [Panel; 3] = [
    Panel {
        id: "builds",
        title: "Builds",
        axis: "builds",
        series: &[Series {
            id: "builds",
            label: "builds",
            metric: Metric::Builds,
            colour: BUILD_COLOUR,
        }],
    },
    Panel {
        id: "test-cases",
        title: "Test cases",
        axis: "test cases",
        series: &[Series {
            id: "test-cases",
            label: "test cases",
            metric: Metric::TestCases,
            colour: TEST_COLOUR,
        }],
    },
    Panel {
        id: "pass-rates",
        title: "Pass rates",
        axis: "percent",
        series: &[
            Series {
                id: "build-pass-rate",
                label: "build pass rate",
                metric: Metric::BuildPassRate,
                colour: BUILD_COLOUR,
            },
            Series {
                id: "test-pass-rate",
                label: "test pass rate",
                metric: Metric::TestPassRate,
                colour: TEST_COLOUR,
            },
        ],
    },
];

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A point's value as `data-value` says it: a count as an integer, a rate with 2 decimals.
fn data_value(metric: Metric, v: f64) -> String {
    if metric.is_rate() {
        format!("{v:.2}")
    } else {
        num(v)
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * p
}

/// The y range of a panel: the data padded, on round ticks (counts ≥ 0, rates within 0–100).
fn y_axis(values: &[f64], rate: bool) -> (f64, f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) };
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.15
    } else {
        (hi.abs() * 0.05).max(1.0)
    };
    let mut lo = (lo - pad).max(0.0);
    let mut hi = hi + pad;
    if rate {
        hi = hi.min(100.0);
    }
    let mut step = nice_step((hi - lo) / 4.0);
    if !rate {
        step = step.max(1.0);
    }
    lo = (lo / step + 1e-9).floor() * step;
    hi = (hi / step - 1e-9).ceil() * step;
    if hi <= lo {
        hi = lo + step;
    }
    (lo, hi, step)
}

/// A chart of `revisions` in time order (`created_ms`): three panels — builds, test cases,
/// pass rates — one point per revision and series (`<circle class="point"
/// data-series="…" data-kernel="…" data-value="…">`), lines joining them, the revision whose
/// kernel is `new_kernel` highlighted (a band across the panels, larger red-ringed points
/// with `class="point new"`, its values written next to them, its name in bold). Same input,
/// same bytes.
pub fn svg(revisions: &[Revision], new_kernel: &str) -> String {
    let mut revs: Vec<&Revision> = revisions.iter().collect();
    revs.sort_by_key(|r| r.created_ms);
    let chart = Chart::new(revs, new_kernel);
    let mut s = String::new();
    chart.head(&mut s);
    if chart.revs.is_empty() {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no revisions</text>\n</svg>\n",
            SVG_W / 2.0,
            PANEL_TOP + PANEL_H / 2.0
        ));
        return s;
    }
    for (p, panel) in PANELS.iter().enumerate() {
        chart.panel(&mut s, PANEL_TOP + PANEL_STEP * p as f64, panel);
    }
    chart.x_axis(&mut s);
    s
}

/// The chart's geometry: revisions oldest first, the new one among them (or not).
struct Chart<'a> {
    revs: Vec<&'a Revision>,
    new_kernel: &'a str,
    plot_w: f64,
    bottom: f64,
    height: f64,
}

impl<'a> Chart<'a> {
    fn new(revs: Vec<&'a Revision>, new_kernel: &'a str) -> Chart<'a> {
        let bottom = PANEL_TOP + PANEL_STEP * (PANELS.len() - 1) as f64 + PANEL_H;
        Chart {
            revs,
            new_kernel,
            plot_w: SVG_W - PLOT_LEFT - PLOT_RIGHT,
            bottom,
            height: bottom + LABELS_H,
        }
    }

    fn is_new(&self, r: &Revision) -> bool {
        r.kernel == self.new_kernel
    }

    fn x(&self, i: usize) -> f64 {
        let n = self.revs.len();
        if n <= 1 {
            PLOT_LEFT + self.plot_w / 2.0
        } else {
            PLOT_LEFT + PLOT_INSET + (self.plot_w - 2.0 * PLOT_INSET) * i as f64 / (n - 1) as f64
        }
    }

    /// The opening tag, the title and the legend of the new revision.
    fn head(&self, s: &mut String) {
        let (n, new_kernel, height) = (self.revs.len(), self.new_kernel, self.height);
        let has_new = self.revs.iter().any(|r| self.is_new(r));
        s.push_str(&format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {w:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n",
            w = SVG_W
        ));
        let title = if has_new {
            format!(
                "Pipe cleaner {new_kernel} and the {} before it",
                plural(n - 1, "revision", "revisions")
            )
        } else {
            format!("The last {}", plural(n, "revision", "revisions"))
        };
        s.push_str(&format!(
            "<title>{t}</title>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n\
             <text class=\"title\" x=\"{:.1}\" y=\"32\" text-anchor=\"middle\" font-size=\"18\" \
             font-weight=\"bold\">{t}</text>\n",
            SVG_W / 2.0,
            t = xml(&title)
        ));
        if has_new {
            s.push_str(&format!(
                "<g class=\"legend\"><circle cx=\"{:.1}\" cy=\"56\" r=\"6\" fill=\"#ffffff\" \
                 stroke=\"{HIGHLIGHT}\" stroke-width=\"2.5\"/><text x=\"{:.1}\" y=\"60\">{}: the \
                 new revision</text></g>\n",
                SVG_W / 2.0 - 120.0,
                SVG_W / 2.0 - 108.0,
                xml(new_kernel)
            ));
        }
    }

    /// One panel: its title, legend, highlight band, grid, frame, axis label and series.
    fn panel(&self, s: &mut String, top: f64, panel: &Panel) {
        let plot_w = self.plot_w;
        let rate = panel.series.iter().any(|se| se.metric.is_rate());
        let values: Vec<f64> = panel
            .series
            .iter()
            .flat_map(|se| self.revs.iter().filter_map(|r| se.metric.value(r)))
            .collect();
        let (lo, hi, step) = y_axis(&values, rate);
        let y = |v: f64| top + PANEL_H * (1.0 - (v - lo) / (hi - lo));

        s.push_str(&format!(
            "<g class=\"panel\" data-panel=\"{}\">\n",
            panel.id
        ));
        s.push_str(&format!(
            "<text class=\"panel-title\" x=\"{PLOT_LEFT:.1}\" y=\"{:.1}\" font-size=\"14\" \
                 font-weight=\"bold\">{}</text>\n",
            top - 12.0,
            panel.title
        ));
        // Legend, right-aligned above the panel.
        let mut lx = SVG_W - PLOT_RIGHT;
        for se in panel.series.iter().rev() {
            lx -= 8.0 * se.label.len() as f64 + 34.0;
            s.push_str(&format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" \
                     stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                lx,
                top - 16.0,
                lx + 20.0,
                top - 16.0,
                se.colour,
                lx + 25.0,
                top - 12.0,
                se.label
            ));
        }
        if let Some(i) = self.revs.iter().position(|r| self.is_new(r)) {
            s.push_str(&format!(
                "<rect class=\"highlight\" x=\"{:.1}\" y=\"{top:.1}\" width=\"28\" \
                     height=\"{PANEL_H:.1}\" fill=\"#fde0dc\"/>\n",
                self.x(i) - 14.0
            ));
        }
        // Grid and tick labels.
        let ticks = ((hi - lo) / step + 1e-9).floor() as usize;
        for k in 0..=ticks {
            let v = lo + step * k as f64;
            let label = if rate && step < 1.0 {
                format!("{v:.1}")
            } else {
                num(v)
            };
            s.push_str(&format!(
                "<line class=\"grid\" x1=\"{PLOT_LEFT:.1}\" y1=\"{yy:.1}\" x2=\"{:.1}\" \
                     y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/><text class=\"tick\" x=\"{:.1}\" \
                     y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
                PLOT_LEFT + self.plot_w,
                PLOT_LEFT - 8.0,
                y(v) + 4.0,
                yy = y(v)
            ));
        }
        s.push_str(&format!(
            "<rect class=\"frame\" x=\"{PLOT_LEFT:.1}\" y=\"{top:.1}\" width=\"{plot_w:.1}\" \
                 height=\"{PANEL_H:.1}\" fill=\"none\" stroke=\"#999999\"/>\n"
        ));
        let ay = top + PANEL_H / 2.0;
        s.push_str(&format!(
            "<text class=\"axis-label\" x=\"24\" y=\"{ay:.1}\" text-anchor=\"middle\" \
                 transform=\"rotate(-90 24 {ay:.1})\">{}</text>\n",
            panel.axis
        ));
        for se in panel.series {
            self.series(s, se, &y);
        }
        s.push_str("</g>\n");
    }

    /// One series of a panel: its line (broken where a revision has no value) and points.
    fn series(&self, s: &mut String, se: &Series, y: &dyn Fn(f64) -> f64) {
        // The line, broken where a revision has no value.
        let mut d = String::new();
        let mut pen_down = false;
        for (i, r) in self.revs.iter().enumerate() {
            match se.metric.value(r) {
                Some(v) => {
                    let cmd = if pen_down { 'L' } else { 'M' };
                    if !d.is_empty() {
                        d.push(' ');
                    }
                    d.push_str(&format!("{cmd}{:.1},{:.1}", self.x(i), y(v)));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        s.push_str(&format!(
            "<path class=\"line\" data-series=\"{}\" d=\"{d}\" fill=\"none\" \
             stroke=\"{}\" stroke-width=\"2\"/>\n",
            se.id, se.colour
        ));
        for (i, r) in self.revs.iter().enumerate() {
            let Some(v) = se.metric.value(r) else {
                continue;
            };
            let value = data_value(se.metric, v);
            let kernel = xml(&r.kernel);
            let (class, style) = if self.is_new(r) {
                (
                    "point new",
                    format!(
                        "r=\"6.5\" fill=\"{}\" stroke=\"{HIGHLIGHT}\" stroke-width=\"3\"",
                        se.colour
                    ),
                )
            } else {
                (
                    "point",
                    format!(
                        "r=\"3.5\" fill=\"{}\" stroke=\"#ffffff\" stroke-width=\"1\"",
                        se.colour
                    ),
                )
            };
            s.push_str(&format!(
                "<circle class=\"{class}\" data-series=\"{}\" data-kernel=\"{kernel}\" \
                 data-value=\"{value}\" cx=\"{:.1}\" cy=\"{:.1}\" {style}><title>{kernel}: \
                 {} {}</title></circle>\n",
                se.id,
                self.x(i),
                y(v),
                se.label,
                cell_value(se.metric, Some(v))
            ));
            if self.is_new(r) {
                s.push_str(&format!(
                    "<text class=\"new-label\" x=\"{:.1}\" y=\"{:.1}\" fill=\"{HIGHLIGHT}\" \
                     font-weight=\"bold\">{}</text>\n",
                    self.x(i) + 10.0,
                    y(v) - 8.0,
                    cell_value(se.metric, Some(v))
                ));
            }
        }
    }

    /// The revisions along the bottom, oldest first.
    fn x_axis(&self, s: &mut String) {
        // Revisions along the bottom, oldest first.
        s.push_str("<g class=\"x-axis\">\n");
        for (i, r) in self.revs.iter().enumerate() {
            let ly = self.bottom + 16.0;
            let (weight, fill, text) = if self.is_new(r) {
                ("bold", HIGHLIGHT, format!("{} (new)", xml(&r.kernel)))
            } else {
                ("normal", "#333333", xml(&r.kernel))
            };
            s.push_str(&format!(
                "<text class=\"x-label\" data-kernel=\"{}\" x=\"{xx:.1}\" y=\"{ly:.1}\" \
                 text-anchor=\"end\" font-weight=\"{weight}\" fill=\"{fill}\" \
                 transform=\"rotate(-30 {xx:.1} {ly:.1})\">{text}</text>\n",
                xml(&r.kernel),
                xx = self.x(i)
            ));
        }
        s.push_str(&format!(
            "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">revisions, \
             oldest to newest</text>\n</g>\n</svg>\n",
            PLOT_LEFT + self.plot_w / 2.0,
            self.height - 12.0
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    const LABS: [&str; 6] = [
        "lab-baylibre",
        "lab-broonie",
        "lab-cip",
        "lab-clabbe",
        "lab-collabora",
        "lab-linaro-lkft",
    ];

    /// Counts from the keys: builds by status; test cases as pass, fail and, for the keys'
    /// `other`, skip.
    fn recount(r: &mut Revision) {
        let statuses: Vec<&str> = r.build_keys.values().map(String::as_str).collect();
        let count = |s: &str| statuses.iter().filter(|&&x| x == s).count() as u64;
        r.builds = BuildCounts {
            total: statuses.len() as u64,
            pass: count("PASS"),
            pass_warnings: 0,
            fail: count("FAIL"),
            other: statuses.len() as u64 - count("PASS") - count("FAIL"),
        };
        let (pass, fail, skip) = r.test_keys.values().fold((0, 0, 0), |a, k| {
            (a.0 + k.pass, a.1 + k.fail, a.2 + k.other)
        });
        r.tests = TestCounts {
            total: pass + fail + skip,
            pass,
            fail,
            skip,
            other: 0,
        };
        r.labs = r.test_keys.keys().map(|k| k.lab_name.clone()).collect();
    }

    fn build_key(i: usize) -> BuildKey {
        let arch = ["arm64", "x86_64", "arm", "riscv"][i % 4];
        BuildKey {
            arch: arch.into(),
            defconfig_full: format!("defconfig-{i:03}"),
            build_environment: "gcc-10".into(),
        }
    }

    fn test_key(plan: &str, device: &str, lab: &str) -> TestKey {
        TestKey {
            plan: plan.into(),
            device_type: device.into(),
            lab_name: lab.into(),
        }
    }

    /// A healthy revision, number `seq` of the branch: `b` builds, all passing; `labs` labs,
    /// each with two device types running two plans, each test key `t` test cases of which
    /// one fails and one is skipped; 2–4 regressions.
    fn healthy(seq: u64, b: usize, t: u64, labs: usize) -> Revision {
        let mut r = Revision {
            kernel: format!("kernelci-2021{:02}01.0", seq),
            git_commit: format!("{seq:040x}"),
            created_ms: seq * WEEK_MS,
            regressions: 2 + seq % 3,
            ..Revision::default()
        };
        r.build_keys = (0..b).map(|i| (build_key(i), "PASS".to_owned())).collect();
        for lab in &LABS[..labs] {
            for device in ["qemu_arm64", "bcm2711-rpi-4-b"] {
                for plan in ["baseline", "kselftest"] {
                    r.test_keys.insert(
                        test_key(plan, device, lab),
                        KeyResults {
                            pass: t - 2,
                            fail: 1,
                            other: 1,
                        },
                    );
                }
            }
        }
        recount(&mut r);
        r
    }

    /// Five healthy previous revisions and a healthy new one (100 builds, 50 test cases per
    /// key, 5 labs).
    fn branch() -> (Vec<Revision>, Revision) {
        let previous = (1..=5).map(|s| healthy(s, 100, 50, 5)).collect();
        (previous, healthy(6, 100, 50, 5))
    }

    fn messages(c: &Comparison) -> Vec<String> {
        c.reasons().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_healthy_pipe_cleaner_is_similar() {
        let (previous, new) = branch();
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(c.similar(), "{:?}", messages(&c));
        assert_eq!(c.verdict, Verdict::Similar);
        assert!(c.differences.is_empty());
        assert_eq!(c.baseline[0], "kernelci-20210501.0", "most recent first");
        assert_eq!(c.baseline.len(), 5);
        let builds = c.row(Metric::Builds).unwrap();
        assert_eq!(builds.new, Some(100.0));
        let b = builds.baseline.unwrap();
        assert_eq!((b.median, b.min, b.max), (100.0, 100.0, 100.0));
        assert_eq!(builds.delta, Some(0.0));
        assert!(!builds.crossed);
        // Regressions 3, 4, 2, 3, 4 before: the spread is the spread.
        let reg = c.row(Metric::Regressions).unwrap().baseline.unwrap();
        assert_eq!((reg.median, reg.min, reg.max), (3.0, 2.0, 4.0));
        assert_eq!(
            c.row(Metric::TestPassRate).unwrap().new,
            Some(96.0),
            "48 of 50 pass"
        );
        // The previous revisions in any order, and the new one among them, change nothing.
        let mut shuffled = previous.clone();
        shuffled.reverse();
        shuffled.push(new.clone());
        assert_eq!(compare(&new, &shuffled, &Thresholds::default()), c);
        assert!(table(&c).contains("similar to the 5 previous revisions"));
    }

    #[test]
    fn a_lab_missing_is_named() {
        let (previous, mut new) = branch();
        new.test_keys.retain(|k, _| k.lab_name != "lab-collabora");
        recount(&mut new);
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(!c.similar());
        assert_eq!(c.verdict, Verdict::Different);
        let m = messages(&c);
        assert!(
            m.iter().any(|r| r.contains(
                "lab lab-collabora: reported nothing (it reported in 5 of 5 previous revisions)"
            )),
            "{m:?}"
        );
        // Its four test keys are listed, but counted under the lab, not on their own.
        assert_eq!(c.differences.missing_test_keys.len(), 4);
        assert!(c
            .differences
            .missing_test_keys
            .iter()
            .all(|k| k.lab_missing));
        assert!(!c
            .reasons()
            .iter()
            .any(|r| matches!(r, Reason::MissingTestKey { .. })));
        // Test cases dropped by a fifth: that is crossed too, and named.
        assert!(
            m.iter().any(|r| r.starts_with(
                "test cases: 800 is 20.0 % below the baseline median 1000 (threshold 10 %)"
            )),
            "{m:?}"
        );
    }

    #[test]
    fn twelve_percent_fewer_builds_names_the_threshold_and_the_numbers() {
        let (previous, mut new) = branch();
        new.build_keys = (0..88).map(|i| (build_key(i), "PASS".to_owned())).collect();
        recount(&mut new);
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(!c.similar());
        let m = messages(&c);
        assert_eq!(
            m[0],
            "builds: 88 is 12.0 % below the baseline median 100 (threshold 5 %)"
        );
        assert!(c.row(Metric::Builds).unwrap().crossed);
        // And which builds: the twelve keys, each named.
        assert_eq!(c.differences.missing_build_keys.len(), 12);
        assert!(m.contains(
            &"build (arm64, defconfig-088, gcc-10): missing (built in 5 of 5 previous \
              revisions); 12 build keys missing, threshold 0"
                .to_owned()
        ));
        // 5 % fewer is still within "at most 5 %".
        let mut new = healthy(6, 95, 50, 5);
        new.build_keys.clear();
        recount(&mut new);
        new.builds.total = 95;
        new.builds.pass = 95;
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(!c.row(Metric::Builds).unwrap().crossed);
    }

    #[test]
    fn a_test_pass_rate_drop_is_named() {
        let (previous, mut new) = branch();
        for k in new.test_keys.values_mut() {
            k.pass -= 5;
            k.fail += 5;
        }
        recount(&mut new);
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(!c.similar());
        let m = messages(&c);
        assert!(
            m.contains(
                &"test pass rate: 86.0 % is 10.0 points below the baseline median 96.0 % \
                  (threshold 5 points)"
                    .to_owned()
            ),
            "{m:?}"
        );
        assert!(!c.row(Metric::TestCases).unwrap().crossed, "same total");
        // Every key failed more than ever: 20 keys, above the 5 tolerated.
        assert_eq!(c.differences.new_test_failures.len(), 20);
        // A smaller drop (2 points) passes the rate threshold.
        let (previous, mut new) = branch();
        for k in new.test_keys.values_mut() {
            k.pass -= 1;
            k.fail += 1;
        }
        recount(&mut new);
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(!c.row(Metric::TestPassRate).unwrap().crossed);
    }

    #[test]
    fn regressions_above_the_baseline_maximum() {
        let (previous, mut new) = branch();
        new.regressions = 9; // max 4 + 5: at the threshold
        assert!(compare(&new, &previous, &Thresholds::default()).similar());
        new.regressions = 20;
        let c = compare(&new, &previous, &Thresholds::default());
        assert_eq!(
            messages(&c),
            vec!["regressions: 20 is 16 above the baseline maximum 4 (threshold 5)"]
        );
    }

    #[test]
    fn new_failures_are_named_by_key() {
        let (previous, mut new) = branch();
        new.build_keys.insert(build_key(7), "FAIL".into());
        // Five test keys fail more than ever: tolerated; listed all the same.
        let more: Vec<TestKey> = new.test_keys.keys().take(5).cloned().collect();
        for k in &more {
            new.test_keys.get_mut(k).unwrap().fail = 3;
        }
        recount(&mut new);
        let c = compare(&new, &previous, &Thresholds::default());
        assert_eq!(
            messages(&c),
            vec![
                "build (riscv, defconfig-007, gcc-10): FAIL now (it passed in 5 of the 5 \
                 previous revisions that built it); 1 build key newly failing, threshold 0"
            ]
        );
        assert_eq!(c.differences.new_test_failures.len(), 5);
        assert!(table(&c).contains("5 test keys with more failures (threshold 5)"));
        // A sixth crosses the threshold: each key named with its numbers.
        let sixth = new.test_keys.keys().nth(5).unwrap().clone();
        new.test_keys.get_mut(&sixth).unwrap().fail = 7;
        let c = compare(&new, &previous, &Thresholds::default());
        let m = messages(&c);
        assert!(
            m.contains(&format!(
                "test {sixth}: 7 failures (at most 1 in a previous revision); 6 test keys with \
                 more failures, threshold 5"
            )),
            "{m:?}"
        );
        // A build that failed in most previous revisions is not a new failure.
        let previous: Vec<Revision> = previous
            .into_iter()
            .map(|mut r| {
                if r.created_ms > WEEK_MS {
                    r.build_keys.insert(build_key(7), "FAIL".into());
                }
                r
            })
            .collect();
        let c = compare(&new, &previous, &Thresholds::default());
        assert!(c.differences.new_build_failures.is_empty());
    }

    #[test]
    fn missing_test_keys_are_tolerated_up_to_the_threshold() {
        let (previous, mut new) = branch();
        let gone: Vec<TestKey> = new
            .test_keys
            .keys()
            .filter(|k| k.device_type == "bcm2711-rpi-4-b")
            .take(4)
            .cloned()
            .collect();
        new.test_keys.remove(&gone[0]);
        new.test_keys.remove(&gone[1]);
        new.test_keys.remove(&gone[2]);
        recount(&mut new);
        // Twenty keys here, hundreds in production: three keys are 15 % of these test
        // cases, so leave the test total out of this one.
        let th = Thresholds {
            test_total_drop_percent: 50.0,
            ..Thresholds::default()
        };
        let c = compare(&new, &previous, &th);
        assert!(c.similar(), "{:?}", messages(&c));
        assert_eq!(c.differences.missing_test_keys.len(), 3);
        new.test_keys.remove(&gone[3]);
        recount(&mut new);
        let c = compare(&new, &previous, &th);
        assert!(!c.similar());
        assert_eq!(c.reasons().len(), 4);
        assert!(messages(&c)[0].ends_with("4 test keys missing in labs that reported, threshold 3"));
    }

    #[test]
    fn a_key_is_expected_by_majority_or_the_latest_revision() {
        let (mut previous, new) = branch();
        // Built once, three revisions ago: not expected.
        previous[1].build_keys.insert(build_key(500), "PASS".into());
        // Added in the most recent revision: expected.
        previous[4].build_keys.insert(build_key(501), "PASS".into());
        let c = compare(&new, &previous, &Thresholds::default());
        let missing: Vec<&BuildKey> = c
            .differences
            .missing_build_keys
            .iter()
            .map(|m| &m.key)
            .collect();
        assert_eq!(missing, vec![&build_key(501)]);
        assert_eq!(c.differences.missing_build_keys[0].built_in, 1);
    }

    #[test]
    fn no_previous_revisions_is_similar_but_said() {
        let (_, new) = branch();
        let c = compare(&new, &[], &Thresholds::default());
        assert!(c.similar());
        assert!(!c.has_baseline());
        assert_eq!(c.verdict, Verdict::NoBaseline);
        assert!(c.metrics.iter().all(|r| r.baseline.is_none() && !r.crossed));
        assert!(table(&c).contains("no previous revisions: nothing to compare"));
        assert!(markdown(&c).contains("**no baseline**"));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["verdict"], "no-baseline");
    }

    #[test]
    fn thresholds_from_the_site_file() {
        #[derive(Deserialize)]
        struct Site {
            verify: Thresholds,
        }
        let site: Site = toml::from_str(
            "[verify]\nbuild-total-drop-percent = 8\nmissing-test-keys = 10\n\
             test-pass-rate-drop-points = 2.5\n",
        )
        .unwrap();
        let th = site.verify;
        assert_eq!(th.build_total_drop_percent, 8.0);
        assert_eq!(th.missing_test_keys, 10);
        assert_eq!(th.test_pass_rate_drop_points, 2.5);
        assert_eq!(th.test_total_drop_percent, 10.0, "default");
        assert_eq!(th.missing_labs, 0, "default");
        th.validate().unwrap();
        assert_eq!(Thresholds::default().validate(), Ok(()));

        let unknown = toml::from_str::<Site>("[verify]\nbuild-drop = 8\n")
            .err()
            .unwrap();
        assert!(unknown.to_string().contains("build-drop"), "{unknown}");

        let bad: Site = toml::from_str("[verify]\ntest-pass-rate-drop-points = -1\n").unwrap();
        let e = bad.verify.validate().unwrap_err();
        assert_eq!(e.field, "test-pass-rate-drop-points");
        assert!(e
            .to_string()
            .starts_with("test-pass-rate-drop-points: must be"));
        let bad: Site = toml::from_str("[verify]\nbuild-total-drop-percent = 150\n").unwrap();
        assert_eq!(
            bad.verify.validate().unwrap_err().field,
            "build-total-drop-percent"
        );

        // Thresholds move verdicts.
        let (previous, mut new) = branch();
        new.build_keys = (0..92).map(|i| (build_key(i), "PASS".to_owned())).collect();
        recount(&mut new);
        let loose = Thresholds {
            missing_build_keys: 10,
            ..site_with(8.0)
        };
        assert!(compare(&new, &previous, &loose).similar());
        assert!(!compare(&new, &previous, &Thresholds::default()).similar());
    }

    fn site_with(build_total_drop_percent: f64) -> Thresholds {
        Thresholds {
            build_total_drop_percent,
            ..Thresholds::default()
        }
    }

    #[test]
    fn json_carries_the_reasons_and_their_messages() {
        let (previous, mut new) = branch();
        new.regressions = 20;
        let c = compare(&new, &previous, &Thresholds::default());
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["verdict"], "different");
        assert_eq!(json["reasons"][0]["reason"], "regressions");
        assert_eq!(json["reasons"][0]["baseline_max"], 4);
        assert_eq!(
            json["reasons"][0]["message"],
            "regressions: 20 is 16 above the baseline maximum 4 (threshold 5)"
        );
        assert_eq!(json["metrics"][0]["metric"], "builds");
        assert_eq!(json["thresholds"]["build-total-drop-percent"], 5.0);
        let back: Comparison = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn table_and_markdown_hold_the_reasons() {
        let (previous, mut new) = branch();
        new.test_keys.retain(|k, _| k.lab_name != "lab-collabora");
        new.build_keys = (0..88).map(|i| (build_key(i), "PASS".to_owned())).collect();
        recount(&mut new);
        let c = compare(&new, &previous, &Thresholds::default());
        let t = table(&c);
        let md = markdown(&c);
        let fields = serde_json::to_value(Thresholds::default()).unwrap();
        for r in c.reasons() {
            assert!(fields.get(r.threshold()).is_some(), "{}", r.threshold());
            assert!(t.contains(&r.to_string()), "table lacks {r}");
            assert!(md.contains(&r.to_string()), "markdown lacks {r}");
        }
        assert!(t.starts_with(
            "kernelci-20210601.0: different from the 5 previous revisions (15 reasons, 4 \
             thresholds crossed)"
        ));
        assert!(t.contains(
            "thresholds crossed (build-total-drop-percent, test-total-drop-percent, \
             missing-labs, missing-build-keys):"
        ));
        let builds = t.lines().find(|l| l.starts_with("builds ")).unwrap();
        assert!(builds.contains("88"), "{builds}");
        assert!(builds.contains("-12 (-12.0 %)"), "{builds}");
        assert!(builds.ends_with("differs"), "{builds}");
        // Columns line up: every row of the metric table is as wide as the header's
        // threshold column ends.
        let header = t.lines().find(|l| l.starts_with("metric")).unwrap();
        let col = header[..header.find("threshold").unwrap()].chars().count() + "threshold".len();
        let rate = t
            .lines()
            .find(|l| l.starts_with("build pass rate"))
            .unwrap();
        assert_eq!(rate.chars().count(), col + "  ok".len(), "{rate}");
        assert!(t.contains("\u{2013}"), "min–max");
        assert!(!t.contains('\u{1b}'), "no colour codes");

        assert!(md.starts_with("### Pipe cleaner `kernelci-20210601.0`: **different**"));
        assert!(md.contains("| builds | 88 | 100 | 100–100 | -12 (-12.0 %) | -5 % | **differs** |"));
        assert!(md.contains("**Labs that reported nothing** (1)"));
        assert!(md.contains("- `lab-collabora`: reported in 5 of 5 previous revisions"));
        assert!(md.contains("**Build keys missing** (12)"));
        assert!(md.contains("(its lab reported nothing)"));
    }

    #[test]
    fn grown_says_what_is_still_arriving() {
        let (_, new) = branch();
        assert!(grown(&new, &new).is_empty());
        let mut later = new.clone();
        later.tests.total += 10;
        later.regressions += 1;
        assert_eq!(
            grown(&new, &later),
            vec![Metric::TestCases, Metric::Regressions]
        );
    }

    /// The attributes of every `<tag …>` element in `svg`, unescaped.
    fn elements(svg: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
        let open = format!("<{tag} ");
        let mut out = Vec::new();
        let mut rest = svg;
        while let Some(at) = rest.find(&open) {
            let body = &rest[at + open.len()..];
            let end = body.find('>').expect("an element ends");
            let mut attrs = BTreeMap::new();
            let mut s = body[..end].trim_end_matches('/');
            while let Some(eq) = s.find("=\"") {
                let name = s[..eq].trim().to_owned();
                let after = &s[eq + 2..];
                let close = after.find('"').expect("a quoted value");
                let value = after[..close]
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&amp;", "&");
                attrs.insert(name, value);
                s = &after[close + 1..];
            }
            out.push(attrs);
            rest = &body[end..];
        }
        out
    }

    #[test]
    fn the_chart_holds_every_revision_and_highlights_the_new_one() {
        let (previous, mut new) = branch();
        new.build_keys = (0..88).map(|i| (build_key(i), "PASS".to_owned())).collect();
        for k in new.test_keys.values_mut() {
            k.pass -= 5;
            k.fail += 5;
        }
        recount(&mut new);
        new.kernel = "kernelci-<&>.0".into(); // escaped on the way in, read back whole
        let mut all = previous.clone();
        all.push(new.clone());
        let chart = svg(&all, &new.kernel);

        assert!(chart.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(chart.trim_end().ends_with("</svg>"));
        assert_eq!(chart.matches("<g ").count(), chart.matches("</g>").count());
        assert!(!chart.contains("<&>"), "kernel names are escaped");
        assert!(chart.contains("<title>Pipe cleaner kernelci-&lt;&amp;&gt;.0"));

        let points = elements(&chart, "circle");
        let points: Vec<_> = points
            .iter()
            .filter(|p| p.get("class").is_some_and(|c| c.starts_with("point")))
            .collect();
        assert_eq!(points.len(), 6 * 4, "one point per revision and series");
        for (series, metric) in [
            ("builds", Metric::Builds),
            ("test-cases", Metric::TestCases),
            ("build-pass-rate", Metric::BuildPassRate),
            ("test-pass-rate", Metric::TestPassRate),
        ] {
            let of: Vec<_> = points
                .iter()
                .filter(|p| p["data-series"] == series)
                .collect();
            let kernels: Vec<&str> = of.iter().map(|p| p["data-kernel"].as_str()).collect();
            let expected: Vec<&str> = all.iter().map(|r| r.kernel.as_str()).collect();
            assert_eq!(kernels, expected, "{series}: time order");
            for (p, r) in of.iter().zip(&all) {
                assert_eq!(
                    p["data-value"],
                    data_value(metric, metric.value(r).unwrap()),
                    "{series} of {}",
                    r.kernel
                );
            }
            let cx: Vec<f64> = of.iter().map(|p| p["cx"].parse().unwrap()).collect();
            assert!(
                cx.windows(2).all(|w| w[0] < w[1]),
                "{series}: left to right"
            );
            let cy: Vec<f64> = of.iter().map(|p| p["cy"].parse().unwrap()).collect();
            if series == "builds" || series == "test-pass-rate" {
                // The dip shows: the new point sits lower than every earlier one.
                assert!(
                    cy[..5].iter().all(|&y| cy[5] > y + 20.0),
                    "{series}: {cy:?}"
                );
            }
        }
        assert_eq!(
            points
                .iter()
                .find(|p| p["data-series"] == "builds" && p["data-kernel"] == new.kernel)
                .unwrap()["data-value"],
            "88"
        );
        assert_eq!(
            points
                .iter()
                .find(|p| p["data-series"] == "test-pass-rate" && p["data-kernel"] == new.kernel)
                .unwrap()["data-value"],
            "86.00"
        );

        let highlighted: Vec<_> = points
            .iter()
            .filter(|p| p["class"] == "point new")
            .collect();
        assert_eq!(highlighted.len(), 4);
        assert!(highlighted.iter().all(|p| p["data-kernel"] == new.kernel));
        let r_new: f64 = highlighted[0]["r"].parse().unwrap();
        let r_old: f64 = points[0]["r"].parse().unwrap();
        assert!(r_new > r_old);
        let labels = elements(&chart, "text");
        assert!(labels
            .iter()
            .any(|t| t.get("class").map(String::as_str) == Some("x-label")
                && t["data-kernel"] == new.kernel
                && t["font-weight"] == "bold"));
        assert_eq!(elements(&chart, "path").len(), 4, "one line per series");

        // Same input, same bytes, whatever order the revisions come in.
        let mut shuffled = all.clone();
        shuffled.rotate_left(2);
        assert_eq!(svg(&shuffled, &new.kernel), chart);
        // No revisions: still a picture, saying so.
        assert!(svg(&[], "x").contains("no revisions"));
    }
}
