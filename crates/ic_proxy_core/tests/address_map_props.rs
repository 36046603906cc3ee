//! Property tests of the address map: valid maps survive printing and
//! re-parsing, diffs are consistent, and no input panics the parser.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ic_proxy_core::address_map::{AddressMap, MapProblem, PeerAddr, MAX_DBID, MAX_QUOTED_CHARS};
use proptest::prelude::*;

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z][a-zA-Z0-9_-]{0,12}(\\.[a-zA-Z0-9_-]{1,8}){0,2}",
        any::<[u8; 4]>().prop_map(|octets| Ipv4Addr::from(octets).to_string()),
        any::<u128>().prop_map(|bits| Ipv6Addr::from(bits).to_string()),
        // Mostly zeros, so the printed form uses "::" compression.
        (0usize..8, any::<u16>()).prop_map(|(at, group)| {
            let mut groups = [0u16; 8];
            groups[at] = group;
            Ipv6Addr::from(groups).to_string()
        }),
    ]
}

/// Same key as the duplicate check: names by lowercase without a trailing
/// dot, IPv6 by value.
fn endpoint_key(peer: &PeerAddr) -> (String, u16) {
    let host = match peer.host.parse::<Ipv6Addr>() {
        Ok(v6) => v6.to_string(),
        Err(_) => peer
            .host
            .strip_suffix('.')
            .unwrap_or(&peer.host)
            .to_ascii_lowercase(),
    };
    (host, peer.port)
}

/// Valid entries: distinct dbids (smallint, as in gp_segment_configuration),
/// distinct host:port, in shuffled order.
fn entries() -> impl Strategy<Value = Vec<PeerAddr>> {
    prop::collection::btree_map(
        1u16..=MAX_DBID,
        (-1i16..=32767, host(), 1u16..=65535),
        0..24,
    )
    .prop_map(|by_dbid| {
        let mut endpoints = HashSet::new();
        by_dbid
            .into_iter()
            .map(|(dbid, (content, host, port))| PeerAddr {
                dbid,
                content,
                host,
                port,
            })
            .filter(|peer| endpoints.insert(endpoint_key(peer)))
            .collect::<Vec<_>>()
    })
    .prop_shuffle()
}

/// Writes entries the way a person might: spaces, tabs, a trailing comma.
fn messy(entries: &[PeerAddr], pads: &[(usize, usize)], trailing_comma: bool) -> String {
    let pad = |n: usize| [" ", "  ", "\t", ""][n % 4];
    let mut parts: Vec<String> = entries
        .iter()
        .zip(pads.iter().cycle())
        .map(|(peer, &(before, after))| format!("{}{peer}{}", pad(before), pad(after)))
        .collect();
    if trailing_comma && !parts.is_empty() {
        parts.push(" ".to_string());
    }
    parts.join(",")
}

/// What must hold for the problems of any input.
fn assert_problems_consistent(s: &str) -> Result<(), TestCaseError> {
    let problems: Vec<MapProblem> = AddressMap::check(s);
    let parsed = AddressMap::parse(s);
    prop_assert_eq!(problems.is_empty(), parsed.is_ok());
    let max_position = s.matches(',').count() + 1;
    let positions: Vec<usize> = problems.iter().map(|p| p.position).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    prop_assert_eq!(&positions, &sorted, "problems come in entry order");
    for problem in &problems {
        prop_assert!(problem.position <= max_position);
        let message = problem.message();
        if problem.position == 0 {
            prop_assert_eq!(message.as_str(), "the value is wrapped in quotes");
        } else {
            prop_assert!(
                message.starts_with(&format!("entry {} ", problem.position)),
                "{}",
                message
            );
        }
        prop_assert!(!problem.hint().is_empty());
        // Each quote is clipped: an entry quote, at most two more (host and
        // label), the fixed text; every character escapes to at most 10.
        prop_assert!(
            message.chars().count() <= 3 * 10 * (MAX_QUOTED_CHARS + 2) + 200,
            "{} characters: {}",
            message.chars().count(),
            message
        );
    }
    match parsed {
        Ok(map) => prop_assert_eq!(AddressMap::parse(&map.to_string()).unwrap(), map),
        Err(err) => {
            prop_assert_eq!(&err.problems, &problems);
            prop_assert!(err.to_string().starts_with(&problems[0].message()));
        }
    }
    Ok(())
}

/// Named `config` so that `cargo test -p ic_proxy_core config` selects these.
mod config {
    use super::*;

