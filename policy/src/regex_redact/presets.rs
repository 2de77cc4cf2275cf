//! The built-in patterns: `emails`, `phone_numbers`, `credit_cards`, `api_keys`.
//!
//! They are deliberately conservative: a redaction policy that rewrites order numbers, years
//! and version strings gets switched off. Word boundaries are ASCII (`(?-u:\b)`), digits are
//! `[0-9]`.

use serde::Deserialize;

use super::redactor::Validator;

/// A built-in pattern set, selected by name under `presets:`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// `local@domain.tld`.
    Emails,
    /// `+` and 8–15 digits in groups (`+44 20 7946 0958`, `+1-202-555-0143`, `+4915112345678`);
    /// North American `(202) 555-0143`, `202-555-0143`, `202.555.0143`, `1-800-555-0199`;
    /// national numbers starting with 0 written in groups (`020 7946 0958`, `06 12 34 56 78`).
    /// Never a bare run of digits without `+`, nor dates or years.
    PhoneNumbers,
    /// 13–19 digits, contiguous or in the usual groups of four (`4111 1111 1111 1111`,
    /// `4111-1111-1111-1111`, Amex `3782 822463 10005`), that pass the Luhn check.
    CreditCards,
    /// OpenAI (`sk-…`, `sk-proj-…`), Anthropic (`sk-ant-…`), AWS access key ids (`AKIA…`,
    /// `ASIA…`), GitHub tokens (`ghp_…`, `gho_…`, `github_pat_…`), Slack tokens (`xoxb-…`,
    /// `xoxa-…`, `xoxp-…`), Google API keys (`AIza…`).
    ApiKeys,
}

impl Preset {
    /// The preset's name, as in the file; also its replacement's `{name}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Emails => "emails",
            Self::PhoneNumbers => "phone_numbers",
            Self::CreditCards => "credit_cards",
            Self::ApiKeys => "api_keys",
        }
    }

    /// The preset's regex and validator.
    pub(super) fn pattern(self) -> (&'static str, Option<Validator>) {
        match self {
            Self::Emails => (EMAIL, None),
            Self::PhoneNumbers => (PHONE, Some(phone_digits_plausible)),
            Self::CreditCards => (CARD, Some(luhn_valid)),
            Self::ApiKeys => (API_KEY, Some(has_digit)),
        }
    }
}

const EMAIL: &str = concat!(
    r"[A-Za-z0-9._%+-]+@",
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?",
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    r"\.[A-Za-z]{2,24}(?-u:\b)",
);

const PHONE: &str = concat!(
    // International: + country code, then groups; the digit count is checked afterwards.
    r"\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}",
    // North American, separators required.
    r"|(?:(?-u:\b)1[ .-])?(?:\([0-9]{3}\) ?|(?-u:\b)[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
    // National, starting with 0, at least three groups.
    r"|(?-u:\b)0[0-9]{1,4}(?:[ -][0-9]{2,4}){2,4}(?-u:\b)",
);

const CARD: &str = concat!(
    r"(?-u:\b)(?:",
    r"[0-9]{13,19}",
    r"|[0-9]{4}(?: [0-9]{4}){3}",
    r"|[0-9]{4}(?:-[0-9]{4}){3}",
    r"|[0-9]{4} [0-9]{6} [0-9]{4,5}",
    r"|[0-9]{4}-[0-9]{6}-[0-9]{4,5}",
    r")(?-u:\b)",
);

const API_KEY: &str = concat!(
    r"(?-u:\b)(?:",
    r"sk-[A-Za-z0-9_-]{20,}",
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
    r"|gh[pousr]_[A-Za-z0-9]{36,255}(?-u:\b)",
    r"|github_pat_[A-Za-z0-9_]{22,255}",
    r"|xox[abeoprs]-[A-Za-z0-9-]{10,}",
    r"|AIza[0-9A-Za-z_-]{35}",
    r")",
);

/// Phone numbers: `+…` has 8–15 digits (E.164), others 10–12.
fn phone_digits_plausible(candidate: &str) -> bool {
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    if candidate.starts_with('+') {
        (8..=15).contains(&digits)
    } else {
        (10..=12).contains(&digits)
    }
}

