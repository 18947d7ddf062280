//! Exec: a process added to a running container (containerd's Exec), started later
//! (containerd's Start with an exec id).

use std::fs;
use std::sync::Arc;

use containerd_shim::protos::ttrpc;
use trenv_runtime::ChildFds;
use trenv_runtime::container::exec::NewProcess;

use super::Container;
use super::stdio::{finish_io, prepare_io};
use crate::errors::{internal, precondition, rt};
use crate::io::StdioPaths;
use crate::process::{Process, State};
use crate::stamp::{EXEC_WITHIN, ExecStamp, wait_for_exec};

impl Container {
    pub fn add_exec(
        &self,
        exec_id: &str,
        paths: StdioPaths,
        spec: Vec<u8>,
    ) -> Result<(), ttrpc::Error> {
        let mut execs = self.execs();
        if execs.contains_key(exec_id) {
            return Err(crate::errors::status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {exec_id} already exists in container {}", self.id),
            ));
        }
        if self.init.state() == State::Stopped {
            return Err(precondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        execs.insert(
            exec_id.to_string(),
            Arc::new(Process::new(exec_id, paths, spec)),
        );
        Ok(())
    }

    /// Starts an exec; its pid.
    pub fn start_exec(&self, p: &Process) -> Result<i32, ttrpc::Error> {
        if p.state() != State::Created {
            return Err(precondition(format!(
                "exec {} was already started",
                p.exec_id
            )));
        }
        let spec = std::mem::take(&mut p.lock().spec);
        let dir = self.at.state_root.join("execs");
        fs::create_dir_all(&dir)
            .map_err(|e| internal(format!("creating {}: {e}", dir.display())))?;
        let file = dir.join(format!(
            "{}.json",
            trenv_runtime::file_name_safe(&p.exec_id)
        ));
        fs::write(&file, &spec)
            .map_err(|e| internal(format!("writing {}: {e}", file.display())))?;
        let (io, console, child) = prepare_io(&p.stdio)?;
        let (stamp, stamp_end) = ExecStamp::pipe()
            .map_err(|e| internal(format!("creating the exec stamp pipe: {e}")))?;
        let watcher = stamp.watcher();
        p.lock().exec_stamp = Some(stamp);
        let process = NewProcess {
            at: self.at.clone(),
            process: file.clone(),
            console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
        };
        let fds = ChildFds {
            exec_stamp: Some(&stamp_end),
            ..ChildFds::stdio(&child)
        };
        let started = crate::runtime().exec(process, fds);
        drop((child, stamp_end));
        let _ = fs::remove_file(&file);
        let pid = started.map_err(rt)?;
        let io = finish_io(&p.stdio, io, console);
        // Answered once the program runs, not while the process is still the shim's fork.
        if let Ok(w) = watcher
            && !wait_for_exec(&w, EXEC_WITHIN)
        {
            log::warn!(
                "container {}: exec {} did not exec its program within {EXEC_WITHIN:?}",
                self.id,
                p.exec_id
            );
        }
        let mut g = p.lock();
        g.started(pid);
        if let Ok(io) = io {
            g.io = io;
        }
        Ok(pid)
    }
}
