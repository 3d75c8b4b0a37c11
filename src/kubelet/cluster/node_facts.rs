//! What the Node object says about this machine: identity (machine-id, boot-id, product UUID),
//! kernel and OS, CPU and memory capacity, disk, and pressure readings for the node conditions.

use std::path::Path;

/// Facts read once at start.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub hostname: String,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    /// Go's name for the architecture (amd64, arm64, arm), as node labels and nodeInfo use.
    pub architecture: &'static str,
    pub cpus: usize,
    pub memory_bytes: u64,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl NodeFacts {
    pub fn read() -> NodeFacts {
        let uname = nix::sys::utsname::uname().ok();
        let kernel_version = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut machine_id = read_trimmed("/etc/machine-id");
        if machine_id.is_empty() {
            machine_id = read_trimmed("/var/lib/dbus/machine-id");
        }
        NodeFacts {
            hostname: crate::config::default_node_name(),
            machine_id,
            // Readable by root on most boards with DMI; the kubelet reports it empty otherwise.
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid").to_lowercase(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            kernel_version,
            os_image: os_image(&std::fs::read_to_string("/etc/os-release").unwrap_or_default()),
            architecture: go_arch(std::env::consts::ARCH),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes: meminfo_kib("MemTotal").unwrap_or(0) * 1024,
        }
    }
}

/// `PRETTY_NAME` of os-release, as the kubelet's osImage.
fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "Linux".into())
}

pub fn go_arch(rust_arch: &str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        _ => "unknown",
    }
}

/// A field of /proc/meminfo in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Size and available bytes of the filesystem holding `dir`.
pub fn disk(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frsize = st.fragment_size() as u64;
    Some((
        st.blocks() as u64 * frsize,
        st.blocks_available() as u64 * frsize,
    ))
}

/// The pressure conditions of the Node (set by `kubelet::eviction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

pub const EVICTION_MEMORY_BYTES: u64 = 100 << 20;
pub const EVICTION_NODEFS_PERCENT: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_and_arch_names() {
        assert_eq!(
            os_image("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(
            os_image("PRETTY_NAME=Buildroot 2024.02\n"),
            "Buildroot 2024.02"
        );
        assert_eq!(os_image(""), "Linux");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("arm"), "arm");
    }

    #[test]
    fn reads_this_machine() {
        let f = NodeFacts::read();
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 0);
        assert!(!f.kernel_version.is_empty());
        assert!(disk(Path::new("/")).is_some_and(|(s, _)| s > 0));
    }
}
