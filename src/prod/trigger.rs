//! Triggering a Jenkins job and knowing which build it became — not fire and forget. A
//! trigger only queues an item; the item gets its build number when it leaves the queue, and
//! Jenkins forgets a left item 5 minutes later, so [`trigger`] polls it promptly and, should
//! it have been forgotten anyway, finds the build by its parameters. [`find_build`] is the
//! same search for a resumed run: a kill between the POST and the journal must not trigger
//! twice.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::jenkins::{human_duration, JenkinsApi, JenkinsError, Params, QueueItem, BUILDS_SCANNED};

/// A triggered build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Triggered {
    pub job: String,
    /// The queue item number; 0 when the build was found, not triggered.
    pub queue_item: u64,
    pub number: u64,
    pub url: String,
}

/// How promptly and how long to follow a queue item.
#[derive(Debug, Clone)]
pub struct TriggerOptions {
    pub poll: Duration,
    /// The longest an item may wait in the queue (an error after).
    pub deadline: Option<Duration>,
}

impl Default for TriggerOptions {
    fn default() -> Self {
        TriggerOptions {
            poll: Duration::from_secs(2),
            deadline: Some(Duration::from_secs(3600)),
        }
    }
}

/// Milliseconds since the epoch: what to record before a trigger, for [`find_build`].
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Queues `job` with `params` (none: `/build`) and follows the queue item until it has a
/// build number. A cancelled item is an error; an item forgotten before it was seen to start
/// is looked for among the builds started since the trigger.
pub async fn trigger<J: JenkinsApi>(
    jenkins: &J,
    job: &str,
    params: &Params,
    opts: &TriggerOptions,
) -> Result<Triggered, JenkinsError> {
    // A second earlier, for a Jenkins clock slightly behind ours.
    let since = now_ms().saturating_sub(1000);
    let started = Instant::now();
    let item = jenkins.trigger(job, params).await?;
    loop {
        match jenkins.queue_item(item).await? {
            QueueItem::Started { number, url } => {
                return Ok(Triggered {
                    job: job.into(),
                    queue_item: item,
                    number,
                    url,
                })
            }
            QueueItem::Cancelled => {
                return Err(JenkinsError::Cancelled {
                    job: job.into(),
                    queue_item: item,
                })
            }
            QueueItem::Gone => {
                return match find_build(jenkins, job, params, since).await? {
                    Some(mut t) => {
                        t.queue_item = item;
                        Ok(t)
                    }
                    None => Err(JenkinsError::Lost {
                        job: job.into(),
                        queue_item: item,
                    }),
                };
            }
            QueueItem::Waiting { why } => {
                let mut nap = opts.poll;
                if let Some(d) = opts.deadline {
                    let left = d.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Err(JenkinsError::Timeout {
                            what: format!(
                                "queue item {item} of job `{job}` still waiting ({})",
                                why.as_deref().unwrap_or("no reason given")
                            ),
                            waited: human_duration(started.elapsed()),
                        });
                    }
                    nap = nap.min(left);
                }
                tokio::time::sleep(nap).await;
            }
        }
    }
}

/// A build of `job` started at or after `since_ms` whose parameters are exactly `params`
/// (with no parameters: any build started since), newest first among the newest
/// [`BUILDS_SCANNED`]. Pass the time recorded before the trigger (a journal step's start);
/// 0 matches on parameters alone.
pub async fn find_build<J: JenkinsApi>(
    jenkins: &J,
    job: &str,
    params: &Params,
    since_ms: u64,
) -> Result<Option<Triggered>, JenkinsError> {
    let state = jenkins.job(job).await?;
    for n in state.builds.into_iter().take(BUILDS_SCANNED) {
        let b = jenkins.build(job, n).await?;
        if b.timestamp_ms < since_ms {
            // Newest first: every older build started before too.
            break;
        }
        if b.parameters == *params {
            return Ok(Some(Triggered {
                job: job.into(),
                queue_item: 0,
                number: b.number,
                url: b.url,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jenkins::fake::{FakeJenkins, ItemOutcome};

    fn params(kv: &[(&str, &str)]) -> Params {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    fn fast() -> TriggerOptions {
        TriggerOptions {
            poll: Duration::from_millis(1),
            deadline: Some(Duration::from_millis(500)),
        }
    }

    #[tokio::test]
    async fn a_trigger_is_followed_until_its_build_number() {
        let j = FakeJenkins::new();
        j.add_build("job-dsl", 0, 0, Params::new());
        j.set_queue(3, ItemOutcome::Start);
        let t = trigger(&j, "job-dsl", &Params::new(), &fast())
            .await
            .unwrap();
        assert_eq!((t.queue_item, t.number), (1, 2), "{t:?}");
        let polls = j.calls().iter().filter(|c| c.starts_with("queue ")).count();
        assert_eq!(polls, 4);
    }

    #[tokio::test]
    async fn a_cancelled_item_is_an_error_and_a_forgotten_one_is_found_by_its_parameters() {
        let j = FakeJenkins::new();
        j.add_job("kernel-build-trigger");
        j.set_queue(0, ItemOutcome::Cancel);
        let p = params(&[("TREE", "mainline")]);
        let err = trigger(&j, "kernel-build-trigger", &p, &fast())
            .await
            .unwrap_err();
        assert!(
            matches!(err, JenkinsError::Cancelled { queue_item: 1, .. }),
            "{err:?}"
        );

        j.add_build("kernel-build-trigger", 0, 0, params(&[("TREE", "next")]));
        j.set_queue(1, ItemOutcome::Forget);
        let t = trigger(&j, "kernel-build-trigger", &p, &fast())
            .await
            .unwrap();
        assert_eq!((t.queue_item, t.number), (2, 2), "{t:?}");
    }

    #[tokio::test]
    async fn find_build_matches_parameters_exactly_and_respects_the_start_time() {
        let j = FakeJenkins::new();
        let a = params(&[("TREE", "mainline"), ("TAG", "v1")]);
        let one = j.add_build("t", 0, 0, a.clone());
        let _other = j.add_build("t", 0, 0, params(&[("TREE", "mainline")]));
        let found = find_build(&j, "t", &a, 0).await.unwrap();
        assert_eq!(found.map(|t| t.number), Some(one));
        // Build #1 started before this time: not ours.
        let since = now_ms() + 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newest = j.add_build("t", 0, 0, Params::new());
        let late = find_build(&j, "t", &a, since).await.unwrap();
        assert_eq!(late, None);
        // No parameters: any build since, newest first.
        let any = find_build(&j, "t", &Params::new(), since).await.unwrap();
        assert_eq!(any.map(|t| t.number), Some(newest));
    }

    #[tokio::test]
    async fn a_disabled_job_is_bad_input() {
        let j = FakeJenkins::new();
        j.add_job("t");
        j.disable("t").await.unwrap();
        let err = trigger(&j, "t", &Params::new(), &fast()).await.unwrap_err();
        assert!(matches!(err, JenkinsError::JobDisabled { .. }), "{err:?}");
        assert_eq!(err.fault(), crate::error::Fault::BadInput);
    }
}
