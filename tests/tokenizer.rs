//! Prompt tokenizer and prompt cleaning parity.
//!
//! `tests/fixtures/reference/tokenizer_cases.json` holds `{text, input_ids}` pairs from the tiny
//! checkpoint's tokenizer loaded with transformers 5.23 `AutoTokenizer` (`add_special_tokens=True`,
//! no padding), written by `tests/fixtures/make_fixtures.py` (`make_tokenizer_cases`). The
//! expected `prompt_clean` outputs below were produced with diffusers 0.42.1 `prompt_clean`
//! (ftfy 6.3.1) on the same strings.

mod common;

use common::{fixture, tiny_distilled};
use omni::pipeline::checkpoint::LoadError;
use omni::pipeline::tokenizer::{PromptTokenizer, TokenizeError, prompt_clean};

fn tokenizer() -> PromptTokenizer {
    PromptTokenizer::from_dir(&tiny_distilled().join("tokenizer")).expect("tiny tokenizer loads")
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("reference/tokenizer_cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn ids_match_python_tokenizer() {
    let tok = tokenizer();
    let cases = cases();
    assert!(!cases.is_empty());
    for case in &cases {
        let enc = tok.encode(&case.text, 512).unwrap();
        assert_eq!(enc.seq_len, case.input_ids.len(), "{:?}", case.text);
        assert_eq!(
            &enc.ids[..enc.seq_len],
            &case.input_ids[..],
            "{:?}",
            case.text
        );
    }
}

#[test]
fn pads_to_max_length_with_mask() {
    let tok = tokenizer();
    assert_eq!(tok.pad_id(), 0);
    for case in cases() {
        let n = case.input_ids.len();
        let enc = tok.encode(&case.text, 64).unwrap();
        assert_eq!(enc.ids.len(), 64);
        assert_eq!(enc.attention_mask.len(), 64);
        assert_eq!(enc.seq_len, n);
        assert_eq!(&enc.ids[..n], &case.input_ids[..]);
        assert!(enc.ids[n..].iter().all(|&id| id == 0), "{:?}", case.text);
        assert!(enc.attention_mask[..n].iter().all(|&m| m == 1));
        assert!(enc.attention_mask[n..].iter().all(|&m| m == 0));
    }
}

#[test]
fn truncation_keeps_eos_like_transformers() {
    // `truncation=True, max_length=m`: the text tokens are cut to m - 1 and `</s>` (id 1) is
    // still appended, so the result is exactly m long with no padding.
    let tok = tokenizer();
    let case = cases()
        .into_iter()
        .max_by_key(|c| c.input_ids.len())
        .unwrap();
    let n = case.input_ids.len();
    assert!(n > 8);
    for m in [1, 2, 5, n - 1] {
        let enc = tok.encode(&case.text, m).unwrap();
        assert_eq!(enc.seq_len, m);
        assert_eq!(enc.ids.len(), m);
        assert!(enc.attention_mask.iter().all(|&v| v == 1));
        assert_eq!(
            &enc.ids[..m - 1],
            &case.input_ids[..m - 1],
            "max_length {m}"
        );
        assert_eq!(enc.ids[m - 1], 1, "max_length {m}: last id must be </s>");
    }
    // Exactly fitting: untouched.
    let enc = tok.encode(&case.text, n).unwrap();
    assert_eq!(enc.ids, case.input_ids);
    // No room for </s>.
    assert!(matches!(
        tok.encode(&case.text, 0),
        Err(TokenizeError::MaxLengthTooSmall {
            max_length: 0,
            special: 1
        })
    ));
}

/// A copy of the tiny tokenizer folder whose `tokenizer.json` has the pipeline of an older
/// converter (normalizer `Sequence[Lowercase, Replace(" {2,}", " ")]`, bare `Metaspace`
/// pre-tokenizer, no post-processor) and the given `tokenizer_class`.
fn altered_tokenizer_dir(tokenizer_class: &str) -> tempfile::TempDir {
    let src = tiny_distilled().join("tokenizer");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    json["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
        {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
    ]});
    json["pre_tokenizer"] = serde_json::json!(
        {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true}
    );
    json["post_processor"] = serde_json::Value::Null;
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    config["tokenizer_class"] = tokenizer_class.into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn t5_tokenizer_pipeline_is_rebuilt_like_transformers_5() {
    // transformers 5.23 `AutoTokenizer` on this altered folder still gives the ids of
    // tokenizer_cases.json (checked in Python): T5Tokenizer keeps only the vocabulary (and a
    // Precompiled charsmap) of tokenizer.json.
    let dir = altered_tokenizer_dir("T5Tokenizer");
    let tok = PromptTokenizer::from_dir(dir.path()).unwrap();
    for case in cases() {
        let enc = tok.encode(&case.text, 512).unwrap();
        assert_eq!(
            &enc.ids[..enc.seq_len],
            &case.input_ids[..],
            "{:?}",
            case.text
        );
    }
    // Any other class runs tokenizer.json as is (here: lowercased, no `</s>`).
    let dir = altered_tokenizer_dir("PreTrainedTokenizerFast");
    let tok = PromptTokenizer::from_dir(dir.path()).unwrap();
    let enc = tok.encode("A GIANT WAVE", 16).unwrap();
    let lower = tokenizer().encode("a giant wave", 16).unwrap();
    assert_eq!(&enc.ids[..enc.seq_len], &lower.ids[..lower.seq_len - 1]);
}

#[test]
fn missing_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = PromptTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    std::fs::write(dir.path().join("spiece.model"), b"not used").unwrap();
    let err = PromptTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Tokenizer { .. }), "{err}");
    assert!(
        err.to_string().contains("only tokenizer.json is supported"),
        "{err}"
    );

    std::fs::write(dir.path().join("tokenizer.json"), b"{ not json").unwrap();
    let err = PromptTokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Tokenizer { .. }), "{err}");
}

