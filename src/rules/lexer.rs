//! The rule SQL lexer: turns a statement into tokens with their byte offsets. Both
//! dialects share it: single quotes delimit strings (`''` escapes a quote), double quotes
//! delimit names and topic filters (EMQX's `FROM "t/#"`), `--` and `/* */` are comments.

use super::RuleError;

/// One token and where it starts (a byte offset into the statement).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: Tok,
    pub at: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A bare word: a keyword (matched without case) or a name.
    Word(String),
    /// `'...'`
    Str(String),
    /// `"..."`
    Quoted(String),
    Int(i64),
    Float(f64),
    Comma,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `=~`: topic matches filter.
    Match,
    End,
}

impl Tok {
    /// How the token is named in an error ("expected X, found Y").
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Quoted(s) => format!("\"{s}\""),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::End => "the end of the statement".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::Comma => ",",
            Tok::Dot => ".",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Star => "*",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Eq => "=",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Match => "=~",
            _ => "?",
        }
    }

    /// A bare word equal to `kw`, without case.
    pub fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// Splits `sql` into tokens, ending with [`Tok::End`].
pub fn lex(sql: &str) -> Result<Vec<Token>, RuleError> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let at = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let Some(end) = sql[i + 2..].find("*/") else {
                    return Err(RuleError::syntax(sql, at, "`*/` closing the comment", "the end"));
                };
                i += 2 + end + 2;
            }
            b'\'' | b'"' => {
                let (text, next) = quoted(sql, i, c)?;
                out.push(Token {
                    kind: if c == b'\'' { Tok::Str(text) } else { Tok::Quoted(text) },
                    at,
                });
                i = next;
            }
            b'0'..=b'9' => {
                let (kind, next) = number(sql, i)?;
                out.push(Token { kind, at });
                i = next;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                {
                    i += 1;
                }
                out.push(Token { kind: Tok::Word(sql[start..i].to_string()), at });
            }
            _ => {
                let two = b.get(i + 1).copied();
                let (kind, len) = match (c, two) {
                    (b'=', Some(b'~')) => (Tok::Match, 2),
                    (b'!', Some(b'=')) | (b'<', Some(b'>')) => (Tok::Ne, 2),
                    (b'<', Some(b'=')) => (Tok::Le, 2),
                    (b'>', Some(b'=')) => (Tok::Ge, 2),
                    (b'=', Some(b'=')) => (Tok::Eq, 2),
                    (b'=', _) => (Tok::Eq, 1),
                    (b'<', _) => (Tok::Lt, 1),
                    (b'>', _) => (Tok::Gt, 1),
                    (b',', _) => (Tok::Comma, 1),
                    (b'.', _) => (Tok::Dot, 1),
                    (b'(', _) => (Tok::LParen, 1),
                    (b')', _) => (Tok::RParen, 1),
                    (b'[', _) => (Tok::LBracket, 1),
                    (b']', _) => (Tok::RBracket, 1),
                    (b'*', _) => (Tok::Star, 1),
                    (b'+', _) => (Tok::Plus, 1),
                    (b'-', _) => (Tok::Minus, 1),
                    (b'/', _) => (Tok::Slash, 1),
                    (b'%', _) => (Tok::Percent, 1),
                    _ => {
                        let found = sql[i..].chars().next().unwrap_or('?');
                        return Err(RuleError::syntax(
                            sql,
                            at,
                            "a name, a value or an operator",
                            &format!("`{found}`"),
                        ));
                    }
                };
                out.push(Token { kind, at });
                i += len;
            }
        }
    }
    out.push(Token { kind: Tok::End, at: sql.len() });
    Ok(out)
}

/// A quoted string or name starting at `i`; a doubled quote stands for itself.
fn quoted(sql: &str, i: usize, q: u8) -> Result<(String, usize), RuleError> {
    let b = sql.as_bytes();
    let mut text = String::new();
    let mut j = i + 1;
    let mut from = j;
    loop {
        match b.get(j) {
            None => {
                let what =
                    if q == b'\'' { "`'` closing the string" } else { "`\"` closing the name" };
                return Err(RuleError::syntax(sql, i, what, "the end"));
            }
            Some(&c) if c == q => {
                text.push_str(&sql[from..j]);
                if b.get(j + 1) == Some(&q) {
                    text.push(q as char);
                    j += 2;
                    from = j;
                } else {
                    return Ok((text, j + 1));
                }
            }
            Some(_) => j += 1,
        }
    }
}

/// An integer or a decimal (with an optional exponent) starting at `i`.
fn number(sql: &str, i: usize) -> Result<(Tok, usize), RuleError> {
    let b = sql.as_bytes();
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let mut float = false;
    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        float = true;
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let mut k = j + 1;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        if b.get(k).is_some_and(u8::is_ascii_digit) {
            float = true;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        }
    }
    let text = &sql[i..j];
    let kind = if float {
        text.parse().map(Tok::Float).ok()
    } else {
        text.parse().map(Tok::Int).ok().or_else(|| text.parse().map(Tok::Float).ok())
    };
    match kind {
        Some(Tok::Float(x)) if !x.is_finite() => {
            Err(RuleError::syntax(sql, i, "a number in range", &format!("`{text}`")))
        }
        Some(k) => Ok((k, j)),
        None => Err(RuleError::syntax(sql, i, "a number", &format!("`{text}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<Tok> {
        lex(sql).unwrap().into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn tokens_with_offsets() {
        let t = lex("SELECT a.b FROM \"t/#\"").unwrap();
        assert_eq!(t[0], Token { kind: Tok::Word("SELECT".into()), at: 0 });
        assert_eq!(t[2], Token { kind: Tok::Dot, at: 8 });
        assert_eq!(t[5], Token { kind: Tok::Quoted("t/#".into()), at: 16 });
        assert_eq!(t[6].kind, Tok::End);
    }

    #[test]
    fn strings_numbers_operators_and_comments() {
        assert_eq!(
            kinds("'it''s' 12 1.5 2e3 =~ <> != <= -- to the end\n/* block */ >="),
            vec![
                Tok::Str("it's".into()),
                Tok::Int(12),
                Tok::Float(1.5),
                Tok::Float(2000.0),
                Tok::Match,
                Tok::Ne,
                Tok::Ne,
                Tok::Le,
                Tok::Ge,
                Tok::End
            ]
        );
        // Too big for an integer: a decimal.
        assert_eq!(kinds("99999999999999999999")[0], Tok::Float(1e20));
        assert!(lex("1e999").unwrap_err().to_string().contains("a number in range"));
    }

    #[test]
    fn errors_point_at_the_offending_character() {
        let e = lex("SELECT a FROM 't/#").unwrap_err();
        assert!(e.to_string().contains("line 1, column 15"), "{e}");
        let e = lex("SELECT a ? b").unwrap_err();
        assert!(e.to_string().contains("column 10"), "{e}");
        assert!(e.to_string().contains("`?`"), "{e}");
    }
}
