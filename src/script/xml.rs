//! XML for scripts: `xml_parse(text)` turns a DFSP's XML (e.g. an ISO 20022 pain.002 status
//! report) into plain maps a script can read, and `xml_list(v)` makes "one or many" uniform.
//!
//! Shape: an element with only text becomes that string; otherwise a map of its children by
//! local name (namespace prefixes dropped), a child that repeats becomes an array, attributes
//! are `"@name"` and mixed text is `"#text"`. The document is `#{<root name>: ...}`. DTDs and
//! entity declarations are refused (no XXE), and nesting is limited.

use quick_xml::events::Event;
use rhai::{Array, Dynamic, Map};

const MAX_DEPTH: usize = 64;

struct Element {
    name: String,
    children: Map,
    text: String,
}

fn local(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    match name.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => name.to_string(),
    }
}

fn add_child(parent: &mut Map, name: String, value: Dynamic) {
    match parent.get_mut(name.as_str()) {
        None => {
            parent.insert(name.into(), value);
        }
        Some(existing) if existing.is_array() => {
            if let Some(mut arr) = existing.write_lock::<Array>() {
                arr.push(value);
            }
        }
        Some(existing) => {
            let first = std::mem::take(existing);
            *existing = Dynamic::from_array(vec![first, value]);
        }
    }
}

fn finish(e: Element) -> (String, Dynamic) {
    let text = e.text.trim().to_string();
    let value = if e.children.is_empty() {
        Dynamic::from(text)
    } else {
        let mut m = e.children;
        if !text.is_empty() {
            m.insert("#text".into(), Dynamic::from(text));
        }
        Dynamic::from_map(m)
    };
    (e.name, value)
}

pub fn parse(text: &str) -> Result<Dynamic, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, Dynamic)> = None;
    let open = |e: &quick_xml::events::BytesStart| -> Result<Element, String> {
        let mut children = Map::new();
        for a in e.attributes() {
            let a = a.map_err(|err| format!("xml: bad attribute: {err}"))?;
            let value = a
                .unescape_value()
                .map_err(|err| format!("xml: bad attribute value: {err}"))?;
            children.insert(
                format!("@{}", local(a.key.as_ref())).into(),
                Dynamic::from(value.to_string()),
            );
        }
        Ok(Element {
            name: local(e.name().as_ref()),
            children,
            text: String::new(),
        })
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("xml: {e} at byte {}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("xml: nested deeper than {MAX_DEPTH} elements"));
                }
                stack.push(open(&e)?);
            }
            Event::Empty(e) => {
                let el = open(&e)?;
                let (name, value) = finish(el);
                match stack.last_mut() {
                    Some(parent) => add_child(&mut parent.children, name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("xml: unbalanced end tag")?;
                let (name, value) = finish(el);
                match stack.last_mut() {
                    Some(parent) => add_child(&mut parent.children, name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::Text(t) => {
                if let Some(el) = stack.last_mut() {
                    let s = t.decode().map_err(|e| format!("xml: bad text: {e}"))?;
                    let s = quick_xml::escape::unescape(&s)
                        .map_err(|e| format!("xml: bad text: {e}"))?;
                    el.text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(el) = stack.last_mut() {
                    let name = r.decode().map_err(|e| format!("xml: bad reference: {e}"))?;
                    let reference = format!("&{name};");
                    let s = quick_xml::escape::unescape(&reference)
                        .map_err(|e| format!("xml: unknown entity {reference}: {e}"))?;
                    el.text.push_str(&s);
                }
            }
            Event::CData(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::DocType(_) => return Err("xml: DTDs are not accepted".into()),
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("xml: the document ends inside an element".into());
    }
    let (name, value) = root.ok_or("xml: no root element")?;
    let mut doc = Map::new();
    doc.insert(name.into(), value);
    Ok(Dynamic::from_map(doc))
}

/// `()` → `[]`, an array → itself, anything else → `[it]`.
pub fn list(v: Dynamic) -> Array {
    if v.is_unit() {
        Array::new()
    } else if v.is_array() {
        v.into_array().unwrap_or_default()
    } else {
        vec![v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pain002_reads_as_maps_and_lists() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.002.001.10">
  <CstmrPmtStsRpt>
    <GrpHdr><MsgId>RPT-1</MsgId></GrpHdr>
    <OrgnlPmtInfAndSts>
      <TxInfAndSts><OrgnlEndToEndId>p-1</OrgnlEndToEndId><TxSts>ACSC</TxSts></TxInfAndSts>
      <TxInfAndSts><OrgnlEndToEndId>p-2</OrgnlEndToEndId><TxSts>RJCT</TxSts>
        <StsRsnInf><Rsn><Cd>AC04</Cd></Rsn><AddtlInf>Closed &amp; gone</AddtlInf></StsRsnInf></TxInfAndSts>
      <Amt Ccy="KES">10.50</Amt>
    </OrgnlPmtInfAndSts>
  </CstmrPmtStsRpt>
</Document>"#;
        let doc = parse(xml).expect("parse");
        let doc = doc.cast::<Map>();
        let rpt = doc["Document"].clone().cast::<Map>()["CstmrPmtStsRpt"]
            .clone()
            .cast::<Map>();
        let org = rpt["OrgnlPmtInfAndSts"].clone().cast::<Map>();
        let txs = list(org["TxInfAndSts"].clone());
        assert_eq!(txs.len(), 2);
        let second = txs[1].clone().cast::<Map>();
        assert_eq!(second["TxSts"].to_string(), "RJCT");
        let rsn = second["StsRsnInf"].clone().cast::<Map>();
        assert_eq!(rsn["AddtlInf"].to_string(), "Closed & gone");
        let amt = org["Amt"].clone().cast::<Map>();
        assert_eq!(amt["@Ccy"].to_string(), "KES");
        assert_eq!(amt["#text"].to_string(), "10.50");
        assert_eq!(list(Dynamic::UNIT).len(), 0);
        assert_eq!(list(Dynamic::from("x")).len(), 1);
    }

    #[test]
    fn hostile_or_broken_documents_are_refused() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>"#;
        assert!(parse(xxe).is_err());
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("").is_err());
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(parse(&deep).unwrap_err().contains("deeper"));
    }
}
