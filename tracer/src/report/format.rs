//! Human units shared by the terminal and HTML reports: bytes in KiB/MiB/GiB, durations
//! in ns/us/ms/s/min, RFC 3339 UTC times, and a guard against control characters.

/// Bytes of one page: fault counts are in pages, reports speak MiB.
pub use crate::analysis::stream::PAGE_SIZE;

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// `bytes` in the largest binary unit that keeps the number at least 1: `512 B`,
/// `1.5 KiB`, `202.8 MiB`, `23.5 GiB`.
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / KIB;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `pages` of 4 KiB in MiB with one decimal, always in MiB so columns compare at a
/// glance: `202.8 MiB`. Computed in floating point so absurd counts cannot overflow.
pub fn pages_mib(pages: u64) -> String {
    format!("{:.1} MiB", pages as f64 * PAGE_SIZE as f64 / MIB)
}

/// A duration in the unit that reads best: `850 ns`, `12.3 us`, `28.9 ms`, `6.27 s`,
/// `12.5 min`, `3.2 h`.
pub fn duration_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} us", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", f / 1e6)
    } else if ns < 120_000_000_000 {
        format!("{:.2} s", f / 1e9)
    } else if ns < 7_200_000_000_000 {
        format!("{:.1} min", f / 60e9)
    } else {
        format!("{:.1} h", f / 3600e9)
    }
}

/// `part` as a percentage of `whole` with one decimal (`None` when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> Option<String> {
    (whole > 0).then(|| format!("{:.1}%", part as f64 * 100.0 / whole as f64))
}

/// Nanoseconds since the Unix epoch as RFC 3339 UTC with milliseconds,
/// `2026-11-25T09:57:32.154Z`; `None` past year 9999 (a corrupt anchor).
pub fn rfc3339(unix_ns: u128) -> Option<String> {
    let secs = unix_ns / 1_000_000_000;
    let millis = (unix_ns % 1_000_000_000) / 1_000_000;
    // 253402300800 is 10000-01-01T00:00:00Z.
    if secs >= 253_402_300_800 {
        return None;
    }
    let secs = secs as i64;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, valid for every non-negative input here).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `text` with every control character (C0, DEL, C1) written as `\xNN` / `\u{NNNN}`, so
/// a hostile string from the timeline cannot move the cursor or recolour a terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // Bidirectional overrides and C1 controls can also reorder or hide text.
            c if c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c) => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max` characters, marking the cut with `...`.
pub fn ellipsize(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(3);
    let mut s: String = text.chars().take(keep).collect();
    s.push_str("...");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(212_647_936), "202.8 MiB");
        assert_eq!(bytes(25_276_063_744), "23.5 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
        assert_eq!(pages_mib(51926), "202.8 MiB");
        assert_eq!(pages_mib(0), "0.0 MiB");
        assert!(pages_mib(u64::MAX).ends_with(" MiB"));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns(850), "850 ns");
        assert_eq!(duration_ns(12_345), "12.3 us");
        assert_eq!(duration_ns(28_878_247), "28.9 ms");
        assert_eq!(duration_ns(6_272_782_736), "6.27 s");
        assert_eq!(duration_ns(750_000_000_000), "12.5 min");
        assert_eq!(duration_ns(u64::MAX), "5124095.6 h");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            rfc3339(1_795_600_652_154_357_348).as_deref(),
            Some("2026-11-25T09:57:32.154Z")
        );
        // A leap day.
        assert_eq!(
            rfc3339(951_782_400_000_000_000).as_deref(),
            Some("2000-02-29T00:00:00.000Z")
        );
        assert_eq!(rfc3339(u128::MAX), None);
        assert_eq!(
            rfc3339(253_402_300_799_999_999_999).as_deref(),
            Some("9999-12-31T23:59:59.999Z")
        );
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("a\u{1b}[31mb"), "a\\x1b[31mb");
        assert_eq!(printable("\0\n\u{7f}"), "\\x00\\x0a\\x7f");
        assert_eq!(printable("\u{9b}x\u{202e}"), "\\u{009b}x\\u{202e}");
        assert_eq!(printable("key:é<>\"'"), "key:é<>\"'");
    }

    #[test]
    fn ellipsis() {
        assert_eq!(ellipsize("abcdef", 6), "abcdef");
        assert_eq!(ellipsize("abcdefg", 6), "abc...");
        assert_eq!(ellipsize("ééééééé", 5), "éé...");
        assert_eq!(ellipsize("abc", 0), "...");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(1, 3).as_deref(), Some("33.3%"));
        assert_eq!(percent(1, 0), None);
    }
}
