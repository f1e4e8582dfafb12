//! What the verb table ([`super::verbs`]) is made of: a verb, its parameters and their JSON
//! types, as the CLI's `--list` and `Namespace method --help` print them.

use serde_json::{Map, Value};

use super::ApiError;
use super::verbs::Call;

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
    /// An integer.
    Int,
    /// A JSON object.
    Object,
    /// A string.
    String,
    /// A JSON list.
    List,
}

impl ParamType {
    /// The type's name in help texts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uuid => "UUID",
            Self::UuidList => "[UUID]",
            Self::Bool => "boolean",
            Self::UInt => "uint",
            Self::Int => "int",
            Self::Object => "object",
            Self::String => "string",
            Self::List => "list",
        }
    }

    /// A placeholder value for the JSON template in help texts.
    pub fn template(self) -> &'static str {
        match self {
            Self::Uuid => "\"00000000-0000-0000-0000-000000000000\"",
            Self::UuidList => "[]",
            Self::Bool => "false",
            Self::UInt | Self::Int => "0",
            Self::Object => "{}",
            Self::String => "\"\"",
            Self::List => "[]",
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
#[derive(Clone, Copy)]
pub struct Verb {
    /// The full method name, e.g. `Host.getVMList`.
    pub name: &'static str,
    /// Whether the verb only reads (the table says `reads`): such a call may be dropped when
    /// its client hangs up, and its successes are logged at debug level (managers poll them).
    /// A verb that changes state runs to its end on its own task.
    pub read_only: bool,
    /// What it does and returns.
    pub description: &'static str,
    /// Its parameters, in VDSM's schema order.
    pub params: &'static [Param],
    /// Its named parameters into a typed [`Call`].
    pub parse: fn(Map<String, Value>) -> Result<Call, ApiError>,
    /// The serde field names of its parameter struct.
    pub fields: fn() -> &'static [&'static str],
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

    /// Whether the verb only reads, as its entry in the verb table says.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl std::fmt::Debug for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verb")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A parameter a call cannot do without.
pub const fn required(name: &'static str, ty: ParamType, description: &'static str) -> Param {
    Param {
        name,
        ty,
        required: true,
        description,
    }
}

/// A parameter with a default.
pub const fn optional(name: &'static str, ty: ParamType, description: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
        description,
    }
}
