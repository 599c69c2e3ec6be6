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
