//! `kci-build prod verify` end to end: the real binary against the kernelci-backend double
//! (a history of revisions generated here) and the Jenkins double: a healthy pipe cleaner,
//! a lab missing, 12 % fewer builds, a test pass rate that dropped, results still arriving,
//! and `--on-fail disable-monitor`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::backend::{
    lab_names, Arrival, BackendDouble, RevisionSpec, Shape, TOKEN as BACKEND_TOKEN,
};
use common::jenkins::{JenkinsDouble, JobSpec, TOKEN, USER};

const NEW: &str = "kernelci-20261207.0";
const HOUR: u64 = 3_600_000;

struct Verify {
    dir: tempfile::TempDir,
    backend: BackendDouble,
    jenkins: JenkinsDouble,
}

impl Verify {
    /// Five healthy weekly revisions, then the pipe cleaner made by `new`.
    fn with(new: impl FnOnce(RevisionSpec) -> RevisionSpec) -> Verify {
        let backend = BackendDouble::start();
        let shape = Shape::default();
        let t0 = 1_764_547_200_000;
        for week in 0..5u64 {
            let kernel = format!("kernelci-202611{:02}.0", 2 + 7 * week);
            backend.add(&RevisionSpec::healthy(
                &kernel,
                t0 + week * 168 * HOUR,
                week,
                shape,
            ));
        }
        backend.add(&new(RevisionSpec::healthy(
            NEW,
            t0 + 5 * 168 * HOUR,
            99,
            shape,
        )));
        let jenkins = JenkinsDouble::start();
        for job in [
            "kernel-tree-monitor",
            "kernel-build-trigger",
            "lava-bisection",
            "job-dsl",
        ] {
            jenkins.add_job(job, JobSpec::default());
        }
        let v = Verify {
            dir: tempfile::tempdir().unwrap(),
            backend,
            jenkins,
        };
        v.write_site();
        v
    }

