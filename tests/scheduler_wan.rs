//! `UniPCMultistepScheduler` (flow sigmas, the Wan configuration) and
//! `FlowMatchEulerDiscreteScheduler`: schedules and step sequences against diffusers.
//!
//! References come from `tests/fixtures/reference/scheduler_wan.safetensors`, written by diffusers
//! 0.42.1 itself (`make_wan_scheduler_reference` in `tests/fixtures/make_wan.py`): schedules for
//! flow shifts 3, 5, 12 (UniPC) and 1, 5 (Euler), and `scheduler.step` driven by seeded random
//! model outputs on `[1, 4, 2, 3, 3]` float32 tensors.

mod common;

use common::{Reference, max_abs_diff_slice};
use omni::pipeline::schedulers::SchedulerError;
use omni::pipeline::schedulers::scheduling_flow_match_euler_discrete::{
    FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerConfig,
};
use omni::pipeline::schedulers::scheduling_unipc_multistep::{
    FinalSigmasType, UniPCMultistepScheduler, UniPCMultistepSchedulerConfig,
};
use omni::pipeline::schedulers::unipc::{SolverHistory, SolverType, StepPlan};

/// Schedules: the same float64 numpy arithmetic, then the same float32 cast.
const TABLE_TOL: f64 = 1e-10;
/// Step outputs are float32 in diffusers, with float32 0-d scalars; here the scalars are f64 from
/// the same float32 sigmas, rounded to f32 before multiplying, so float32 rounding separates them.
const STEP_TOL: f64 = 1e-5;

fn reference() -> Reference {
    Reference::open("scheduler_wan.safetensors")
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = max_abs_diff_slice(got, want);
    assert!(
        err <= tol,
        "{what}: max abs error {err:e} > {tol:e}\n got  {got:?}\n want {want:?}"
    );
    eprintln!("{what}: max abs error {err:e}");
    err
}

fn combine_f32(terms: &[(f64, &Vec<f32>)]) -> Vec<f32> {
    let n = terms[0].1.len();
    let mut out = vec![0.0f32; n];
    for (c, t) in terms {
        let c = *c as f32;
        for (o, v) in out.iter_mut().zip(t.iter()) {
            *o += c * v;
        }
    }
    out
}

fn f32s(r: &Reference, name: &str) -> Vec<f32> {
    r.f64s(name).1.into_iter().map(|v| v as f32).collect()
}

fn unipc(config: UniPCMultistepSchedulerConfig) -> UniPCMultistepScheduler {
    UniPCMultistepScheduler::new(config).unwrap()
}

/// Replays `{prefix}.*`: the schedule, then every step through `plan(i)`.
fn replay(
    prefix: &str,
    timesteps: &[f64],
    sigmas: &[f64],
    mut plan: impl FnMut(usize) -> StepPlan,
) -> f64 {
    let r = reference();
    let n = timesteps.len();
    assert_close(
        &format!("{prefix}.timesteps"),
        timesteps,
        &r.f64s(&format!("{prefix}.timesteps")).1,
        TABLE_TOL,
    );
    assert_close(
        &format!("{prefix}.sigmas"),
        sigmas,
        &r.f64s(&format!("{prefix}.sigmas")).1,
        TABLE_TOL,
    );
    let mut history = SolverHistory::new();
    let mut x = f32s(&r, &format!("{prefix}.sample"));
    let mut worst = 0.0f64;
    for i in 0..n {
        let v = f32s(&r, &format!("{prefix}.v.{i}"));
        let p = plan(i);
        x = history.step(&p, x, v, combine_f32);
        let want = r.f64s(&format!("{prefix}.prev.{i}")).1;
        let got: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let err = max_abs_diff_slice(&got, &want);
        assert!(
            err <= STEP_TOL,
            "{prefix} step {i}: max abs error {err:e} > {STEP_TOL:e} (plan {p:?})"
        );
        worst = worst.max(err);
    }
    eprintln!("{prefix}: {n} steps, max abs error {worst:e}");
    worst
}

fn replay_unipc(prefix: &str, config: UniPCMultistepSchedulerConfig, n: usize) -> f64 {
    let mut solver = unipc(config).set_timesteps(n).unwrap();
    let (t, s) = (solver.timesteps().to_vec(), solver.sigmas().to_vec());
    replay(prefix, &t, &s, |i| solver.step_plan(i))
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn wan_scheduler_config_parses_as_shipped() {
    // Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json.
    let text = r#"{"_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0",
      "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
      "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
      "lower_order_final": true, "num_train_timesteps": 1000, "predict_x0": true,
      "prediction_type": "flow_prediction", "rescale_betas_zero_snr": false, "sample_max_value": 1.0,
      "solver_order": 2, "solver_p": null, "solver_type": "bh2", "steps_offset": 0,
      "thresholding": false, "timestep_spacing": "linspace", "trained_betas": null,
      "use_beta_sigmas": false, "use_exponential_sigmas": false, "use_flow_sigmas": true,
      "use_karras_sigmas": false}"#;
    let s = UniPCMultistepScheduler::from_json(text).unwrap();
    let c = s.config();
    assert_eq!(c.flow_shift, 3.0);
    assert_eq!(c.solver_order, 2);
    assert_eq!(c.solver_type, SolverType::Bh2);
    assert_eq!(c.final_sigmas_type, FinalSigmasType::Zero);
    assert!(c.unexpected_keys().is_empty(), "{:?}", c.unexpected_keys());
    assert_eq!(
        c,
        &UniPCMultistepSchedulerConfig {
            unknown: c.unknown.clone(),
            ..UniPCMultistepSchedulerConfig::wan(3.0)
        }
    );
}

