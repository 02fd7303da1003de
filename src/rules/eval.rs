//! Rule plans and their evaluation. A plan is the statement with every name resolved for
//! its dialect (a message column, a payload path, a SELECT alias, the FOREACH element)
//! and every function bound, so evaluating does no lookups by name.

use super::ast::{BinOp, Expr, Field, Kind, Seg, Statement, UnOp};
use super::functions::{self, Cx, Func};
use super::value::Value;
use super::{Dialect, Input, RuleError};

/// A compiled statement.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dialect: Dialect,
    pub from: Vec<String>,
    kind: PlanKind,
    filter: Option<Node>,
}

#[derive(Debug, Clone)]
enum PlanKind {
    /// One expression (a template's substitution).
    Expr(Node),
    Select(Vec<Out>),
    Foreach {
        list: Node,
        var: String,
        fields: Vec<Out>,
        incase: Option<Node>,
    },
}

#[derive(Debug, Clone)]
enum Out {
    Star,
    Field { node: Node, name: Vec<String> },
}

#[derive(Debug, Clone)]
enum Node {
    Const(Value),
    Array(Vec<Node>),
    /// A message or event column (EMQX: `clientid`, `payload`, `pub_props`, ...).
    Column(String),
    /// A path into the decoded payload (EMQX `payload.a`, AWS `a`).
    Payload(Vec<Step>),
    /// A field the SELECT computed (EMQX's WHERE sees aliases; a dotted alias is a
    /// path into it).
    Alias(String),
    /// The FOREACH element.
    Var,
    /// A template's name: the output row's field, else the message column.
    RowFirst(String),
    Get(Box<Node>, Vec<Step>),
    Unary(UnOp, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    In {
        expr: Box<Node>,
        list: Vec<Node>,
        negated: bool,
    },
    Case {
        operand: Option<Box<Node>>,
        whens: Vec<(Node, Node)>,
        otherwise: Option<Box<Node>>,
    },
    Call(&'static str, Func, Vec<Node>),
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(Node),
}

/// Names in scope while planning an expression.
#[derive(Clone, Copy)]
struct Scope<'s> {
    var: Option<&'s str>,
    aliases: &'s [Vec<String>],
}

const NO_SCOPE: Scope<'static> = Scope { var: None, aliases: &[] };

impl Plan {
    /// A standalone expression, as in an action template: in the EMQX dialect names are
    /// looked up in the output row first.
    pub fn expression(sql: &str, dialect: Dialect) -> Result<Plan, RuleError> {
        let e = super::parser::parse_expr(sql)?;
        let p = Planner { dialect, row_first: true };
        let node = p.node(&e, NO_SCOPE);
        Ok(Plan { dialect, from: Vec::new(), kind: PlanKind::Expr(node), filter: None })
    }

    /// Evaluates an expression plan against an output row.
    pub fn eval_in_row(&self, row: &Value, input: &Input<'_>) -> Result<Value, RuleError> {
        let cx = Cx { dialect: self.dialect, input };
        let env = Env { cx: &cx, row: Some(row), var: None };
        match &self.kind {
            PlanKind::Expr(n) => env.eval(n),
            _ => Ok(Value::Undefined),
        }
    }

    pub fn new(st: &Statement, dialect: Dialect) -> Plan {
        let p = Planner { dialect, row_first: false };
        let (kind, filter) = match &st.kind {
            Kind::Select(fields) => {
                let outs: Vec<Out> = fields.iter().map(|f| p.out(f, NO_SCOPE)).collect();
                // EMQX evaluates SELECT first: its WHERE sees the aliases.
                let aliases: Vec<Vec<String>> = match dialect {
                    Dialect::Emqx => fields
                        .iter()
                        .filter_map(|f| match f {
                            Field::Expr { alias: Some(a), .. } => Some(a.clone()),
                            _ => None,
                        })
                        .collect(),
                    Dialect::Aws => Vec::new(),
                };
                let scope = Scope { var: None, aliases: &aliases };
                let filter = st.filter.as_ref().map(|w| p.node(w, scope));
                (PlanKind::Select(outs), filter)
            }
            Kind::Foreach { list, var, fields, incase } => {
                let var = var.clone().unwrap_or_else(|| "item".into());
                let scope = Scope { var: Some(&var), aliases: &[] };
                let kind = PlanKind::Foreach {
                    list: p.node(list, NO_SCOPE),
                    fields: fields.iter().map(|f| p.out(f, scope)).collect(),
                    incase: incase.as_ref().map(|c| p.node(c, scope)),
                    var: var.clone(),
                };
                (kind, st.filter.as_ref().map(|w| p.node(w, NO_SCOPE)))
            }
        };
        Plan { dialect, from: st.from.clone(), kind, filter }
    }

