//! Debian version ordering (`dpkg --compare-versions`), so a lockfile diff can say whether a
//! package went up or down.

use std::cmp::Ordering;

/// Compares two Debian versions: `[epoch:]upstream[-revision]`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    compare_number(ea.as_bytes(), eb.as_bytes())
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (&str, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e, r),
        _ => ("", v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// dpkg's `verrevcmp`: alternate non-digit runs (with `~` sorting before everything, even
/// the end) and digit runs compared numerically.
fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    let order = |c: Option<&u8>| -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => *c as i32,
            Some(c) => *c as i32 + 256,
        }
    };
    while !a.is_empty() || !b.is_empty() {
        while a.first().is_some_and(|c| !c.is_ascii_digit())
            || b.first().is_some_and(|c| !c.is_ascii_digit())
        {
            let (oa, ob) = (order(a.first()), order(b.first()));
            if oa != ob {
                return oa.cmp(&ob);
            }
            a = &a[1.min(a.len())..];
            b = &b[1.min(b.len())..];
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (na, nb) = (digits(a), digits(b));
        let by_value = compare_number(&a[..na], &b[..nb]);
        if by_value != Ordering::Equal {
            return by_value;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

/// Two runs of ASCII digits (empty is 0) by value, at any length: leading zeros dropped, a
/// longer run is larger, equal lengths compare as text. No integer type, so nothing overflows.
fn compare_number(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn orders_like_dpkg() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("2.36-9+deb12u7", "2.36-9+deb12u10", Less),
            ("12.2.0-14", "12.2.0-14+deb12u1", Less),
            ("1.0a", "1.0", Greater),
            ("1.0-1", "1.0-1~bpo1", Greater),
            ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12", Less),
            ("1.007", "1.7", Equal),
            ("1.0010", "1.9", Greater),
            // Runs longer than any integer type still compare by value.
            (
                "1.100000000000000000000000000000000000000001",
                "1.100000000000000000000000000000000000000002",
                Less,
            ),
            (
                "1.99999999999999999999999999999999999999999",
                "1.100000000000000000000000000000000000000000",
                Less,
            ),
            (
                "99999999999999999999999:1.0",
                "100000000000000000000000:0.1",
                Less,
            ),
            ("0:1.0", "1.0", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
