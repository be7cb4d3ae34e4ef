//! A small EDN reader: enough of the format for Jepsen and Knossos histories (maps, vectors,
//! lists, sets, keywords, strings, integers, floats, `nil`, booleans, symbols, `;` comments,
//! commas as whitespace, `#tag value` with the tag dropped). Pure.

use std::collections::BTreeMap;

/// An EDN value.
#[derive(Debug, Clone, PartialEq)]
pub enum Edn {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Keyword(String),
    Symbol(String),
    List(Vec<Edn>),
    Vector(Vec<Edn>),
    Set(Vec<Edn>),
    Map(Vec<(Edn, Edn)>),
}

impl Edn {
    /// The value under keyword `:name` of a map.
    pub fn get(&self, name: &str) -> Option<&Edn> {
        match self {
            Edn::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Edn::Keyword(k) if k == name))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A syntax error with its byte offset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("EDN syntax error at byte {offset}: {message}")]
pub struct EdnError {
    pub offset: usize,
    pub message: String,
}

/// Read every top-level value of `text`.
pub fn parse_all(text: &str) -> Result<Vec<Edn>, EdnError> {
    let mut reader = Reader {
        bytes: text.as_bytes(),
        pos: 0,
        text,
    };
    let mut values = Vec::new();
    loop {
        reader.skip_space();
        if reader.pos >= reader.bytes.len() {
            return Ok(values);
        }
        values.push(reader.value(0)?);
    }
}

/// Deepest nesting accepted: bounds the reader's recursion on hostile input.
const MAX_DEPTH: usize = 256;

struct Reader<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, EdnError> {
        Err(EdnError {
            offset: self.pos,
            message: message.into(),
        })
    }

    fn skip_space(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.pos += 1,
                b';' => {
                    while self.bytes.get(self.pos).is_some_and(|&b| b != b'\n') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Edn, EdnError> {
        if depth > MAX_DEPTH {
            return self.error("nested too deeply");
        }
        self.skip_space();
        let Some(&b) = self.bytes.get(self.pos) else {
            return self.error("unexpected end of input");
        };
        match b {
            b'(' => Ok(Edn::List(self.seq(b')', depth)?)),
            b'[' => Ok(Edn::Vector(self.seq(b']', depth)?)),
            b'{' => {
                let items = self.seq(b'}', depth)?;
                if items.len() % 2 != 0 {
                    return self.error("a map needs an even number of forms");
                }
                let mut it = items.into_iter();
                let mut entries = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Ok(Edn::Map(entries))
            }
            b'#' => {
                self.pos += 1;
                match self.bytes.get(self.pos) {
                    Some(b'{') => Ok(Edn::Set(self.seq(b'}', depth)?)),
                    Some(b'_') => {
                        // #_ discards the next form.
                        self.pos += 1;
                        self.value(depth + 1)?;
                        self.value(depth)
                    }
                    _ => {
                        // A tagged literal: drop the tag, keep the value.
                        self.token();
                        self.value(depth + 1)
                    }
                }
            }
            b'"' => self.string(),
            b')' | b']' | b'}' => self.error(format!("unexpected '{}'", b as char)),
            _ => {
                let token = self.token();
                if token.is_empty() {
                    return self.error("unexpected character");
                }
                Ok(atom(token))
            }
        }
    }

    fn seq(&mut self, close: u8, depth: usize) -> Result<Vec<Edn>, EdnError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match self.bytes.get(self.pos) {
                None => return self.error(format!("missing '{}'", close as char)),
                Some(&b) if b == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(_) => items.push(self.value(depth + 1)?),
            }
        }
    }

    fn string(&mut self) -> Result<Edn, EdnError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return self.error("unterminated string");
            };
            self.pos += 1;
            match b {
                b'"' => return Ok(Edn::Str(out)),
                b'\\' => {
                    // The escaped character whole: one byte of a multi-byte character would
                    // leave the reader inside it (a panic at the next slice, found by
                    // tests/t30_parse_fuzz.rs).
                    let Some(escaped) = self.text[self.pos..].chars().next() else {
                        return self.error("unterminated string");
                    };
                    self.pos += escaped.len_utf8();
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                _ => {
                    // Copy a whole UTF-8 character.
                    let start = self.pos - 1;
                    let mut end = self.pos;
                    while end < self.bytes.len() && !self.text.is_char_boundary(end) {
                        end += 1;
                    }
                    out.push_str(&self.text[start..end]);
                    self.pos = end;
                }
            }
        }
    }

    fn token(&mut self) -> &str {
        let start = self.pos;
        while let Some(&b) = self.bytes.get(self.pos) {
            if b" \t\n\r,()[]{}\";".contains(&b) {
                break;
            }
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }
}