#[test]
fn prompt_clean_matches_diffusers() {
    // (input, diffusers `prompt_clean(input)`), computed with ftfy 6.3.1.
    let cases: &[(&str, &str)] = &[
        (
            "A serene lakeside sunrise with mist over the water.",
            "A serene lakeside sunrise with mist over the water.",
        ),
        (
            "  Extra   spaces   between\twords  and\nnewlines  ",
            "Extra spaces between words and newlines",
        ),
        ("Fish &amp; chips &amp;amp; peas", "Fish & chips & peas"),
        (
            "&lt;b&gt;bold&lt;/b&gt; &#169; &#x263A; &eacute;",
            "<b>bold</b> © ☺ é",
        ),
        ("\u{201c}Hello\u{201d} it\u{2019}s", "\"Hello\" it's"),
        ("\u{fb01}ne \u{fb02}ower", "fine flower"),
        (
            "\u{ff2c}\u{ff2f}\u{ff35}\u{ff24}\u{3000}\u{ff2e}\u{ff2f}\u{ff29}\u{ff33}\u{ff25}\u{ff33}",
            "LOUD NOISES",
        ),
        ("a\u{0b}b\u{1f}c\u{feff}d", "abcd"),
        ("cafe\u{0301} na\u{00ef}ve", "caf\u{00e9} na\u{00ef}ve"),
        ("x\u{00a0}\u{2003}y\u{1c}z", "x yz"),
        (
            "\u{ff76}\u{ff9e}\u{ff77}\u{ff9e} half",
            "\u{30ac}\u{30ae} half",
        ),
        ("&times;3 &timesX AT&T", "\u{d7}3 \u{d7}X AT&T"),
        (
            "tab\u{85}next\u{2028}line \u{93}q\u{94}",
            "tab\u{2026}next line \"q\"",
        ),
        ("", ""),
        ("\u{3000} \t", ""),
    ];
    for (input, expected) in cases {
        assert_eq!(prompt_clean(input), *expected, "input {input:?}");
    }
}
