//! Strings a hostile client would send, for property tests: every kind of Unicode scalar that
//! JSON can carry, with the awkward ones (U+0000, controls, bidi overrides, noncharacters,
//! combining marks, astral characters, odd whitespace) far likelier than chance would make them.
//! Surrogates are no `char`s, so none is generated (JSON's lone `\uD800` is refused as invalid
//! JSON before any rule runs).
//!
//! Shared by the property tests of several crates (`#[path]`), so there is one definition.

#![allow(dead_code)]

use proptest::prelude::*;

/// One scalar, awkward ones favoured.
pub fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        3 => prop::char::range('a', 'z'),
        1 => Just('\0'),
        1 => prop::char::range('\u{1}', '\u{1f}'),
        1 => prop::char::range('\u{7f}', '\u{9f}'),
        1 => prop::sample::select(vec![
            '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
            '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{feff}', '\u{200b}', '\u{200d}',
        ]),
        1 => prop::char::range('\u{fdd0}', '\u{fdef}'),
        1 => prop::sample::select(vec![
            '\u{fffe}', '\u{ffff}', '\u{1fffe}', '\u{1ffff}', '\u{10fffe}', '\u{10ffff}',
        ]),
        1 => prop::char::range('\u{300}', '\u{36f}'),
        1 => prop::char::range('\u{1f300}', '\u{1faff}'),
        1 => prop::sample::select(vec![
            ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{1680}', '\u{2028}',
            '\u{2029}', '\u{3000}',
        ]),
        1 => prop::char::range('\u{e000}', '\u{f8ff}'),
    ]
}

/// A string of `len` hostile scalars.
pub fn hostile_string(
    len: impl Into<prop::collection::SizeRange>,
) -> impl Strategy<Value = String> {
    prop::collection::vec(hostile_char(), len).prop_map(String::from_iter)
}

/// Mostly short strings, sometimes right around `max` characters (a field's limit).
pub fn hostile_field(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => hostile_string(0..12),
        1 => hostile_string(max.saturating_sub(2)..=max + 2),
    ]
}

/// The rule of `events::admission`, said again independently: no U+0000, 1..=max scalars, and
/// (when `blank_refused`) not all whitespace.
pub fn follows_rule(value: &str, max: usize, blank_refused: bool) -> bool {
    let chars = value.chars().count();
    !value.contains('\u{0}')
        && (1..=max).contains(&chars)
        && !(blank_refused && value.chars().all(char::is_whitespace))
}
