//! What both benchmarks share: starting the real binary and reading its CPU and memory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Context switches of all threads of a process (voluntary and involuntary): each is a
/// sleep and a wakeup, which at low probe rates cost more than the probes' own work.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Resident memory of a process in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// A running exporter, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sitewatch run` pinned to `cpu` (a `taskset` list such as `1` or `0-1`) and waits
/// for its listen address.
pub fn start_sitewatch(config: &Path, cpu: &str) -> Proc {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu, env!("CARGO_BIN_EXE_sitewatch")])
        .args([
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "warn,sitewatch=info",
        ])
        .args([
            "--web.enable-lifecycle",
            "--probes.max-in-flight",
            "4096",
            "--config",
        ])
        .arg(config);
    spawn_announcing(&mut cmd)
}

/// Spawns a `sitewatch` command and waits for the `listening address=...` line of its log.
pub fn spawn_announcing(cmd: &mut Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sitewatch");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let msg = match line.split("address=").nth(1) {
                Some(rest) => Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()),
                None => Err(line),
            };
            let _ = tx.send(msg);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut said = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(addr)) => return Proc { child, addr },
            Ok(Err(line)) => said.push(line),
            Err(_) => panic!("sitewatch did not start:\n{}", said.join("\n")),
        }
    }
}
