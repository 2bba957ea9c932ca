//! `sgswitch`: the command line of the switch (`shared/design/interfaces.md`).
//!
//! Exit status: 0 on success whatever the verdict, 1 on a usage or
//! configuration error (the message names file and line), 2 on a runtime
//! failure.
#![deny(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap exits 2 on usage errors; our contract says 1.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.code())
        }
    }
}
