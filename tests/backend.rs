//! The real kernelci-backend client (`HttpBackend`, `revision`, `history`) against a faithful
//! HTTP double of the backend and its traps (tests/common/backend.rs).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::backend::{
    Arrival, BackendDouble, Fault, RevisionSpec, Shape, BRANCH, JOB, TOKEN, TOKEN_VAR, VERSION,
};
use kci_build::backend::{
    history, revision, BackendApi, BackendError, Count, HttpBackend, KernelRef, Retry, PAGE,
};
use kci_build::error::Fault as Whose;
use kci_build::settings::Secret;

fn retry(attempts: u32) -> Retry {
    Retry {
        attempts,
        first_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
    }
}

fn client(d: &BackendDouble) -> HttpBackend {
    HttpBackend::with_retry(&d.url(), Secret::new(TOKEN), TOKEN_VAR, retry(4)).unwrap()
}

/// More test cases than one page holds, over 4 labs.
fn big() -> Shape {
    Shape {
        builds: 60,
        cases: 2 * PAGE + 345,
        labs: 4,
    }
}

/// The filter and paging keys kernelci-backend knows for a path (what the client may send).
fn known_keys(path: &str) -> &'static [&'static str] {
    const PAGING: &[&str] = &["field", "sort", "sort_order", "skip", "limit"];
    match path {
        "/job" => &[
            "job",
            "git_branch",
            "kernel",
            "field",
            "sort",
            "sort_order",
            "limit",
        ],
        "/build" | "/test/case" => &["job", "git_branch", "kernel"],
        "/test/group" => &["job", "git_branch", "kernel", "parent_id"],
        "/count/build" => &["job", "git_branch", "kernel", "status", "gte"],
        "/count/test_case" | "/count/test_regression" => &["job", "git_branch", "kernel", "status"],
        "/version" => &[],
        _ => PAGING,
    }
}

#[tokio::test]
async fn a_revision_reads_exactly_what_was_generated_although_count_is_capped() {
    let d = BackendDouble::start();
    // Decoys a sloppy filter would count: older revisions, and the same kernel elsewhere.
    d.add(&RevisionSpec::healthy(
        "kernelci-20211115.0",
        1_000,
        1,
        big(),
    ));
    let spec = RevisionSpec::healthy("kernelci-20211122.0", 2_000, 2, big());
    let want = d.add(&spec);
    d.add(&RevisionSpec::healthy("kernelci-20211122.0", 3_000, 3, big()).on(JOB, "staging"));
    let api = client(&d);

    let got = revision(&api, JOB, BRANCH, "kernelci-20211122.0")
        .await
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(got.tests.total, (2 * PAGE + 345) as u64);
    assert_eq!(got.builds.total, 60);
    assert_eq!(got.labs.len(), 4);
    assert_eq!(got.test_keys.len(), 4 * 2 * 3);
    assert!(got.regressions > 0 && got.tests.fail > 0, "{:?}", got.tests);

    let requests = d.requests();
    // Test cases were read page by page, each page a projection.
    let pages: Vec<_> = requests.iter().filter(|r| r.path == "/test/case").collect();
    assert_eq!(pages.len(), 3, "{pages:#?}");
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.values("skip"), [(i * PAGE).to_string()]);
        assert_eq!(p.values("limit"), [PAGE.to_string()]);
        assert!(p.values("field").contains(&"status".to_owned()), "{p:?}");
    }
    // Top-level test groups only.
    for g in requests.iter().filter(|r| r.path == "/test/group") {
        assert_eq!(g.values("parent_id"), ["null"], "{g:?}");
    }
    for r in &requests {
        // The trailing-slash trap: `/count/build/` is a 404.
        assert!(!r.path.ends_with('/'), "{r:?}");
        assert_eq!(r.status, 200, "{r:?}");
        // Every filter key is one the backend knows: it ignores the others silently.
        let known = known_keys(&r.path);
        for (k, _) in r.pairs() {
            let paging = ["field", "sort", "sort_order", "skip", "limit"].contains(&k.as_str());
            assert!(
                known.contains(&k.as_str()) || (paging && !r.path.starts_with("/count")),
                "{k} in {r:?}"
            );
        }
    }
    assert!(requests.iter().any(|r| r.path == "/count/test_regression"));
    assert!(requests
        .iter()
        .any(|r| r.path == "/count/build" && r.values("gte") == ["warnings,1"]));
}

