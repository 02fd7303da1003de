//! Topic name and topic filter rules (spec 4.7), shared subscriptions (`$share/{group}/...`),
//! and a reference matcher used by tests and by the retained store.

use super::decode::DecodeError;

/// Longest topic we accept, in bytes (the two-byte length limit).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// A topic name used in PUBLISH: non-empty, no wildcards.
pub fn validate_name(t: &str) -> Result<(), DecodeError> {
    if t.is_empty() || t.len() > MAX_TOPIC_LEN || t.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid);
    }
    Ok(())
}

/// A topic filter used in SUBSCRIBE/UNSUBSCRIBE: non-empty; `+` fills a whole level; `#`
/// fills a whole level and is last.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > MAX_TOPIC_LEN {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// A shared subscription filter split into its group and the filter it shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// Errors of a `$share/...` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidShare;

/// Splits `$share/{group}/{filter}`. `Ok(None)` for an ordinary filter.
pub fn parse_shared(f: &str) -> Result<Option<Shared<'_>>, InvalidShare> {
    let Some(rest) = f.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, filter) = rest.split_once('/').ok_or(InvalidShare)?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_filter(filter) {
        return Err(InvalidShare);
    }
    Ok(Some(Shared { group, filter }))
}

/// Whether `filter` has a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Reference matcher: does `filter` match `topic`? Filters starting with a wildcard do not
/// match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##", "#/a"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("a/+").is_err());
        assert!(validate_name("#").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+", ""));
        assert!(matches("a//b", "a//b"));
    }

    #[test]
    fn shared() {
        assert_eq!(
            parse_shared("$share/g/a/+").unwrap(),
            Some(Shared { group: "g", filter: "a/+" })
        );
        assert!(parse_shared("$share/g").is_err());
        assert!(parse_shared("$share//a").is_err());
        assert!(parse_shared("$share/g+/a").is_err());
        assert_eq!(parse_shared("a/b").unwrap(), None);
    }
}
