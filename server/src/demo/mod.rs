//! `lockstep demo`: the whole invention on one machine.
//!
//! A data server on a throwaway embedded database, and N web-server processes — each this same
//! binary running `demo-web`, which loads `liblockstep.so` and reads through its C ABI — with
//! wall clocks skewed by hours or days (libfaketime, or the library's `clock_skew_us` hook when
//! libfaketime is absent). The driver edits prices every cycle (one edit scheduled for an exact
//! time) and prints the patent's Fig. 7 as it happens: the rotation performed by the first web
//! server to check in, the asynchronous retrieval into each staging cache, and the synchronous
//! activation.
//!
//! What the driver reports about an activation is what the web servers' readers observed, not
//! what their libraries planned: each reader brackets its switch between its last read of the
//! old version and its first read of the new (see [`event::Switch`]), and the driver judges
//! every server's switch against the activation time the data server logged ([`tally`]). The
//! same machinery measures the activation spread for `benches/activation_spread.sh`:
//! `--quiet --load` keeps every CPU busy and prints only the activations and the summary.
//!
//! The parts: [`processes`] starts and owns the children, [`web`] is the web-server process,
//! [`event`] is the one protocol between the two, [`script`] is the administrator, [`tally`]
//! settles activations, [`report`] prints.

mod event;
mod processes;
mod report;
mod script;
mod tally;
mod web;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use web::{web, WebArgs};

use crate::clock;
use event::Event;
use processes::{FromWeb, Load, Proc, WebLaunch};
use report::{Narrator, Summary};
use script::Script;
use tally::{HostClock, Tally, Web};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Web-server processes to start.
    #[arg(long, default_value_t = 4)]
    servers: usize,
    /// Time between activations.
    #[arg(long, default_value = "2s")]
    interval: String,
    /// Activations to show before stopping.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Keep going until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Print only activations and the summary.
    #[arg(long)]
    quiet: bool,
    /// Keep every CPU busy with spinning threads while measuring (for the benchmark).
    #[arg(long)]
    load: bool,
    /// Use the library's clock_skew_us hook even if libfaketime is installed.
    #[arg(long)]
    no_faketime: bool,
}

/// How long the web servers get to open their handles and load the active version.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the driver reads the data server's rotation log.
const ROTATION_POLL: Duration = Duration::from_millis(50);

