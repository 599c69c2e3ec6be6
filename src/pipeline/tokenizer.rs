//! The prompt tokenizer (UMT5 SentencePiece, read from the checkpoint's `tokenizer/tokenizer.json`)
//! and diffusers' prompt cleaning.
//!
//! [`PromptTokenizer::encode`] mirrors
//! `tokenizer(prompt, padding="max_length", max_length=..., truncation=True,
//! add_special_tokens=True, return_attention_mask=True)` as diffusers 0.42.1
//! `pipelines/helios/pipeline_helios_pyramid.py` `_get_t5_prompt_embeds` calls it: the prompt is
//! tokenized by the `tokenizer.json` pipeline (normalizer, pre-tokenizer, Unigram model, then the
//! post-processor that appends `</s>`), truncated so that the result, special tokens included, is
//! at most `max_length` long, then right-padded with the pad token to exactly `max_length`.
//!
//! Only `tokenizer.json` is supported (not a bare SentencePiece `spiece.model`); the Helios,
//! Wan2.1-Diffusers and `save_pretrained` tokenizer folders all have one.
//!
//! transformers ≥ 5 does not run `tokenizer.json` as is when `tokenizer_config.json` names
//! `T5Tokenizer` (the Helios/Wan/UMT5 case): it keeps the file's vocabulary and `Precompiled`
//! charsmap and rebuilds the rest of the pipeline. [`PromptTokenizer::from_dir`] does the same
//! (see `rebuild_like_transformers_t5`), so the ids match transformers 5.23 even for a
//! `tokenizer.json` written by an older converter (e.g. with an extra `Replace(" {2,}")`
//! normalizer or a bare `Metaspace` pre-tokenizer). Other tokenizer classes run the file as is.
//! `tests/tokenizer.rs` pins the ids against the Python tokenizer.
//!
//! Prompt cleaning ([`prompt_clean`]) mirrors diffusers' `prompt_clean`, with a character-level
//! subset of `ftfy.fix_text` (see [`fix_text_subset`] for what is not ported).

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
use unicode_normalization::UnicodeNormalization;

use super::checkpoint::LoadError;

/// A failure while tokenizing a prompt.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// `max_length` cannot even hold the special tokens the tokenizer appends.
    #[error(
        "max_sequence_length {max_length} is too small: the tokenizer adds {special} special token(s)"
    )]
    MaxLengthTooSmall { max_length: usize, special: usize },
    /// The `tokenizers` pipeline failed on this text.
    #[error("tokenizing the prompt: {0}")]
    Tokenizer(String),
}

/// One tokenized prompt, padded to `max_length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, `</s>` included, right-padded with the pad id to `max_length`.
    pub ids: Vec<u32>,
    /// 1 for the first `seq_len` positions, 0 for the padding.
    pub attention_mask: Vec<u32>,
    /// Number of real tokens (`attention_mask.sum()`), at most `max_length`.
    pub seq_len: usize,
}

/// The checkpoint's tokenizer (`tokenizer/tokenizer.json`).
#[derive(Clone)]
pub struct PromptTokenizer {
    /// Without truncation or padding: both are applied per call in [`Self::encode`].
    inner: Tokenizer,
    pad_id: u32,
    /// Number of special tokens the post-processor adds to one sequence (1 for T5: `</s>`).
    num_special: usize,
    path: PathBuf,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .field("pad_id", &self.pad_id)
            .field("num_special", &self.num_special)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// The fields of `tokenizer_config.json` (completed from `special_tokens_map.json`) that change
/// how transformers tokenizes.
#[derive(Debug, Default)]
struct TokenizerConfigFile {
    tokenizer_class: Option<String>,
    pad_token: Option<String>,
    eos_token: Option<String>,
}

impl TokenizerConfigFile {
    fn read(dir: &Path) -> Result<Self, LoadError> {
        let mut cfg = Self::default();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| LoadError::Config {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            // A token is a string or an `AddedToken` object with a `content`.
            let token = |key: &str| match value.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Object(o)) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            };
            cfg.pad_token = cfg.pad_token.take().or_else(|| token("pad_token"));
            cfg.eos_token = cfg.eos_token.take().or_else(|| token("eos_token"));
            cfg.tokenizer_class = cfg.tokenizer_class.take().or_else(|| {
                value
                    .get("tokenizer_class")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            });
        }
        Ok(cfg)
    }
}

