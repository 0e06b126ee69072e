//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in a product build):
//! the management API's body parser here, the data plane's parsers re-exported.

pub use clusterlink_dataplane::fuzzing::*;

/// A management API body. An object that parses is written back in a form that parses to the
/// same object.
pub fn rest_body(data: &[u8]) {
    if let Ok(object) = crate::management::parse_object(data) {
        let _ = object.validate();
        let json = serde_json::to_vec(&object).unwrap_or_default();
        let again = crate::management::parse_object(&json).ok();
        assert_eq!(again.as_ref(), Some(&object));
    }
}