    proptest! {
        #[test]
        fn valid_maps_format_and_reparse_to_themselves(
            entries in entries(),
            pads in prop::collection::vec((0usize..4, 0usize..4), 1..8),
            trailing_comma in any::<bool>(),
        ) {
            let map = AddressMap::from_entries(entries.clone()).unwrap();
            prop_assert_eq!(map.entries(), &entries[..]);
            let canonical = map.to_string();
            prop_assert!(!canonical.contains(' '));
            prop_assert_eq!(&AddressMap::parse(&canonical).unwrap(), &map);
            let written = messy(&entries, &pads, trailing_comma);
            prop_assert_eq!(&AddressMap::parse(&written).unwrap(), &map, "{}", written);
            for peer in &entries {
                prop_assert_eq!(map.get(peer.dbid), Some(peer));
            }
        }

        #[test]
        fn reordering_a_map_gives_an_empty_diff(entries in entries()) {
            let map = AddressMap::from_entries(entries.clone()).unwrap();
            let mut reversed = entries;
            reversed.reverse();
            let other = AddressMap::from_entries(reversed).unwrap();
            prop_assert!(AddressMap::diff(&map, &other).is_empty());
            prop_assert!(AddressMap::diff(&other, &map).is_empty());
        }

        #[test]
        fn diff_explains_the_new_map(old in entries(), new in entries()) {
            let old = AddressMap::from_entries(old).unwrap();
            let new = AddressMap::from_entries(new).unwrap();
            let diff = AddressMap::diff(&old, &new);
            let back = AddressMap::diff(&new, &old);
            prop_assert_eq!(&diff.added, &back.removed);
            prop_assert_eq!(&diff.removed, &back.added);
            let swapped: Vec<(PeerAddr, PeerAddr)> =
                back.changed.iter().map(|(a, b)| (b.clone(), a.clone())).collect();
            prop_assert_eq!(&diff.changed, &swapped);
            let sorted = |dbids: Vec<u16>| dbids.windows(2).all(|w| w[0] < w[1]);
            prop_assert!(sorted(diff.added.iter().map(|p| p.dbid).collect()));
            prop_assert!(sorted(diff.removed.iter().map(|p| p.dbid).collect()));
            prop_assert!(sorted(diff.changed.iter().map(|(o, _)| o.dbid).collect()));
            // Applying the diff to old gives new, as a set of entries.
            let mut applied: Vec<PeerAddr> = old
                .entries()
                .iter()
                .filter(|p| !diff.removed.contains(p))
                .map(|p| {
                    diff.changed
                        .iter()
                        .find(|(o, _)| o == p)
                        .map_or_else(|| p.clone(), |(_, n)| n.clone())
                })
                .chain(diff.added.iter().cloned())
                .collect();
            applied.sort_by_key(|p| p.dbid);
            let mut expected = new.entries().to_vec();
            expected.sort_by_key(|p| p.dbid);
            prop_assert_eq!(applied, expected);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            assert_problems_consistent(&s)?;
        }

        #[test]
        fn near_valid_strings_never_panic(s in "[0-9a-fA-F:\\[\\],. \t'\"+_%-]{0,64}") {
            assert_problems_consistent(&s)?;
        }

        #[test]
        fn dbids_beyond_smallint_are_refused(dbid in (u32::from(MAX_DBID) + 1)..=70000) {
            let s = format!("{dbid}:0:sdw1:7002");
            let problems = AddressMap::check(&s);
            prop_assert_eq!(problems.len(), 1);
            prop_assert_eq!(
                problems[0].message(),
                format!("entry 1 {s:?}: dbid {dbid} is outside 1..32767")
            );
        }

        #[test]
        fn case_and_a_trailing_dot_do_not_make_another_host(
            entries in entries(),
            pick in any::<prop::sample::Index>(),
            upper in any::<bool>(),
        ) {
            prop_assume!(!entries.is_empty());
            let first = &entries[pick.index(entries.len())];
            prop_assume!(!first.is_ipv6_literal() && first.host.parse::<Ipv4Addr>().is_err());
            let host = if upper {
                first.host.to_ascii_uppercase()
            } else {
                format!("{}.", first.host)
            };
            let unused = (1..=MAX_DBID).find(|d| entries.iter().all(|p| p.dbid != *d)).unwrap();
            let twin = PeerAddr { dbid: unused, content: 0, host, port: first.port };
            let written = format!("{},{twin}", AddressMap::from_entries(entries.clone()).unwrap());
            let problems = AddressMap::check(&written);
            prop_assert_eq!(problems.len(), 1, "{}", written);
            prop_assert_eq!(
                problems[0].message(),
                format!(
                    "entry {} {:?}: {}:{} appears twice (first in entry {})",
                    entries.len() + 1,
                    twin.to_string(),
                    twin.host,
                    twin.port,
                    pick.index(entries.len()) + 1
                )
            );
        }

        #[test]
        fn long_entries_give_short_messages(
            s in "[0-9a-z:.\\[\\] -]{200,3000}",
        ) {
            for problem in AddressMap::check(&s) {
                let message = problem.message();
                // No escapes in this alphabet: three clipped quotes and text.
                prop_assert!(message.len() <= 3 * (MAX_QUOTED_CHARS + 2) + 150, "{}", message);
            }
        }

        #[test]
        fn edited_valid_maps_never_panic(
            entries in entries(),
            at in any::<prop::sample::Index>(),
            insert in prop::option::of("[0-9a-z:,\\[\\] '\"+-]"),
        ) {
            let canonical = AddressMap::from_entries(entries).unwrap().to_string();
            let mut chars: Vec<char> = canonical.chars().collect();
            match insert {
                Some(c) => chars.insert(at.index(chars.len() + 1), c.chars().next().unwrap()),
                None if !chars.is_empty() => {
                    chars.remove(at.index(chars.len()));
                }
                None => {}
            }
            let edited: String = chars.into_iter().collect();
            assert_problems_consistent(&edited)?;
        }
    }
}
