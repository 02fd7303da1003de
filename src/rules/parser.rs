//! The rule SQL parser: a Pratt parser over [`super::lexer`] tokens for both dialects'
//! statements (`SELECT ... FROM ... [WHERE ...]`, `FOREACH ... [DO ...] [INCASE ...]
//! FROM ...`). Function names and their argument counts are checked here, so a rule
//! that names an unknown function is refused where it is written.

use super::ast::{BinOp, Expr, Field, Kind, Seg, Statement, UnOp};
use super::lexer::{lex, Tok, Token};
use super::{functions, RuleError};

/// Longest statement accepted, and deepest nesting of expressions.
pub const MAX_SQL: usize = 64 * 1024;
const MAX_DEPTH: usize = 64;

const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "IN", "CASE", "WHEN", "THEN", "ELSE",
    "END", "FOREACH", "DO", "INCASE", "TRUE", "FALSE", "NULL",
];

/// A keyword that cannot be a bare name.
pub fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|k| k.eq_ignore_ascii_case(word))
}

/// Parses one statement.
pub fn parse(sql: &str) -> Result<Statement, RuleError> {
    if sql.len() > MAX_SQL {
        return Err(RuleError::at(sql, MAX_SQL, format!("a rule is at most {MAX_SQL} bytes")));
    }
    let tokens = lex(sql)?;
    let mut p = Parser { sql, tokens, pos: 0, depth: 0 };
    let st = p.statement()?;
    p.expect_end()?;
    Ok(st)
}

/// Parses one expression (a template's `${...}`).
pub fn parse_expr(sql: &str) -> Result<Expr, RuleError> {
    let tokens = lex(sql)?;
    let mut p = Parser { sql, tokens, pos: 0, depth: 0 };
    let e = p.expr(0)?;
    p.expect_end()?;
    Ok(e)
}

