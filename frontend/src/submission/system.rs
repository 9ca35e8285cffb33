//! `systems/<system>.json`: the system description the checker requires (docs/submission.md §2).
//!
//! Every key of [`REQUIRED_FIELDS`] and [`NETWORK_FIELDS`] is written; those of
//! [`MEANINGFUL_FIELDS`] must also be non-empty, and [`SystemDescription::missing_meaningful`]
//! names the ones that are not. `is_network` is the string `"True"` (the checker calls
//! `.lower()` on it; a JSON boolean makes its network checks raise), `division` is `"network"`,
//! `system_type` `"datacenter"`, and `number_of_nodes` / `accelerators_per_node` are integers
//! (the checker converts them with `int()`).

use serde::{Deserialize, Serialize};

/// The 35 keys every system description must hold.
pub const REQUIRED_FIELDS: [&str; 35] = [
    "division",
    "submitter",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processor_model_name",
    "host_processors_per_node",
    "host_processor_core_count",
    "host_memory_capacity",
    "host_storage_capacity",
    "host_storage_type",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_memory_capacity",
    "framework",
    "operating_system",
    "system_type",
    "other_software_stack",
    "host_processor_frequency",
    "host_processor_caches",
    "host_memory_configuration",
    "host_processor_interconnect",
    "host_networking",
    "host_networking_topology",
    "accelerator_frequency",
    "accelerator_host_interconnect",
    "accelerator_interconnect",
    "accelerator_interconnect_topology",
    "accelerator_memory_configuration",
    "accelerator_on-chip_memories",
    "cooling",
    "hw_notes",
    "sw_notes",
    "host_network_card_count",
    "system_type_detail",
];

/// The 13 keys a Network-division description must hold as well (only their presence is
/// checked).
pub const NETWORK_FIELDS: [&str; 13] = [
    "is_network",
    "network_type",
    "network_media",
    "network_rate",
    "nic_loadgen",
    "number_nic_loadgen",
    "net_software_stack_loadgen",
    "network_protocol",
    "number_connections",
    "nic_sut",
    "number_nic_sut",
    "net_software_stack_sut",
    "network_topology",
];

/// The 26 keys that must be non-empty (the checker: "requires a meaningful response").
pub const MEANINGFUL_FIELDS: [&str; 26] = [
    "division",
    "submitter",
    "system_type",
    "status",
    "system_name",
    "number_of_nodes",
    "host_processor_model_name",
    "host_processors_per_node",
    "host_processor_core_count",
    "host_memory_capacity",
    "host_memory_configuration",
    "host_storage_capacity",
    "host_storage_type",
    "host_networking",
    "host_network_card_count",
    "host_networking_topology",
    "accelerators_per_node",
    "accelerator_model_name",
    "accelerator_memory_capacity",
    "accelerator_host_interconnect",
    "accelerator_memory_configuration",
    "accelerator_interconnect",
    "cooling",
    "framework",
    "operating_system",
    "other_software_stack",
];

/// The status values the checker accepts (lowercased).
pub const VALID_STATUS: [&str; 3] = ["available", "preview", "rdi"];

/// `systems/<system>.json` of a Network-division submission; field names are the JSON keys.
#[allow(missing_docs)] // Each field is the checker's key of the same name (docs/submission.md §2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemDescription {
    pub division: String,
    pub submitter: String,
    pub status: String,
    pub system_name: String,
    pub number_of_nodes: u32,
    pub host_processor_model_name: String,
    pub host_processors_per_node: String,
    pub host_processor_core_count: String,
    pub host_memory_capacity: String,
    pub host_storage_capacity: String,
    pub host_storage_type: String,
    pub accelerators_per_node: u32,
    pub accelerator_model_name: String,
    pub accelerator_memory_capacity: String,
    pub framework: String,
    pub operating_system: String,
    pub system_type: String,
    pub other_software_stack: String,
    pub host_processor_frequency: String,
    pub host_processor_caches: String,
    pub host_memory_configuration: String,
    pub host_processor_interconnect: String,
    pub host_networking: String,
    pub host_networking_topology: String,
    pub accelerator_frequency: String,
    pub accelerator_host_interconnect: String,
    pub accelerator_interconnect: String,
    pub accelerator_interconnect_topology: String,
    pub accelerator_memory_configuration: String,
    #[serde(rename = "accelerator_on-chip_memories")]
    pub accelerator_on_chip_memories: String,
    pub cooling: String,
    pub hw_notes: String,
    pub sw_notes: String,
    pub host_network_card_count: String,
    pub system_type_detail: String,
    pub is_network: String,
    pub network_type: String,
    pub network_media: String,
    pub network_rate: String,
    pub nic_loadgen: String,
    pub number_nic_loadgen: String,
    pub net_software_stack_loadgen: String,
    pub network_protocol: String,
    pub number_connections: String,
    pub nic_sut: String,
    pub number_nic_sut: String,
    pub net_software_stack_sut: String,
    pub network_topology: String,
}

