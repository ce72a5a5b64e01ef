//! Text helpers of the offline provider: words, tokens, phrase matching, sentences.

/// Words that never count as overlap between a question and a knowledge line.
pub(super) const STOPWORDS: &[&str] = &[
    "the", "and", "for", "you", "your", "with", "what", "how", "can", "are", "was", "this", "that",
    "have", "from", "does", "not", "but", "all", "any", "our", "its", "who", "why", "when",
    "where", "which", "will", "would", "there", "their", "about", "into", "than", "then", "them",
    "they", "been", "has", "had", "did", "get", "got", "may", "please",
];

/// Lower-cased runs of letters and digits.
pub(super) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// True when the words of `phrase` (a name such as `lookup-order`: `-`, `_` and spaces all
/// separate words) appear consecutively among `text_words`.
pub(super) fn mentions(text_words: &[String], phrase: &str) -> bool {
    let phrase = words(phrase);
    !phrase.is_empty()
        && text_words
            .windows(phrase.len())
            .any(|window| window == phrase.as_slice())
}

/// Whitespace-separated tokens with surrounding punctuation removed.
pub(super) fn tokens(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .map(|t| t.trim_matches(|c: char| ".,;:!?()[]{}<>\"'`#*".contains(c)))
        .filter(|t| !t.is_empty())
        .collect()
}

/// Looks like an identifier: at least one digit, and only ASCII letters, digits, `-`, `_`,
/// `.` (`A-1001`, `ord_42`, `1001`).
pub(super) fn is_id_like(token: &str) -> bool {
    token.chars().any(|c| c.is_ascii_digit())
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The first sentence of `text` (up to and including the first `.`, `!` or `?` followed by
/// whitespace or the end), with runs of whitespace collapsed, at most 200 characters.
pub(super) fn first_sentence(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = collapsed.len();
    let mut chars = collapsed.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|(_, next)| *next == ' ') {
            end = i + c.len_utf8();
            break;
        }
    }
    let sentence = &collapsed[..end];
    if sentence.chars().count() > 200 {
        let cut: String = sentence.chars().take(200).collect();
        format!("{cut}…")
    } else {
        sentence.to_owned()
    }
}

/// The balanced `{...}` starting at the beginning of `text` (string literals respected), or
/// everything to the end when it never closes.
pub(super) fn balanced_object(text: &str) -> &str {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &text[..=i];
                }
            }
            _ => {}
        }
    }
    text
}

/// A 64-bit FNV-1a hash, for deterministic ids.
pub(super) fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrase_matching() {
        let text = words("Please LOOKUP-order A-1001, thanks");
        assert!(mentions(&text, "lookup-order"));
        assert!(mentions(&words("can you lookup order a-1"), "lookup-order"));
        assert!(!mentions(&words("look up the order"), "lookup-order"));
        assert!(!mentions(&text, ""));
    }

    #[test]
    fn tokens_and_ids() {
        assert_eq!(tokens("order (A-1001)! now."), ["order", "A-1001", "now"]);
        assert!(is_id_like("A-1001") && is_id_like("42") && !is_id_like("order"));
        assert!(!is_id_like("a/1"));
    }

    #[test]
    fn sentences() {
        assert_eq!(
            first_sentence("Where is\n my order? It is late."),
            "Where is my order?"
        );
        assert_eq!(first_sentence("Version 1.2 is out"), "Version 1.2 is out");
        assert_eq!(first_sentence(&"x".repeat(300)).chars().count(), 201);
    }

    #[test]
    fn balanced_objects() {
        assert_eq!(
            balanced_object(r#"{"a":{"b":"}"}} tail"#),
            r#"{"a":{"b":"}"}}"#
        );
        assert_eq!(balanced_object("{open"), "{open");
    }
}