/// Rebuild the pipeline the way transformers ≥ 5 `T5Tokenizer.__init__` does when it loads a
/// `tokenizer.json` (`tokenization_utils_tokenizers.py` `convert_to_native_format` keeps only the
/// vocabulary and the `Precompiled` charsmap of the file):
///
/// * model `Unigram(vocab, unk_id=2, byte_fallback=False)`;
/// * normalizer: the file's `Precompiled` normalizer (alone or inside a `Sequence`), else none —
///   any other normalizer of the file (`Replace`, `Strip`, `Lowercase`, …) is dropped;
/// * pre-tokenizer `Sequence[WhitespaceSplit, Metaspace("▁", prepend_scheme="always", split=True)]`;
/// * post-processor `TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>")` with `</s>`
///   given the id of the configured `eos_token`.
///
/// The added tokens of the file are kept (`<pad>`, `</s>`, `<unk>`, sentinels).
fn rebuild_like_transformers_t5(tok: &mut Tokenizer, eos_token: &str) -> Result<(), String> {
    use tokenizers::models::unigram::Unigram;
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    use tokenizers::processors::template::TemplateProcessing;

    let tokenizers::ModelWrapper::Unigram(unigram) = tok.get_model() else {
        return Err(
            "tokenizer_class is T5Tokenizer but the tokenizer.json model is not Unigram".into(),
        );
    };
    let vocab: Vec<(String, f64)> = unigram.iter().cloned().collect();
    let model = Unigram::from(vocab, Some(2), false).map_err(|e| e.to_string())?;
    let precompiled = match tok.get_normalizer() {
        Some(NormalizerWrapper::Precompiled(p)) => Some(p.clone()),
        Some(NormalizerWrapper::Sequence(seq)) => seq.as_ref().iter().find_map(|n| match n {
            NormalizerWrapper::Precompiled(p) => Some(p.clone()),
            _ => None,
        }),
        _ => None,
    };
    let eos_id = tok
        .token_to_id(eos_token)
        .ok_or_else(|| format!("the eos token `{eos_token}` is not in the vocabulary"))?;
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .and_then(|b| b.try_pair("$A </s> $B </s>"))
        .map_err(|e| e.to_string())?
        .special_tokens(vec![("</s>", eos_id)])
        .build()
        .map_err(|e| e.to_string())?;
    tok.with_model(model);
    tok.with_normalizer(precompiled.map(NormalizerWrapper::Precompiled));
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::WhitespaceSplit(WhitespaceSplit),
        PreTokenizerWrapper::Metaspace(Metaspace::new('\u{2581}', PrependScheme::Always, true)),
    ]))));
    tok.with_post_processor(Some(post));
    Ok(())
}

impl PromptTokenizer {
    /// Load `tokenizer_dir/tokenizer.json`. The pad token is the `pad_token` of
    /// `tokenizer_config.json` (or `special_tokens_map.json`), else `<pad>` (T5's default). When
    /// `tokenizer_class` is `T5Tokenizer`, the pipeline is rebuilt as transformers ≥ 5 does (see
    /// the module docs).
    ///
    /// # Errors
    /// [`LoadError::Missing`] when there is no `tokenizer.json`; [`LoadError::Tokenizer`] when it
    /// cannot be parsed, only a `spiece.model` is present, the pad or eos token is not in the
    /// vocabulary, or a `T5Tokenizer` file has no Unigram model; [`LoadError::Config`] for an unparsable `tokenizer_config.json`.
    pub fn from_dir(tokenizer_dir: &Path) -> Result<Self, LoadError> {
        let path = tokenizer_dir.join("tokenizer.json");
        if !path.is_file() {
            let spiece = tokenizer_dir.join("spiece.model");
            if spiece.is_file() {
                return Err(LoadError::Tokenizer {
                    path,
                    message: format!(
                        "only tokenizer.json is supported, but {} has only {}; convert it once \
                         with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)",
                        tokenizer_dir.display(),
                        spiece.display()
                    ),
                });
            }
            return Err(LoadError::Missing {
                path,
                what: "the tokenizer (only tokenizer.json is supported)".into(),
            });
        }
        let tok_err = |message: String| LoadError::Tokenizer {
            path: path.clone(),
            message,
        };
        let config = TokenizerConfigFile::read(tokenizer_dir)?;
        let mut inner = Tokenizer::from_file(&path).map_err(|e| tok_err(e.to_string()))?;
        if matches!(
            config.tokenizer_class.as_deref(),
            Some("T5Tokenizer" | "T5TokenizerFast")
        ) {
            let eos = config.eos_token.as_deref().unwrap_or("</s>");
            rebuild_like_transformers_t5(&mut inner, eos).map_err(tok_err)?;
        }
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(e.to_string()))?;
        inner.with_padding(None);
        let pad_token = config.pad_token.unwrap_or_else(|| "<pad>".into());
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| {
            tok_err(format!(
                "the pad token `{pad_token}` is not in the vocabulary"
            ))
        })?;
        let num_special = inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        Ok(Self {
            inner,
            pad_id,
            num_special,
            path,
        })
    }

    /// The pad token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size, added tokens included (every id is below it).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenize `text` (not cleaned here: see [`prompt_clean`]) with special tokens, truncate to
    /// `max_length` tokens (special tokens kept) and right-pad to exactly `max_length`.
    ///
    /// # Errors
    /// [`TokenizeError::MaxLengthTooSmall`] if `max_length` is below the number of special
    /// tokens; [`TokenizeError::Tokenizer`] if the tokenizer pipeline fails.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoded, TokenizeError> {
        if max_length < self.num_special {
            return Err(TokenizeError::MaxLengthTooSmall {
                max_length,
                special: self.num_special,
            });
        }
        let err = |e: tokenizers::Error| TokenizeError::Tokenizer(e.to_string());
        let mut ids = self
            .inner
            .encode(text, true)
            .map_err(err)?
            .get_ids()
            .to_vec();
        if ids.len() > max_length {
            // Rare (over-long prompt): re-encode with the tokenizer's own truncation, which cuts
            // the text tokens so that the appended special tokens still fit, exactly as the
            // Python tokenizer does with `truncation=True`.
            let mut truncating = self.inner.clone();
            truncating
                .with_truncation(Some(TruncationParams {
                    max_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: TruncationDirection::Right,
                }))
                .map_err(err)?;
            ids = truncating
                .encode(text, true)
                .map_err(err)?
                .get_ids()
                .to_vec();
        }
        let seq_len = ids.len();
        let mut attention_mask = vec![1u32; seq_len];
        ids.resize(max_length, self.pad_id);
        attention_mask.resize(max_length, 0);
        Ok(Encoded {
            ids,
            attention_mask,
            seq_len,
        })
    }
}