#[test]
fn unsupported_unipc_options_fail_at_construction_naming_them() {
    let cases: [(UniPCMultistepSchedulerConfig, &str); 5] = [
        (UniPCMultistepSchedulerConfig::default(), "use_flow_sigmas"),
        (
            UniPCMultistepSchedulerConfig {
                prediction_type: "epsilon".into(),
                ..UniPCMultistepSchedulerConfig::wan(3.0)
            },
            "prediction_type",
        ),
        (
            UniPCMultistepSchedulerConfig {
                use_karras_sigmas: true,
                ..UniPCMultistepSchedulerConfig::wan(3.0)
            },
            "karras",
        ),
        (
            UniPCMultistepSchedulerConfig {
                solver_order: 3,
                ..UniPCMultistepSchedulerConfig::wan(3.0)
            },
            "solver_order",
        ),
        (UniPCMultistepSchedulerConfig::wan(-1.0), "flow_shift"),
    ];
    for (config, key) in cases {
        let err = UniPCMultistepScheduler::new(config).unwrap_err();
        assert!(matches!(err, SchedulerError::Invalid(_)), "{err}");
        assert!(err.to_string().contains(key), "{err} should name {key}");
    }
    let err =
        UniPCMultistepScheduler::from_json(r#"{"_class_name": "HeliosScheduler"}"#).unwrap_err();
    assert!(matches!(err, SchedulerError::WrongClass { .. }), "{err}");
    let err = FlowMatchEulerDiscreteScheduler::new(FlowMatchEulerDiscreteSchedulerConfig {
        use_dynamic_shifting: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("use_dynamic_shifting"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// UniPC

#[test]
fn unipc_flow_schedules_match_diffusers() {
    let r = reference();
    for shift in [3.0, 5.0, 12.0] {
        let solver = unipc(UniPCMultistepSchedulerConfig::wan(shift))
            .set_timesteps(50)
            .unwrap();
        let p = format!("unipc.shift{shift}.n50");
        assert_close(
            &format!("{p}.timesteps"),
            solver.timesteps(),
            &r.f64s(&format!("{p}.timesteps")).1,
            TABLE_TOL,
        );
        assert_close(
            &format!("{p}.sigmas"),
            solver.sigmas(),
            &r.f64s(&format!("{p}.sigmas")).1,
            TABLE_TOL,
        );
        assert_eq!(
            solver.timesteps()[0],
            999.0,
            "the first sigma is lowered by 1e-6"
        );
        assert_eq!(*solver.sigmas().last().unwrap(), 0.0);
    }
    let solver = unipc(UniPCMultistepSchedulerConfig {
        final_sigmas_type: FinalSigmasType::SigmaMin,
        ..UniPCMultistepSchedulerConfig::wan(5.0)
    })
    .set_timesteps(10)
    .unwrap();
    let p = "unipc.shift5.sigma_min.n10";
    assert_close(
        &format!("{p}.timesteps"),
        solver.timesteps(),
        &r.f64s(&format!("{p}.timesteps")).1,
        TABLE_TOL,
    );
    assert_close(
        &format!("{p}.sigmas"),
        solver.sigmas(),
        &r.f64s(&format!("{p}.sigmas")).1,
        TABLE_TOL,
    );
}

#[test]
fn unipc_flow_step_sequences_match_diffusers() {
    for shift in [3.0, 5.0] {
        for n in [4, 10, 50] {
            replay_unipc(
                &format!("unipc.shift{shift}.n{n}"),
                UniPCMultistepSchedulerConfig::wan(shift),
                n,
            );
        }
    }
}

#[test]
fn unipc_bh1_and_order1_sequences_match_diffusers() {
    replay_unipc(
        "unipc.bh1.n10",
        UniPCMultistepSchedulerConfig {
            solver_type: SolverType::Bh1,
            ..UniPCMultistepSchedulerConfig::wan(5.0)
        },
        10,
    );
    replay_unipc(
        "unipc.order1.n6",
        UniPCMultistepSchedulerConfig {
            solver_order: 1,
            ..UniPCMultistepSchedulerConfig::wan(5.0)
        },
        6,
    );
}

#[test]
fn unipc_with_flow_shift_overrides_only_the_shift() {
    let s = unipc(UniPCMultistepSchedulerConfig::wan(3.0));
    let five = s.with_flow_shift(5.0).unwrap();
    assert_eq!(
        five.config(),
        unipc(UniPCMultistepSchedulerConfig::wan(5.0)).config()
    );
    assert!(s.with_flow_shift(0.0).is_err());
}

// ---------------------------------------------------------------------------------------------
// FlowMatchEulerDiscreteScheduler

fn euler(shift: f64) -> FlowMatchEulerDiscreteScheduler {
    FlowMatchEulerDiscreteScheduler::new(FlowMatchEulerDiscreteSchedulerConfig {
        shift,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn flow_match_euler_schedules_match_diffusers() {
    let r = reference();
    for shift in [1.0, 5.0] {
        let solver = euler(shift).set_timesteps(50).unwrap();
        let p = format!("euler.shift{shift}.n50");
        assert_close(
            &format!("{p}.timesteps"),
            solver.timesteps(),
            &r.f64s(&format!("{p}.timesteps")).1,
            TABLE_TOL,
        );
        assert_close(
            &format!("{p}.sigmas"),
            solver.sigmas(),
            &r.f64s(&format!("{p}.sigmas")).1,
            TABLE_TOL,
        );
    }
}

#[test]
fn flow_match_euler_step_sequence_matches_diffusers() {
    let mut solver = euler(5.0).set_timesteps(10).unwrap();
    let (t, s) = (solver.timesteps().to_vec(), solver.sigmas().to_vec());
    replay("euler.shift5.n10", &t, &s, |i| solver.step_plan(i));
}
