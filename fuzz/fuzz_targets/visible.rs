//! Fuzz target: `find_visible` and `parse_address_list` must never panic, and what they return
//! must keep the finder's invariants (distinct, non-empty addresses).
#![no_main]

use std::collections::HashSet;

use bccguard::policy::address::parse_address_list;
use bccguard::policy::visible::find_visible;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = find_visible(data) {
        let distinct: HashSet<&String> = v.addresses.iter().collect();
        assert_eq!(distinct.len(), v.addresses.len());
        assert!(v.addresses.iter().all(|a| !a.is_empty()));
    }
    // The raw bytes as one field value, too: reaches the reader without the header splitter.
    if let Ok(list) = parse_address_list(data) {
        assert!(list.addresses.iter().all(|a| !a.is_empty()));
    }
});
