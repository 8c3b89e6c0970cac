//! Finding the few headers the correlation layers read.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map with at most this many names is searched in one pass; a
/// larger one by lookups.
const SCAN_MAX_NAMES: usize = 12;

/// The first value (the one `HeaderMap::get` gives) of each of up to `N`
/// header names in a request's headers.
///
/// A small map is searched in one pass, each of its names compared with
/// ours: most are standard headers, told apart from a custom name at once,
/// while a lookup of a custom name such as `x-correlation-id` hashes it byte
/// by byte first, and the layers read three names or more. A large map is
/// searched by lookups instead, so the cost stays bounded whatever a request
/// holds.
pub(crate) struct Lookup<'h, const N: usize> {
    headers: &'h HeaderMap,
    /// What one pass found; `None`: each name is looked up.
    scanned: Option<[Option<&'h HeaderValue>; N]>,
}

impl<'h, const N: usize> Lookup<'h, N> {
    /// Search `headers` for `names` (`None` entries are skipped) in one pass
    /// when the map is small.
    #[inline]
    pub(crate) fn new(headers: &'h HeaderMap, names: [Option<&HeaderName>; N]) -> Self {
        if headers.keys_len() > SCAN_MAX_NAMES {
            return Self::by_lookups(headers);
        }
        let mut found = [None; N];
        // A name's values come one after the other, the first one first.
        for (name, value) in headers {
            for (slot, ours) in found.iter_mut().zip(&names) {
                if slot.is_none() && *ours == Some(name) {
                    *slot = Some(value);
                }
            }
        }
        Lookup { headers, scanned: Some(found) }
    }

    /// Look each name up when asked for it.
    #[inline]
    pub(crate) fn by_lookups(headers: &'h HeaderMap) -> Self {
        Lookup { headers, scanned: None }
    }

    /// The value of `name`, the `i`th of the names this was made with.
    #[inline]
    pub(crate) fn get(&self, i: usize, name: &HeaderName) -> Option<&'h HeaderValue> {
        match &self.scanned {
            Some(found) => found[i],
            None => self.headers.get(name),
        }
    }

    /// Whether the headers hold `name`, the `i`th of the names this was made
    /// with.
    #[inline]
    pub(crate) fn contains(&self, i: usize, name: &HeaderName) -> bool {
        self.get(i, name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // More names than a scan takes, so that both ways are exercised.
    const NAMES: [&str; 15] = [
        "x-correlation-id",
        "x-request-id",
        "x-trace-id",
        "traceparent",
        "tracestate",
        "host",
        "content-type",
        "accept",
        "x-other",
        "user-agent",
        "x-extra-1",
        "x-extra-2",
        "x-extra-3",
        "x-extra-4",
        "date",
    ];

    fn same(a: Option<&HeaderValue>, b: Option<&HeaderValue>) -> bool {
        a.map(|v| v as *const HeaderValue) == b.map(|v| v as *const HeaderValue)
    }

    proptest! {
        /// One pass finds what lookups find — the same value, the first of
        /// its name — for every name asked for (twice over, or not at all),
        /// whatever the map's size and duplicates.
        #[test]
        fn a_scan_finds_what_lookups_find(
            pairs in proptest::collection::vec((0..NAMES.len(), 0..3usize), 0..40),
            asked in proptest::collection::vec(proptest::option::of(0..NAMES.len()), 5),
        ) {
            let mut headers = HeaderMap::new();
            for (n, v) in pairs {
                headers.append(HeaderName::from_static(NAMES[n]), HeaderValue::from(v));
            }
            let names: Vec<Option<HeaderName>> =
                asked.iter().map(|n| n.map(|n| HeaderName::from_static(NAMES[n]))).collect();
            let refs: [Option<&HeaderName>; 5] = std::array::from_fn(|i| names[i].as_ref());
            let found = Lookup::new(&headers, refs);
            prop_assert_eq!(found.scanned.is_some(), headers.keys_len() <= SCAN_MAX_NAMES);
            let looked_up = Lookup::<5>::by_lookups(&headers);
            for (i, name) in names.iter().enumerate() {
                match name {
                    Some(name) => {
                        prop_assert!(same(found.get(i, name), looked_up.get(i, name)), "{}", name);
                        prop_assert_eq!(found.contains(i, name), headers.contains_key(name));
                    }
                    None => prop_assert!(found.scanned.is_none() || found.scanned.unwrap()[i].is_none()),
                }
            }
        }
    }
}
