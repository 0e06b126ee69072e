#![no_main]

use clusterlink_api::manifest::{MAX_NESTING, nesting_exceeds, parse_manifests};

// Manifests as gwctl and the API read them: never a panic, depth refused before parsing, and
// every object that parses reads back the same from its own JSON and YAML.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let documents = parse_manifests(text);
    if nesting_exceeds(text, MAX_NESTING) {
        assert_eq!(documents.len(), 1);
        assert!(documents[0].is_err());
    }
    for object in documents.into_iter().flatten() {
        let _ = object.validate();
        let json = serde_json::to_string(&object).unwrap_or_default();
        let again: Vec<_> = parse_manifests(&json).into_iter().collect();
        assert_eq!(again, vec![Ok(object)]);
    }
});
