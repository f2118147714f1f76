//! The site configuration of `kci-build prod` (`production.toml`): where KernelCI's
//! production lives — Jenkins and its job names, the git repositories of every component,
//! ansible, the web root, the restart command, the backend API.
//!
//! Parsed and validated here, purely: an unknown or missing field, or a value that cannot
//! be right, is an error naming the file and the field. Secrets are never values of this
//! file: it names where they are (`token-env = "KCI_JENKINS_TOKEN"` or `token-file = "…"`),
//! and `prod::site` reads them at start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A problem in the site file, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct SiteError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// Where a secret is: an environment variable or a file (first line, trimmed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecretRef {
    #[serde(default, rename = "token-env")]
    pub env: Option<String>,
    #[serde(default, rename = "token-file")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// A Jenkins API token: no CSRF crumb needed.
    #[default]
    ApiToken,
    /// A password: a crumb and the session cookie of its request go with every POST.
    Password,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JenkinsSite {
    pub url: String,
    pub user: String,
    #[serde(flatten)]
    pub secret: SecretRef,
    #[serde(default)]
    pub credential: CredentialKind,
    #[serde(default = "d_monitor")]
    pub monitor_job: String,
    #[serde(default = "d_trigger")]
    pub trigger_job: String,
    #[serde(default = "d_bisection")]
    pub bisection_job: String,
    #[serde(default = "d_dsl")]
    pub dsl_job: String,
    /// Jobs that must exist once Jenkins is back (default: the four above).
    #[serde(default)]
    pub expected_jobs: Vec<String>,
    /// Builder agents that must be online once Jenkins is back (none: not checked).
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default = "d_poll")]
    pub poll_seconds: u64,
    /// How long `pause` may wait for the pipeline to drain.
    #[serde(default = "d_drain")]
    pub drain_minutes: u64,
    /// How long `restart` waits for the new instance.
    #[serde(default = "d_restart")]
    pub restart_minutes: u64,
}

fn d_monitor() -> String {
    "kernel-tree-monitor".into()
}
fn d_trigger() -> String {
    "kernel-build-trigger".into()
}
fn d_bisection() -> String {
    "lava-bisection".into()
}
fn d_dsl() -> String {
    "job-dsl".into()
}
fn d_poll() -> u64 {
    15
}
fn d_drain() -> u64 {
    180
}
fn d_restart() -> u64 {
    10
}
fn d_main() -> String {
    "main".into()
}
fn d_prod_branch() -> String {
    "kernelci.org".into()
}

/// How Jenkins is restarted: a command (the builders' reboot script, the Jenkins container's
/// restart), or, without one, Jenkins's own `safeRestart`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RestartSite {
    #[serde(default)]
    pub command: Vec<String>,
}

/// kernelci-core: its production branch is rebased on its development branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CoreSite {
    pub url: String,
    /// What the production branch is rebased on.
    #[serde(default = "d_main")]
    pub base: String,
    #[serde(default = "d_prod_branch")]
    pub branch: String,
}

/// KernelCI's fork of test-definitions: its branch is rebased on the upstream project's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ForkSite {
    pub url: String,
    pub upstream: String,
    #[serde(default = "d_master")]
    pub upstream_branch: String,
    /// The fork's branch that carries KernelCI's commits.
    #[serde(default = "d_prod_branch")]
    pub branch: String,
    /// The fork's branches that receive the result.
    #[serde(default = "d_push_to")]
    pub push_to: Vec<String>,
}

fn d_master() -> String {
    "master".into()
}
fn d_push_to() -> Vec<String> {
    vec!["kernelci.org".into(), "main".into()]
}

/// Who pushes to HTTPS remotes (GitHub): a user and where its token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GitAuth {
    pub user: String,
    #[serde(flatten)]
    pub secret: SecretRef,
}

/// KernelCI's linux fork and where the pipe cleaner comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LinuxSite {
    pub fork: String,
    pub stable: String,
    pub stable_branch: String,
    /// Patches applied on top of the stable branch (relative to the site file).
    pub patches: PathBuf,
    #[serde(default = "d_prod_branch")]
    pub branch: String,
}

/// A service deployed with ansible from its `-config` repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AppSite {
    pub config_repo: String,
    #[serde(default = "d_main")]
    pub config_branch: String,
    /// The application's repository; its `app-branch` head is the `git_head` deployed.
    pub app_repo: String,
    #[serde(default = "d_prod_branch")]
    pub app_branch: String,
    /// The inventory host or group (`-l`).
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AnsibleSite {
    #[serde(default = "d_playbook")]
    pub playbook: String,
    #[serde(default = "d_inventory")]
    pub inventory: String,
    /// The ssh key's path (the path is not a secret; the key never leaves its file).
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The command (default `ansible-playbook`).
    #[serde(default = "d_ansible")]
    pub command: String,
}