struct Parser<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].kind
    }

    fn peek_at(&self, n: usize) -> &Tok {
        let i = (self.pos + n).min(self.tokens.len() - 1);
        &self.tokens[i].kind
    }

    fn here(&self) -> usize {
        self.tokens[self.pos].at
    }

    fn bump(&mut self) -> Tok {
        let t = self.tokens[self.pos].kind.clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn error<T>(&self, expected: &str) -> Result<T, RuleError> {
        Err(RuleError::syntax(self.sql, self.here(), expected, &self.peek().describe()))
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek().is_kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> Result<(), RuleError> {
        if self.eat(t) {
            Ok(())
        } else {
            self.error(what)
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), RuleError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            self.error(&format!("`{kw}`"))
        }
    }

    fn expect_end(&mut self) -> Result<(), RuleError> {
        if *self.peek() == Tok::End {
            Ok(())
        } else {
            self.error("the end of the statement")
        }
    }

    fn statement(&mut self) -> Result<Statement, RuleError> {
        let kind = if self.eat_kw("SELECT") {
            Kind::Select(self.fields()?)
        } else if self.eat_kw("FOREACH") {
            let list = self.expr(0)?;
            let var =
                if self.eat_kw("AS") { Some(self.name("a name for the element")?) } else { None };
            let fields = if self.eat_kw("DO") { self.fields()? } else { Vec::new() };
            let incase = if self.eat_kw("INCASE") { Some(self.expr(0)?) } else { None };
            Kind::Foreach { list, var, fields, incase }
        } else {
            return self.error("`SELECT` or `FOREACH`");
        };
        self.expect_kw("FROM")?;
        let mut from = vec![self.source()?];
        while self.eat(&Tok::Comma) {
            from.push(self.source()?);
        }
        let filter = if self.eat_kw("WHERE") { Some(self.expr(0)?) } else { None };
        Ok(Statement { kind, from, filter })
    }

    fn source(&mut self) -> Result<String, RuleError> {
        let at = self.here();
        let filter = match self.peek() {
            Tok::Str(s) | Tok::Quoted(s) => s.clone(),
            _ => return self.error("a topic filter in quotes"),
        };
        if !crate::mqtt::topic::valid_filter(&filter) {
            return Err(RuleError::at(
                self.sql,
                at,
                format!(
                    "{filter:?} is not a topic filter (`+` and `#` fill whole levels, `#` last)"
                ),
            ));
        }
        self.bump();
        Ok(filter)
    }

    fn fields(&mut self) -> Result<Vec<Field>, RuleError> {
        let mut out = vec![self.field()?];
        while self.eat(&Tok::Comma) {
            out.push(self.field()?);
        }
        Ok(out)
    }

    fn field(&mut self) -> Result<Field, RuleError> {
        if self.eat(&Tok::Star) {
            return Ok(Field::Star);
        }
        let expr = self.expr(0)?;
        let alias = if self.eat_kw("AS") {
            let mut parts = vec![self.name("a name after AS")?];
            while self.eat(&Tok::Dot) {
                parts.push(self.name("a name after `.`")?);
            }
            Some(parts)
        } else {
            None
        };
        Ok(Field::Expr { expr, alias })
    }

    /// A bare word that is not a keyword, or a quoted name.
    fn name(&mut self, what: &str) -> Result<String, RuleError> {
        match self.peek().clone() {
            Tok::Word(w) if !is_reserved(&w) => {
                self.bump();
                Ok(w)
            }
            Tok::Quoted(q) | Tok::Str(q) => {
                self.bump();
                Ok(q)
            }
            _ => self.error(what),
        }
    }

    /// An expression whose operators bind tighter than `min`.
    fn expr(&mut self, min: u8) -> Result<Expr, RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(RuleError::at(
                self.sql,
                self.here(),
                format!("expressions nest at most {MAX_DEPTH} deep"),
            ));
        }
        let mut left = self.prefix()?;
        loop {
            let (op, prec) = match self.peek() {
                t if t.is_kw("OR") => (Some(BinOp::Or), 1),
                t if t.is_kw("AND") => (Some(BinOp::And), 2),
                Tok::Eq => (Some(BinOp::Eq), 4),
                Tok::Ne => (Some(BinOp::Ne), 4),
                Tok::Lt => (Some(BinOp::Lt), 4),
                Tok::Le => (Some(BinOp::Le), 4),
                Tok::Gt => (Some(BinOp::Gt), 4),
                Tok::Ge => (Some(BinOp::Ge), 4),
                Tok::Match => (Some(BinOp::Match), 4),
                t if t.is_kw("IN") => (None, 4),
                t if t.is_kw("NOT") && self.peek_at(1).is_kw("IN") => (None, 4),
                Tok::Plus => (Some(BinOp::Add), 5),
                Tok::Minus => (Some(BinOp::Sub), 5),
                Tok::Star => (Some(BinOp::Mul), 6),
                Tok::Slash => (Some(BinOp::Div), 6),
                Tok::Percent => (Some(BinOp::Mod), 6),
                _ => break,
            };
            if prec <= min {
                break;
            }
            match op {
                Some(op) => {
                    self.bump();
                    let right = self.expr(prec)?;
                    left = Expr::Binary(op, Box::new(left), Box::new(right));
                }
                None => {
                    let negated = self.eat_kw("NOT");
                    self.expect_kw("IN")?;
                    if *self.peek() != Tok::LParen {
                        // AWS: membership in an array value.
                        let array = self.expr(prec)?;
                        left = Expr::In { expr: Box::new(left), list: vec![array], negated };
                        continue;
                    }
                    self.expect(&Tok::LParen, "`(` starting the IN list")?;
                    let mut items = vec![self.expr(0)?];
                    while self.eat(&Tok::Comma) {
                        items.push(self.expr(0)?);
                    }
                    self.expect(&Tok::RParen, "`,` or `)` ending the IN list")?;
                    left = Expr::In { expr: Box::new(left), list: items, negated };
                }
            }
        }
        self.depth -= 1;
        Ok(left)
    }

    fn prefix(&mut self) -> Result<Expr, RuleError> {
        let at = self.here();
        match self.peek().clone() {
            Tok::Int(i) => {
                self.bump();
                Ok(Expr::Int(i))
            }
            Tok::Float(x) => {
                self.bump();
                Ok(Expr::Float(x))
            }
            Tok::Str(s) | Tok::Quoted(s) => {
                self.bump();
                Ok(Expr::Str(s))
            }
            Tok::Minus => {
                self.bump();
                match self.peek().clone() {
                    Tok::Int(i) => {
                        self.bump();
                        Ok(i.checked_neg().map(Expr::Int).unwrap_or(Expr::Float(-(i as f64))))
                    }
                    Tok::Float(x) => {
                        self.bump();
                        Ok(Expr::Float(-x))
                    }
                    _ => Ok(Expr::Unary(UnOp::Neg, Box::new(self.expr(6)?))),
                }
            }
            Tok::LParen => {
                self.bump();
                let e = self.expr(0)?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::LBracket => {
                self.bump();
                let mut items = Vec::new();
                if !self.eat(&Tok::RBracket) {
                    items.push(self.expr(0)?);
                    while self.eat(&Tok::Comma) {
                        items.push(self.expr(0)?);
                    }
                    self.expect(&Tok::RBracket, "`,` or `]`")?;
                }
                Ok(Expr::Array(items))
            }
            Tok::Word(w) => {
                if w.eq_ignore_ascii_case("TRUE") || w.eq_ignore_ascii_case("FALSE") {
                    self.bump();
                    return Ok(Expr::Bool(w.eq_ignore_ascii_case("TRUE")));
                }
                if w.eq_ignore_ascii_case("NULL") {
                    self.bump();
                    return Ok(Expr::Null);
                }
                if w.eq_ignore_ascii_case("NOT") {
                    self.bump();
                    return Ok(Expr::Unary(UnOp::Not, Box::new(self.expr(3)?)));
                }
                if w.eq_ignore_ascii_case("CASE") {
                    self.bump();
                    return self.case();
                }
                if is_reserved(&w) {
                    return self.error("a value, a name or a function call");
                }
                self.bump();
                if w.eq_ignore_ascii_case("CAST")
                    && self.peek_at(1) != &Tok::RParen
                    && self.eat(&Tok::LParen)
                {
                    // AWS: CAST(expr AS type); also cast(expr, 'type').
                    let e = self.expr(0)?;
                    let ty = if self.eat_kw("AS") {
                        Expr::Str(self.name("a type (Int, Decimal, String, Boolean)")?)
                    } else {
                        self.expect(&Tok::Comma, "`AS` and a type")?;
                        self.expr(0)?
                    };
                    self.expect(&Tok::RParen, "`)` ending CAST")?;
                    return Ok(Expr::Call("cast".into(), vec![e, ty]));
                }
                if self.eat(&Tok::LParen) {
                    let call = self.call(w, at)?;
                    let segs = self.segments()?;
                    return Ok(if segs.is_empty() {
                        call
                    } else {
                        Expr::Get(Box::new(call), segs)
                    });
                }
                self.path(w)
            }
            _ => self.error("a value, a name or a function call"),
        }
    }

    fn call(&mut self, name: String, at: usize) -> Result<Expr, RuleError> {
        let mut args = Vec::new();
        if !self.eat(&Tok::RParen) {
            args.push(self.expr(0)?);
            while self.eat(&Tok::Comma) {
                args.push(self.expr(0)?);
            }
            self.expect(&Tok::RParen, "`,` or `)` ending the arguments")?;
        }
        let lower = name.to_ascii_lowercase();
        let Some((min, max)) = functions::arity(&lower) else {
            return Err(RuleError::at(self.sql, at, format!("unknown function `{name}`")));
        };
        if args.len() < min || args.len() > max {
            let takes = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            return Err(RuleError::at(
                self.sql,
                at,
                format!("`{name}` takes {takes} arguments, not {}", args.len()),
            ));
        }
        Ok(Expr::Call(lower, args))
    }

    fn path(&mut self, root: String) -> Result<Expr, RuleError> {
        Ok(Expr::Path(root, self.segments()?))
    }

    /// `.key` and `[index]` steps, as many as follow.
    fn segments(&mut self) -> Result<Vec<Seg>, RuleError> {
        let mut segs = Vec::new();
        loop {
            if self.eat(&Tok::Dot) {
                let key = match self.peek().clone() {
                    Tok::Word(w) => w,
                    Tok::Str(s) | Tok::Quoted(s) => s,
                    Tok::Int(i) => i.to_string(),
                    _ => return self.error("a key after `.`"),
                };
                self.bump();
                segs.push(Seg::Key(key));
            } else if self.eat(&Tok::LBracket) {
                let i = self.expr(0)?;
                self.expect(&Tok::RBracket, "`]`")?;
                segs.push(Seg::Index(i));
            } else {
                return Ok(segs);
            }
        }
    }

    fn case(&mut self) -> Result<Expr, RuleError> {
        let operand = if self.peek().is_kw("WHEN") { None } else { Some(Box::new(self.expr(0)?)) };
        let mut whens = Vec::new();
        while self.eat_kw("WHEN") {
            let w = self.expr(0)?;
            self.expect_kw("THEN")?;
            whens.push((w, self.expr(0)?));
        }
        if whens.is_empty() {
            return self.error("`WHEN`");
        }
        let otherwise = if self.eat_kw("ELSE") { Some(Box::new(self.expr(0)?)) } else { None };
        self.expect_kw("END")?;
        Ok(Expr::Case { operand, whens, otherwise })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sql: &str) -> Statement {
        parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn err(sql: &str) -> String {
        parse(sql).unwrap_err().to_string()
    }

    #[test]
    fn select_with_aliases_sources_and_where() {
        let st = p(r#"SELECT payload.msg AS msg, clientid, * FROM "t/#", 'a/+' WHERE qos > 0"#);
        assert_eq!(st.from, vec!["t/#", "a/+"]);
        let Kind::Select(fields) = &st.kind else { panic!() };
        assert_eq!(fields.len(), 3);
        assert_eq!(
            fields[0],
            Field::Expr {
                expr: Expr::Path("payload".into(), vec![Seg::Key("msg".into())]),
                alias: Some(vec!["msg".into()])
            }
        );
        assert_eq!(fields[2], Field::Star);
        assert!(matches!(st.filter, Some(Expr::Binary(BinOp::Gt, _, _))));
    }

    #[test]
    fn precedence() {
        let st = p("SELECT 1 + 2 * 3 AS x FROM 't' WHERE a = 1 OR b = 2 AND NOT c = 3");
        assert_eq!(
            st.to_string(),
            "SELECT (1 + (2 * 3)) AS x FROM \"t\" WHERE ((a = 1) OR ((b = 2) AND (NOT ((c = 3)))))"
        );
        let st = p("SELECT -x * 2, - 3 FROM 't' WHERE a NOT IN (1, 2) AND t =~ 'a/#'");
        assert_eq!(
            st.to_string(),
            "SELECT (-(x) * 2), -3 FROM \"t\" WHERE ((a NOT IN (1, 2)) AND (t =~ 'a/#'))"
        );
    }

    #[test]
    fn foreach_case_and_paths() {
        let st = p("FOREACH payload.sensors AS s DO s.name AS name, s.idx AS idx \
                    INCASE s.idx >= 1 FROM \"t/#\"");
        let Kind::Foreach { var, fields, incase, .. } = &st.kind else { panic!() };
        assert_eq!(var.as_deref(), Some("s"));
        assert_eq!(fields.len(), 2);
        assert!(incase.is_some());
        let st = p("SELECT CASE WHEN payload.x < 0 THEN 0 ELSE payload.x END AS x, \
                    pub_props.'User-Property'.foo AS f, payload.arr[1] FROM 't'");
        assert!(st.to_string().contains("pub_props.\"User-Property\".foo"), "{st}");
        assert!(st.to_string().contains("payload.arr[1]"), "{st}");
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        assert_eq!(
            err("SELEC a FROM 't'"),
            "line 1, column 1: expected `SELECT` or `FOREACH`, found `SELEC`"
        );
        assert_eq!(err("SELECT a 't'"), "line 1, column 10: expected `FROM`, found string 't'");
        assert_eq!(
            err("SELECT a FROM t"),
            "line 1, column 15: expected a topic filter in quotes, found `t`"
        );
        assert_eq!(
            err("SELECT a,\n  nope(1) FROM 't'"),
            "line 2, column 3: unknown function `nope`"
        );
        assert_eq!(
            err("SELECT upper() FROM 't'"),
            "line 1, column 8: `upper` takes 1 arguments, not 0"
        );
        assert_eq!(
            err("SELECT a FROM 't/#/x'"),
            "line 1, column 15: \"t/#/x\" is not a topic filter (`+` and `#` fill whole levels, `#` last)"
        );
        assert_eq!(err("SELECT (a FROM 't'"), "line 1, column 11: expected `)`, found `FROM`");
        assert_eq!(err("SELECT a FROM 't' WHERE"), "line 1, column 24: expected a value, a name or a function call, found the end of the statement");
        assert_eq!(
            err("SELECT a FROM 't' x"),
            "line 1, column 19: expected the end of the statement, found `x`"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("SELECT {}1{} FROM 't'", "(".repeat(200), ")".repeat(200));
        assert!(err(&deep).contains("nest at most"));
        let long = format!("SELECT '{}' FROM 't'", "x".repeat(MAX_SQL));
        assert!(err(&long).contains("at most"));
    }

    mod round_trip {
        use super::super::parse;
        use crate::rules::ast::{BinOp, Expr, Field, Kind, Seg, Statement, UnOp};
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            "[a-z_][a-z0-9_]{0,6}".prop_filter("not a keyword", |n| !super::super::is_reserved(n))
        }

        fn leaf() -> impl Strategy<Value = Expr> {
            prop_oneof![
                Just(Expr::Null),
                any::<bool>().prop_map(Expr::Bool),
                (0i64..1_000_000).prop_map(Expr::Int),
                (0u32..1_000_000).prop_map(|x| Expr::Float(f64::from(x) / 8.0 + 0.125)),
                "[a-z ']{0,8}".prop_map(Expr::Str),
                (
                    name(),
                    prop::collection::vec(
                        prop_oneof![
                            "[A-Za-z0-9' -]{1,6}".prop_map(Seg::Key),
                            (0i64..5).prop_map(|i| Seg::Index(Expr::Int(i))),
                        ],
                        0..3,
                    )
                )
                    .prop_map(|(r, s)| Expr::Path(r, s)),
            ]
        }

        fn expr() -> impl Strategy<Value = Expr> {
            let ops = [
                BinOp::Or,
                BinOp::And,
                BinOp::Eq,
                BinOp::Ne,
                BinOp::Lt,
                BinOp::Le,
                BinOp::Gt,
                BinOp::Ge,
                BinOp::Match,
                BinOp::Add,
                BinOp::Sub,
                BinOp::Mul,
                BinOp::Div,
                BinOp::Mod,
            ];
            leaf().prop_recursive(4, 32, 3, move |inner| {
                prop_oneof![
                    inner.clone().prop_map(|e| Expr::Unary(UnOp::Neg, Box::new(e))),
                    inner.clone().prop_map(|e| Expr::Unary(UnOp::Not, Box::new(e))),
                    (prop::sample::select(ops.to_vec()), inner.clone(), inner.clone())
                        .prop_map(|(op, a, b)| Expr::Binary(op, Box::new(a), Box::new(b))),
                    (inner.clone(), prop::collection::vec(inner.clone(), 1..3), any::<bool>())
                        .prop_map(|(e, list, negated)| Expr::In {
                            expr: Box::new(e),
                            list,
                            negated
                        }),
                    (
                        prop::option::of(inner.clone()),
                        prop::collection::vec((inner.clone(), inner.clone()), 1..3),
                        prop::option::of(inner.clone()),
                    )
                        .prop_map(|(o, whens, e)| Expr::Case {
                            operand: o.map(Box::new),
                            whens,
                            otherwise: e.map(Box::new),
                        }),
                    prop::collection::vec(inner.clone(), 1..3)
                        .prop_map(|a| Expr::Call("concat".into(), a)),
                    (inner.clone(), "[a-z]{1,4}").prop_map(|(a, k)| Expr::Get(
                        Box::new(Expr::Call("json_decode".into(), vec![a])),
                        vec![Seg::Key(k), Seg::Index(Expr::Int(0))]
                    )),
                    prop::collection::vec(inner, 0..3).prop_map(Expr::Array),
                ]
            })
        }

        fn statement() -> impl Strategy<Value = Statement> {
            let field = prop_oneof![
                1 => Just(Field::Star),
                4 => (expr(), prop::option::of(prop::collection::vec("[a-zA-Z_ ]{1,5}", 1..3)))
                    .prop_map(|(expr, alias)| Field::Expr { expr, alias }),
            ];
            (
                prop::collection::vec(field, 1..4),
                prop::collection::vec("[a-z$]{1,4}(/([a-z]{1,3}|[+])){0,2}(/#)?", 1..3),
                prop::option::of(expr()),
            )
                .prop_map(|(fields, from, filter)| Statement {
                    kind: Kind::Select(fields),
                    from,
                    filter,
                })
        }

        proptest! {
            #[test]
            fn printed_statements_parse_back_to_the_same_tree(st in statement()) {
                let sql = st.to_string();
                let back = parse(&sql).map_err(|e| TestCaseError::fail(format!("{sql}: {e}")))?;
                prop_assert_eq!(back, st, "{}", sql);
            }
        }
    }
}
