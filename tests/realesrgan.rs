//! Real-ESRGAN SRVGGNetCompact against the `realesrgan` 0.3.0 wheel's PyTorch class
//! (`tests/fixtures/make_esrgan.py`: a narrow x4 model with torch-initialised weights), and the
//! tiled forward equal to the untiled one.

mod common;

use common::{Reference, TestBackend, fixture, max_abs_diff};
use omni::postprocess::realesrgan::{SRVGGNetCompact, UpscaleError};

/// Max abs error against PyTorch (f32 convolutions, different summation order).
const ESRGAN_TOL: f64 = 1e-4;

fn net() -> SRVGGNetCompact<TestBackend> {
    SRVGGNetCompact::load(&fixture("esrgan/srvgg_x4.pth"), &Default::default()).unwrap()
}

#[test]
fn srvgg_matches_realesrgan() {
    let net = net();
    assert_eq!(net.upscale, 4);
    let reference = Reference::open("esrgan.safetensors");
    let device = Default::default();
    let x = reference.tensor::<TestBackend, 4>("srvgg.input", &device);
    let want = reference.tensor::<TestBackend, 4>("srvgg.out", &device);
    let got = net.forward(x);
    assert_eq!(got.dims(), [1, 3, 160, 224]);
    let err = max_abs_diff(got, want);
    eprintln!("SRVGGNetCompact x4 max abs error vs realesrgan: {err:.3e}");
    assert!(err <= ESRGAN_TOL, "{err}");
}

#[test]
fn tiled_upscale_equals_untiled() {
    let net = net();
    let reference = Reference::open("esrgan.safetensors");
    let x = reference.tensor::<TestBackend, 4>("srvgg.input", &Default::default());
    let full = net.forward(x.clone());
    // Tiles of 16 (uneven at the right / bottom border) with a border of the receptive radius.
    let tiled = net.forward_tiled(x.clone(), 16, net.receptive_radius());
    let err = max_abs_diff(tiled, full.clone());
    eprintln!(
        "tiled (16, pad {}) vs untiled: {err:.3e}",
        net.receptive_radius()
    );
    assert!(err <= ESRGAN_TOL, "{err}");
    // Without context the seams show: the test can fail.
    let seams = max_abs_diff(net.forward_tiled(x, 16, 0), full);
    assert!(seams > 1e-3, "{seams}");
}

#[test]
fn an_rrdbnet_or_other_file_is_refused_naming_it() {
    let e = SRVGGNetCompact::<TestBackend>::load(&fixture("rife/flownet.pkl"), &Default::default())
        .unwrap_err();
    let UpscaleError::File { path, message } = &e;
    assert!(path.ends_with("flownet.pkl"), "{e}");
    assert!(message.contains("SRVGGNetCompact"), "{e}");
}

/// basicsr `RRDBNet` x4 (`params_ema`) and x2 (`params`, pixel-unshuffle input), picked by
/// [`Upscaler::load`] from the keys.
#[test]
fn rrdbnet_matches_basicsr_at_x4_and_x2() {
    use omni::postprocess::realesrgan::{Upscaler, native_scale};
    let reference = Reference::open("rrdbnet.safetensors");
    let device = Default::default();
    let x = reference.tensor::<TestBackend, 4>("rrdb.input", &device);
    for (file, scale, out) in [
        ("esrgan/rrdb_x4.pth", 4, "rrdb_x4.out"),
        ("esrgan/rrdb_x2.pth", 2, "rrdb_x2.out"),
    ] {
        assert_eq!(native_scale(&fixture(file)).unwrap(), scale);
        let net = Upscaler::<TestBackend>::load(&fixture(file), &device).unwrap();
        assert!(matches!(net, Upscaler::Rrdb(_)), "{file}");
        assert_eq!(net.scale(), scale);
        let want = reference.tensor::<TestBackend, 4>(out, &device);
        let got = net.forward(x.clone());
        assert_eq!(got.dims(), want.dims());
        let err = max_abs_diff(got, want);
        eprintln!("RRDBNet x{scale} max abs error vs basicsr: {err:.3e}");
        assert!(err <= ESRGAN_TOL, "{file}: {err}");
    }
    assert_eq!(native_scale(&fixture("esrgan/srvgg_x4.pth")).unwrap(), 4);
    let compact = Upscaler::<TestBackend>::load(&fixture("esrgan/srvgg_x4.pth"), &device).unwrap();
    assert!(matches!(compact, Upscaler::Compact(_)));
}

#[test]
fn tiled_rrdbnet_equals_untiled() {
    use burn::tensor::{Distribution, Tensor};
    use omni::postprocess::realesrgan::Upscaler;
    let device = Default::default();
    for file in ["esrgan/rrdb_x4.pth", "esrgan/rrdb_x2.pth"] {
        let net = Upscaler::<TestBackend>::load(&fixture(file), &device).unwrap();
        let pad = net.receptive_radius();
        // Larger than the receptive field, so the tiles really are cut.
        let (h, w) = (2 * pad + 20, 2 * pad + 36);
        let x = Tensor::<TestBackend, 4>::random(
            [1, 3, h, w],
            Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let full = net.forward(x.clone());
        let tiled = net.forward_tiled(x.clone(), 32, pad);
        let err = max_abs_diff(tiled, full.clone());
        eprintln!("{file}: tiled (32, pad {pad}) vs untiled at {w}x{h}: {err:.3e}");
        assert!(err <= ESRGAN_TOL, "{file}: {err}");
        let seams = max_abs_diff(net.forward_tiled(x, 32, 0), full);
        assert!(seams > 1e-4, "{file}: {seams}");
    }
}

/// x2 from a x4 network: its output averaged over 2x2 blocks, clamped to [0, 1].
#[test]
fn x2_from_a_x4_model_is_the_box_average() {
    use burn::tensor::module::avg_pool2d;
    use omni::postprocess::realesrgan::{Upscaler, check_factor};
    let device = Default::default();
    let net = Upscaler::<TestBackend>::load(&fixture("esrgan/srvgg_x4.pth"), &device).unwrap();
    let reference = Reference::open("esrgan.safetensors");
    let x = reference.tensor::<TestBackend, 4>("srvgg.input", &device);
    let want =
        avg_pool2d(net.forward(x.clone()), [2, 2], [2, 2], [0, 0], true, false).clamp(0.0, 1.0);
    let got = net.upscale_frames(x, 2);
    assert_eq!(got.dims(), [1, 3, 80, 112]);
    let err = max_abs_diff(got, want);
    assert!(err <= ESRGAN_TOL, "{err}");
    assert!(check_factor(4, 2).is_ok() && check_factor(4, 4).is_ok());
    assert!(check_factor(2, 4).is_err() && check_factor(4, 3).is_err());
}
