//! Who holds a port, for a hammer that got EADDRINUSE: the socket-table
//! rows of this network namespace with that local port, and the processes
//! whose fds point at each row's socket. Run once, on failure only (reading
//! other processes' fds is what makes a racing re-bind fail, so the
//! hammer never does it while it measures).

use std::fs;

/// "tcp 0100007F:2382 st=07 inode=123 held by [pid comm fd]" per row.
pub(crate) fn describe(proto: &str, port: u16) -> String {
    let hex = format!(":{port:04X}");
    let mut rows = Vec::new();
    for table in [proto.to_owned(), format!("{proto}6")] {
        let Ok(text) = fs::read_to_string(format!("/proc/self/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[1].ends_with(&hex) {
                let inode = cols[9];
                rows.push(format!(
                    "{table} {} st={} inode={inode} held by [{}]",
                    cols[1],
                    cols[3],
                    holders(inode).join(", ")
                ));
            }
        }
    }
    if rows.is_empty() { "no socket-table row holds it now".into() } else { rows.join("; ") }
}

fn holders(inode: &str) -> Vec<String> {
    let target = format!("socket:[{inode}]");
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                out.push(format!("{pid} {} fd {}", comm.trim(), fd.file_name().to_string_lossy()));
            }
        }
    }
    out
}