fn d_playbook() -> String {
    "site.yml".into()
}
fn d_inventory() -> String {
    "hosts".into()
}
fn d_ansible() -> String {
    "ansible-playbook".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebsiteSite {
    pub repo: String,
    #[serde(default = "d_prod_branch")]
    pub branch: String,
    pub web_root: PathBuf,
    /// The hugo command line, run in the checkout; it writes `public/`.
    #[serde(default = "d_hugo")]
    pub hugo: Vec<String>,
}

fn d_hugo() -> Vec<String> {
    vec!["hugo".into(), "-D".into()]
}

/// The toolchain images: the recipe tree and lockfile, and the registry they go to (none:
/// `KCI_REGISTRY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DockerSite {
    #[serde(default = "d_images")]
    pub images: PathBuf,
    #[serde(default = "d_lockfile")]
    pub lockfile: PathBuf,
    #[serde(default)]
    pub registry: Option<String>,
    #[serde(default = "d_jobs")]
    pub jobs: usize,
}

fn d_images() -> PathBuf {
    "images".into()
}
fn d_lockfile() -> PathBuf {
    "lockfiles/images.lock".into()
}
fn d_jobs() -> usize {
    2
}

/// What `trigger` starts: a job and its parameters; `{tag}`, `{commit}`, `{branch}` and
/// `{fork}` are replaced by the pipe cleaner's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TriggerSite {
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// How `verify` judges the pipe cleaner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct VerifySite {
    /// The backend's `job` and `git_branch` of the pipe cleaners.
    pub job: String,
    pub branch: String,
    /// How many previous revisions make the baseline.
    pub previous: usize,
    /// Results count as settled when the revision's counts have not changed for this long
    /// (and its trigger build has finished).
    pub settle_seconds: u64,
    /// How long `--wait` (and `prod run`) waits for the results to settle.
    pub wait_minutes: u64,
    pub thresholds: super::verdict::Thresholds,
}

impl Default for VerifySite {
    fn default() -> Self {
        VerifySite {
            job: "kernelci".into(),
            branch: "kernelci.org".into(),
            previous: 5,
            settle_seconds: 1800,
            wait_minutes: 360,
            thresholds: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendApi {
    pub url: String,
    #[serde(flatten)]
    pub secret: SecretRef,
}

/// Who commits and tags (default: the procedure's bot, "kernelci.org bot").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            name: "kernelci.org bot".into(),
            email: "bot@kernelci.org".into(),
        }
    }
}

/// The whole site file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Site {
    /// Journals and working clones (relative to the site file).
    #[serde(default = "d_state")]
    pub state: PathBuf,
    #[serde(default = "d_prefix")]
    pub tag_prefix: String,
    #[serde(default)]
    pub bot: Identity,
    pub jenkins: JenkinsSite,
    #[serde(default)]
    pub restart: RestartSite,
    /// Credentials for pushes over HTTPS (none: the remotes need none, e.g. ssh or local).
    #[serde(default)]
    pub git: Option<GitAuth>,
    pub core: CoreSite,
    pub test_definitions: ForkSite,
    pub linux: LinuxSite,
    pub backend: AppSite,
    pub frontend: AppSite,
    pub ansible: AnsibleSite,
    pub website: WebsiteSite,
    pub docker: DockerSite,
    #[serde(default = "d_trigger_site")]
    pub trigger: TriggerSite,
    pub backend_api: BackendApi,
    #[serde(default)]
    pub verify: VerifySite,
}

fn d_state() -> PathBuf {
    ".kci-build/prod".into()
}
fn d_prefix() -> String {
    "kernelci-".into()
}
fn d_trigger_site() -> TriggerSite {
    TriggerSite {
        job: None,
        parameters: BTreeMap::new(),
    }
}