/// Python's `str.isspace` (what `re`'s `\s` and `str.strip()` use): Unicode `White_Space` plus the
/// four ASCII information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// ftfy's `fix_c1_controls`: a C1 control character U+0080..U+009F is read as the
/// (sloppy) Windows-1252 byte it most likely was; the five bytes Windows-1252 leaves undefined
/// stay as they are.
fn fix_c1_control(c: char) -> char {
    const CP1252: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '•', '–', '—', '˜',
        '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    match c {
        '\u{80}'..='\u{9f}' => CP1252[c as usize - 0x80],
        _ => c,
    }
}

/// The deterministic, character-level subset of `ftfy.fix_text` (ftfy 6.3, default config), in
/// ftfy's order: `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`,
/// `uncurl_quotes`, `remove_control_chars`, then NFC.
///
/// Not ported (no Rust ftfy exists): `fix_encoding` (mojibake repair such as `sÃ³` → `só`),
/// `remove_terminal_escapes`, and ftfy's own HTML unescaping (which, with the
/// two `html.unescape` calls of [`basic_clean`], only matters for text escaped three times or
/// more). `fix_line_breaks` is covered by the whitespace collapse of [`whitespace_clean`]. Text
/// without mojibake or ANSI escapes is cleaned exactly as diffusers does (pinned by
/// `tests/tokenizer.rs` `prompt_clean_matches_diffusers`).
pub fn fix_text_subset(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().map(fix_c1_control) {
        match c {
            // fix_latin_ligatures (ftfy.chardata.LIGATURES)
            'Ĳ' => out.push_str("IJ"),
            'ĳ' => out.push_str("ij"),
            'ŉ' => out.push_str("ʼn"),
            'Ǳ' => out.push_str("DZ"),
            'ǲ' => out.push_str("Dz"),
            'ǳ' => out.push_str("dz"),
            'Ǆ' => out.push_str("DŽ"),
            'ǅ' => out.push_str("Dž"),
            'ǆ' => out.push_str("dž"),
            'Ǉ' => out.push_str("LJ"),
            'ǈ' => out.push_str("Lj"),
            'ǉ' => out.push_str("lj"),
            'Ǌ' => out.push_str("NJ"),
            'ǋ' => out.push_str("Nj"),
            'ǌ' => out.push_str("nj"),
            'ﬀ' => out.push_str("ff"),
            'ﬁ' => out.push_str("fi"),
            'ﬂ' => out.push_str("fl"),
            'ﬃ' => out.push_str("ffi"),
            'ﬄ' => out.push_str("ffl"),
            'ﬅ' => out.push_str("ſt"),
            'ﬆ' => out.push_str("st"),
            // fix_character_width: U+3000 → ' ', U+FF01..U+FFEF → their NFKC form.
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(c.to_string().nfkc()),
            // uncurl_quotes: [\u02bc\u2018-\u201b] → ', [\u201c-\u201f] → "
            '\u{02bc}' | '\u{2018}'..='\u{201b}' => out.push('\''),
            '\u{201c}'..='\u{201f}' => out.push('"'),
            // remove_control_chars (ftfy.chardata.CONTROL_CHARS)
            '\u{00}'..='\u{08}'
            | '\u{0b}'
            | '\u{0e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}' => {}
            _ => out.push(c),
        }
    }
    out.nfc().collect()
}

/// diffusers `basic_clean`: `ftfy.fix_text` (approximated by [`fix_text_subset`]), then
/// `html.unescape(html.unescape(text))`, then `strip()`.
pub fn basic_clean(text: &str) -> String {
    let text = fix_text_subset(text);
    let once = htmlize::unescape(text.as_str()).into_owned();
    let twice = htmlize::unescape(once.as_str());
    twice.trim_matches(is_py_space).to_string()
}

/// diffusers `whitespace_clean`: `re.sub(r"\s+", " ", text).strip()`.
pub fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if is_py_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(is_py_space).to_string()
}

/// diffusers `prompt_clean`: `whitespace_clean(basic_clean(text))`.
pub fn prompt_clean(text: &str) -> String {
    whitespace_clean(&basic_clean(text))
}
