//! Progress of long work (load, convert, batch) on stderr: redrawn in place on a terminal, and
//! as whole lines, one per tenth of the work, when stderr is a file or a pipe (a cluster job's
//! log), where carriage returns would pile every update into one unreadable line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use minigpt_med::LoadProgress;

/// How many lines a log gets over the whole work, besides the last.
const LOG_STEPS: usize = 10;

/// One piece of long work's progress line: `what NN% (done/total)`, with the rate and the time
/// left when [`Progress::with_rate`] names the unit counted.
pub(crate) struct Progress {
    what: &'static str,
    unit: Option<&'static str>,
    start: Instant,
    /// Redraw in place (a terminal) or print whole lines (a log).
    redraw: bool,
    /// The last tenth printed to a log, plus one (0: none yet).
    printed: AtomicUsize,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Progress {
    /// Progress of `what` on this process's stderr.
    pub(crate) fn stderr(what: &'static str) -> Self {
        let err = std::io::stderr();
        let redraw = err.is_terminal();
        Self::to(what, Box::new(err), redraw)
    }

    /// Progress written to `out`, redrawn in place when `redraw`, else one line per tenth.
    pub(crate) fn to(what: &'static str, out: Box<dyn Write + Send>, redraw: bool) -> Self {
        Self { what, unit: None, start: Instant::now(), redraw, printed: AtomicUsize::new(0), out: Mutex::new(out) }
    }

    /// Adds `rate unit/s, ETA s` (from the time since this progress was made) to each line.
    pub(crate) fn with_rate(mut self, unit: &'static str) -> Self {
        self.unit = Some(unit);
        self
    }

    /// Shows `done` of `total`. A log gets a line when `done` enters a new tenth of `total` and
    /// when it reaches `total`, so at most eleven lines; write errors are ignored (progress is
    /// not worth failing the work for).
    pub(crate) fn show(&self, done: usize, total: usize) {
        let total_or_one = total.max(1);
        let finished = done >= total;
        if !self.redraw {
            let step = if finished { LOG_STEPS + 1 } else { done * LOG_STEPS / total_or_one };
            // Only the update that moves the step on prints it, even from several threads.
            if self.printed.fetch_max(step + 1, Ordering::Relaxed) > step {
                return;
            }
        }
        let mut line = format!("{} {:>3}% ({done}/{total})", self.what, done * 100 / total_or_one);
        if let Some(unit) = self.unit {
            let secs = self.start.elapsed().as_secs_f64();
            let rate = done as f64 / secs.max(1e-9);
            let eta = total.saturating_sub(done) as f64 / rate.max(1e-9);
            line += &format!(", {rate:.2} {unit}/s, ETA {eta:.0} s");
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = if self.redraw {
            // Trailing spaces wipe what a longer previous line left.
            write!(out, "\r{line}   {}", if finished { "\n" } else { "" })
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }

    /// A load or conversion callback showing its progress here.
    pub(crate) fn callback(self) -> minigpt_med::ProgressFn {
        let p = Arc::new(self);
        Arc::new(move |l: LoadProgress| {
            p.show(l.done, l.total);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(s: &Shared) -> String {
        String::from_utf8(s.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_log_gets_one_line_per_tenth_and_the_last() {
        let s = Shared::default();
        let p = Progress::to("batch", Box::new(s.clone()), false);
        for done in 1..=1000 {
            p.show(done, 1000);
        }
        let log = text(&s);
        assert!(!log.contains('\r'), "{log}");
        let lines: Vec<&str> = log.lines().collect();
        // The first update (the work has started), 10%, ..., 90% as each tenth is entered,
        // then 100% once.
        assert_eq!(lines.len(), 11, "{log}");
        assert_eq!(lines[0], "batch   0% (1/1000)");
        assert_eq!(lines[1], "batch  10% (100/1000)");
        assert_eq!(lines[9], "batch  90% (900/1000)");
        assert_eq!(lines[10], "batch 100% (1000/1000)");
    }

    #[test]
    fn a_short_log_prints_every_update_once() {
        let s = Shared::default();
        let p = Progress::to("loading", Box::new(s.clone()), false);
        for done in [0, 1, 1, 2, 3, 3] {
            p.show(done, 3);
        }
        assert_eq!(text(&s), "loading   0% (0/3)\nloading  33% (1/3)\nloading  66% (2/3)\nloading 100% (3/3)\n");
    }

    #[test]
    fn a_terminal_redraws_every_update_and_ends_the_line() {
        let s = Shared::default();
        let p = Progress::to("converting", Box::new(s.clone()), true);
        for done in 1..=4 {
            p.show(done, 4);
        }
        let t = text(&s);
        assert_eq!(t.matches('\r').count(), 4, "{t:?}");
        assert_eq!(t.matches('\n').count(), 1, "{t:?}");
        assert!(t.ends_with("converting 100% (4/4)   \n"), "{t:?}");
    }

    #[test]
    fn rates_and_time_left_are_shown_when_asked() {
        let s = Shared::default();
        let p = Progress::to("batch", Box::new(s.clone()), false).with_rate("records");
        p.show(5, 5);
        let t = text(&s);
        assert!(t.starts_with("batch 100% (5/5), ") && t.contains(" records/s, ETA 0 s"), "{t:?}");
    }
}