/// What qdl knows of the system it ran on; everything else the submitter fills in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnownFacts {
    /// The submitting organisation (the folder name under `network/`).
    pub submitter: String,
    /// The system's name (the file name under `systems/`, without `.json`).
    pub system_name: String,
    /// "available", "preview" or "rdi".
    pub status: String,
    /// Nodes of the SUT (the accelerator nodes).
    pub number_of_nodes: u32,
    /// Accelerators per node.
    pub accelerators_per_node: u32,
    /// The accelerators' model, e.g. "NVIDIA H200".
    pub accelerator_model_name: String,
    /// The LoadGen node's processor model.
    pub host_processor_model_name: String,
    /// The LoadGen node's core count.
    pub host_processor_core_count: u32,
    /// e.g. "Linux 6.1 (Debian 12)".
    pub operating_system: String,
    /// The inference stack, e.g. "qdl 0.3 (llama.cpp)".
    pub framework: String,
    /// "TCP" or "RDMA" (qdl's transport).
    pub network_protocol: String,
    /// Data connections from the LoadGen node to the SUT.
    pub number_connections: u32,
}

impl SystemDescription {
    /// A Network-division description from what qdl knows: `division` "network", `is_network`
    /// "True", `system_type` "datacenter", qdl's TCP/RDMA software stack on both sides; the keys
    /// qdl cannot know are left empty ([`Self::missing_meaningful`] names those that must not be).
    pub fn network(facts: &KnownFacts) -> SystemDescription {
        let stack = format!("qdl {} ({})", env!("CARGO_PKG_VERSION"), facts.network_protocol);
        SystemDescription {
            division: "network".into(),
            submitter: facts.submitter.clone(),
            status: facts.status.clone(),
            system_name: facts.system_name.clone(),
            number_of_nodes: facts.number_of_nodes,
            host_processor_model_name: facts.host_processor_model_name.clone(),
            host_processors_per_node: "1".into(),
            host_processor_core_count: nonzero(facts.host_processor_core_count),
            accelerators_per_node: facts.accelerators_per_node,
            accelerator_model_name: facts.accelerator_model_name.clone(),
            framework: facts.framework.clone(),
            operating_system: facts.operating_system.clone(),
            system_type: "datacenter".into(),
            is_network: "True".into(),
            network_protocol: facts.network_protocol.clone(),
            number_connections: nonzero(facts.number_connections),
            net_software_stack_loadgen: stack.clone(),
            net_software_stack_sut: stack,
            ..SystemDescription::default()
        }
    }

    /// The keys of [`MEANINGFUL_FIELDS`] that are empty (an empty string or 0), in that order.
    pub fn missing_meaningful(&self) -> Vec<&'static str> {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) else { return Vec::new() };
        MEANINGFUL_FIELDS.into_iter().filter(|k| !map.get(*k).is_some_and(truthy)).collect()
    }

    /// The description as the checker reads it: pretty JSON, every key of [`REQUIRED_FIELDS`]
    /// and [`NETWORK_FIELDS`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

fn nonzero(n: u32) -> String {
    if n == 0 { String::new() } else { n.to_string() }
}

/// Python's truthiness of a JSON value, as the checker applies it.
pub(crate) fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KnownFacts {
        KnownFacts {
            submitter: "QDL".into(),
            system_name: "qdl_2x_h200".into(),
            status: "available".into(),
            number_of_nodes: 2,
            accelerators_per_node: 1,
            accelerator_model_name: "NVIDIA H200".into(),
            host_processor_model_name: "AMD EPYC 9654".into(),
            host_processor_core_count: 96,
            operating_system: "Linux".into(),
            framework: "qdl (llama.cpp)".into(),
            network_protocol: "TCP".into(),
            number_connections: 4,
        }
    }

    #[test]
    fn json_has_all_48_keys_and_the_network_values_the_checker_accepts() {
        let v: serde_json::Value = serde_json::from_str(&SystemDescription::network(&facts()).to_json()).unwrap();
        let map = v.as_object().unwrap();
        assert_eq!(map.len(), 48);
        for k in REQUIRED_FIELDS.iter().chain(&NETWORK_FIELDS) {
            assert!(map.contains_key(*k), "{k} is missing");
        }
        assert_eq!(map["is_network"], serde_json::json!("True"), "a string, not a boolean");
        assert_eq!(map["division"], serde_json::json!("network"));
        assert_eq!(map["system_type"], serde_json::json!("datacenter"));
        assert_eq!((map["number_of_nodes"].as_u64(), map["accelerators_per_node"].as_u64()), (Some(2), Some(1)));
        let back: SystemDescription = serde_json::from_value(v).unwrap();
        assert_eq!(back, SystemDescription::network(&facts()));
    }

    #[test]
    fn missing_meaningful_fields_are_named() {
        let mut d = SystemDescription::network(&facts());
        let missing = d.missing_meaningful();
        assert!(missing.contains(&"host_memory_capacity") && missing.contains(&"cooling"), "{missing:?}");
        assert!(!missing.contains(&"hw_notes"), "hw_notes may be empty");
        assert!(!missing.contains(&"submitter") && !missing.contains(&"number_of_nodes"));
        for k in missing {
            let mut v = serde_json::to_value(&d).unwrap();
            v[k] = serde_json::json!("filled");
            d = serde_json::from_value(v).unwrap();
        }
        assert!(d.missing_meaningful().is_empty());
        d.number_of_nodes = 0;
        d.submitter.clear();
        assert_eq!(d.missing_meaningful(), vec!["submitter", "number_of_nodes"]);
    }

    #[test]
    fn required_lists_have_no_duplicates_and_meaningful_is_a_subset() {
        let all: std::collections::BTreeSet<_> = REQUIRED_FIELDS.iter().chain(&NETWORK_FIELDS).collect();
        assert_eq!(all.len(), 48);
        assert!(MEANINGFUL_FIELDS.iter().all(|k| REQUIRED_FIELDS.contains(k)));
    }
}
