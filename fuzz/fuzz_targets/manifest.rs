#![no_main]

use clusterlink_api::manifest::{MAX_NESTING, nesting_exceeds, parse_manifests};

// Manifests as gwctl and the API read them: never a panic, depth in YAML refused before parsing,
// and every object that parses reads back the same from its own JSON.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let documents = parse_manifests(text);
    // JSON is read by a reader that needs no depth check; whatever else is read as YAML.
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if nesting_exceeds(text, MAX_NESTING) && !looks_json {
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
