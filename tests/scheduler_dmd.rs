//! `HeliosDMDScheduler` (Helios-Distilled): config parsing, stage tables, per-stage schedules, the
//! DMD step coefficients, re-noise coefficients and the block-noise factor.
//!
//! Parity tables come from `tests/fixtures/reference/scheduler_distilled.safetensors`, written by
//! diffusers 0.42.1 itself from the shipped `tests/fixtures/configs/helios-distilled/
//! scheduler_config.json` (recipe in `tests/fixtures/make_fixtures.py`).

mod common;

use common::{Reference, fixture, max_abs_diff_slice};
use omni::pipeline::schedulers::{
    DmdStep, HeliosDMDScheduler, HeliosDMDSchedulerConfig, SchedulerError, StageSchedule,
    TimeShiftType, block_noise_factor, calculate_shift, linspace, model_timestep,
    pyramid_image_seq_len,
};

/// Scheduler tables are float64 on both sides and computed with the same operation order, so
/// anything beyond a few ulps of 1000 (~1e-13) is a real difference.
const TABLE_TOL: f64 = 1e-10;
/// Hand-computed values in `shared/reference/helios.md` §5.2 are printed with 2 decimals
/// (timesteps) and 5 decimals (sigmas).
const HAND_T_TOL: f64 = 5e-3;
const HAND_SIGMA_TOL: f64 = 5e-6;
/// `L·Lᵀ` against the covariance, in f64.
const FACTOR_TOL: f64 = 1e-12;
/// Correlated block noise against diffusers': diffusers factors a float32 covariance in float32,
/// this crate the exact covariance in f64 (documented on `block_noise_factor`); at the tiny
/// checkpoint's γ = 0.3333 that moves unit-variance noise by up to 5.5e-6.
const BLOCK_NOISE_TOL: f64 = 1e-5;

/// Token counts behind the `mu` of `scheduler_distilled.safetensors` and of helios.md §5.2: each
/// stage's own latent size for 9 latent frames at 384×640 (9·12·20/4, 9·24·40/4, 9·48·80/4).
/// They exercise `set_timesteps` over three different `mu`; the pipeline itself measures the
/// latents before each stage's upsample (540, 540, 2160, see
/// `pyramid_image_seq_len_measures_latents_before_the_stage_upsample`).
const FIXTURE_MU_SEQ_LENS: [usize; 3] = [540, 2160, 8640];

/// Defaults plus what the Distilled checkpoint turns on (dynamic, linear shift).
fn distilled_like() -> HeliosDMDScheduler {
    let config = HeliosDMDSchedulerConfig {
        use_dynamic_shifting: true,
        time_shift_type: TimeShiftType::Linear,
        ..Default::default()
    };
    HeliosDMDScheduler::new(config).unwrap()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = max_abs_diff_slice(got, want);
    assert!(
        err <= tol,
        "{what}: max abs error {err:e} > {tol:e}\n got  {got:?}\n want {want:?}"
    );
    err
}

// ---------------------------------------------------------------------------------------------
// Config

