//! The sampling settings a model file suggests (`info.defaults` in its metadata), typed once for
//! every reader: the CLI's `generate`, `bench`, `analyze` and `eval`, and the page.
//!
//! Precedence is the same everywhere: a setting the user gives (a flag, a control) overrides the
//! model's suggestion, and the suggestion overrides the built-in fallback ([`Request::default`]).
//!
//! In the file the defaults are a JSON object with camelCase keys, every one optional:
//!
//! ```json
//! {"arSteps": 16, "schedule": "linear:50:5", "cfg": 3.0, "cfgSchedule": "linear", "temperature": 1.0}
//! ```
//!
//! A missing object (`null`, as in files written without defaults) and `{}` suggest nothing. An
//! unknown key (a typo such as `ar_steps`) or an invalid value is an error naming it, never
//! silently ignored: a model that says "use cfg 3" must not quietly sample at cfg 1.

use crate::error::{DisaError, Result};
use crate::sampler::{Request, check_cfg, check_temperature};
use crate::schedule::{CfgSchedule, StepSchedule};

/// A model's suggested sampling settings; `None` where it suggests nothing.
///
/// Serializes to (and deserializes from) the camelCase JSON object of the file, with the
/// schedules as their text forms (`"linear:50:5"`, `"linear"`), fields without a value left out.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Raw", into = "Raw")]
pub struct SamplingDefaults {
    /// AR steps `K` (≥ 1; checked against the model's token count when a request is built).
    pub ar_steps: Option<usize>,
    /// Diffusion steps per AR step.
    pub schedule: Option<StepSchedule>,
    /// Classifier-free guidance scale (finite, ≥ 1; 1 = off).
    pub cfg: Option<f32>,
    /// How the CFG scale grows over the AR steps.
    pub cfg_schedule: Option<CfgSchedule>,
    /// Scale of the noise injected at each diffusion step (finite, ≥ 0).
    pub temperature: Option<f32>,
}

/// Every sampling setting with a value: the result of [`SamplingDefaults::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub ar_steps: usize,
    pub schedule: StepSchedule,
    pub cfg: f32,
    pub cfg_schedule: CfgSchedule,
    pub temperature: f32,
}

impl SamplingDefaults {
    /// Reads `info.defaults` of a model file: `null` or `{}` suggest nothing; an unknown key, a
    /// value of the wrong type or out of range is an [`DisaError::InvalidSetting`] naming it.
    pub fn from_info(defaults: &serde_json::Value) -> Result<Self> {
        let error = |e: &dyn std::fmt::Display| {
            DisaError::InvalidSetting(format!(
                "the model file's suggested sampling settings (`defaults` in its metadata): {e}"
            ))
        };
        match defaults {
            serde_json::Value::Null => Ok(Self::default()),
            serde_json::Value::Object(_) => {
                serde_json::from_value(defaults.clone()).map_err(|e| error(&e))
            }
            other => Err(error(&format!("{other} is not a JSON object"))),
        }
    }

    /// The JSON object written to a model file's `info.defaults`.
    pub fn to_info(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("sampling defaults serialize")
    }

    /// Checks the settings given here on their own, before any model is loaded (a flag's value
    /// fails at once, not after minutes of loading): `arSteps` ≥ 1, the CFG scale and the
    /// temperature in their ranges ([`check_cfg`], [`check_temperature`]), and a custom
    /// schedule's length against `arSteps` when both are given. What depends on the model (K
    /// against its token count) is checked when its request is ([`Request::validate`]).
    pub fn validate(&self) -> Result<()> {
        if let Some(k) = self.ar_steps {
            // K against the most tokens any plan has; the model's own count comes later.
            crate::schedule::validate_ar_steps(k, crate::schedule::MAX_TOKENS)?;
        }
        if let Some(cfg) = self.cfg {
            check_cfg(cfg)?;
        }
        if let Some(t) = self.temperature {
            check_temperature(t)?;
        }
        if let Some(schedule) = &self.schedule {
            schedule.validate()?;
            if let (StepSchedule::Custom(_), Some(k)) = (schedule, self.ar_steps) {
                schedule.steps_at(k - 1, k)?;
            }
        }
        Ok(())
    }

    /// These settings with `over`'s values where it has them (`over` wins): flags over a model's
    /// suggestions.
    pub fn overridden_by(&self, over: &Self) -> Self {
        Self {
            ar_steps: over.ar_steps.or(self.ar_steps),
            schedule: over.schedule.clone().or_else(|| self.schedule.clone()),
            cfg: over.cfg.or(self.cfg),
            cfg_schedule: over.cfg_schedule.or(self.cfg_schedule),
            temperature: over.temperature.or(self.temperature),
        }
    }

    /// Every setting: the given ones, the built-in fallback ([`Request::default`]: K = 64,
    /// linear 50→5, cfg 1, linear CFG schedule, temperature 1) for the rest.
    pub fn resolve(&self) -> Sampling {
        let fallback = Request::default();
        Sampling {
            ar_steps: self.ar_steps.unwrap_or(fallback.ar_steps),
            schedule: self.schedule.clone().unwrap_or(fallback.schedule),
            cfg: self.cfg.unwrap_or(fallback.cfg),
            cfg_schedule: self.cfg_schedule.unwrap_or(fallback.cfg_schedule),
            temperature: self.temperature.unwrap_or(fallback.temperature),
        }
    }
}