/// The 1-based line holding byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Site {
    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Site, SiteError> {
        let site: Site = toml::from_str(text).map_err(|e| SiteError {
            file: file.to_owned(),
            field: e
                .span()
                .map(|s| format!("line {}", line_of(text, s.start)))
                .unwrap_or_else(|| "the file".into()),
            reason: e.message().to_owned(),
        })?;
        site.validate(file)?;
        Ok(site)
    }

    fn validate(&self, file: &str) -> Result<(), SiteError> {
        let bad = |field: &str, reason: &str| SiteError {
            file: file.to_owned(),
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        let is_http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if !is_http(&self.jenkins.url) {
            return Err(bad("jenkins.url", "must be an http:// or https:// URL"));
        }
        if !is_http(&self.backend_api.url) {
            return Err(bad("backend-api.url", "must be an http:// or https:// URL"));
        }
        let git = self.git.as_ref().map(|g| ("git", &g.secret));
        for (field, secret) in [
            ("jenkins", &self.jenkins.secret),
            ("backend-api", &self.backend_api.secret),
        ]
        .into_iter()
        .chain(git)
        {
            match (&secret.env, &secret.file) {
                (Some(_), Some(_)) => {
                    return Err(bad(field, "give token-env or token-file, not both"))
                }
                (None, None) => {
                    return Err(bad(
                        field,
                        "name where the token is: token-env = \"VAR\" or token-file = \"path\" (never the token itself)",
                    ))
                }
                _ => {}
            }
        }
        if self.jenkins.poll_seconds == 0 {
            return Err(bad("jenkins.poll-seconds", "must be at least 1"));
        }
        let repos = [
            ("core.url", &self.core.url),
            ("test-definitions.url", &self.test_definitions.url),
            ("test-definitions.upstream", &self.test_definitions.upstream),
            ("linux.fork", &self.linux.fork),
            ("linux.stable", &self.linux.stable),
            ("backend.config-repo", &self.backend.config_repo),
            ("backend.app-repo", &self.backend.app_repo),
            ("frontend.config-repo", &self.frontend.config_repo),
            ("frontend.app-repo", &self.frontend.app_repo),
            ("website.repo", &self.website.repo),
        ];
        for (field, url) in repos {
            if url.trim().is_empty() || url.contains(char::is_whitespace) {
                return Err(bad(field, "must be a git URL or path"));
            }
            if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
                if rest
                    .split('/')
                    .next()
                    .is_some_and(|h| h.contains('@') && h.contains(':'))
                {
                    return Err(bad(
                        field,
                        "has credentials in it: keep secrets out of the site file",
                    ));
                }
            }
        }
        if self.verify.previous == 0 {
            return Err(bad("verify.previous", "must be at least 1"));
        }
        if let Err(e) = self.verify.thresholds.validate() {
            return Err(bad(&format!("verify.thresholds.{}", e.field), &e.reason));
        }
        if self.website.hugo.is_empty() {
            return Err(bad("website.hugo", "must name a command"));
        }
        if !self
            .tag_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "tag-prefix",
                "may hold letters, digits, `-`, `_` and `.` only",
            ));
        }
        Ok(())
    }

    /// Jobs that must exist once Jenkins is back.
    pub fn expected_jobs(&self) -> Vec<String> {
        if !self.jenkins.expected_jobs.is_empty() {
            return self.jenkins.expected_jobs.clone();
        }
        let j = &self.jenkins;
        vec![
            j.dsl_job.clone(),
            j.monitor_job.clone(),
            j.trigger_job.clone(),
            j.bisection_job.clone(),
        ]
    }

    /// The trigger's job (default: Jenkins's trigger job) and parameters for a pipe cleaner.
    pub fn trigger_for(&self, tag: &str, commit: &str) -> (String, BTreeMap<String, String>) {
        let job = self
            .trigger
            .job
            .clone()
            .unwrap_or_else(|| self.jenkins.trigger_job.clone());
        let params = self
            .trigger
            .parameters
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace("{tag}", tag)
                    .replace("{commit}", commit)
                    .replace("{branch}", &self.linux.branch)
                    .replace("{fork}", &self.linux.fork);
                (k.clone(), v)
            })
            .collect();
        (job, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = include_str!("../../production.example.toml");

    #[test]
    fn the_committed_example_is_valid() {
        let site = Site::parse("production.example.toml", EXAMPLE).unwrap();
        assert_eq!(site.jenkins.monitor_job, "kernel-tree-monitor");
        assert_eq!(site.linux.stable_branch, "linux-5.15.y");
        assert_eq!(site.expected_jobs().len(), 4);
        let (job, params) = site.trigger_for("kernelci-20261207.0", "abc123");
        assert_eq!(job, "kernel-build-trigger");
        assert_eq!(params["COMMIT_ID"], "abc123");
        assert_eq!(params["KERNEL_BRANCH"], "kernelci.org");
    }

    #[test]
    fn a_bad_file_names_the_field() {
        let cases = [
            (
                EXAMPLE.replace(
                    "url = \"https://bot.kernelci.org\"",
                    "url = \"bot.kernelci.org\"",
                ),
                "jenkins.url",
            ),
            (
                EXAMPLE.replace("token-env = \"KCI_JENKINS_TOKEN\"", ""),
                "jenkins",
            ),
            (
                EXAMPLE.replace("poll-seconds = 15", "poll-seconds = 0"),
                "jenkins.poll-seconds",
            ),
            (
                EXAMPLE.replace(
                    "https://github.com/kernelci/kernelci-core.git",
                    "https://bot:hunter2@github.com/kernelci/kernelci-core.git",
                ),
                "core.url",
            ),
        ];
        for (text, field) in cases {
            let e = Site::parse("production.toml", &text).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with("production.toml: "), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let typo = EXAMPLE.replace("monitor-job", "montor-job");
        let e = Site::parse("production.toml", &typo).unwrap_err();
        assert!(e.reason.contains("montor-job"), "{e}");
        // The toml crate spans an unknown field with its table: the `[jenkins]` line.
        let line = typo.lines().position(|l| l == "[jenkins]").unwrap() + 1;
        assert_eq!(e.field, format!("line {line}"), "{e}");
    }
}