fn atom(token: &str) -> Edn {
    match token {
        "nil" => Edn::Nil,
        "true" => Edn::Bool(true),
        "false" => Edn::Bool(false),
        _ if token.starts_with(':') => Edn::Keyword(token[1..].to_string()),
        _ => {
            let digits = token.trim_end_matches('N');
            if let Ok(i) = digits.parse::<i64>() {
                Edn::Int(i)
            } else if let Ok(f) = token.trim_end_matches('M').parse::<f64>() {
                Edn::Float(f)
            } else {
                Edn::Symbol(token.to_string())
            }
        }
    }
}

/// `value` as EDN text in one canonical form: maps and sets sorted, single spaces. Two values
/// that EDN considers equal (a map's entries in another order) give the same text.
pub fn canonical(value: &Edn) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Edn, out: &mut String) {
    use std::fmt::Write;
    let seq = |items: &[Edn], open: &str, close: &str, sort: bool, out: &mut String| {
        let mut texts: Vec<String> = items.iter().map(canonical).collect();
        if sort {
            texts.sort();
        }
        out.push_str(open);
        out.push_str(&texts.join(" "));
        out.push_str(close);
    };
    match value {
        Edn::Nil => out.push_str("nil"),
        Edn::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Edn::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Edn::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Edn::Str(s) => {
            let _ = write!(out, "{s:?}");
        }
        Edn::Keyword(k) => {
            let _ = write!(out, ":{k}");
        }
        Edn::Symbol(s) => out.push_str(s),
        Edn::List(items) => seq(items, "(", ")", false, out),
        Edn::Vector(items) => seq(items, "[", "]", false, out),
        Edn::Set(items) => seq(items, "#{", "}", true, out),
        Edn::Map(entries) => {
            let mut texts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} {}", canonical(k), canonical(v)))
                .collect();
            texts.sort();
            out.push('{');
            out.push_str(&texts.join(" "));
            out.push('}');
        }
    }
}

/// Sorted view of a map's keyword keys, for error messages.
pub fn keys(value: &Edn) -> Vec<String> {
    match value {
        Edn::Map(entries) => {
            let set: BTreeMap<String, ()> = entries
                .iter()
                .filter_map(|(k, _)| match k {
                    Edn::Keyword(k) => Some((k.clone(), ())),
                    _ => None,
                })
                .collect();
            set.into_keys().collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jepsen_shapes() {
        let values = parse_all(
            "; a comment\n{:type :invoke, :f :cas, :value [1 2], :process 0}\n[{:type :ok :f :read\n  :value nil :process :nemesis}] (1 -2 3.5) \"s\\\"é\" #{:a} #inst \"x\"",
        )
        .unwrap();
        assert_eq!(values.len(), 6);
        assert_eq!(values[0].get("f"), Some(&Edn::Keyword("cas".into())));
        assert_eq!(
            values[0].get("value"),
            Some(&Edn::Vector(vec![Edn::Int(1), Edn::Int(2)]))
        );
        let Edn::Vector(inner) = &values[1] else {
            panic!()
        };
        assert_eq!(
            inner[0].get("process"),
            Some(&Edn::Keyword("nemesis".into()))
        );
        assert_eq!(
            values[2],
            Edn::List(vec![Edn::Int(1), Edn::Int(-2), Edn::Float(3.5)])
        );
        assert_eq!(values[3], Edn::Str("s\"é".into()));
        assert!(parse_all("{:a 1").is_err());
        assert!(parse_all("{:a}").is_err());
        assert!(parse_all(&"[".repeat(10_000)).is_err());
    }

    /// A backslash before a multi-byte character escapes the whole character (it panicked,
    /// slicing inside the character; found by tests/t30_parse_fuzz.rs).
    #[test]
    fn an_escaped_multi_byte_character_is_read_whole() {
        assert_eq!(parse_all("\"\\é\"").unwrap(), vec![Edn::Str("é".into())]);
        assert_eq!(
            parse_all("\"a\\€b\"").unwrap(),
            vec![Edn::Str("a€b".into())]
        );
        assert!(parse_all("\"\\").is_err());
    }

    #[test]
    fn canonical_text_ignores_map_and_set_order() {
        let a = parse_all("{:b [1 \"x\"], :a #{2 1}}").unwrap();
        let b = parse_all("{:a #{1 2} :b [1 \"x\"]}").unwrap();
        assert_eq!(canonical(&a[0]), canonical(&b[0]));
        assert_eq!(canonical(&a[0]), "{:a #{1 2} :b [1 \"x\"]}");
        assert_eq!(canonical(&Edn::Keyword("ok".into())), ":ok");
        assert_ne!(
            canonical(&parse_all("[1 2]").unwrap()[0]),
            canonical(&parse_all("[2 1]").unwrap()[0])
        );
    }
}