impl Sampling {
    /// A request with these settings for `labels`, with the timestep clip `clip`.
    pub fn request(&self, labels: Vec<Option<usize>>, clip: crate::sampler::Clip) -> Request {
        Request {
            labels,
            ar_steps: self.ar_steps,
            schedule: self.schedule.clone(),
            clip,
            cfg: self.cfg,
            cfg_schedule: self.cfg_schedule,
            temperature: self.temperature,
        }
    }
}

/// The file's form: plain JSON values, checked and typed by `TryFrom`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ar_steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cfg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cfg_schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
}

/// An f32 setting as the f64 of its shortest decimal form, so `0.9` is written `0.9`, not
/// `0.8999999761581421`.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

impl TryFrom<Raw> for SamplingDefaults {
    type Error = String;

    fn try_from(raw: Raw) -> std::result::Result<Self, String> {
        if raw.ar_steps == Some(0) {
            return Err("`arSteps` 0: a generation needs at least 1 AR step".into());
        }
        let (cfg, temperature) = (raw.cfg.map(|c| c as f32), raw.temperature.map(|t| t as f32));
        // The library's checks and parsers give the messages (the ranges, the accepted forms).
        let text = |e: DisaError| match e {
            DisaError::InvalidSetting(m) => m,
            other => other.to_string(),
        };
        if let Some(cfg) = cfg {
            check_cfg(cfg).map_err(|e| format!("`cfg`: {}", text(e)))?;
        }
        if let Some(t) = temperature {
            check_temperature(t).map_err(|e| format!("`temperature`: {}", text(e)))?;
        }
        Ok(Self {
            ar_steps: raw.ar_steps,
            schedule: raw
                .schedule
                .as_deref()
                .map(StepSchedule::parse)
                .transpose()
                .map_err(|e| format!("`schedule`: {}", text(e)))?,
            cfg,
            cfg_schedule: raw
                .cfg_schedule
                .as_deref()
                .map(CfgSchedule::parse)
                .transpose()
                .map_err(|e| format!("`cfgSchedule`: {}", text(e)))?,
            temperature,
        })
    }
}

impl From<SamplingDefaults> for Raw {
    fn from(d: SamplingDefaults) -> Self {
        Self {
            ar_steps: d.ar_steps,
            schedule: d.schedule.map(|s| s.to_string()),
            cfg: d.cfg.map(decimal),
            cfg_schedule: d.cfg_schedule.map(|s| s.to_string()),
            temperature: d.temperature.map(decimal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_field_is_read_and_written_back() {
        let info = json!({
            "arSteps": 16, "schedule": "linear:50:5", "cfg": 3.0, "cfgSchedule": "constant",
            "temperature": 0.9
        });
        let d = SamplingDefaults::from_info(&info).unwrap();
        assert_eq!(
            d,
            SamplingDefaults {
                ar_steps: Some(16),
                schedule: Some(StepSchedule::Linear { start: 50, end: 5 }),
                cfg: Some(3.0),
                cfg_schedule: Some(CfgSchedule::Constant),
                temperature: Some(0.9),
            }
        );
        assert_eq!(d.to_info(), info);
    }

    #[test]
    fn nothing_suggested_resolves_to_the_built_in_fallback() {
        for info in [serde_json::Value::Null, json!({})] {
            let d = SamplingDefaults::from_info(&info).unwrap();
            assert_eq!(d, SamplingDefaults::default());
            assert_eq!(d.to_info(), json!({}));
            let s = d.resolve();
            let r = Request::default();
            assert_eq!(
                (
                    s.ar_steps,
                    &s.schedule,
                    s.cfg,
                    s.cfg_schedule,
                    s.temperature
                ),
                (
                    r.ar_steps,
                    &r.schedule,
                    r.cfg,
                    r.cfg_schedule,
                    r.temperature
                )
            );
        }
    }

    #[test]
    fn flags_override_suggestions_which_override_the_fallback() {
        let model = SamplingDefaults::from_info(&json!({"arSteps": 16, "cfg": 3.0})).unwrap();
        let flags = SamplingDefaults {
            cfg: Some(2.0),
            temperature: Some(0.5),
            ..SamplingDefaults::default()
        };
        let s = model.overridden_by(&flags).resolve();
        assert_eq!(s.ar_steps, 16, "the model's suggestion");
        assert_eq!(s.cfg, 2.0, "the flag");
        assert_eq!(s.temperature, 0.5, "the flag");
        assert_eq!(
            s.schedule,
            Request::default().schedule,
            "the built-in fallback"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        for (info, needle) in [
            (json!({"ar_steps": 16}), "ar_steps"),
            (json!({"arSteps": 0}), "arSteps"),
            (json!({"arSteps": -3}), "-3"),
            (json!({"arSteps": "16"}), "16"),
            (json!({"cfg": 0.5}), "cfg"),
            (json!({"temperature": -1.0}), "temperature"),
            (json!({"schedule": "linear:5:50"}), "schedule"),
            (json!({"schedule": "fast"}), "fast"),
            (json!({"cfgSchedule": "cubic"}), "cubic"),
            (json!([16]), "defaults"),
        ] {
            let err = SamplingDefaults::from_info(&info)
                .expect_err(&info.to_string())
                .to_string();
            assert!(err.contains(needle), "{info}: {err}");
            assert!(err.contains("defaults"), "{info}: {err}");
        }
    }
}
