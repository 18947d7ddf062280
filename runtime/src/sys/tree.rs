//! A process tree as /proc shows it: a process and its descendants, found through every
//! thread's `children`.

use std::fs;

/// The processes of the tree rooted at `pid` (through every thread's children), `pid`
/// first; empty pids are skipped.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        for tid in threads(p) {
            if let Ok(c) = fs::read_to_string(format!("/proc/{p}/task/{tid}/children")) {
                todo.extend(c.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// The threads of process `pid`.
pub fn threads(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_in_its_parents_tree_and_every_thread_is_listed() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let tree = process_tree(me);
        let threads = threads(me);
        let _ = child.kill();
        let _ = child.wait();
        let _ = t.join();
        assert_eq!(tree[0], me);
        assert!(tree.contains(&(child.id() as i32)), "{tree:?}");
        assert!(threads.len() >= 2 && threads.contains(&me), "{threads:?}");
    }
}
