//! The committed CRDs are exactly what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/runplane.yaml")).unwrap();
    assert!(
        committed == runplane::resources::crds_yaml(),
        "crds/runplane.yaml is stale: run `cargo run -- crds > crds/runplane.yaml`"
    );
}

#[test]
fn the_charts_crds_are_the_committed_ones() {
    let read = |path: &str| std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(
        read("charts/runplane/crds/runplane.yaml") == read("crds/runplane.yaml"),
        "charts/runplane/crds/runplane.yaml is stale: run `make crds`"
    );
}

#[test]
fn every_field_is_described() {
    for crd in runplane::resources::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let mut missing = Vec::new();
        walk(&schema["openAPIV3Schema"]["properties"]["spec"], "spec", &mut missing);
        walk(&schema["openAPIV3Schema"]["properties"]["status"], "status", &mut missing);
        assert!(missing.is_empty(), "{}: fields without a description: {missing:?}", crd.spec.names.kind);
    }
}

fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    for (name, prop) in props {
        let here = format!("{path}.{name}");
        if prop.get("description").is_none() {
            missing.push(here.clone());
        }
        // Kubernetes' own types (EnvVar, Toleration, Condition) describe themselves.
        if !matches!(name.as_str(), "env" | "tolerations" | "conditions") {
            walk(prop, &here, missing);
            if let Some(items) = prop.get("items") {
                walk(items, &here, missing);
            }
        }
    }
}
