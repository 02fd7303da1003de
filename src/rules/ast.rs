//! The rule SQL syntax tree, as parsed (before names are resolved for a dialect), and
//! its printing: a statement prints as SQL that parses back to the same tree.

use std::fmt;

/// A statement: `SELECT` rows, or `FOREACH` element rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub kind: Kind,
    /// Topic filters (or `$events/...` sources), in order.
    pub from: Vec<String>,
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `SELECT fields`: one row per message.
    Select(Vec<Field>),
    /// `FOREACH list [AS var] [DO fields] [INCASE cond]`: one row per element.
    Foreach { list: Expr, var: Option<String>, fields: Vec<Field>, incase: Option<Expr> },
}

/// One selected field: `*`, or an expression with an optional (dotted) alias.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Star,
    Expr { expr: Expr, alias: Option<Vec<String>> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `[a, b]`
    Array(Vec<Expr>),
    /// A name and what follows it: `payload.a[1].b`.
    Path(String, Vec<Seg>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Call(String, Vec<Expr>),
    /// A step into a function's result: `get_thing_shadow(t).state.reported`.
    Get(Box<Expr>, Vec<Seg>),
}

/// A step into a value: a key, or an index.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(Expr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Match,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "OR",
            BinOp::And => "AND",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Match => "=~",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// A name that prints bare only if it parses back as the same name.
fn name(f: &mut fmt::Formatter<'_>, n: &str) -> fmt::Result {
    let bare = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !super::parser::is_reserved(n);
    if bare {
        f.write_str(n)
    } else {
        write!(f, "\"{}\"", n.replace('"', "\"\""))
    }
}

fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{x}")?;
    }
    Ok(())
}

impl fmt::Display for Expr {
    /// Fully parenthesised: precedence never decides how it parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Null => f.write_str("NULL"),
            Expr::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
            Expr::Int(i) => write!(f, "{i}"),
            Expr::Float(x) => write!(f, "{x:?}"),
            Expr::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Expr::Array(items) => {
                f.write_str("[")?;
                list(f, items)?;
                f.write_str("]")
            }
            Expr::Path(root, segs) => {
                name(f, root)?;
                segments(f, segs)
            }
            Expr::Get(e, segs) => {
                write!(f, "{e}")?;
                segments(f, segs)
            }
            Expr::Unary(UnOp::Neg, e) => write!(f, "-({e})"),
            Expr::Unary(UnOp::Not, e) => write!(f, "(NOT ({e}))"),
            Expr::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            Expr::In { expr, list: items, negated } => {
                write!(f, "({expr} {}IN (", if *negated { "NOT " } else { "" })?;
                list(f, items)?;
                f.write_str("))")
            }
            Expr::Case { operand, whens, otherwise } => {
                f.write_str("CASE")?;
                if let Some(o) = operand {
                    write!(f, " {o}")?;
                }
                for (w, t) in whens {
                    write!(f, " WHEN {w} THEN {t}")?;
                }
                if let Some(e) = otherwise {
                    write!(f, " ELSE {e}")?;
                }
                f.write_str(" END")
            }
            Expr::Call(n, args) if n == "cast" && args.len() == 2 => match &args[1] {
                Expr::Str(t) => {
                    write!(f, "CAST({} AS ", args[0])?;
                    name(f, t)?;
                    f.write_str(")")
                }
                other => write!(f, "CAST({}, {other})", args[0]),
            },
            Expr::Call(n, args) => {
                name(f, n)?;
                f.write_str("(")?;
                list(f, args)?;
                f.write_str(")")
            }
        }
    }
}

fn segments(f: &mut fmt::Formatter<'_>, segs: &[Seg]) -> fmt::Result {
    for s in segs {
        match s {
            Seg::Key(k) => {
                f.write_str(".")?;
                name(f, k)?;
            }
            Seg::Index(i) => write!(f, "[{i}]")?,
        }
    }
    Ok(())
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Star => f.write_str("*"),
            Field::Expr { expr, alias } => {
                write!(f, "{expr}")?;
                if let Some(a) = alias {
                    f.write_str(" AS ")?;
                    for (i, part) in a.iter().enumerate() {
                        if i > 0 {
                            f.write_str(".")?;
                        }
                        name(f, part)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Select(fields) => {
                f.write_str("SELECT ")?;
                list(f, fields)?;
            }
            Kind::Foreach { list: l, var, fields, incase } => {
                write!(f, "FOREACH {l}")?;
                if let Some(v) = var {
                    f.write_str(" AS ")?;
                    name(f, v)?;
                }
                if !fields.is_empty() {
                    f.write_str(" DO ")?;
                    list(f, fields)?;
                }
                if let Some(c) = incase {
                    write!(f, " INCASE {c}")?;
                }
            }
        }
        f.write_str(" FROM ")?;
        for (i, t) in self.from.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{}\"", t.replace('"', "\"\""))?;
        }
        if let Some(w) = &self.filter {
            write!(f, " WHERE {w}")?;
        }
        Ok(())
    }
}
