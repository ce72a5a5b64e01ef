//! Thread priorities: the request path runs ahead of work that can wait.
//!
//! Two places use them. With the HTTP front thread, the worker threads run below it, so that
//! refusals past the in-flight cap do not wait for the workers' CPU work (docs/limits.md, "The
//! front thread"). With the background thread, the batch writers (usage records, the outbox
//! relay) run on a thread of their own below the workers, so that a batch being encoded or
//! decoded does not hold up the request that arrives meanwhile (docs/limits.md, "The
//! background thread").

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Lowers the calling thread's scheduling priority by `by` nice levels. Raising a nice value
/// needs no privilege on Linux; where it fails (a seccomp profile that forbids it) the thread
/// keeps its level, which is how the runtime runs without these priorities. Worker threads call
/// it before logging is set up, so a failure is not reported. Elsewhere than Linux, threads
/// have no nice value of their own.
pub fn lower_this_thread(by: u8) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let thread = Some(rustix::thread::gettid());
        if let Ok(current) = getpriority_process(thread) {
            let _ = setpriority_process(thread, current + i32::from(by));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = by;
}

/// A thread `agentry-background`, some nice levels below the one that starts it, running a
/// single-threaded Tokio runtime for work that can wait. It stops when dropped; tasks still on
/// it then are dropped, so their owners finish them first (the runtime closes the usage writer
/// and joins the relay before it drops this).
#[derive(Debug)]
pub struct BackgroundThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl BackgroundThread {
    /// Starts the thread `nice` levels below the calling thread.
    pub fn spawn(nice: u8) -> std::io::Result<Self> {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("agentry-background".to_owned())
            .spawn(move || {
                lower_this_thread(nice);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = started_tx.send(Ok(runtime.handle().clone()));
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            })?;
        let handle = started
            .recv()
            .map_err(|_| std::io::Error::other("the background thread ended while starting"))??;
        Ok(Self {
            handle,
            stop: Some(stop),
        })
    }

    /// Where to spawn the background work.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for BackgroundThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
