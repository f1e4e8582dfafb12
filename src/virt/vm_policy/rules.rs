//! The allowlists: which elements of libvirt's domain schema a manager's definition may hold,
//! and which attributes and texts name a host path. Drawn from what oVirt's engine writes
//! (`LibvirtVmXmlBuilder`: memory, vCPUs, CPU model and NUMA, clock, features, SMBIOS, boot
//! order, firmware, disks, NICs on bridges and networks, SPICE/VNC, video, sound, input,
//! watchdog, balloon, RNG, agent channels, serial console, leases, memory hotplug, TPM) plus
//! what libvirt adds itself on define (`<emulator>`, controllers, `<audio>`), so that an
//! engine's VM still starts. Everything else is refused by name: an element the allowlist does
//! not know is one rvdsm cannot place.

/// The children of `<domain>` a definition may have, each at most once.
pub const DOMAIN_CHILDREN: &[&str] = &[
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "memory",
    "currentMemory",
    "maxMemory",
    "memoryBacking",
    "memtune",
    "blkiotune",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_lockfailure",
    "pm",
    "perf",
    "devices",
    "keywrap",
    "launchSecurity",
];

/// Children of `<domain>` that may appear more than once.
pub const REPEATABLE_DOMAIN_CHILDREN: &[&str] = &["sysinfo"];

/// The children of `<os>`. `<kernel>`, `<initrd>`, `<loader>` and `<nvram>` are host files,
/// checked against the configured directories or placed by rvdsm.
pub const OS_CHILDREN: &[&str] = &[
    "type", "boot", "bootmenu", "smbios", "bios", "loader", "nvram", "kernel", "initrd", "cmdline",
    "firmware",
];

/// The devices a definition may hold; each kind's own rules are in the admission.
pub const DEVICES: &[&str] = &[
    "emulator",
    "disk",
    "controller",
    "interface",
    "input",
    "graphics",
    "video",
    "sound",
    "audio",
    "watchdog",
    "memballoon",
    "rng",
    "channel",
    "console",
    "serial",
    "lease",
    "redirdev",
    "redirfilter",
    "smartcard",
    "memory",
    "panic",
    "tpm",
    "vsock",
    "iommu",
    "hub",
];

/// Attributes that name a host file, socket, directory or device, on any element.
pub const PATH_ATTRIBUTES: &[&str] = &[
    "file",
    "path",
    "dir",
    "socket",
    "evdev",
    "tap",
    "vhost",
    "template",
    "rendernode",
    "xauth",
];

/// Elements whose text is a host path.
pub const PATH_ELEMENTS: &[&str] = &[
    "kernel", "initrd", "loader", "nvram", "dtb", "emulator", "path", "database", "script",
];

/// The host devices a virtio RNG may read.
pub const RNG_SOURCES: &[&str] = &["/dev/urandom", "/dev/random", "/dev/hwrng"];

/// Interface types that attach to a host bridge or libvirt network (never a host device, a
/// socket, or a script).
pub const INTERFACE_TYPES: &[&str] = &["bridge", "network"];

/// Character device types for serial ports and consoles: a pseudo-terminal, or a log file
/// or console socket rvdsm names.
pub const CONSOLE_TYPES: &[&str] = &["pty", "file", "unix"];

/// Whether `name` may name a virtio channel: libvirt makes the channel's socket file from it.
pub fn is_channel_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