    pub fn eval(&self, input: &Input<'_>) -> Result<Vec<Value>, RuleError> {
        let cx = Cx { dialect: self.dialect, input };
        let env = Env { cx: &cx, row: None, var: None };
        match &self.kind {
            PlanKind::Expr(n) => Ok(vec![env.eval(n)?]),
            PlanKind::Select(outs) => {
                if self.dialect == Dialect::Aws && !self.passes(&env)? {
                    return Ok(Vec::new());
                }
                let row = env.row(outs)?;
                if self.dialect == Dialect::Emqx {
                    let env = Env { row: Some(&row), ..env };
                    if !self.passes(&env)? {
                        return Ok(Vec::new());
                    }
                }
                Ok(vec![row])
            }
            PlanKind::Foreach { list, var, fields, incase } => {
                if !self.passes(&env)? {
                    return Ok(Vec::new());
                }
                let Value::Array(items) = env.eval(list)? else { return Ok(Vec::new()) };
                let mut rows = Vec::with_capacity(items.len());
                for item in &items {
                    let env = Env { var: Some(item), ..env };
                    if let Some(c) = incase {
                        if !env.eval(c)?.truthy() {
                            continue;
                        }
                    }
                    if fields.is_empty() {
                        rows.push(match item {
                            Value::Object(_) => item.clone(),
                            v => Value::Object(vec![(var.clone(), v.clone())]),
                        });
                    } else {
                        rows.push(env.row(fields)?);
                    }
                }
                Ok(rows)
            }
        }
    }

    fn passes(&self, env: &Env<'_, '_, '_>) -> Result<bool, RuleError> {
        match &self.filter {
            Some(f) => Ok(env.eval(f)?.truthy()),
            None => Ok(true),
        }
    }
}

struct Planner {
    dialect: Dialect,
    /// Bare names read the output row first (templates, EMQX dialect).
    row_first: bool,
}

impl Planner {
    fn out(&self, f: &Field, scope: Scope<'_>) -> Out {
        match f {
            Field::Star => Out::Star,
            Field::Expr { expr, alias } => {
                let name = alias.clone().unwrap_or_else(|| self.default_name(expr));
                Out::Field { node: self.node(expr, scope), name }
            }
        }
    }

    /// The output key of an unaliased field: EMQX nests a path's keys
    /// (`payload.a.b` -> `{"payload": {"a": {"b": ..}}}`), AWS keeps its last key;
    /// anything else is keyed by its text.
    fn default_name(&self, e: &Expr) -> Vec<String> {
        if let Expr::Path(root, segs) = e {
            let keys: Option<Vec<String>> = segs
                .iter()
                .map(|s| match s {
                    Seg::Key(k) => Some(k.clone()),
                    Seg::Index(_) => None,
                })
                .collect();
            if let Some(keys) = keys {
                return match self.dialect {
                    Dialect::Emqx => std::iter::once(root.clone()).chain(keys).collect(),
                    Dialect::Aws => vec![keys.last().unwrap_or(root).clone()],
                };
            }
        }
        vec![e.to_string()]
    }

    fn steps(&self, segs: &[Seg], scope: Scope<'_>) -> Vec<Step> {
        segs.iter()
            .map(|s| match s {
                Seg::Key(k) => Step::Key(k.clone()),
                Seg::Index(i) => Step::Index(self.node(i, scope)),
            })
            .collect()
    }

