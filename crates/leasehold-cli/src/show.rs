//! How instances are shown: one-line descriptions, tables and JSON.

use comfy_table::{presets, Table};
use leasehold::Instance;
use serde_json::Value;

/// An instance on one line: `id addr` then its weight, zone, version and labels when
/// set.
pub fn describe(instance: &Instance) -> String {
    let mut line = format!("{} {}", instance.id(), instance.addr());
    if instance.weight() != 1 {
        line.push_str(&format!(" weight={}", instance.weight()));
    }
    if let Some(zone) = instance.zone() {
        line.push_str(&format!(" zone={zone}"));
    }
    if let Some(version) = instance.version() {
        line.push_str(&format!(" version={version}"));
    }
    if !instance.metadata().is_empty() {
        line.push_str(&format!(" {}", labels(instance)));
    }
    line
}

/// The instances as a table with a header.
pub fn table<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["ID", "ADDRESS", "WEIGHT", "ZONE", "VERSION", "METADATA"]);
    for instance in instances {
        table.add_row([
            instance.id().to_string(),
            instance.addr().to_string(),
            instance.weight().to_string(),
            instance.zone().unwrap_or("-").to_owned(),
            instance.version().unwrap_or("-").to_owned(),
            labels(instance),
        ]);
    }
    table
}

/// The instance in the native JSON format: `service`, `id`, `addr`, `metadata`,
/// `weight`, `zone`, `version`.
pub fn json(instance: &Instance) -> Value {
    serde_json::to_value(instance).expect("an instance always serializes")
}

fn labels(instance: &Instance) -> String {
    let pairs: Vec<String> = instance
        .metadata()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance::builder("echo", "127.0.0.1:7001")
            .id("e1")
            .weight(3)
            .zone("z1")
            .version("1.2")
            .metadata("color", "blue")
            .build()
            .unwrap()
    }

    #[test]
    fn json_has_the_native_fields() {
        let value = json(&instance());
        let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["addr", "id", "metadata", "service", "version", "weight", "zone"]
        );
        assert_eq!(value["metadata"]["color"], "blue");
        assert_eq!(value["weight"], 3);
    }

    #[test]
    fn descriptions_and_tables_show_every_field_set() {
        assert_eq!(
            describe(&instance()),
            "e1 127.0.0.1:7001 weight=3 zone=z1 version=1.2 color=blue"
        );
        let plain = Instance::builder("echo", "127.0.0.1:7001")
            .id("e2")
            .build()
            .unwrap();
        assert_eq!(describe(&plain), "e2 127.0.0.1:7001");
        let table = table([&instance(), &plain]).to_string();
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows[0],
            ["ID", "ADDRESS", "WEIGHT", "ZONE", "VERSION", "METADATA"]
        );
        assert_eq!(rows[1], ["e1", "127.0.0.1:7001", "3", "z1", "1.2", "color=blue"]);
        assert_eq!(rows[2], ["e2", "127.0.0.1:7001", "1", "-", "-"]);
    }
}