/// The Luhn checksum of the candidate's digits (separators ignored), for 13–19 digits.
pub(super) fn luhn_valid(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|digit| u32::from(digit - b'0'))
        .collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &digit)| match position % 2 {
            0 => digit,
            _ if digit * 2 > 9 => digit * 2 - 9,
            _ => digit * 2,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Real keys are random, so they have digits; `sk-this-is-a-long-hyphenated-phrase` is not one.
fn has_digit(candidate: &str) -> bool {
    // AWS key ids are base32 with a fixed shape: no digit is needed to tell them apart.
    if candidate.starts_with("AKIA") || candidate.starts_with("ASIA") {
        return true;
    }
    let body = candidate
        .split_once(['-', '_'])
        .map_or(candidate, |(_, body)| body);
    body.bytes().any(|byte| byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    /// The matches the preset redacts in `text`.
    fn found(preset: Preset, text: &str) -> Vec<String> {
        let (regex, validate) = preset.pattern();
        let regex = Regex::new(regex).unwrap();
        regex
            .find_iter(text)
            .map(|m| m.as_str())
            .filter(|m| validate.is_none_or(|validate| validate(m)))
            .map(str::to_owned)
            .collect()
    }

    fn assert_finds(preset: Preset, text: &str, expected: &str) {
        assert_eq!(found(preset, text), [expected], "{preset:?} in {text:?}");
    }

    fn assert_none(preset: Preset, text: &str) {
        assert_eq!(
            found(preset, text),
            Vec::<String>::new(),
            "{preset:?} in {text:?}"
        );
    }

    #[test]
    fn emails() {
        for (text, email) in [
            ("mail bob@example.com.", "bob@example.com"),
            ("<first.last+tag@mail.co.uk>", "first.last+tag@mail.co.uk"),
            (
                "x_y-z%1@sub-domain.example.io, thanks",
                "x_y-z%1@sub-domain.example.io",
            ),
            ("UPPER@EXAMPLE.ORG", "UPPER@EXAMPLE.ORG"),
        ] {
            assert_finds(Preset::Emails, text, email);
        }
        for text in [
            "user@localhost",
            "@handle on twitter",
            "a @ b.com",
            "version 1.2.3@4",
            "foo@bar.c",
        ] {
            assert_none(Preset::Emails, text);
        }
    }

    #[test]
    fn phone_numbers() {
        for (text, phone) in [
            ("call +44 20 7946 0958 now", "+44 20 7946 0958"),
            ("call +1-202-555-0143.", "+1-202-555-0143"),
            ("whatsapp +4915112345678", "+4915112345678"),
            ("+33 6 12 34 56 78", "+33 6 12 34 56 78"),
            ("ring (202) 555-0143", "(202) 555-0143"),
            ("ring 202-555-0143 today", "202-555-0143"),
            ("ring 202.555.0143", "202.555.0143"),
            ("toll free 1-800-555-0199", "1-800-555-0199"),
            ("London 020 7946 0958", "020 7946 0958"),
            ("Paris 06 12 34 56 78", "06 12 34 56 78"),
        ] {
            assert_finds(Preset::PhoneNumbers, text, phone);
        }
        for text in [
            "order 12345678901",
            "in 2024 and 2025",
            "on 2024-01-15",
            "on 15.01.2024",
            "version 10.2.3",
            "ip 192.168.100.200",
            "+1 vote",
            "+12 points",
            "1 000 000 dollars",
            "tracking 5551234567",
            "score 3-2",
        ] {
            assert_none(Preset::PhoneNumbers, text);
        }
    }

    #[test]
    fn credit_cards_are_luhn_checked() {
        for (text, card) in [
            ("visa 4111111111111111 ok", "4111111111111111"),
            ("visa 4111 1111 1111 1111, exp 12/27", "4111 1111 1111 1111"),
            ("mc 5500-0000-0000-0004", "5500-0000-0000-0004"),
            ("amex 3782 822463 10005", "3782 822463 10005"),
            ("amex 378282246310005", "378282246310005"),
            ("visa13 4222222222222", "4222222222222"),
            ("card 4111 1111 1111 1111 123", "4111 1111 1111 1111"),
        ] {
            assert_finds(Preset::CreditCards, text, card);
        }
        for text in [
            "4111111111111112",
            "4111 1111 1111 1112",
            "1234567890123456",
            "order 41111111111111111111 (20 digits)",
            "4111 1111 1111",
            "2024 2025 2026 2027 in a row",
            "4111x1111x1111x1111",
        ] {
            assert_none(Preset::CreditCards, text);
        }
        assert!(!luhn_valid("79927398713")); // passes Luhn, but too short for a card
        assert!(luhn_valid("6011 1111 1111 1117"));
        assert!(!luhn_valid("6011 1111 1111 1118"));
    }

    #[test]
    fn api_keys() {
        let proj = format!("sk-proj-{}", "Ab3_xY9-".repeat(19));
        let ant = format!("sk-ant-api03-{}AA", "aB3dE6gH9-".repeat(9));
        for key in [
            "sk-abcdefghij0123456789ABCDEFGHIJklmnopqrstuvwx",
            proj.as_str(),
            ant.as_str(),
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAY34FZKBOKMUTVV7A",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW",
            "xoxb-2345678901-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "xoxp-1234-5678-abcdef",
            "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
        ] {
            assert_finds(Preset::ApiKeys, &format!("key: {key} end"), key);
            assert_finds(Preset::ApiKeys, &format!("\"{key}\""), key);
        }
        for text in [
            "sk-this-is-a-long-hyphenated-phrase",
            "task-0123456789012345678901234",
            "sk-short1",
            "AKIA_NOT_A_KEY",
            "AKIAIOSFODNN7EXAMPLEX",
            "ghp_short123",
            "xoxb-",
            "AIza short",
        ] {
            assert_none(Preset::ApiKeys, text);
        }
    }
}
