use super::standalone::Scope;
use super::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Open an element declaring these (prefix, namespace) pairs.
    Open(Vec<(u8, u8)>),
    Close,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let open = prop::collection::vec((0u8..12, 0u8..4), 0..6).prop_map(Op::Open);
    prop::collection::vec(prop_oneof![3 => open, 2 => Just(Op::Close)], 0..60)
}

proptest! {
    /// The scope with its index agrees with a plain list scanned from
    /// the innermost declaration, across pushes and pops that cross
    /// the number kept in place.
    #[test]
    fn bindings_resolve_as_a_scanned_list(ops in ops()) {
        let prefixes: Vec<String> = (0..12).map(|i| if i == 0 { String::new() } else { format!("p{i}") }).collect();
        let namespaces: Vec<String> = (0..4).map(|n| format!("urn:{n}")).collect();
        let mut bindings = Bindings::new();
        let mut model: Vec<(usize, &str, String)> = Vec::new();
        let mut depth = 0;
        for op in ops {
            match op {
                Op::Open(decls) => {
                    depth += 1;
                    for (p, n) in decls {
                        let ns = format!("urn:{n}");
                        // Every other namespace held as an owned (unescaped) string.
                        let held = if n % 2 == 0 { Cow::Owned(ns.clone()) } else { Cow::Borrowed(namespaces[n as usize].as_str()) };
                        bindings.push(depth, Cow::Borrowed(prefixes[p as usize].as_str()), held);
                        model.push((depth, prefixes[p as usize].as_str(), ns));
                    }
                }
                Op::Close if depth > 0 => {
                    while bindings.last().is_some_and(|b| b.depth >= depth) {
                        bindings.pop();
                    }
                    model.retain(|(d, _, _)| *d < depth);
                    depth -= 1;
                }
                Op::Close => {}
            }
            for p in &prefixes {
                let expected = model.iter().rev().find(|(_, mp, _)| mp == p).map(|(_, _, ns)| ns.as_str());
                prop_assert_eq!(bindings.find(p), expected, "prefix {:?}", p);
            }
            let inherited: Vec<(String, String)> = bindings
                .inherited(depth + 1)
                .map(|(p, n)| (bindings.get(p).to_owned(), bindings.get(n).to_owned()))
                .collect();
            let mut expected: Vec<(String, String)> = Vec::new();
            for p in &prefixes {
                if let Some((_, _, ns)) = model.iter().rev().find(|(_, mp, _)| mp == p) {
                    expected.push((p.clone(), ns.clone()));
                }
            }
            let mut got = inherited.clone();
            got.sort();
            expected.sort();
            prop_assert_eq!(got, expected);
        }
    }
}

#[test]
fn used_declarations_are_found_by_name_before_a_colon() {
    let inherited =
        [("", "urn:d"), ("a", "urn:a"), ("b", "urn:b"), ("ab", "urn:ab"), ("xml", "urn:x"), ("é", "urn:e"), ("u", "")];
    let mut scope = Scope::new(&inherited);
    let mut used = |fragment: &str| {
        let mut out = Vec::new();
        scope.used(fragment, &mut out);
        out.into_iter().map(|i| scope.decls[i].0).collect::<Vec<_>>()
    };
    assert_eq!(used("<x/>"), [""]);
    assert_eq!(used("<ab:x/>"), ["", "ab"]);
    assert_eq!(used("<x t=\"b:y\">xml:lang u:x</x>"), ["", "b"]);
    assert_eq!(used("<x>@a:y é:z</x>"), ["", "a", "é"]);
    assert_eq!(used("<x>cab:y</x>"), [""]);
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("p{i}"), format!("urn:{i}"))).collect();
    let mut scope = Scope::new(&many);
    let mut out = Vec::new();
    scope.used("<p7:x p39:y=\"1\">p12:z</p7:x>", &mut out);
    assert_eq!(out.iter().map(|i| scope.decls[*i].0).collect::<Vec<_>>(), ["p7", "p12", "p39"]);
}

#[test]
fn standalone_copies_are_bounded() {
    // Each of many top-level elements takes the (long) declaration it uses.
    let ns = "u".repeat(1000);
    let inherited = [("p", ns.as_str())];
    let fragment = "<p:e/>".repeat(100);
    let mut budget = 200_000;
    let made = standalone(&fragment, &inherited, &mut budget, 7).unwrap().unwrap();
    assert_eq!(made.len(), fragment.len() + 100 * (ns.len() + " xmlns:p=\"\"".len()));
    assert_eq!(budget, 200_000 - (made.len() - fragment.len()));
    let mut budget = 50_000;
    assert!(matches!(standalone(&fragment, &inherited, &mut budget, 7), Err(SoapError::TooLarge { limit: 7 })));
    // Only what each element uses: the second one takes nothing.
    let mut budget = usize::MAX;
    let two = [("a", "urn:a"), ("b", "urn:b")];
    let made = standalone("<a:x/> <y b=\"1\"/>", &two, &mut budget, 0).unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&made).unwrap(), "<a:x xmlns:a=\"urn:a\"/> <y b=\"1\"/>");
}
