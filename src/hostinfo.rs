//! Facts about this host read from the kernel and the package database, for
//! `Host.getCapabilities` and `Host.getStats`: CPU model, flags and topology, memory, the
//! operating system, boot time, CPU time counters, and installed package versions. Blocking
//! reads of small files; callers run them off the reactor.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `/proc/cpuinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFacts {
    /// `model name`.
    pub model: String,
    /// `flags`, sorted.
    pub flags: Vec<String>,
    /// Logical CPUs.
    pub threads: usize,
    /// Distinct (socket, core) pairs.
    pub cores: usize,
    /// Distinct sockets.
    pub sockets: usize,
    /// MHz of the first CPU.
    pub speed_mhz: String,
}

/// Parses `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuFacts {
    let mut facts = CpuFacts::default();
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut socket = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => facts.threads += 1,
            "model name" if facts.model.is_empty() => facts.model = value.to_owned(),
            "cpu MHz" if facts.speed_mhz.is_empty() => facts.speed_mhz = value.to_owned(),
            "flags" if facts.flags.is_empty() => {
                let mut flags: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
                flags.sort();
                facts.flags = flags;
            }
            "physical id" => {
                socket = value.to_owned();
                sockets.insert(socket.clone());
            }
            "core id" => {
                cores.insert((socket.clone(), value.to_owned()));
            }
            _ => {}
        }
    }
    facts.sockets = sockets.len().max(1);
    facts.cores = if cores.is_empty() {
        facts.threads
    } else {
        cores.len()
    };
    facts
}

/// Values of `/proc/meminfo` in KiB, by name.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

/// `NAME`/`VERSION_ID`-style fields of `/etc/os-release`, unquoted.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The aggregate CPU times of `/proc/stat` (`user nice system idle ...`, in ticks), and the
/// boot time (`btime`, epoch seconds).
pub fn parse_proc_stat(text: &str) -> (Vec<u64>, u64) {
    let mut cpu = Vec::new();
    let mut boot = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => cpu = fields.filter_map(|f| f.parse().ok()).collect(),
            Some("btime") => boot = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0),
            _ => {}
        }
    }
    (cpu, boot)
}

/// Reads a small file, empty when it cannot be read (facts are best effort).
pub fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How long `dpkg-query` may take.
const DPKG_TIMEOUT: Duration = Duration::from_secs(10);

/// `(version, release)` of each installed Debian package of `names` (from `dpkg-query`,
/// killed past 10 seconds), the Debian revision as the release, as VDSM's `packages2`
/// entries carry them. Empty when dpkg cannot tell.
pub fn package_versions(names: &[&str]) -> BTreeMap<String, (String, String)> {
    let child = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\\n"])
        .args(names)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return BTreeMap::new();
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < DPKG_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!("dpkg-query did not answer in time; no package versions");
                return BTreeMap::new();
            }
        }
    }
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
    }
    stdout
        .lines()
        .filter_map(|line| {
            let (name, full) = line.split_once(' ')?;
            if full.is_empty() {
                return None;
            }
            let full = full.split_once(':').map_or(full, |(_, rest)| rest);
            let (version, release) = full.rsplit_once('-').unwrap_or((full, "0"));
            Some((name.to_owned(), (version.to_owned(), release.to_owned())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_gives_topology_and_flags() {
        let text = "processor\t: 0\nmodel name\t: Xeon\ncpu MHz\t\t: 2000.0\nflags\t\t: sse2 fpu vmx\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nmodel name\t: Xeon\nflags\t\t: sse2 fpu vmx\nphysical id\t: 0\ncore id\t\t: 1\n";
        let facts = parse_cpuinfo(text);
        assert_eq!(facts.model, "Xeon");
        assert_eq!(facts.flags, ["fpu", "sse2", "vmx"]);
        assert_eq!((facts.threads, facts.cores, facts.sockets), (2, 2, 1));
        assert_eq!(facts.speed_mhz, "2000.0");
    }

    #[test]
    fn meminfo_stat_and_os_release_parse() {
        let mem = parse_meminfo("MemTotal:       24684000 kB\nMemAvailable:   1000 kB\n");
        assert_eq!(mem["MemTotal"], 24_684_000);
        let (cpu, boot) =
            parse_proc_stat("cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 1 2\nbtime 1700000000\n");
        assert_eq!(cpu[..4], [10, 0, 5, 100]);
        assert_eq!(boot, 1_700_000_000);
        let os = parse_os_release("NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n");
        assert_eq!(os["VERSION_ID"], "12");
    }

    #[test]
    fn installed_packages_have_version_and_release() {
        let found = package_versions(&["dpkg", "surely-not-installed-xyz"]);
        let (version, release) = &found["dpkg"];
        assert!(!version.is_empty() && !release.is_empty(), "{found:?}");
        assert!(!found.contains_key("surely-not-installed-xyz"));
    }
}