    fn write_site(&self) {
        let site = format!(
            r#"state = "state"
[jenkins]
url = "{jenkins}"
user = "{USER}"
token-env = "KCI_JENKINS_TOKEN"
poll-seconds = 1

[core]
url = "file:///nonexistent/core.git"
[test-definitions]
url = "file:///nonexistent/td.git"
upstream = "file:///nonexistent/td-upstream.git"
[linux]
fork = "file:///nonexistent/linux.git"
stable = "file:///nonexistent/stable.git"
stable-branch = "linux-5.15.y"
patches = "patches"
[backend]
config-repo = "file:///nonexistent/bc.git"
app-repo = "file:///nonexistent/b.git"
host = "kernelci-backend"
[frontend]
config-repo = "file:///nonexistent/fc.git"
app-repo = "file:///nonexistent/f.git"
host = "kernelci-frontend"
[ansible]
[website]
repo = "file:///nonexistent/site.git"
web-root = "www"
[docker]

[backend-api]
url = "{backend}"
token-env = "KCI_BACKEND_TOKEN"

[verify]
settle-seconds = 1
wait-minutes = 1
"#,
            jenkins = self.jenkins.url(),
            backend = self.backend.url(),
        );
        std::fs::write(self.dir.path().join("production.toml"), site).unwrap();
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn kci(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_kci-build"))
            .current_dir(self.dir.path())
            .env("KCI_JENKINS_TOKEN", TOKEN)
            .env("KCI_BACKEND_TOKEN", BACKEND_TOKEN)
            .args(["prod", "--date", "20261207", "verify"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `verify NEW --wait --json`: the exit code, the verify part of the report, stderr.
    fn judge(&self, extra: &[&str]) -> (i32, serde_json::Value, String) {
        let mut args = vec![NEW, "--wait", "--json"];
        args.extend(extra);
        let (code, out, err) = self.kci(&args);
        let report: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}\n{err}"));
        (code, report["verify"].clone(), err)
    }
}

fn reason_kinds(verify: &serde_json::Value) -> Vec<String> {
    verify["comparison"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_healthy_pipe_cleaner_is_similar() {
    let v = Verify::with(|r| r);
    let (code, verify, err) = v.judge(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(verify["comparison"]["verdict"], "similar", "{verify}");
    assert_eq!(
        verify["comparison"]["baseline"].as_array().unwrap().len(),
        5
    );
    assert!(reason_kinds(&verify).is_empty());
    assert!(err.contains("similar") || err.contains("Similar"), "{err}");
    for secret in [TOKEN, BACKEND_TOKEN] {
        assert!(!err.contains(secret) && !verify.to_string().contains(secret));
    }
}

#[test]
fn a_missing_lab_is_named() {
    let lab = lab_names(4)[1].clone();
    let v = Verify::with(|r| r.without_lab(&lab));
    let (code, verify, err) = v.judge(&[]);
    // The table, for `cargo test --test verify -- --nocapture`.
    eprintln!("$ kci-build prod verify {NEW} --wait\n{err}");
    assert_eq!(code, 1, "{err}");
    assert_eq!(verify["comparison"]["verdict"], "different");
    let reasons = reason_kinds(&verify);
    assert!(reasons.iter().any(|r| r.contains(&lab)), "{reasons:?}");
    assert!(err.contains(&lab), "the error names the lab: {err}");
}

#[test]
fn twelve_percent_fewer_builds_cross_the_threshold() {
    let v = Verify::with(|r| r.drop_builds(0.12));
    let (code, verify, err) = v.judge(&[]);
    assert_eq!(code, 1, "{err}");
    let reasons = reason_kinds(&verify);
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("builds") && r.contains("below the baseline median")),
        "{reasons:?}"
    );
    assert!(
        !verify["comparison"]["differences"]["missing_build_keys"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{verify}"
    );
}

#[test]
fn a_test_pass_rate_drop_is_named_and_the_markdown_report_says_why() {
    let v = Verify::with(|r| r.test_pass_rate(0.70));
    let (code, verify, err) = v.judge(&[]);
    assert_eq!(code, 1, "{err}");
    let reasons = reason_kinds(&verify);
    assert!(
        reasons.iter().any(|r| r.contains("pass rate")),
        "{reasons:?}"
    );
    // The same verdict as a report to paste (stdout), and the chart holds every revision.
    let (code, md, err) = v.kci(&[NEW, "--format", "markdown"]);
    // The report, for `cargo test --test verify -- --nocapture`.
    eprintln!("$ kci-build prod verify {NEW} --format markdown\n{md}\n(stderr)\n{err}");
    assert_eq!(code, 1, "{err}");
    assert!(md.starts_with('#') || md.contains("| metric"), "{md}");
    assert!(md.contains("pass rate"), "{md}");
    let chart = std::fs::read_to_string(v.path(&format!("state/verify/{NEW}.svg"))).unwrap();
    let points: Vec<&str> = chart
        .split("<circle")
        .skip(1)
        .filter_map(|c| c.split("data-kernel=\"").nth(1)?.split('"').next())
        .collect();
    for week in 0..5u64 {
        let kernel = format!("kernelci-202611{:02}.0", 2 + 7 * week);
        assert!(
            points.contains(&kernel.as_str()),
            "{kernel} is charted: {points:?}"
        );
    }
    assert!(points.contains(&NEW), "{points:?}");
    // README shows this chart: the committed copy is what this scenario draws
    // (KCI_BLESS=1 rewrites it).
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/verify-example.svg");
    if std::env::var_os("KCI_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(example).parent().unwrap()).unwrap();
        std::fs::write(example, &chart).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(example).unwrap_or_default(),
        chart,
        "docs/verify-example.svg is not the chart of this scenario; KCI_BLESS=1 rewrites it"
    );
}

#[test]
fn results_still_arriving_are_not_judged_until_they_settle() {
    let v = Verify::with(|r| r.arriving(Arrival::Reads(3)));
    let (code, _, err) = v.kci(&[NEW]);
    assert_eq!(code, 3, "not settled: {err}");
    assert!(err.contains("has not settled"), "{err}");
    // --wait polls until the counts stop growing, then judges.
    let (code, verify, err) = v.judge(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(verify["comparison"]["verdict"], "similar");
    assert!(
        v.backend.reads(NEW) >= 4,
        "read until unchanged: {}",
        v.backend.reads(NEW)
    );
}

#[test]
fn on_fail_disables_the_monitor_and_the_journal_says_so() {
    let v = Verify::with(|r| r.without_lab(&lab_names(4)[0]));
    assert!(!v.jenkins.is_disabled("kernel-tree-monitor"));
    let (code, _, err) = v.judge(&["--on-fail", "disable-monitor"]);
    assert_eq!(code, 1, "{err}");
    assert!(v.jenkins.is_disabled("kernel-tree-monitor"));
    let journal = std::fs::read_to_string(v.path("state/journal/20261207.0.jsonl")).unwrap();
    assert!(
        journal.contains(r#""monitor-disabled":"kernel-tree-monitor""#),
        "{journal}"
    );
    // A similar verdict leaves the monitor alone.
    let ok = Verify::with(|r| r);
    let (code, _, err) = ok.judge(&["--on-fail", "disable-monitor"]);
    assert_eq!(code, 0, "{err}");
    assert!(!ok.jenkins.is_disabled("kernel-tree-monitor"));
}
