#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clusterlink_gateway::fuzzing::go_request(data));