pub fn run(args: DemoArgs) -> Result<(), String> {
    let interval_us = clock::parse_duration_us(&args.interval)
        .map_err(|e| format!("bad --interval: {e}; write it like 2s or 500ms"))?;
    clock::check_interval(interval_us, interval_us / 2)?;
    if args.servers == 0 {
        return Err("--servers must be at least 1".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let library = processes::library_path()?;
    let dir = std::env::temp_dir().join(format!("lockstep-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = drive(&args, interval_us, &exe, &library, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn drive(
    args: &DemoArgs,
    interval_us: i64,
    exe: &Path,
    library: &Path,
    dir: &Path,
) -> Result<(), String> {
    // 1. A data server on a throwaway database, seeded with the price list.
    let token = format!("demo-{:x}", clock::now_us() ^ std::process::id() as i64);
    let db = dir.join("demo.db");
    let (server, url) = processes::start_data_server(exe, &db, &args.interval, &token)?;
    let faketime = (!args.no_faketime).then(processes::libfaketime).flatten();
    introduce(args, &url, &db, faketime.as_deref());
    let say = Narrator { quiet: args.quiet };
    let script = Script::new(&url, &token);
    say.say(script.seed()?);

    // 2. For the benchmark, every CPU busy until the summary.
    let load = args.load.then(Load::start);
    if let Some(l) = &load {
        println!("load: {} spinning threads keep every CPU busy", l.threads);
    }

    // 3. The web servers, each reading through the C ABI with its wall clock skewed.
    let keys = script::keys();
    let launch = WebLaunch {
        exe,
        library,
        url: &url,
        keys: &keys,
        faketime: faketime.as_deref(),
        hosts_dir: dir,
    };
    let (tx, rx) = mpsc::channel();
    let mut farm = Vec::new();
    let mut webs = Vec::new();
    for i in 0..args.servers {
        farm.push(processes::start_web(&launch, i, tx.clone())?);
        webs.push(Web {
            name: format!("web-{i}"),
            skew_s: processes::skew_of(i),
            ..Web::default()
        });
    }
    say.legend();

    // 4. The cycles, until enough activations are settled.
    let mut driver = Driver {
        say,
        script,
        rx,
        webs,
        tally: Tally::new(0, interval_us),
        summary: Summary::default(),
        server,
        farm,
        next_rotation_poll: Instant::now(),
    };
    let start_version = driver.wait_ready()?;
    driver.tally = Tally::new(start_version, interval_us);
    driver.run_cycles(if args.watch { None } else { Some(args.cycles) })?;
    if let Some(change) = &driver.script.scheduled {
        report::not_reached(change, driver.summary.activations());
    }

    // 5. The summary, measured without the load's threads still spinning over it.
    drop(load);
    driver.summary.print(&driver.webs, args.load);
    Ok(())
}

fn introduce(args: &DemoArgs, url: &str, db: &Path, faketime: Option<&Path>) {
    println!(
        "Lockstep demo: data server {url} (embedded SQLite in {}), interval {}",
        db.display(),
        args.interval
    );
    println!(
        "{} web servers, each a process reading through liblockstep.so's C ABI; wall clocks skewed by {}",
        args.servers,
        match faketime {
            Some(p) => format!("libfaketime ({})", p.display()),
            None => "the library's clock_skew_us hook (libfaketime not installed)".to_owned(),
        }
    );
}

/// The driver's loop state: the children, what they reported, and what is settled.
struct Driver {
    say: Narrator,
    script: Script,
    rx: mpsc::Receiver<FromWeb>,
    webs: Vec<Web>,
    tally: Tally,
    summary: Summary,
    server: Proc,
    farm: Vec<Proc>,
    next_rotation_poll: Instant,
}

impl Driver {
    /// Waits until every web server serves; returns the newest version they started with
    /// (activations of it and older ones happened before the demo watched).
    fn wait_ready(&mut self) -> Result<u64, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut ready = vec![false; self.webs.len()];
        while !ready.iter().all(|r| *r) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (i, event) = self.rx.recv_timeout(left).map_err(|_| {
                format!(
                    "web servers did not start within {} s",
                    START_TIMEOUT.as_secs()
                )
            })?;
            if let Ok(Event::Ready { .. }) = &event {
                ready[i] = true;
            }
            self.handle(i, event)?;
        }
        Ok(self.webs.iter().map(|w| w.active).max().unwrap_or(0))
    }

    fn run_cycles(&mut self, limit: Option<usize>) -> Result<(), String> {
        let done = |s: &Summary| limit.is_some_and(|n| s.activations() >= n);
        while !done(&self.summary) {
            while let Ok((i, event)) = self.rx.try_recv() {
                self.handle(i, event)?;
            }
            self.follow_rotations()?;
            while !done(&self.summary) && self.report_next_settled() {}
            self.check_alive()?;
            if let Ok((i, event)) = self.rx.recv_timeout(Duration::from_millis(20)) {
                self.handle(i, event)?;
            }
        }
        Ok(())
    }

    /// Takes in one event from web server `i`.
    fn handle(&mut self, i: usize, event: Result<Event, String>) -> Result<(), String> {
        let web = &mut self.webs[i];
        match event.map_err(|e| format!("{} sent a line the driver cannot read: {e}", web.name))? {
            Event::Ready { active, values } => {
                web.active = active;
                web.values.insert(active, values);
            }
            Event::Staged {
                version,
                activation_us,
                ..
            } => self
                .say
                .retrieval(clock::now_us(), web, version, activation_us),
            Event::Switched(s) => {
                web.active = s.to;
                web.values.insert(s.to, s.values.clone());
                web.switches.push(s);
            }
            Event::Stats {
                offset_us,
                error_us,
                lagging,
                ..
            } => {
                web.offset_us = offset_us;
                web.error_us = error_us;
                web.lagging = lagging;
            }
        }
        Ok(())
    }

    /// Narrates new rotations from the data server's log and makes the administrator's move
    /// after each.
    fn follow_rotations(&mut self) -> Result<(), String> {
        if Instant::now() < self.next_rotation_poll {
            return Ok(());
        }
        self.next_rotation_poll = Instant::now() + ROTATION_POLL;
        for r in self.script.new_rotations()? {
            self.say.rotation(&r);
            self.tally.note_rotation(&r);
            for (at_us, what) in self.script.after_rotation()? {
                self.say.admin(at_us, &what);
            }
        }
        Ok(())
    }

    /// Reports the oldest activation if every server's part in it is known.
    fn report_next_settled(&mut self) -> bool {
        let Some(settled) = self.tally.settle_next(&mut self.webs, HostClock::now()) else {
            return false;
        };
        self.say.activation(&settled, &self.webs);
        if let Some(change) = &self.script.scheduled {
            if change.is_due_in(&settled) {
                self.say.scheduled(change, &settled, &self.webs);
                self.script.scheduled = None;
            }
        }
        self.summary.add(&settled);
        tally::forget_before(&mut self.webs, settled.activation.version);
        true
    }

    fn check_alive(&mut self) -> Result<(), String> {
        for (w, p) in self.webs.iter().zip(&mut self.farm) {
            if let Some(status) = p.exited() {
                return Err(format!("web server {} exited: {status}", w.name));
            }
        }
        match self.server.exited() {
            Some(status) => Err(format!("data server exited: {status}")),
            None => Ok(()),
        }
    }
}
