//! Presets: named request layers for a model family (`presets/NAME.toml`, embedded in the
//! binary), one type for `omni generate --preset` and `omni serve --preset`.
//!
//! A preset is its own layer of [`resolve`](super::request::resolve): request >
//! `[default_request]` (serve) or `--extra-params` (generate) > preset > checkpoint. Its
//! `[model] pipeline` names the diffusers pipeline class it was written for; [`Preset::check`]
//! refuses it for a checkpoint of another class, so both commands fail at start-up instead of
//! running the wrong defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::request::{ModelDefaults, RequestError, RequestPatch};

/// A preset file (`presets/NAME.toml`): request keys at the top level, `[model]` naming the
/// weights (`hf_id`) and the diffusers pipeline class they need (`pipeline`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// The built-in name or the file it was read from (for messages).
    pub name: String,
    pub patch: RequestPatch,
    /// `[model]`: the weights it was written for.
    pub model: PresetModel,
}

/// The presets shipped with omni, embedded so the installed binary finds them anywhere.
pub const BUILTIN_PRESETS: &[(&str, &str)] = &[
    (
        "helios-base",
        include_str!("../../presets/helios-base.toml"),
    ),
    ("helios-mid", include_str!("../../presets/helios-mid.toml")),
    (
        "helios-distilled",
        include_str!("../../presets/helios-distilled.toml"),
    ),
    (
        "wan2.1-t2v-1.3b",
        include_str!("../../presets/wan2.1-t2v-1.3b.toml"),
    ),
    (
        "wan2.1-t2v-14b",
        include_str!("../../presets/wan2.1-t2v-14b.toml"),
    ),
    (
        "wan2.2-t2v-a14b",
        include_str!("../../presets/wan2.2-t2v-a14b.toml"),
    ),
    (
        "wan2.1-i2v-14b-480p",
        include_str!("../../presets/wan2.1-i2v-14b-480p.toml"),
    ),
    (
        "wan2.1-flf2v-14b-720p",
        include_str!("../../presets/wan2.1-flf2v-14b-720p.toml"),
    ),
    (
        "wan2.2-i2v-a14b",
        include_str!("../../presets/wan2.2-i2v-a14b.toml"),
    ),
    (
        "wan2.2-ti2v-5b",
        include_str!("../../presets/wan2.2-ti2v-5b.toml"),
    ),
];

/// `[model]` of a preset file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetModel {
    /// The Hugging Face repo id of the weights the preset was written for.
    pub hf_id: Option<String>,
    /// The diffusers pipeline class (`model_index.json` `_class_name`) it was written for.
    pub pipeline: Option<String>,
}

fn bad(message: impl Into<String>) -> RequestError {
    RequestError {
        param: "preset",
        message: message.into(),
    }
}

impl Preset {
    /// Parses preset TOML text.
    ///
    /// # Errors
    /// [`RequestError`] with `param = "preset"`: bad TOML, an unknown key (the message lists the
    /// valid keys) or a wrong type.
    pub fn parse(text: &str) -> Result<Self, RequestError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e| bad(format!("not valid TOML: {e}")))?;
        let model = match table.remove("model") {
            None => PresetModel::default(),
            Some(toml::Value::Table(t)) => PresetModel::deserialize(t)
                .map_err(|e| bad(format!("[model]: {e}; valid keys: hf_id, pipeline")))?,
            Some(_) => return Err(bad("`model` must be a table ([model])")),
        };
        let patch = RequestPatch::deserialize(table).map_err(|e| {
            bad(format!(
                "{e}; valid keys: {}",
                RequestPatch::KEYS.join(", ")
            ))
        })?;
        Ok(Self {
            name: String::new(),
            patch,
            model,
        })
    }

    /// The embedded preset `name` (`helios-base`, `helios-mid`, `helios-distilled`,
    /// `wan2.1-t2v-1.3b`, `wan2.1-t2v-14b`, `wan2.2-t2v-a14b`, `wan2.1-i2v-14b-480p`,
    /// `wan2.1-flf2v-14b-720p`, `wan2.2-i2v-a14b`, `wan2.2-ti2v-5b`).
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN_PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| Self {
                name: name.to_string(),
                ..Self::parse(text).expect("embedded presets parse")
            })
    }

    /// Names of the embedded presets.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN_PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in preset by name, else a TOML file at `name_or_file`, else
    /// `presets/NAME.toml` under the working directory.
    ///
    /// # Errors
    /// [`RequestError`] with `param = "preset"`: no such preset (the message lists the built-in
    /// names), an unreadable file, or a file [`parse`](Self::parse) refuses (naming the file).
    pub fn load(name_or_file: &str) -> Result<Self, RequestError> {
        if let Some(p) = Self::builtin(name_or_file) {
            return Ok(p);
        }
        let candidates = [
            PathBuf::from(name_or_file),
            Path::new("presets").join(format!("{name_or_file}.toml")),
        ];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(bad(format!(
                "unknown preset `{name_or_file}`: not a built-in preset ({}) and no such TOML file",
                Self::builtin_names().join(", ")
            )));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("reading preset {}: {e}", path.display())))?;
        let preset = Self::parse(&text)
            .map_err(|e| bad(format!("reading preset {}: {}", path.display(), e.message)))?;
        Ok(Self {
            name: name_or_file.to_string(),
            ..preset
        })
    }

    /// Whether the preset fits a checkpoint with these defaults: its `[model] pipeline` (when
    /// set) must be the checkpoint's pipeline class.
    ///
    /// # Errors
    /// [`RequestError`] with `param = "preset"`, naming both classes.
    pub fn check(&self, defaults: &ModelDefaults) -> Result<(), RequestError> {
        match &self.model.pipeline {
            Some(pipeline) if *pipeline != defaults.pipeline_class => Err(bad(format!(
                "preset `{}` is for {pipeline} checkpoints, but the model is a {}; pick a \
                 preset for {} or drop --preset",
                self.name, defaults.pipeline_class, defaults.pipeline_class
            ))),
            _ => Ok(()),
        }
    }
}
