//! A process's stdio on the way in: a console socket for a terminal, pipes otherwise; and,
//! once the process exists, the terminal's master received from it.

use containerd_shim::protos::ttrpc;

use crate::errors::stdio;
use crate::io::{ChildStdio, ConsoleSocket, ProcessIo, StdioPaths};

/// Sets up stdio for a process: a console socket for a terminal, pipes otherwise.
pub(super) fn prepare_io(
    paths: &StdioPaths,
) -> Result<(Option<ProcessIo>, Option<ConsoleSocket>, ChildStdio), ttrpc::Error> {
    if paths.terminal {
        let console = ConsoleSocket::new().map_err(stdio)?;
        Ok((None, Some(console), [None, None, None]))
    } else {
        let (io, child) = ProcessIo::pipes(paths.clone()).map_err(stdio)?;
        Ok((Some(io), None, child))
    }
}

/// The process's stdio once it exists: with a terminal, the master it sent.
pub(super) fn finish_io(
    paths: &StdioPaths,
    io: Option<ProcessIo>,
    console: Option<ConsoleSocket>,
) -> Result<Option<ProcessIo>, ttrpc::Error> {
    match console {
        Some(c) => {
            let master = c.receive().map_err(stdio)?;
            Ok(Some(
                ProcessIo::terminal(paths.clone(), master).map_err(stdio)?,
            ))
        }
        None => Ok(io),
    }
}
