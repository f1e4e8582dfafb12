//! The verb table: every verb rvdsm serves, with its parameters in VDSM's schema order (the
//! order positional parameters are mapped in). The server registers exactly these verbs; the
//! CLI's `--list` and `Namespace method --help` print them.

/// The JSON type a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// An RFC 4122 UUID string.
    Uuid,
    /// A list of UUID strings.
    UuidList,
    /// `true` or `false`.
    Bool,
    /// A non-negative integer.
    UInt,
    /// A string.
    String,
}

impl ParamType {
    /// The type's name in help texts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uuid => "UUID",
            Self::UuidList => "[UUID]",
            Self::Bool => "boolean",
            Self::UInt => "uint",
            Self::String => "string",
        }
    }

    /// A placeholder value for the JSON template in help texts.
    pub fn template(self) -> &'static str {
        match self {
            Self::Uuid => "\"00000000-0000-0000-0000-000000000000\"",
            Self::UuidList => "[]",
            Self::Bool => "false",
            Self::UInt => "0",
            Self::String => "\"\"",
        }
    }
}

/// One parameter of a verb.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The wire name (VDSM's spelling).
    pub name: &'static str,
    /// Its JSON type.
    pub ty: ParamType,
    /// Whether a call without it is refused.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
}

/// One verb: `Namespace.method`.
#[derive(Debug, Clone, Copy)]
pub struct Verb {
    /// The full method name, e.g. `Host.getVMList`.
    pub name: &'static str,
    /// What it does and returns.
    pub description: &'static str,
    /// Its parameters, in VDSM's schema order.
    pub params: &'static [Param],
}

impl Verb {
    /// The namespace part (`Host`).
    pub fn namespace(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(ns, _)| ns)
    }

    /// The method part (`getVMList`).
    pub fn method(&self) -> &'static str {
        self.name.split_once('.').map_or("", |(_, m)| m)
    }
}

/// The method names, so that code never spells a verb twice.
pub mod names {
    /// `Host.ping2`.
    pub const HOST_PING2: &str = "Host.ping2";
    /// `Host.getCapabilities`.
    pub const HOST_GET_CAPABILITIES: &str = "Host.getCapabilities";
    /// `Host.getVMList`.
    pub const HOST_GET_VM_LIST: &str = "Host.getVMList";
    /// `VM.getStats`.
    pub const VM_GET_STATS: &str = "VM.getStats";
}

const VM_ID: Param = Param {
    name: "vmID",
    ty: ParamType::Uuid,
    required: true,
    description: "The VM's UUID (the libvirt domain UUID).",
};

/// Every verb rvdsm serves.
pub static VERBS: &[Verb] = &[
    Verb {
        name: names::HOST_PING2,
        description: "Checks that the daemon answers. Returns true.",
        params: &[],
    },
    Verb {
        name: names::HOST_GET_CAPABILITIES,
        description: "Describes the host: rvdsm, libvirt and QEMU versions, host UUID, \
                      liveSnapshot, and the verbs served.",
        params: &[],
    },
    Verb {
        name: names::HOST_GET_VM_LIST,
        description: "Lists the host's VMs as [{vmId, status, statusTime}].",
        params: &[
            Param {
                name: "fullStatus",
                ty: ParamType::Bool,
                required: false,
                description: "Accepted for VDSM compatibility; the list has the same shape.",
            },
            Param {
                name: "vmList",
                ty: ParamType::UuidList,
                required: false,
                description: "Only these VMs (all when empty).",
            },
            Param {
                name: "onlyUUID",
                ty: ParamType::Bool,
                required: false,
                description: "Accepted for VDSM compatibility; the list has the same shape.",
            },
        ],
    },
    Verb {
        name: names::VM_GET_STATS,
        description: "Returns [VmStats]: status, and for each disk its source and the \
                      backing chain libvirt reports.",
        params: &[VM_ID],
    },
];

/// The verb called `name`, if rvdsm serves it.
pub fn find(name: &str) -> Option<&'static Verb> {
    VERBS.iter().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_namespaced() {
        let mut seen = HashSet::new();
        for verb in VERBS {
            assert!(seen.insert(verb.name), "{} twice", verb.name);
            assert!(!verb.namespace().is_empty() && !verb.method().is_empty());
        }
    }

    #[test]
    fn find_knows_only_served_verbs() {
        assert_eq!(find("VM.getStats").unwrap().params[0].name, "vmID");
        assert!(find("VM.nope").is_none());
    }
}