    fn node(&self, e: &Expr, scope: Scope<'_>) -> Node {
        let b = |e: &Expr| Box::new(self.node(e, scope));
        match e {
            Expr::Null => Node::Const(Value::Null),
            Expr::Bool(v) => Node::Const(Value::Bool(*v)),
            Expr::Int(i) => Node::Const(Value::Int(*i)),
            Expr::Float(x) => Node::Const(Value::Float(*x)),
            Expr::Str(s) => Node::Const(Value::Str(s.clone())),
            Expr::Array(items) => Node::Array(items.iter().map(|i| self.node(i, scope)).collect()),
            Expr::Path(root, segs) => self.path(root, segs, scope),
            Expr::Unary(op, a) => Node::Unary(*op, b(a)),
            Expr::Binary(op, l, r) => Node::Binary(*op, b(l), b(r)),
            Expr::In { expr, list, negated } => Node::In {
                expr: b(expr),
                list: list.iter().map(|i| self.node(i, scope)).collect(),
                negated: *negated,
            },
            Expr::Case { operand, whens, otherwise } => Node::Case {
                operand: operand.as_deref().map(b),
                whens: whens
                    .iter()
                    .map(|(w, t)| (self.node(w, scope), self.node(t, scope)))
                    .collect(),
                otherwise: otherwise.as_deref().map(b),
            },
            Expr::Get(e, segs) => Node::Get(b(e), self.steps(segs, scope)),
            Expr::Call(name, args) => {
                let args = args.iter().map(|a| self.node(a, scope)).collect();
                match functions::lookup(name) {
                    Some((name, f)) => Node::Call(name, f, args),
                    // The parser admits known functions only.
                    None => Node::Const(Value::Undefined),
                }
            }
        }
    }