#[tokio::test]
async fn history_is_the_newest_revisions_newest_first() {
    let d = BackendDouble::start();
    let small = Shape {
        builds: 12,
        cases: 60,
        labs: 2,
    };
    let mut want = Vec::new();
    // Added out of order: the API sorts by `created_on`.
    for (i, ms) in [3_000u64, 1_000, 5_000, 2_000, 4_000]
        .into_iter()
        .enumerate()
    {
        let kernel = format!("kernelci-2021112{i}.0");
        want.push(d.add(&RevisionSpec::healthy(&kernel, ms, i as u64, small)));
    }
    want.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    let api = client(&d);

    let got = history(&api, JOB, BRANCH, 3).await.unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got, want[..4]);
    let jobs = d.requests_to("/job");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].values("sort"), ["created_on"]);
    assert_eq!(jobs[0].values("sort_order"), ["-1"]);
    assert_eq!(jobs[0].values("limit"), ["4"]);
}

#[tokio::test]
async fn the_token_goes_raw_and_never_shows_and_a_refusal_names_the_variable() {
    let d = BackendDouble::start();
    d.add(&RevisionSpec::healthy("k1", 1_000, 1, Shape::default()));
    revision(&client(&d), JOB, BRANCH, "k1").await.unwrap();
    let requests = d.requests();
    for r in requests.iter().filter(|r| r.path != "/version") {
        assert_eq!(r.authorization.as_deref(), Some(TOKEN), "{r:?}");
    }

    let wrong = "not-the-token-0123456789";
    let api = HttpBackend::with_retry(
        &d.url(),
        Secret::new(wrong),
        "KCI_SITE_BACKEND_TOKEN",
        retry(4),
    )
    .unwrap();
    assert!(!format!("{api:?}").contains(wrong));
    d.clear_requests();
    let err = revision(&api, JOB, BRANCH, "k1").await.unwrap_err();
    assert!(matches!(err, BackendError::Refused { .. }), "{err:?}");
    assert_eq!(err.fault(), Whose::Environment);
    let text = err.to_string();
    assert!(
        text.contains("the backend refused the token: check KCI_SITE_BACKEND_TOKEN"),
        "{text}"
    );
    assert!(text.contains("/job?job=kernelci"), "{text}");
    assert!(!format!("{err} {err:?}").contains(wrong), "{err:?}");
    // A 4xx is never retried.
    assert_eq!(d.requests().len(), 1);

    // `/version` needs no token, and the client sends none there.
    let v = api.version().await.unwrap();
    assert_eq!(v.version, VERSION);
    let last = d.requests().pop().unwrap();
    assert_eq!((last.path.as_str(), last.authorization), ("/version", None));
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried() {
    let d = BackendDouble::start();
    let want = d.add(&RevisionSpec::healthy("k1", 1_000, 7, big()));
    d.fail_next(&[Fault::Status(503), Fault::Drop, Fault::Status(502)]);
    let got = revision(&client(&d), JOB, BRANCH, "k1").await.unwrap();
    assert_eq!(got, want);
    let requests = d.requests();
    assert_eq!(requests[0].status, 503);
    assert!(requests[1].dropped, "{:?}", requests[1]);
    assert_eq!(requests[2].status, 502);
    // The same request, asked again until it was answered.
    assert!(requests[..4].iter().all(|r| r.query == requests[0].query));
    assert_eq!(requests[3].status, 200);

    // Drops in the middle of paging too.
    d.clear_requests();
    d.fail_next(&[Fault::Drop]);
    let api = client(&d);
    let cases = api.test_cases(&KernelRef::new(JOB, BRANCH, "k1")).await;
    assert_eq!(cases.unwrap().len(), 2 * PAGE + 345);
}

#[tokio::test]
async fn a_persistent_5xx_fails_after_the_bounded_attempts() {
    let d = BackendDouble::start();
    d.add(&RevisionSpec::healthy("k1", 1_000, 1, Shape::default()));
    d.fail_always(Some(Fault::Status(500)));
    let api = HttpBackend::with_retry(&d.url(), Secret::new(TOKEN), TOKEN_VAR, retry(3)).unwrap();
    let k = KernelRef::new(JOB, BRANCH, "k1");
    let err = api.count(&k, &Count::Regressions).await.unwrap_err();
    assert!(
        matches!(
            err,
            BackendError::Server {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.fault(), Whose::Environment);
    assert!(err
        .to_string()
        .contains("/count/test_regression?job=kernelci"));
    assert!(!format!("{err} {err:?}").contains(TOKEN));
    assert_eq!(d.requests().len(), 3);

    // Dropped every time: unreachable, after the same bound.
    d.clear_requests();
    d.fail_always(Some(Fault::Drop));
    let err = api.count(&k, &Count::Regressions).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(err.fault(), Whose::Environment);
    assert_eq!(d.requests().len(), 3);
}

#[tokio::test]
async fn an_unknown_kernel_is_bad_input_and_a_closed_port_the_environment() {
    let d = BackendDouble::start();
    d.add(&RevisionSpec::healthy("k1", 1_000, 1, Shape::default()));
    let err = revision(&client(&d), JOB, BRANCH, "v6.1-rc1")
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::UnknownKernel { .. }), "{err:?}");
    assert_eq!(err.fault(), Whose::BadInput);

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = HttpBackend::with_retry(
        &format!("http://127.0.0.1:{port}/"),
        Secret::new(TOKEN),
        TOKEN_VAR,
        retry(2),
    )
    .unwrap();
    let err = revision(&api, JOB, BRANCH, "k1").await.unwrap_err();
    assert!(
        matches!(err, BackendError::Unreachable { attempts: 2, .. }),
        "{err:?}"
    );
    assert_eq!(err.fault(), Whose::Environment);
}

#[tokio::test]
async fn a_revision_still_receiving_results_grows_each_time_it_is_read() {
    let d = BackendDouble::start();
    let spec = RevisionSpec::healthy("k1", 1_000, 4, Shape::default()).arriving(Arrival::Reads(3));
    let want = d.add(&spec);
    let api = client(&d);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = revision(&api, JOB, BRANCH, "k1").await.unwrap();
        seen.push((r.builds.total, r.tests.total, r.test_keys.len()));
        if seen.len() == 4 {
            assert_eq!(r, want);
        }
    }
    assert!(seen[0].0 < seen[1].0 && seen[1].0 < seen[2].0, "{seen:?}");
    assert!(seen[0].1 < seen[1].1 && seen[1].1 < seen[2].1, "{seen:?}");
    assert_eq!(seen[2], seen[3]);
    assert_eq!(d.reads("k1"), 4);
}

