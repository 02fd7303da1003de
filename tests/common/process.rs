//! The `homeport` binary as a separate process for tests: started on ports the OS chooses
//! (read back from its JSON start line), killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `homeport serve` on ports chosen by the OS.
pub struct Proc {
    pub child: Child,
    pub mqtt: SocketAddr,
    pub admin: SocketAddr,
}

/// The address logged as `"{key}":"Some(ADDR)"` in the json start line.
fn logged_addr(line: &str, key: &str) -> SocketAddr {
    let tag = format!("\"{key}\":\"Some(");
    let at = line.find(&tag).unwrap_or_else(|| panic!("{key} address logged")) + tag.len();
    let end = line[at..].find(')').expect("address ends") + at;
    line[at..end].parse().expect("socket address")
}

impl Proc {
    pub fn spawn(dir: &Path) -> Proc {
        Proc::spawn_with(dir, &[])
    }

    /// Starts a node with `extra` arguments after the usual ones.
    pub fn spawn_with(dir: &Path, extra: &[&str]) -> Proc {
        Proc::spawn_bin(Path::new(env!("CARGO_BIN_EXE_homeport")), dir, extra)
    }

    /// Starts a node from the binary at `bin` (a release build, for long runs).
    pub fn spawn_bin(bin: &Path, dir: &Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--mqtt-bind", "127.0.0.1:0", "--ws-bind", "127.0.0.1:0"])
            .args(["--admin-bind", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("binary starts");
        let out = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(out).lines();
        let (mqtt, admin) = loop {
            let line = lines.next().expect("node logs its start").expect("log line");
            if !line.contains("node started") {
                continue;
            }
            // json log: "mqtt":"Some(127.0.0.1:PORT)", "admin":"Some(...)"
            break (logged_addr(&line, "mqtt"), logged_addr(&line, "admin"));
        };
        // Keep draining the log so the node never blocks on a full pipe; kept in
        // $HOMEPORT_TEST_LOGS/<pid>.log when that is set (debugging a process test).
        let keep = std::env::var_os("HOMEPORT_TEST_LOGS")
            .map(|d| std::path::PathBuf::from(d).join(format!("{}.log", child.id())));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = keep.and_then(|p| std::fs::File::create(p).ok());
            for line in lines.map_while(Result::ok) {
                if let Some(f) = &mut file {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        Proc { child, mqtt, admin }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "signal delivered");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
