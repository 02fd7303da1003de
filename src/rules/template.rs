//! Action templates: text with `${expr}` substitutions (`${topic(2)}/alerts`,
//! `${payload.device}`, `${temp}`), where each expression is rule SQL. In the EMQX
//! dialect a bare name is looked up in the rule's output row first, then among the
//! message columns; in the AWS dialect templates see the original message, as AWS IoT's
//! substitution templates do. Undefined renders as nothing.

use super::eval::Plan;
use super::value::Value;
use super::{Dialect, Input, RuleError};

/// Longest template accepted.
pub const MAX_TEMPLATE: usize = 4096;

#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Plan),
}

impl Template {
    /// Parses `text`; an error names the offset within the template.
    pub fn parse(text: &str, dialect: Dialect) -> Result<Template, RuleError> {
        if text.len() > MAX_TEMPLATE {
            return Err(RuleError::at(
                text,
                MAX_TEMPLATE,
                format!("a template is at most {MAX_TEMPLATE} bytes"),
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let body = &rest[start + 2..];
            let Some(end) = body.find('}') else {
                return Err(RuleError::at(
                    text,
                    offset + start,
                    "`${` without a closing `}`".into(),
                ));
            };
            let expr = &body[..end];
            let plan = Plan::expression(expr, dialect).map_err(|e| match e {
                RuleError::At { offset: o, message, .. } => {
                    RuleError::at(text, offset + start + 2 + o, message)
                }
                other => other,
            })?;
            parts.push(Part::Expr(plan));
            let consumed = start + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether the template has no substitutions (its text, then).
    pub fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr(_) => return None,
            }
        }
        Some(out)
    }

    /// The text for one output `row` of a rule run on `input`.
    pub fn render(&self, row: &Value, input: &Input<'_>) -> Result<String, RuleError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Expr(plan) => {
                    if let Some(s) = plan.eval_in_row(row, input)?.to_text() {
                        out.push_str(&s);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Value {
        Value::Object(vec![("temp".into(), Value::Int(30)), ("tag".into(), Value::from("x"))])
    }

    #[test]
    fn substitutions_see_the_row_then_the_message() {
        let input = Input { clientid: "c1", ..Input::message("dev/d7/data", b"{\"a\":{\"b\":2}}") };
        let t =
            Template::parse("alerts/${clientid}/${temp}/${payload.a.b}${missing}", Dialect::Emqx)
                .unwrap();
        assert_eq!(t.render(&row(), &input).unwrap(), "alerts/c1/30/2");
        let t = Template::parse("${topic(2)}/republish/${a.b}", Dialect::Aws).unwrap();
        assert_eq!(t.render(&row(), &input).unwrap(), "d7/republish/2");
        assert_eq!(
            Template::parse("plain/topic", Dialect::Emqx).unwrap().literal().as_deref(),
            Some("plain/topic")
        );
    }

    #[test]
    fn errors_point_into_the_template() {
        let e = Template::parse("a/${nope(1)}", Dialect::Emqx).unwrap_err().to_string();
        assert_eq!(e, "line 1, column 5: unknown function `nope`");
        let e = Template::parse("a/${x", Dialect::Emqx).unwrap_err().to_string();
        assert!(e.contains("column 3") && e.contains("closing"), "{e}");
    }
}