#[tokio::test]
async fn the_knobs_change_what_is_served() {
    let d = BackendDouble::start();
    let base = RevisionSpec::healthy("k1", 1_000, 5, Shape::default());
    let labs: BTreeSet<String> = base.expected().labs;
    let spec = RevisionSpec::healthy("k2", 2_000, 5, Shape::default())
        .without_lab("lab-broonie")
        .drop_builds(0.12)
        .test_pass_rate(0.5);
    let want = d.add(&spec);
    let got = revision(&client(&d), JOB, BRANCH, "k2").await.unwrap();
    assert_eq!(got, want);
    assert_eq!(got.builds.total, 60 - 7);
    assert!(labs.contains("lab-broonie") && !got.labs.contains("lab-broonie"));
    assert_eq!(got.tests.pass * 2, got.tests.total);
}

/// The double's own traps, spoken to directly: what a careless client would fall into.
#[tokio::test]
async fn the_double_keeps_the_backends_traps() {
    let d = BackendDouble::start();
    d.add(&RevisionSpec::healthy("k1", 1_000, 1, big()));
    d.add(&RevisionSpec::healthy("k2", 2_000, 2, big()));
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{}{path}", d.url()))
            .header("Authorization", TOKEN)
            .send()
    };
    let json = |r: reqwest::Response| async move { r.json::<serde_json::Value>().await.unwrap() };

    // `count` is capped by `limit`.
    let v = json(get("test/case?kernel=k1&limit=10").await.unwrap()).await;
    assert_eq!(v["count"], 10);
    assert_eq!(v["result"].as_array().unwrap().len(), 10);
    assert!(v["result"][0]["_id"]["$oid"].is_string());
    // A typo'd key is ignored: every revision's documents are counted.
    let v = json(get("count/test_case?kernal=k1").await.unwrap()).await;
    assert_eq!(v["result"][0]["count"], 2 * (2 * PAGE + 345));
    // The trailing slash is a 404.
    let r = get("count/test_case/?kernel=k1").await.unwrap();
    assert_eq!(r.status(), 404);
    // `null` matches null or missing.
    let v = json(
        get("count/test_group?kernel=k1&parent_id=null")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["result"][0]["count"], 24);
    // A bad token gets the 403 envelope; `/version` needs none.
    let r = http
        .get(format!("{}build", d.url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["code"], 403);
    let r = http
        .get(format!("{}version", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["result"][0]["version"], VERSION);
    // Dates are `$date`, newest first by default.
    let v = json(get("job?sort=created_on&field=created_on").await.unwrap()).await;
    assert_eq!(v["result"][0]["created_on"]["$date"], 2_000);
    assert!(v["result"][0].get("kernel").is_none());
}
