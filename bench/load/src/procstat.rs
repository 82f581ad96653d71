//! The gateway's (and the bench's own) memory and CPU time from /proc, and finding the process
//! that listens on a port.

use std::fs;
use std::time::Instant;

/// Linux reports CPU times in clock ticks of `USER_HZ`, which is 100 on every mainstream
/// architecture (it is fixed by the kernel ABI, not by `CONFIG_HZ`).
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_kb: u64,
    /// Peak RSS so far.
    pub hwm_kb: u64,
    /// User plus system CPU time.
    pub cpu_ms: u64,
    pub threads: u64,
    pub at: Instant,
}

fn status_kb(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat` (`pid` "self" for this process).
pub fn sample(pid: &str) -> Option<ProcSample> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_ticks = cpu_ticks(&stat)?;
    Some(ProcSample {
        rss_kb: status_kb(&status, "VmRSS:"),
        hwm_kb: status_kb(&status, "VmHWM:"),
        cpu_ms: cpu_ticks * 1000 / TICKS_PER_SECOND,
        threads: status_kb(&status, "Threads:"),
        at: Instant::now(),
    })
}

/// utime + stime from a `/proc/<pid>/stat` line (fields 14 and 15; the command name in field 2
/// may contain spaces, so fields are counted after its closing parenthesis).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Socket inodes listening on `port` (IPv4 or IPv6).
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let local_port = fields[1]
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) {
                inodes.push(fields[9].to_string());
            }
        }
    }
    inodes
}

/// The processes that hold the listening socket of `port` (one for the gateway; nginx's master
/// and its workers), found through /proc/*/fd.
pub fn find_listeners(port: u16) -> Vec<u32> {
    let inodes = listening_inodes(port);
    let mut pids = Vec::new();
    if inodes.is_empty() {
        return pids;
    }
    let wanted: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                    pids.push(pid);
                    break;
                }
            }
        }
    }
    pids.sort_unstable();
    pids
}

/// `Max open files` (soft) of a process, from /proc/<pid>/limits.
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// The 1-minute load average, to flag a busy machine.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "1234 (event gw) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_ticks(stat), Some(325));
    }

    #[test]
    fn samples_this_process_and_finds_a_listener() {
        let own = sample("self").expect("/proc/self is readable");
        assert!(own.rss_kb > 0 && own.threads >= 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert!(!listening_inodes(port).is_empty());
        // Our own process is skipped on purpose (the bench never measures itself as the gateway).
        assert!(find_listeners(port).is_empty());
        assert!(open_files_limit(std::process::id()).is_some_and(|limit| limit > 0));
    }
}
