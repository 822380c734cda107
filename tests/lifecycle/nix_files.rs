//! The app specs the NixOS VM tests post to `/v1/apps/{app}/deploy` (vm-tests/specs/*.json)
//! are specs berthd accepts: nixpkgs cannot be fetched here to run those tests, so this is
//! where their inputs are checked against the real types.

use berth::model::deploy::AppSpec;
use std::path::Path;

#[test]
fn vm_test_specs_are_valid_app_specs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/specs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("vm-tests/specs exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable spec");
        let spec: AppSpec = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not an app spec: {e}", path.display()));
        spec.validate()
            .unwrap_or_else(|e| panic!("{}: invalid app spec: {e}", path.display()));
        checked += 1;
    }
    assert_eq!(
        checked,
        3,
        "expected the three VM-test specs in {}",
        dir.display()
    );
}