    fn path(&self, root: &str, segs: &[Seg], scope: Scope<'_>) -> Node {
        let steps = self.steps(segs, scope);
        let with = |base: Node| {
            if steps.is_empty() {
                base
            } else {
                Node::Get(Box::new(base), steps.clone())
            }
        };
        if scope.var == Some(root) {
            return with(Node::Var);
        }
        if scope.aliases.iter().any(|a| a[0] == root) {
            return with(Node::Alias(root.to_string()));
        }
        match self.dialect {
            Dialect::Emqx if root == "payload" && !steps.is_empty() => Node::Payload(steps),
            Dialect::Emqx if self.row_first => with(Node::RowFirst(root.to_string())),
            Dialect::Emqx => with(Node::Column(root.to_string())),
            Dialect::Aws => {
                let mut all = vec![Step::Key(root.to_string())];
                all.extend(steps);
                Node::Payload(all)
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Env<'e, 'i, 'a> {
    cx: &'e Cx<'i, 'a>,
    row: Option<&'e Value>,
    var: Option<&'e Value>,
}

impl Env<'_, '_, '_> {
    fn row(&self, outs: &[Out]) -> Result<Value, RuleError> {
        let mut row = Value::Object(Vec::with_capacity(outs.len()));
        for o in outs {
            match o {
                Out::Star => {
                    if let Value::Object(cols) = self.star() {
                        for (k, v) in cols {
                            row.set_path(&[k], v);
                        }
                    }
                }
                Out::Field { node, name } => {
                    let v = self.eval(node)?;
                    if !v.is_undefined() {
                        row.set_path(name, v);
                    }
                }
            }
        }
        Ok(row)
    }

    /// `*`: EMQX's every column, AWS's payload object.
    fn star(&self) -> Value {
        match self.cx.dialect {
            Dialect::Aws => self.cx.input.json().map(Value::from_json).unwrap_or_default(),
            Dialect::Emqx => {
                let mut cols = Vec::new();
                for name in functions::COLUMNS {
                    let v = self.cx.column(name);
                    if !v.is_undefined() {
                        cols.push((name.to_string(), v));
                    }
                }
                for (k, v) in self.cx.input.extra {
                    cols.push((k.to_string(), v.clone()));
                }
                Value::Object(cols)
            }
        }
    }

    fn eval(&self, n: &Node) -> Result<Value, RuleError> {
        Ok(match n {
            Node::Const(v) => v.clone(),
            Node::Array(items) => {
                Value::Array(items.iter().map(|i| self.eval(i)).collect::<Result<_, _>>()?)
            }
            Node::Column(c) => self.cx.column(c),
            Node::Payload(steps) => self.payload(steps)?,
            Node::Alias(name) => self.row.map(|r| r.get(name)).unwrap_or_default(),
            Node::Var => self.var.cloned().unwrap_or_default(),
            Node::RowFirst(name) => match self.row.map(|r| r.get(name)) {
                Some(v) if !v.is_undefined() => v,
                _ => self.cx.column(name),
            },
            Node::Get(base, steps) => {
                let mut v = self.eval(base)?;
                for s in steps {
                    v = match s {
                        Step::Key(k) => v.get(k),
                        Step::Index(i) => self.index(&v, &self.eval(i)?),
                    };
                }
                v
            }
            Node::Unary(UnOp::Not, a) => match self.eval(a)?.as_bool() {
                Some(b) => Value::Bool(!b),
                None => Value::Undefined,
            },
            Node::Unary(UnOp::Neg, a) => match self.eval(a)?.to_number() {
                Some(Value::Int(i)) => {
                    i.checked_neg().map(Value::Int).unwrap_or(Value::Float(-(i as f64)))
                }
                Some(Value::Float(x)) => Value::Float(-x),
                _ => Value::Undefined,
            },
            Node::Binary(BinOp::And, l, r) => match self.eval(l)?.as_bool() {
                Some(false) => Value::Bool(false),
                Some(true) => self.eval(r)?.as_bool().map(Value::Bool).unwrap_or_default(),
                None => match self.eval(r)?.as_bool() {
                    Some(false) => Value::Bool(false),
                    _ => Value::Undefined,
                },
            },
            Node::Binary(BinOp::Or, l, r) => match self.eval(l)?.as_bool() {
                Some(true) => Value::Bool(true),
                Some(false) => self.eval(r)?.as_bool().map(Value::Bool).unwrap_or_default(),
                None => match self.eval(r)?.as_bool() {
                    Some(true) => Value::Bool(true),
                    _ => Value::Undefined,
                },
            },
            Node::Binary(op, l, r) => binary(*op, self.eval(l)?, self.eval(r)?, self.cx.dialect),
            Node::In { expr, list, negated } => {
                let v = self.eval(expr)?;
                if v.is_undefined() {
                    return Ok(Value::Undefined);
                }
                let mut found = false;
                for item in list {
                    let item = self.eval(item)?;
                    let hit = match (&item, list.len()) {
                        // `x IN arr`: membership in the array.
                        (Value::Array(a), 1) => a.iter().any(|e| v.equals(e) == Some(true)),
                        _ => v.equals(&item) == Some(true),
                    };
                    if hit {
                        found = true;
                        break;
                    }
                }
                Value::Bool(found != *negated)
            }
            Node::Case { operand, whens, otherwise } => {
                let subject = operand.as_ref().map(|o| self.eval(o)).transpose()?;
                for (w, t) in whens {
                    let w = self.eval(w)?;
                    let hit = match &subject {
                        Some(s) => s.equals(&w) == Some(true),
                        None => w.truthy(),
                    };
                    if hit {
                        return self.eval(t);
                    }
                }
                match otherwise {
                    Some(e) => self.eval(e)?,
                    None => Value::Undefined,
                }
            }
            Node::Call(name, f, args) => {
                let args: Vec<Value> =
                    args.iter().map(|a| self.eval(a)).collect::<Result<_, _>>()?;
                match f(&args, self.cx) {
                    Ok(v) => v,
                    // AWS: a function given what it cannot take is Undefined; EMQX fails
                    // the rule (counted as failed).
                    Err(_) if self.cx.dialect == Dialect::Aws => Value::Undefined,
                    Err(e) => return Err(RuleError::Eval(format!("{name}: {e}"))),
                }
            }
        })
    }

    /// Follows `steps` through the payload's JSON without copying what is left behind.
    fn payload(&self, steps: &[Step]) -> Result<Value, RuleError> {
        let Some(mut j) = self.cx.input.json() else { return Ok(Value::Undefined) };
        for s in steps {
            let next = match s {
                Step::Key(k) => j.get(k.as_str()),
                Step::Index(i) => {
                    let i = self.eval(i)?;
                    match (j, &i) {
                        (serde_json::Value::Array(a), Value::Int(n)) => {
                            position(a.len(), *n, self.cx.dialect).and_then(|p| a.get(p))
                        }
                        (serde_json::Value::Object(m), Value::Str(k)) => m.get(k.as_str()),
                        _ => None,
                    }
                }
            };
            match next {
                Some(n) => j = n,
                None => return Ok(Value::Undefined),
            }
        }
        Ok(Value::from_json(j))
    }

    fn index(&self, v: &Value, i: &Value) -> Value {
        match (v, i) {
            (Value::Array(a), Value::Int(n)) => position(a.len(), *n, self.cx.dialect)
                .and_then(|p| a.get(p).cloned())
                .unwrap_or_default(),
            (Value::Object(_), Value::Str(k)) => v.get(k),
            _ => Value::Undefined,
        }
    }
}

/// The position of index `n` in an array of `len`: EMQX counts from 1 (and from the
/// end when negative), AWS from 0.
pub fn position(len: usize, n: i64, dialect: Dialect) -> Option<usize> {
    let len = len as i64;
    let p = match dialect {
        Dialect::Emqx if n > 0 => n - 1,
        Dialect::Emqx if n < 0 => len + n,
        Dialect::Emqx => return None,
        Dialect::Aws => n,
    };
    (0..len).contains(&p).then_some(p as usize)
}

fn binary(op: BinOp, l: Value, r: Value, dialect: Dialect) -> Value {
    use std::cmp::Ordering::*;
    let cmp = |want: &[std::cmp::Ordering]| match l.compare(&r) {
        Some(o) => Value::Bool(want.contains(&o)),
        None => Value::Undefined,
    };
    match op {
        BinOp::Eq => l.equals(&r).map(Value::Bool).unwrap_or_default(),
        BinOp::Ne => l.equals(&r).map(|e| Value::Bool(!e)).unwrap_or_default(),
        BinOp::Lt => cmp(&[Less]),
        BinOp::Le => cmp(&[Less, Equal]),
        BinOp::Gt => cmp(&[Greater]),
        BinOp::Ge => cmp(&[Greater, Equal]),
        BinOp::Match => match (&l, &r) {
            (Value::Str(topic), Value::Str(filter)) => {
                Value::Bool(crate::mqtt::topic::matches(filter, topic))
            }
            _ => Value::Undefined,
        },
        BinOp::Add => match (&l, &r) {
            (Value::Str(a), Value::Str(b)) => Value::Str(format!("{a}{b}")),
            _ => arith(op, &l, &r, dialect),
        },
        _ => arith(op, &l, &r, dialect),
    }
}

fn arith(op: BinOp, l: &Value, r: &Value, dialect: Dialect) -> Value {
    let (Some(a), Some(b)) = (l.to_number(), r.to_number()) else { return Value::Undefined };
    if let (Value::Int(x), Value::Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let int = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Mod if y == 0 => return Value::Undefined,
            BinOp::Mod => x.checked_rem(y),
            // AWS divides integers as integers; EMQX's `/` is a decimal division
            // (its `div` function divides integers).
            BinOp::Div if y == 0 => return Value::Undefined,
            BinOp::Div if dialect == Dialect::Aws => x.checked_div(y),
            _ => None,
        };
        if let Some(i) = int {
            return Value::Int(i);
        }
    }
    let (x, y) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
    let v = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div if y == 0.0 => return Value::Undefined,
        BinOp::Div => x / y,
        BinOp::Mod if y == 0.0 => return Value::Undefined,
        BinOp::Mod => x % y,
        _ => return Value::Undefined,
    };
    if v.is_finite() {
        Value::Float(v)
    } else {
        Value::Undefined
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::{Dialect, Input, Rule, Value};

    #[test]
    fn the_payload_is_decoded_only_when_a_rule_reads_it() {
        let input = Input::message("t/1", br#"{"a": 1}"#);
        let columns = Rule::compile(r#"SELECT clientid, topic FROM "t/#""#, Dialect::Emqx).unwrap();
        columns.eval(&input).unwrap();
        assert!(!input.decoded(), "no rule read the payload");
        let reads = Rule::compile(r#"SELECT payload.a AS a FROM "t/#""#, Dialect::Emqx).unwrap();
        let rows = reads.eval(&input).unwrap();
        assert!(input.decoded());
        assert_eq!(rows, vec![Value::Object(vec![("a".into(), Value::Int(1))])]);
    }

    #[test]
    fn aws_in_takes_an_array_and_emqx_a_list() {
        let input = Input::message("t", br#"{"ids": [1, 2], "x": 2}"#);
        let aws = Rule::compile("SELECT x FROM 't' WHERE x IN ids", Dialect::Aws).unwrap();
        assert_eq!(aws.eval(&input).unwrap().len(), 1);
        let emqx = Rule::compile(
            r#"SELECT 1 AS one FROM "t" WHERE payload.x NOT IN (1, 3)"#,
            Dialect::Emqx,
        )
        .unwrap();
        assert_eq!(emqx.eval(&input).unwrap().len(), 1);
    }
}
