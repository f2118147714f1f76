//! Several engines as one (`build --engines default,arm-box`): each engine has the same
//! number of build slots; a build leases a slot on the engine [`choose`] picks for its
//! platform and gives it back when it ends, and an engine that stops answering is retired
//! so its work goes to the others.
//!
//! The choice is pure and unit-tested; the pool only keeps the counts and wakes waiters.
//! Nothing of a build moves between engines but through the store: a child's parent is
//! loaded into whichever engine builds the child from its canonical archive, verified by
//! config digest (or pulled by key from the registry cache with `--registry`).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::error::EnvironmentError;

/// One engine of a pool.
#[derive(Clone)]
pub struct Member<E> {
    /// As the operator named it (`default`, a Docker context, an address).
    pub name: String,
    pub engine: E,
    /// Its CPU, as OCI names architectures (`amd64`, `arm64`…).
    pub arch: String,
}

/// Where the next build of a platform goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Take(usize),
    /// Every engine that should take it is full: wait for a slot.
    Wait,
    /// No engine is left.
    NoEngine,
}

/// Picks an engine for a build of architecture `want`: among the live engines of that
/// architecture when there is one (a native build beats emulation by 3–10×, so it waits
/// for a native slot rather than take a foreign one), else among all live ones; the least
/// busy with a free slot, the first named on a tie.
pub fn choose(busy: &[usize], gone: &[bool], arches: &[&str], slots: usize, want: &str) -> Choice {
    let alive: Vec<usize> = (0..busy.len()).filter(|&i| !gone[i]).collect();
    if alive.is_empty() {
        return Choice::NoEngine;
    }
    let native: Vec<usize> = alive
        .iter()
        .copied()
        .filter(|&i| arches[i] == want)
        .collect();
    let candidates = if native.is_empty() { alive } else { native };
    candidates
        .into_iter()
        .filter(|&i| busy[i] < slots)
        .min_by_key(|&i| (busy[i], i))
        .map_or(Choice::Wait, Choice::Take)
}

/// The OCI architecture of the `uname -m` name the Docker API reports.
pub fn oci_arch(machine: &str) -> String {
    match machine {
        "x86_64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "armv7l" | "armv6l" | "armhf" | "armel" => "arm",
        "i386" | "i686" => "386",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64" | "mips64el" | "mips64le" => "mips64le",
        other => other,
    }
    .to_owned()
}

struct State {
    busy: Vec<usize>,
    /// Why each retired engine was retired.
    gone: Vec<Option<String>>,
}

/// The engines and their slot counts.
pub struct Pool<E> {
    members: Vec<Member<E>>,
    slots: usize,
    state: Mutex<State>,
    freed: Notify,
}

/// A slot on one engine, given back when dropped.
pub struct Lease<E> {
    pool: Arc<Pool<E>>,
    index: usize,
}

impl<E> Lease<E> {
    pub fn member(&self) -> &Member<E> {
        &self.pool.members[self.index]
    }

    /// Retires this lease's engine: no build goes there again.
    pub fn retire(&self, why: String) {
        self.pool.state.lock().expect("pool state").gone[self.index] = Some(why);
        self.pool.freed.notify_waiters();
    }
}

impl<E> Drop for Lease<E> {
    fn drop(&mut self) {
        self.pool.state.lock().expect("pool state").busy[self.index] -= 1;
        self.pool.freed.notify_waiters();
    }
}

impl<E> Pool<E> {
    /// `slots` builds at once on each of `members`.
    pub fn new(members: Vec<Member<E>>, slots: usize) -> Pool<E> {
        let n = members.len();
        Pool {
            members,
            slots: slots.max(1),
            state: Mutex::new(State {
                busy: vec![0; n],
                gone: vec![None; n],
            }),
            freed: Notify::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A slot for a build of architecture `want`, once one is free; an environment error
    /// when every engine has been retired.
    pub async fn lease(self: &Arc<Self>, want: &str) -> Result<Lease<E>, EnvironmentError> {
        let arches: Vec<&str> = self.members.iter().map(|m| m.arch.as_str()).collect();
        loop {
            // Registered before the counts are read, so a slot freed in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.state.lock().expect("pool state");
                let gone: Vec<bool> = st.gone.iter().map(Option::is_some).collect();
                match choose(&st.busy, &gone, &arches, self.slots, want) {
                    Choice::Take(index) => {
                        st.busy[index] += 1;
                        return Ok(Lease {
                            pool: self.clone(),
                            index,
                        });
                    }
                    Choice::NoEngine => return Err(self.none_left(&st)),
                    Choice::Wait => {}
                }
            }
            freed.await;
        }
    }

    fn none_left(&self, st: &State) -> EnvironmentError {
        let why: Vec<String> = self
            .members
            .iter()
            .zip(&st.gone)
            .map(|(m, g)| format!("{}: {}", m.name, g.as_deref().unwrap_or("?")))
            .collect();
        EnvironmentError {
            message: format!("no engine of the pool is left ({})", why.join("; ")),
            hint: "start the engines again (or name others with --engines) and run the same \
                   command: what was built is stored"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_first_then_least_busy() {
        let arches = ["amd64", "arm64", "amd64"];
        let gone = [false; 3];
        assert_eq!(
            choose(&[0, 0, 0], &gone, &arches, 2, "arm64"),
            Choice::Take(1)
        );
        assert_eq!(
            choose(&[0, 0, 0], &gone, &arches, 2, "amd64"),
            Choice::Take(0)
        );
        assert_eq!(
            choose(&[1, 0, 0], &gone, &arches, 2, "amd64"),
            Choice::Take(2)
        );
        // The native engine is full: wait for it rather than emulate.
        assert_eq!(choose(&[0, 2, 0], &gone, &arches, 2, "arm64"), Choice::Wait);
        // No engine of that architecture: any engine, through emulation.
        assert_eq!(
            choose(&[1, 2, 0], &gone, &arches, 2, "riscv64"),
            Choice::Take(2)
        );
        assert_eq!(
            choose(&[2, 2, 2], &gone, &arches, 2, "riscv64"),
            Choice::Wait
        );
    }

    #[test]
    fn retired_engines_take_nothing() {
        let arches = ["amd64", "arm64"];
        // The arm64 engine is gone: its builds go to the amd64 one.
        assert_eq!(
            choose(&[0, 0], &[false, true], &arches, 1, "arm64"),
            Choice::Take(0)
        );
        assert_eq!(
            choose(&[0, 0], &[true, true], &arches, 1, "amd64"),
            Choice::NoEngine
        );
    }

    #[test]
    fn arch_names() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("armv7l"), "arm");
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_a_waiter_and_retiring_the_last_engine_ends_it() {
        let pool = Arc::new(Pool::new(
            vec![Member {
                name: "only".into(),
                engine: (),
                arch: "amd64".into(),
            }],
            1,
        ));
        let first = pool.lease("amd64").await.unwrap();
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease("amd64").await.map(|l| l.member().name.clone()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one slot: the second lease waits");
        drop(first);
        assert_eq!(waiter.await.unwrap().unwrap(), "only");

        let lease = pool.lease("amd64").await.unwrap();
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.lease("amd64").await.err().map(|e| e.message) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        lease.retire("connection refused".into());
        drop(lease);
        let msg = waiter.await.unwrap().expect("no engine left");
        assert!(msg.contains("only: connection refused"), "{msg}");
    }
}
