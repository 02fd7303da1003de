//! Shadow reserved topics, AWS IoT style:
//! `$aws/things/{thing}/shadow/{get|update|delete}` for the classic shadow and
//! `$aws/things/{thing}/shadow/name/{shadow}/{get|update|delete}` for named ones; replies
//! on the same topic plus `/accepted`, `/rejected`, `/delta` (update) and `/documents`.

/// A shadow request's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// A parsed request topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTopic {
    pub thing: String,
    /// `""` for the classic shadow.
    pub shadow: String,
    pub op: Op,
}

/// Longest thing name AWS IoT accepts.
pub const MAX_THING_NAME: usize = 128;
/// Longest shadow name AWS IoT accepts.
pub const MAX_SHADOW_NAME: usize = 64;

/// Thing and shadow names: letters, digits, `:`, `_` and `-` (AWS's rule).
pub fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// Whether `topic` is under a shadow's reserved prefix at all (requests and replies).
pub fn is_shadow_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$aws/things/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest == "shadow" || rest.starts_with("shadow/"))
}

/// Parses a request topic; `None` for anything else (replies included).
pub fn parse_request(topic: &str) -> Option<RequestTopic> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("shadow/")?;
    let (shadow, op) = match rest.strip_prefix("name/") {
        Some(named) => {
            let (shadow, op) = named.split_once('/')?;
            if !valid_name(shadow, MAX_SHADOW_NAME) {
                return None;
            }
            (shadow, op)
        }
        None => ("", rest),
    };
    let op = match op {
        "get" => Op::Get,
        "update" => Op::Update,
        "delete" => Op::Delete,
        _ => return None,
    };
    if !valid_name(thing, MAX_THING_NAME) {
        return None;
    }
    Some(RequestTopic { thing: thing.into(), shadow: shadow.into(), op })
}

impl RequestTopic {
    /// The request topic itself, e.g. `$aws/things/t/shadow/name/s/update`.
    pub fn base(&self) -> String {
        if self.shadow.is_empty() {
            format!("$aws/things/{}/shadow/{}", self.thing, self.op.as_str())
        } else {
            format!("$aws/things/{}/shadow/name/{}/{}", self.thing, self.shadow, self.op.as_str())
        }
    }

    /// A reply topic: the request topic plus `/accepted`, `/rejected`, `/delta` or
    /// `/documents`.
    pub fn reply(&self, kind: &str) -> String {
        format!("{}/{kind}", self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_and_named_requests_parse() {
        let t = parse_request("$aws/things/lamp-1/shadow/update").unwrap();
        assert_eq!((t.thing.as_str(), t.shadow.as_str(), t.op), ("lamp-1", "", Op::Update));
        assert_eq!(t.reply("accepted"), "$aws/things/lamp-1/shadow/update/accepted");
        let t = parse_request("$aws/things/lamp-1/shadow/name/cfg/get").unwrap();
        assert_eq!((t.shadow.as_str(), t.op), ("cfg", Op::Get));
        assert_eq!(t.reply("rejected"), "$aws/things/lamp-1/shadow/name/cfg/get/rejected");
        assert_eq!(parse_request("$aws/things/x/shadow/delete").unwrap().op, Op::Delete);
    }

    #[test]
    fn replies_and_bad_names_are_not_requests() {
        for t in [
            "$aws/things/x/shadow/update/accepted",
            "$aws/things/x/shadow/update/delta",
            "$aws/things/x/shadow/name//get",
            "$aws/things/x/shadow/name/a/b/get",
            "$aws/things/x y/shadow/get",
            "$aws/things//shadow/get",
            "$aws/things/x/jobs/get",
            "things/x/shadow/get",
            "$aws/things/x/shadow/patch",
        ] {
            assert_eq!(parse_request(t), None, "{t}");
        }
        assert!(is_shadow_topic("$aws/things/x/shadow/update/accepted"));
        assert!(!is_shadow_topic("$aws/things/x/jobs/notify"));
        assert!(!valid_name(&"a".repeat(129), MAX_THING_NAME));
    }
}
