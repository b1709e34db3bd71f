//! The history checker: reads a run's history directory (`history/` beside
//! a load run's report.json: `run.json` and one `d<n>.jsonl` per device),
//! prints the findings as JSON and exits non-zero when the contract was
//! broken (a lost acknowledged chat message, a duplicate the app saw, DMs
//! out of order, a cursor regression, two maps under one epoch).
//!
//!   switchboard-check-history target/load/history

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: switchboard-check-history HISTORY_DIR");
        return ExitCode::from(2);
    };
    let (run, entries) = match tools::history::read(std::path::Path::new(&dir)) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("switchboard-check-history: {e:#}");
            return ExitCode::from(2);
        }
    };
    let findings = tools::history::check::check(&run, &entries);
    match serde_json::to_string_pretty(&findings) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("switchboard-check-history: {e}");
            return ExitCode::FAILURE;
        }
    }
    if findings.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
