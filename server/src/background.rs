//! Background work, run at a lower CPU priority than requests.
//!
//! Building the next version, restaging production after `T`, making a delta and compressing a
//! blob each take seconds of CPU with large data, and a rotation sets two of them off at the
//! activation time: the instant the whole farm checks in. On a data server with two cores they
//! would take one of them from the herd's check-ins. At a higher nice value they give way to
//! request threads whenever both want a core (about a tenth of it is left to them), and take
//! all of it otherwise. A build's lead before `T` is measured (`prepare::lead_us`, twice the
//! last build's time), so builds slowed by load start earlier; one slowed more than that
//! misses `T`, and the rotation keeps the staged version and restages after it.
//!
//! Linux keeps the nice value per thread, so this lowers only the calling thread. Each job gets
//! a thread of its own, never one of tokio's blocking pool: that thread would keep the lower
//! priority for the requests it runs next, and an unprivileged thread cannot raise it again.

/// How much lower than the process's own priority background work runs (a nice increment).
/// At +10 a busy request thread gets about nine tenths of a contended core.
pub const NICE_INCREMENT: i32 = 10;

/// Lowers the calling thread's CPU priority by [`NICE_INCREMENT`] (nice values stop at 19).
/// Failing is harmless (the work runs at the process's priority), so it is only logged.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: errno is this thread's; nice() takes no pointers, and glibc's adjusts the
    // calling thread on Linux. It returns the new value, so -1 is an error only if errno says.
    unsafe {
        *libc::__errno_location() = 0;
        if libc::nice(NICE_INCREMENT) == -1 && *libc::__errno_location() != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!("background work keeps the process's priority: {e}");
        }
    }
}

/// This thread's nice value (Linux), for tests and logs.
#[cfg(test)]
pub fn this_thread_nice() -> i32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self");
    // Field 19 is the nice value; the command name (field 2) may hold spaces, so count from
    // its closing parenthesis.
    let after = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    after
        .split(' ')
        .nth(16)
        .expect("nice field")
        .parse()
        .expect("a number")
}

/// A bound on the jobs of one kind that run at once; the others wait their turn. Requests
/// start them (a delta, a compression, each once per pair or blob), so their threads are
/// bounded here as tokio bounds its blocking pool. Each kind has its own, so that one kind
/// never waits behind the other (a download's compression behind deltas being made). The
/// preparing thread's encodes are not counted: one at a time, see [`lowered`].
pub struct Pool {
    turns: tokio::sync::Semaphore,
}

impl Pool {
    pub const fn new(jobs: usize) -> Pool {
        Pool {
            turns: tokio::sync::Semaphore::const_new(jobs),
        }
    }

    /// Runs `f` on a new thread named `name` at background priority, once one of this pool's
    /// turns is free, and gives its result; an error if the thread could not start or
    /// panicked (the panic stays on that thread).
    pub async fn run<T: Send + 'static>(
        &'static self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        // The semaphore is never closed.
        let turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| format!("no {name} thread: the pool is closed"))?;
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Held by the thread, not by the caller, who may stop waiting.
                let _turn = turn;
                lower_this_thread();
                let _ = done.send(f());
            })
            .map_err(|e| format!("cannot start a {name} thread: {e}"))?;
        result
            .await
            .map_err(|_| format!("the {name} thread failed before it finished"))
    }
}

/// Runs `f` at background priority on a thread named `name` and waits for it: for the CPU
/// part of a job whose database writes must not run lowered (a lowered thread holding the
/// write lock would hold up the rotation behind it). Runs `f` here if no thread can start; a
/// panic in `f` goes on here.
pub fn lowered<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let mut f = Some(f);
    let out = std::thread::scope(|scope| {
        let job = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(scope, || {
                lower_this_thread();
                (f.take().expect("run once"))()
            });
        job.ok().map(|job| job.join())
    });
    match out {
        Some(Ok(out)) => out,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => (f.take().expect("not run: the thread did not start"))(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_below_the_priority_of_request_threads() {
        let requests = this_thread_nice();
        if requests >= 19 {
            eprintln!("this test runs at the lowest priority already: nothing to compare");
            return;
        }
        static POOL: Pool = Pool::new(1);
        let background = POOL.run("test-background", this_thread_nice).await.unwrap();
        assert_eq!(background, (requests + NICE_INCREMENT).min(19));
        assert!(
            background > requests,
            "background work at the requests' priority"
        );
        // Only the background thread was lowered.
        assert_eq!(this_thread_nice(), requests);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_panic_here() {
        static POOL: Pool = Pool::new(1);
        let out: Result<(), String> = POOL.run("test-panic", || panic!("boom")).await;
        assert!(out.unwrap_err().contains("test-panic"));
    }

    #[test]
    fn the_cpu_part_of_a_job_runs_lowered_and_the_caller_is_not() {
        let requests = this_thread_nice();
        if requests >= 19 {
            eprintln!("this test runs at the lowest priority already: nothing to compare");
            return;
        }
        let job = lowered("test-lowered", this_thread_nice);
        assert_eq!(job, (requests + NICE_INCREMENT).min(19));
        assert_eq!(this_thread_nice(), requests);
        let panicked = std::panic::catch_unwind(|| lowered("test-lowered", || panic!("boom")));
        assert!(
            panicked.is_err(),
            "a panic in the job goes on in the caller"
        );
    }

    #[tokio::test]
    async fn a_pool_runs_at_most_its_jobs_at_once_and_a_panic_gives_its_turn_back() {
        const JOBS: usize = 4;
        static POOL: Pool = Pool::new(JOBS);
        // Jobs that panic first: each must give its turn back.
        for _ in 0..JOBS + 1 {
            assert!(POOL.run("test-panic", || panic!("boom")).await.is_err());
        }
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
        let jobs: Vec<_> = (0..JOBS + 2)
            .map(|_| {
                let (running, wait) = (running.clone(), wait.clone());
                tokio::spawn(POOL.run("test-bounded", move || {
                    running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = wait.lock().unwrap().recv();
                }))
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running.load(std::sync::atomic::Ordering::SeqCst) < JOBS {
            assert!(std::time::Instant::now() < deadline, "four jobs never ran");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            running.load(std::sync::atomic::Ordering::SeqCst),
            JOBS,
            "more jobs ran at once than there are turns"
        );
        for _ in 0..JOBS + 2 {
            go.send(()).unwrap();
        }
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(running.load(std::sync::atomic::Ordering::SeqCst), JOBS + 2);
    }
}
