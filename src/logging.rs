//! The agent's log: one line per event on stderr, `<RFC 3339 UTC, ms> <LEVEL> [<module>] <text>`
//! (the format simple_logger wrote before). Written by hand because a logger must never take
//! the agent down: simple_logger prints with `eprintln!`, which panics — and with
//! `panic = "abort"`, kills the agent — when stderr is a pipe whose reader went away (an init
//! script's `logger` restarted, a closed terminal). Here a line that cannot be written is lost.

use std::io::Write;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = crate::clock::now_unix();
        let ts = crate::clock::rfc3339(now);
        let line = format!(
            "{}.{:03}Z {:<5} [{}] {}\n",
            ts.trim_end_matches('Z'),
            now.subsec_millis(),
            record.level(),
            record.module_path().unwrap_or_else(|| record.target()),
            record.args()
        );
        // One write per line, so lines from different threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once; later calls change nothing).
pub fn init(level: log::LevelFilter) {
    // Leaked once: the logger lives as long as the process.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    #[test]
    fn a_closed_stderr_is_not_fatal() {
        // The logger writes to the process's stderr; point fd 2 at a pipe whose reader is gone
        // for the duration of one call, and check that logging returns.
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let saved = nix::unistd::dup(std::io::stderr()).unwrap();
        nix::unistd::dup2_stderr(&w).unwrap();
        let logger = StderrLogger {
            level: log::LevelFilter::Info,
        };
        logger.log(
            &log::Record::builder()
                .args(format_args!("into the void"))
                .level(log::Level::Info)
                .build(),
        );
        nix::unistd::dup2_stderr(&saved).unwrap();
    }
}