#[test]
fn config_defaults_match_diffusers_init() {
    let c: HeliosDMDSchedulerConfig = HeliosDMDSchedulerConfig::from_json_str("{}").unwrap();
    assert_eq!(c, HeliosDMDSchedulerConfig::default());
    assert_eq!(c.num_train_timesteps, 1000);
    assert_eq!(c.shift, 1.0);
    assert_eq!(c.stages, 3);
    assert_eq!(c.stage_range, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
    assert_eq!(c.gamma, 1.0 / 3.0);
    assert!(!c.use_dynamic_shifting);
    assert_eq!(c.time_shift_type, TimeShiftType::Linear);
    assert_eq!(
        (
            c.base_image_seq_len,
            c.max_image_seq_len,
            c.base_shift,
            c.max_shift
        ),
        (256.0, 4096.0, 0.5, 1.15)
    );
    assert!(c.unknown_keys().is_empty());
}

#[test]
fn config_accepts_integers_written_as_floats() {
    let c = HeliosDMDSchedulerConfig::from_json_str(
        r#"{"_class_name": "HeliosDMDScheduler", "num_train_timesteps": 1000.0, "stages": 3.0,
            "time_shift_type": "exponential", "use_dynamic_shifting": true}"#,
    )
    .unwrap();
    assert_eq!(c.num_train_timesteps, 1000);
    assert_eq!(c.stages, 3);
    assert_eq!(c.time_shift_type, TimeShiftType::Exponential);
    assert!(HeliosDMDScheduler::new(c).is_ok());
    assert!(HeliosDMDSchedulerConfig::from_json_str(r#"{"stages": 2.5}"#).is_err());
}

#[test]
fn config_collects_unknown_keys_for_warnings() {
    let c = HeliosDMDSchedulerConfig::from_json_str(
        r#"{"_class_name": "HeliosDMDScheduler", "_diffusers_version": "0.42.1",
            "_use_default_values": ["shift"], "solver_order": 2, "scheduler_type": "dmd"}"#,
    )
    .unwrap();
    assert_eq!(c.unknown_keys(), vec!["solver_order"]);
    assert_eq!(c.diffusers_version.as_deref(), Some("0.42.1"));
    assert!(HeliosDMDScheduler::new(c).is_ok());
}

#[test]
fn config_with_other_class_name_is_rejected() {
    let c =
        HeliosDMDSchedulerConfig::from_json_str(r#"{"_class_name": "HeliosScheduler"}"#).unwrap();
    assert!(matches!(
        HeliosDMDScheduler::new(c),
        Err(SchedulerError::WrongClass { .. })
    ));
}

#[test]
fn unknown_time_shift_type_is_a_parse_error() {
    assert!(matches!(
        HeliosDMDSchedulerConfig::from_json_str(r#"{"time_shift_type": "cosine"}"#),
        Err(SchedulerError::Parse(_))
    ));
}

#[test]
fn fixed_shift_with_dynamic_shifting_fails_at_construction() {
    let c = HeliosDMDSchedulerConfig {
        shift: 3.0,
        use_dynamic_shifting: true,
        ..Default::default()
    };
    let err = HeliosDMDScheduler::new(c).unwrap_err();
    assert!(matches!(err, SchedulerError::Invalid(_)));
    assert!(err.to_string().contains("use_dynamic_shifting"), "{err}");
}

#[test]
fn gamma_outside_zero_to_one_third_fails_at_construction() {
    for gamma in [0.0, -0.1, 0.34, f64::NAN] {
        let c = HeliosDMDSchedulerConfig {
            gamma,
            ..Default::default()
        };
        assert!(HeliosDMDScheduler::new(c).is_err(), "gamma {gamma}");
    }
    // 1/3 written as a float32 is accepted.
    let c = HeliosDMDSchedulerConfig {
        gamma: (1.0f32 / 3.0) as f64,
        ..Default::default()
    };
    assert!(HeliosDMDScheduler::new(c).is_ok());
}

#[test]
fn short_or_decreasing_stage_range_fails_at_construction() {
    for stage_range in [vec![0.0, 0.5, 1.0], vec![0.0, 2.0 / 3.0, 1.0 / 3.0, 1.0]] {
        let c = HeliosDMDSchedulerConfig {
            stage_range,
            ..Default::default()
        };
        assert!(HeliosDMDScheduler::new(c).is_err());
    }
}

#[test]
fn set_timesteps_needs_mu_with_dynamic_shifting() {
    let s = distilled_like();
    assert!(matches!(
        s.set_timesteps(2, 0, None, false),
        Err(SchedulerError::MissingMu)
    ));
    assert!(matches!(
        s.set_timesteps(2, 3, Some(1.0), false),
        Err(SchedulerError::StageOutOfRange {
            stage: 3,
            stages: 3
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Formulas

#[test]
fn linspace_matches_numpy_endpoints() {
    assert_eq!(linspace(2.0, 3.0, 1), vec![2.0]);
    assert!(linspace(2.0, 3.0, 0).is_empty());
    let y = linspace(0.999, 0.0, 1001);
    assert_eq!((y[0], y[1000]), (0.999, 0.0));
    assert_eq!(y[1], 1.0 * (-0.999 / 1000.0) + 0.999);
}

#[test]
fn calculate_shift_matches_pipeline_values() {
    // helios.md §4.1: L = 8640 → μ = 1.91917; §5.2: 540 → 0.5481, 2160 → 0.8223.
    let mu: Vec<f64> = FIXTURE_MU_SEQ_LENS
        .iter()
        .map(|&l| calculate_shift(l, 256.0, 4096.0, 0.5, 1.15))
        .collect();
    assert_close("mu", &mu, &[0.5481, 0.8223, 1.91917], 5e-5);
    let exact = 8640.0 * ((1.15 - 0.5) / 3840.0) + (0.5 - (0.65 / 3840.0) * 256.0);
    assert_eq!(mu[2], exact);
}

#[test]
fn time_shift_maps_zero_to_zero_and_one_to_one() {
    for kind in [TimeShiftType::Linear, TimeShiftType::Exponential] {
        assert_eq!(kind.apply(1.3, 0.0), 0.0);
        assert!((kind.apply(1.3, 1.0) - 1.0).abs() < 1e-15);
    }
    // linear μ acts as a flow shift μ: μσ/(1+(μ−1)σ).
    let (mu, s) = (1.9, 0.4);
    assert!((TimeShiftType::Linear.apply(mu, s) - mu * s / (1.0 + (mu - 1.0) * s)).abs() < 1e-15);
    let e = mu.exp();
    assert!(
        (TimeShiftType::Exponential.apply(mu, s) - e * s / (1.0 + (e - 1.0) * s)).abs() < 1e-15
    );
}

#[test]
fn pyramid_image_seq_len_measures_latents_before_the_stage_upsample() {
    // 384×640: stage-0 latent 12×20; stages 0 and 1 share the stage-0 size.
    let lens: Vec<usize> = (0..3)
        .map(|s| pyramid_image_seq_len(s, [9, 12, 20], PATCH_SIZE))
        .collect();
    assert_eq!(lens, vec![540, 540, 2160]);
}

#[test]
fn model_timestep_truncates_like_int64_cast() {
    assert_eq!(model_timestep(998.53), 998.0);
    assert_eq!(model_timestep(833.96), 833.0);
    assert_eq!(model_timestep(1.999), 1.0);
}

#[test]
fn renoise_coeffs_match_pipeline_for_gamma_one_third() {
    let s = distilled_like();
    let want = [(0.600120, 0.692612), (0.749813, 0.433337)];
    for (stage, (a, b)) in [1, 2].into_iter().zip(want) {
        let (alpha, beta) = s.stage_renoise_coeffs(stage);
        assert!(
            (alpha - a).abs() < 5e-7 && (beta - b).abs() < 5e-7,
            "stage {stage}: ({alpha}, {beta})"
        );
        // The scheduler's corrected stage start sigma is 1 − α·ρ with the same α.
        let rho = 1.0 - s.ori_start_sigmas()[stage];
        assert!((1.0 - s.tables().start_sigmas[stage] - alpha * rho).abs() < 1e-15);
    }
}

#[test]
#[should_panic(expected = "not a re-noised stage")]
fn renoise_coeffs_of_stage_zero_panic() {
    distilled_like().stage_renoise_coeffs(0);
}

fn block_cov(gamma: f64) -> [[f64; 4]; 4] {
    let mut c = [[-gamma; 4]; 4];
    for (i, row) in c.iter_mut().enumerate() {
        row[i] = 1.0 + 1e-8;
    }
    c
}

fn max_llt_error(l: &[[f64; 4]; 4], cov: &[[f64; 4]; 4]) -> f64 {
    let mut err = 0.0f64;
    for i in 0..4 {
        for j in 0..4 {
            let v: f64 = (0..4).map(|k| l[i][k] * l[j][k]).sum();
            err = err.max((v - cov[i][j]).abs());
        }
    }
    err
}

#[test]
fn block_noise_factor_is_cholesky_for_gamma_0_3() {
    let l = block_noise_factor(0.3);
    let err = max_llt_error(&l, &block_cov(0.3));
    assert!(err <= FACTOR_TOL, "L·Lᵀ − cov = {err:e}");
    for (i, row) in l.iter().enumerate() {
        assert!(row[i] > 0.0);
        assert!(
            row[i + 1..].iter().all(|&v| v == 0.0),
            "not lower triangular: {l:?}"
        );
    }
}

#[test]
fn block_noise_factor_is_symmetric_sqrt_for_singular_gamma_one_third() {
    let l = block_noise_factor(1.0 / 3.0);
    let err = max_llt_error(&l, &block_cov(1.0 / 3.0));
    assert!(err <= FACTOR_TOL, "L·Lᵀ − cov = {err:e}");
    for (i, row) in l.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(*v, l[j][i], "not symmetric at ({i}, {j})");
        }
    }
    assert!(l.iter().flatten().all(|v| v.is_finite()));
}

// ---------------------------------------------------------------------------------------------
// Tables and schedules against the hand values of helios.md §5.2

#[test]
fn ori_start_sigmas_are_stage_boundaries_of_global_table() {
    let s = distilled_like();
    assert_close(
        "ori_start_sigmas",
        s.ori_start_sigmas(),
        &[0.999, 0.666333, 0.333666],
        1e-12,
    );
    let t = s.tables();
    assert_eq!((t.sigmas.len(), t.sigmas[0]), (1000, 0.999));
    assert!((t.sigmas[999] - 0.000999).abs() < 1e-15);
    let ratios: Vec<f64> = t
        .timestep_ratios
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .collect();
    assert_close(
        "timestep_ratios",
        &ratios,
        &[0.0, 0.256068, 0.256068, 0.614840, 0.614840, 1.0],
        1e-6,
    );
}

fn hand_schedules(amplify: bool) -> [(Vec<f64>, Option<Vec<f64>>); 3] {
    if amplify {
        [
            (
                vec![998.53, 902.22, 833.96, 783.07],
                Some(vec![0.99818, 0.62119, 0.35404, 0.15482, 0.0]),
            ),
            (vec![742.82, 640.00, 547.19, 463.00], None),
            (vec![385.41, 328.62, 253.99, 151.53], None),
        ]
    } else {
        [
            (vec![998.53, 833.96], Some(vec![0.99818, 0.35404, 0.0])),
            (vec![742.82, 547.19], Some(vec![0.99878, 0.45124, 0.0])),
            (vec![385.41, 253.99], Some(vec![0.99948, 0.65744, 0.0])),
        ]
    }
}

fn check_hand_schedules(amplify: bool) {
    let s = distilled_like();
    for (stage, (t_want, sigma_want)) in hand_schedules(amplify).into_iter().enumerate() {
        let mu = s.calculate_shift(FIXTURE_MU_SEQ_LENS[stage]);
        let sched = s.set_timesteps(2, stage, Some(mu), amplify).unwrap();
        assert_eq!(sched.sigmas.len(), sched.timesteps.len() + 1);
        assert_eq!(*sched.sigmas.last().unwrap(), 0.0);
        assert_close(
            &format!("stage {stage} timesteps"),
            &sched.timesteps,
            &t_want,
            HAND_T_TOL,
        );
        if let Some(sigma_want) = sigma_want {
            assert_close(
                &format!("stage {stage} sigmas"),
                &sched.sigmas,
                &sigma_want,
                HAND_SIGMA_TOL,
            );
        }
    }
}

#[test]
fn distilled_schedules_match_hand_values() {
    check_hand_schedules(false);
}

#[test]
fn amplified_first_chunk_schedules_match_hand_values() {
    check_hand_schedules(true);
}

#[test]
fn transformer_sees_truncated_timesteps() {
    let s = distilled_like();
    let want = [[998.0, 833.0], [742.0, 547.0], [385.0, 253.0]];
    for (stage, want) in want.iter().enumerate() {
        let mu = s.calculate_shift(FIXTURE_MU_SEQ_LENS[stage]);
        let sched = s.set_timesteps(2, stage, Some(mu), false).unwrap();
        let got: Vec<f64> = sched.timesteps.iter().map(|&t| model_timestep(t)).collect();
        assert_eq!(&got, want);
    }
}

#[test]
fn step_coeffs_renoise_to_next_sigma_and_stop_at_last_step() {
    let s = distilled_like();
    let sched = s
        .set_timesteps(2, 1, Some(s.calculate_shift(2160)), true)
        .unwrap();
    for i in 0..sched.len() {
        let step = s.step_coeffs(&sched, i);
        let want = DmdStep {
            sigma_t: sched.sigmas[i],
            next: (i + 1 < sched.len()).then(|| sched.sigmas[i + 1]),
        };
        assert_eq!(step, want, "step {i}");
    }
}

#[test]
fn step_coeffs_look_sigma_up_by_truncated_timestep_like_diffusers() {
    // Timesteps less than 1 apart: trunc(998.9) = 998 is nearer 998.2 than 998.9, so diffusers'
    // argmin picks index 1 for step 0.
    let s = distilled_like();
    let sched = StageSchedule {
        stage_index: 0,
        timesteps: vec![998.9, 998.2, 990.0],
        sigmas: vec![0.9, 0.8, 0.7, 0.0],
    };
    assert_eq!(
        s.step_coeffs(&sched, 0),
        DmdStep {
            sigma_t: 0.8,
            next: Some(0.8)
        }
    );
    assert_eq!(
        s.step_coeffs(&sched, 2),
        DmdStep {
            sigma_t: 0.7,
            next: None
        }
    );
}

#[test]
fn zero_steps_give_an_empty_schedule() {
    let s = distilled_like();
    let sched = s.set_timesteps(0, 0, Some(1.0), false).unwrap();
    assert!(sched.is_empty());
    assert_eq!(sched.sigmas, vec![0.0]);
}

#[test]
fn single_stage_config_builds_schedules() {
    let c = HeliosDMDSchedulerConfig {
        stages: 1,
        stage_range: vec![0.0, 1.0],
        use_dynamic_shifting: true,
        ..Default::default()
    };
    let s = HeliosDMDScheduler::new(c).unwrap();
    let sched = s.set_timesteps(4, 0, Some(1.5), false).unwrap();
    assert_eq!((sched.timesteps.len(), sched.sigmas.len()), (4, 5));
    assert_eq!(*sched.sigmas.last().unwrap(), 0.0);
    // timesteps = σ·1000 in float32
    for (t, s) in sched.timesteps.iter().zip(&sched.sigmas) {
        assert_eq!(*t, ((*s as f32) * 1000.0f32) as f64);
    }
}

// ---------------------------------------------------------------------------------------------
// Parity with diffusers' own tables (shipped config + reference file)

fn shipped_scheduler() -> HeliosDMDScheduler {
    let path = fixture("configs/helios-distilled/scheduler_config.json");
    let config = HeliosDMDSchedulerConfig::from_file(&path).unwrap();
    HeliosDMDScheduler::new(config).unwrap()
}

#[test]
fn shipped_distilled_config_parses_and_validates() {
    let s = shipped_scheduler();
    let c = s.config();
    assert!(c.use_dynamic_shifting);
    assert_eq!(c.stages, 3);
    assert!(
        c.unknown_keys().is_empty(),
        "unknown keys {:?}",
        c.unknown_keys()
    );
}

#[test]
fn ori_start_sigmas_match_diffusers() {
    let r = Reference::open("scheduler_distilled.safetensors");
    let (shape, want) = r.f64s("ori_start_sigmas");
    assert_eq!(shape, vec![3]);
    let err = assert_close(
        "ori_start_sigmas",
        shipped_scheduler().ori_start_sigmas(),
        &want,
        TABLE_TOL,
    );
    eprintln!("ori_start_sigmas max abs error {err:e}");
}

#[test]
fn mu_matches_diffusers_for_each_stage() {
    let r = Reference::open("scheduler_distilled.safetensors");
    let s = shipped_scheduler();
    for (stage, &len) in FIXTURE_MU_SEQ_LENS.iter().enumerate() {
        let (_, want) = r.f64s(&format!("stage{stage}.mu"));
        let err = assert_close(
            &format!("stage{stage}.mu"),
            &[s.calculate_shift(len)],
            &want,
            TABLE_TOL,
        );
        eprintln!("stage{stage}.mu max abs error {err:e}");
    }
}

#[test]
fn global_table_matches_diffusers_init_sigmas() {
    let r = Reference::open("scheduler_distilled.safetensors");
    let s = shipped_scheduler();
    let t = s.tables();
    for (key, got) in [("init.sigmas", &t.sigmas), ("init.timesteps", &t.timesteps)] {
        let err = assert_close(key, got, &r.f64s(key).1, TABLE_TOL);
        eprintln!("{key} max abs error {err:e}");
    }
    let ends = [t.sigmas[t.sigmas.len() - 1], t.sigmas[0]];
    assert_close(
        "sigma_min, sigma_max",
        &ends,
        &[r.f64s("sigma_min").1[0], r.f64s("sigma_max").1[0]],
        TABLE_TOL,
    );
}

#[test]
fn stage_tables_match_diffusers_init_sigmas_for_each_stage() {
    let r = Reference::open("scheduler_distilled.safetensors");
    let s = shipped_scheduler();
    let t = s.tables();
    let ratios: Vec<f64> = t
        .timestep_ratios
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .collect();
    let mut worst = 0.0f64;
    worst = worst.max(assert_close(
        "start_sigmas",
        &t.start_sigmas,
        &r.f64s("start_sigmas").1,
        TABLE_TOL,
    ));
    worst = worst.max(assert_close(
        "end_sigmas",
        &t.end_sigmas,
        &r.f64s("end_sigmas").1,
        TABLE_TOL,
    ));
    worst = worst.max(assert_close(
        "timestep_ratios",
        &ratios,
        &r.f64s("timestep_ratios").1,
        TABLE_TOL,
    ));
    for stage in 0..3 {
        for (key, got) in [
            (
                format!("timesteps_per_stage.{stage}"),
                &t.timesteps_per_stage[stage],
            ),
            (
                format!("sigmas_per_stage.{stage}"),
                &t.sigmas_per_stage[stage],
            ),
        ] {
            worst = worst.max(assert_close(&key, got, &r.f64s(&key).1, TABLE_TOL));
        }
    }
    eprintln!("stage tables max abs error {worst:e}");
}

#[test]
fn renoise_coeffs_match_diffusers_pipeline() {
    let r = Reference::open("scheduler_distilled.safetensors");
    let s = shipped_scheduler();
    for stage in 1..3 {
        let (alpha, beta) = s.stage_renoise_coeffs(stage);
        let want = [
            r.f64s(&format!("stage{stage}.renoise_alpha")).1[0],
            r.f64s(&format!("stage{stage}.renoise_beta")).1[0],
        ];
        let err = assert_close(
            &format!("stage{stage} renoise"),
            &[alpha, beta],
            &want,
            TABLE_TOL,
        );
        eprintln!("stage{stage} renoise (alpha, beta) max abs error {err:e}");
    }
}

#[test]
fn model_timesteps_match_diffusers_int64_cast() {
    let r = Reference::open("scheduler_distilled.safetensors");
    let s = shipped_scheduler();
    for stage in 0..3 {
        let mu = r.f64s(&format!("stage{stage}.mu")).1[0];
        for amp in [false, true] {
            let sched = s.set_timesteps(2, stage, Some(mu), amp).unwrap();
            let got: Vec<f64> = sched.timesteps.iter().map(|&t| model_timestep(t)).collect();
            let key = format!("amp{}.stage{stage}.model_timesteps", amp as u8);
            assert_eq!(got, r.f64s(&key).1, "{key}");
        }
    }
}

/// Checks the timesteps or sigmas of `stage` for both chunk kinds against diffusers.
fn check_stage_against_diffusers(stage: usize, which: &str) {
    let r = Reference::open("scheduler_distilled.safetensors");
    let s = shipped_scheduler();
    let (_, mu) = r.f64s(&format!("stage{stage}.mu"));
    for amp in [false, true] {
        let sched = s.set_timesteps(2, stage, Some(mu[0]), amp).unwrap();
        let key = format!("amp{}.stage{stage}.{which}", amp as u8);
        let (_, want) = r.f64s(&key);
        let got = if which == "timesteps" {
            &sched.timesteps
        } else {
            &sched.sigmas
        };
        let err = assert_close(&key, got, &want, TABLE_TOL);
        eprintln!("{key} max abs error {err:e}");
    }
}

#[test]
fn timesteps_match_diffusers_distilled_stage_0() {
    check_stage_against_diffusers(0, "timesteps");
}

#[test]
fn timesteps_match_diffusers_distilled_stage_1() {
    check_stage_against_diffusers(1, "timesteps");
}

#[test]
fn timesteps_match_diffusers_distilled_stage_2() {
    check_stage_against_diffusers(2, "timesteps");
}

#[test]
fn sigmas_match_diffusers_distilled_stage_0() {
    check_stage_against_diffusers(0, "sigmas");
}

#[test]
fn sigmas_match_diffusers_distilled_stage_1() {
    check_stage_against_diffusers(1, "sigmas");
}

#[test]
fn sigmas_match_diffusers_distilled_stage_2() {
    check_stage_against_diffusers(2, "sigmas");
}

// ---------------------------------------------------------------------------------------------
// The tiny pipeline run (gamma = 0.3333, 64×128, pyramid [2,2,2], amplified first chunk)

/// Stage-0 latent of the tiny run: 9 frames at 64×128 → latent 8×16, downsampled twice to 2×4.
const TINY_STAGE0_LATENT: [usize; 3] = [9, 2, 4];
const PATCH_SIZE: [usize; 3] = [1, 2, 2];

fn tiny_scheduler() -> HeliosDMDScheduler {
    let path = fixture("tiny-helios-distilled/scheduler/scheduler_config.json");
    HeliosDMDScheduler::new(HeliosDMDSchedulerConfig::from_file(&path).unwrap()).unwrap()
}

#[test]
fn tiny_pipeline_schedules_match_diffusers() {
    let r = Reference::open("pipeline_distilled.safetensors");
    let s = tiny_scheduler();
    let mut worst = 0.0f64;
    for chunk in 0..2 {
        for stage in 0..3 {
            let len = pyramid_image_seq_len(stage, TINY_STAGE0_LATENT, PATCH_SIZE);
            let sched = s
                .set_timesteps(2, stage, Some(s.calculate_shift(len)), chunk == 0)
                .unwrap();
            let key = format!("chunk{chunk}.stage{stage}");
            let (_, t) = r.f64s(&format!("{key}.timesteps"));
            let (_, sigma) = r.f64s(&format!("{key}.sigmas"));
            worst = worst.max(assert_close(
                &format!("{key}.timesteps"),
                &sched.timesteps,
                &t,
                TABLE_TOL,
            ));
            worst = worst.max(assert_close(
                &format!("{key}.sigmas"),
                &sched.sigmas,
                &sigma,
                TABLE_TOL,
            ));
        }
    }
    eprintln!("tiny pipeline schedules max abs error {worst:e}");
}

/// `noise = z @ Lᵀ` laid out as diffusers' `view(B,C,T,h/2,w/2,2,2).permute(0,1,2,3,5,4,6)`.
fn correlate_blocks(l: &[[f64; 4]; 4], z: &[f64], c_t: usize, h: usize, w: usize) -> Vec<f64> {
    let (hb, wb) = (h / 2, w / 2);
    let mut out = vec![0.0; c_t * h * w];
    for ct in 0..c_t {
        for a in 0..hb {
            for b in 0..wb {
                let block = (ct * hb + a) * wb + b;
                let zb = &z[block * 4..block * 4 + 4];
                for p in 0..2 {
                    for q in 0..2 {
                        let k = 2 * p + q;
                        let v: f64 = (0..4).map(|j| l[k][j] * zb[j]).sum();
                        out[(ct * h + 2 * a + p) * w + 2 * b + q] = v;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn block_noise_matches_diffusers_tiny_pipeline() {
    let r = Reference::open("pipeline_distilled.safetensors");
    let l = block_noise_factor(tiny_scheduler().config().gamma);
    let mut worst = 0.0f64;
    for chunk in 0..2 {
        for stage in 1..3 {
            let key = format!("chunk{chunk}.stage{stage}");
            let (_, z) = r.f64s(&format!("{key}.block_noise"));
            let (shape, want) = r.f64s(&format!("{key}.block_noise_correlated"));
            let (h, w) = (shape[3], shape[4]);
            let got = correlate_blocks(&l, &z, shape[1] * shape[2], h, w);
            worst = worst.max(max_abs_diff_slice(&got, &want));
        }
    }
    eprintln!("block noise max abs error {worst:e}");
    assert!(
        worst <= BLOCK_NOISE_TOL,
        "block noise max abs error {worst:e}"
    );
}
