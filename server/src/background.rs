//! Background work, run at a lower CPU priority than requests.
//!
//! Building the next version, restaging production after `T`, making a delta and compressing a
//! blob each take seconds of CPU with large data, and a rotation sets two of them off at the
//! activation time: the instant the whole farm checks in. On a data server with two cores they
//! would take one of them from the herd's check-ins. At a higher nice value they give way to
//! request threads whenever both want a core, and take all of it otherwise. A build slowed by
//! load still ends before `T`: its lead is measured (`prepare::lead_us` from the last build's
//! time), so a slower build starts earlier.
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

/// How many jobs of [`run`] run at once; the others wait their turn. Requests start them (a
/// delta, a compression, each once per pair or blob), so their threads are bounded here as
/// tokio bounds its blocking pool.
const CONCURRENT_JOBS: usize = 4;

/// Runs `f` on a new thread named `name` at background priority, once one of the
/// [`CONCURRENT_JOBS`] turns is free, and gives its result; an error if the thread could not
/// start or panicked (the panic stays on that thread).
pub async fn run<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_JOBS);
    let turn = TURNS
        .acquire()
        .await
        .map_err(|_| format!("no {name} thread: background work has stopped"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_below_the_priority_of_request_threads() {
        let requests = this_thread_nice();
        let background = run("test-background", this_thread_nice).await.unwrap();
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
        let out: Result<(), String> = run("test-panic", || panic!("boom")).await;
        assert!(out.unwrap_err().contains("test-panic"));
    }
}
