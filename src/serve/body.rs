//! Request bodies → one JSON object, whatever the encoding.
//!
//! - `application/json`: must be an object.
//! - `application/x-www-form-urlencoded` and `multipart/form-data`: each field becomes a string;
//!   empty values count as absent (FastAPI semantics, which vLLM-Omni clients rely on); bracket
//!   names from the openai SDK's `extra_body` (`extra_params[a]=1`, `extra_params[b][]=2`) build
//!   nested objects and arrays whose leaf strings are JSON-decoded when they parse.
//! - no body / no content type: an empty object.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::error::ApiError;

/// A file part of a multipart body.
#[derive(Debug, Clone)]
pub struct Upload {
    pub field: String,
    /// The part's `Content-Type`, when it sent one.
    pub content_type: Option<String>,
    pub data: Bytes,
}

/// The parsed body.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub map: Map<String, Value>,
    pub uploads: Vec<Upload>,
}

/// Parse `body` according to `content_type`.
///
/// # Errors
/// 400 for malformed JSON/forms, 415 for other content types.
pub async fn parse(content_type: Option<&str>, body: Bytes) -> Result<Fields, ApiError> {
    let ct = content_type.unwrap_or("").trim();
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "" if body.iter().all(|b| b.is_ascii_whitespace()) => Ok(Fields::default()),
        "application/json" | "" => parse_json(&body),
        "application/x-www-form-urlencoded" => {
            check_form_utf8(&body)?;
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
                .map_err(|e| ApiError::invalid("body", format!("malformed form body: {e}")))?;
            Ok(Fields {
                map: from_pairs(pairs)?,
                uploads: Vec::new(),
            })
        }
        "multipart/form-data" => parse_multipart(ct, body).await,
        _ => Err(ApiError::UnsupportedMediaType(essence)),
    }
}

/// Form values must be UTF-8 once percent-decoded, as JSON bodies must (`serde_urlencoded`
/// would replace bad bytes with U+FFFD): 400 naming the field otherwise.
fn check_form_utf8(body: &[u8]) -> Result<(), ApiError> {
    for pair in body.split(|b| *b == b'&') {
        let decoded: Vec<u8> = percent_encoding::percent_decode(pair).collect();
        if std::str::from_utf8(&decoded).is_err() {
            let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
            let name = percent_encoding::percent_decode(name).decode_utf8_lossy();
            return Err(ApiError::invalid(
                &name,
                "is not valid UTF-8 text; send UTF-8",
            ));
        }
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Fields, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    match v {
        Value::Object(map) => Ok(Fields {
            map,
            uploads: Vec::new(),
        }),
        _ => Err(ApiError::invalid(
            "body",
            "Request body must be a JSON object",
        )),
    }
}

async fn parse_multipart(content_type: &str, body: Bytes) -> Result<Fields, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::invalid("body", format!("bad multipart content type: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    let mut uploads = Vec::new();
    let bad =
        |e: multer::Error| ApiError::invalid("body", format!("malformed multipart body: {e}"));
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        if field.file_name().is_some() {
            let content_type = field.content_type().map(|m| m.essence_str().to_string());
            let data = field.bytes().await.map_err(bad)?;
            if !data.is_empty() {
                uploads.push(Upload {
                    field: name,
                    content_type,
                    data,
                });
            }
        } else {
            // Text fields must be UTF-8 (as JSON bodies must): no BOM sniffing, no U+FFFD.
            let bytes = field.bytes().await.map_err(bad)?;
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::invalid(&name, "is not valid UTF-8 text; send UTF-8"))?;
            pairs.push((name, text));
        }
    }
    Ok(Fields {
        map: from_pairs(pairs)?,
        uploads,
    })
}

/// Form pairs → object; bracket names nest, empty values are dropped.
fn from_pairs(pairs: Vec<(String, String)>) -> Result<Map<String, Value>, ApiError> {
    let mut map = Map::new();
    for (name, value) in pairs {
        if value.is_empty() || name.is_empty() {
            continue;
        }
        let (root, path) = split_brackets(&name);
        if path.is_empty() {
            map.insert(root.to_string(), Value::String(value));
            continue;
        }
        let leaf = serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value));
        let slot = map
            .entry(root.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        insert_path(slot, &path, leaf)
            .map_err(|m| ApiError::invalid(root, format!("bad form field `{name}`: {m}")))?;
    }
    Ok(map)
}

/// `a[b][]` → (`a`, [`b`, ``]).
fn split_brackets(name: &str) -> (&str, Vec<&str>) {
    match name.find('[') {
        Some(i) if name.ends_with(']') => {
            let inner = &name[i + 1..name.len() - 1];
            (&name[..i], inner.split("][").collect())
        }
        _ => (name, Vec::new()),
    }
}

fn insert_path(slot: &mut Value, path: &[&str], leaf: Value) -> Result<(), &'static str> {
    let (key, rest) = (path[0], &path[1..]);
    if key.is_empty() {
        // `name[]`: append to an array.
        if !slot.is_array() {
            if slot.as_object().is_some_and(|o| o.is_empty()) {
                *slot = Value::Array(Vec::new());
            } else {
                return Err("mixes [] with named keys");
            }
        }
        let arr = slot.as_array_mut().expect("array");
        if rest.is_empty() {
            arr.push(leaf);
            return Ok(());
        }
        arr.push(Value::Object(Map::new()));
        return insert_path(arr.last_mut().expect("pushed"), rest, leaf);
    }
    let obj = slot.as_object_mut().ok_or("mixes [] with named keys")?;
    if rest.is_empty() {
        obj.insert(key.to_string(), leaf);
        return Ok(());
    }
    let next = obj
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    insert_path(next, rest, leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(p: &[(&str, &str)]) -> Map<String, Value> {
        from_pairs(
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn brackets_nest_and_leaves_decode() {
        let m = pairs(&[
            ("prompt", "a cat"),
            ("extra_params[a]", "1"),
            ("extra_params[b][]", "1"),
            ("extra_params[b][]", "2"),
            ("extra_params[c]", "x y"),
            ("seed", ""),
        ]);
        assert_eq!(
            Value::Object(m),
            json!({"prompt": "a cat", "extra_params": {"a": 1, "b": [1, 2], "c": "x y"}})
        );
    }

    #[tokio::test]
    async fn encodings_agree() {
        let j = parse(
            Some("application/json"),
            Bytes::from_static(br#"{"prompt":"p","seed":3}"#),
        )
        .await
        .unwrap();
        assert_eq!(j.map["seed"], 3);
        let f = parse(
            Some("application/x-www-form-urlencoded"),
            Bytes::from_static(b"prompt=p&seed=3"),
        )
        .await
        .unwrap();
        assert_eq!(f.map["seed"], "3");
        let body = "--XX\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\np\r\n--XX--\r\n";
        let m = parse(
            Some("multipart/form-data; boundary=XX"),
            Bytes::from(body.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(m.map["prompt"], "p");
        assert_eq!(
            parse(Some("text/plain"), Bytes::from_static(b"x"))
                .await
                .unwrap_err()
                .status(),
            hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(
            parse(Some("application/json"), Bytes::from_static(b"[1]"))
                .await
                .is_err()
        );
    }
}
