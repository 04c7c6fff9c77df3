"""DICOM through THE decoder (mmtrt.data.load_image / read_image): the grayscale pipeline checked
value by value against the DICOM formulas on synthetic X-rays written with pydicom (12 bits in
16, signed, rescale + window, VOI LUT Sequence, MONOCHROME1, Presentation LUT Shape INVERSE, big
endian, implicit VR, no preamble, RLE / JPEG 2000 / JPEG-LS encoded by pydicom, JPEG baseline
encoded by Pillow and encapsulated), and pydicom's own test files accepted or refused."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pydicom
import pytest
from dicom_fixtures import jpeg_baseline, pydicom_file, save, xray_dataset, xray_pixels
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from mmtrt.data import ClassificationFolder, DataError, load_image, read_image
from mmtrt.data.dicom import DicomWarning
from mmtrt.data.images import EncodedFile

N = 256  # native size = the model's: no resampling, so values can be compared exactly


@pytest.fixture(scope="module")
def twelve() -> np.ndarray:
    """A synthetic X-ray as 12-bit stored values (0..4095), 256 x 256."""
    return np.round(xray_pixels(3, (N, N)) / 255.0 * 4095).astype(np.uint16)


def _load(ds, tmp_path, name="x.dcm", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomWarning)  # a DX file must not warn
        return load_image(save(ds, tmp_path / name, **kw))


def _linear_window(x, c, w):
    """PS3.3 C.11.2.1.2.1 LINEAR, output range [0, 1]."""
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def test_monochrome2_twelve_bits_in_sixteen(tmp_path, twelve):
    x = _load(xray_dataset(twelve), tmp_path)
    np.testing.assert_allclose(x, twelve / 4095.0, atol=1e-6)  # Bits Stored 12: / 4095
    assert x.max() > 0.9  # not /65535 (nearly black)


def test_monochrome1_is_inverted(tmp_path, twelve):
    x = _load(xray_dataset(4095 - twelve, photometric="MONOCHROME1"), tmp_path)
    np.testing.assert_allclose(x, twelve / 4095.0, atol=1e-6)


def test_presentation_lut_shape_inverse(tmp_path, twelve):
    x = _load(xray_dataset(twelve, PresentationLUTShape="INVERSE"), tmp_path, "m2.dcm")
    np.testing.assert_allclose(x, 1.0 - twelve / 4095.0, atol=1e-6)
    # MONOCHROME1 + INVERSE (what the DX IOD requires of MONOCHROME1): one inversion, not two
    ds = xray_dataset(4095 - twelve, photometric="MONOCHROME1", PresentationLUTShape="INVERSE")
    np.testing.assert_allclose(_load(ds, tmp_path, "m1.dcm"), twelve / 4095.0, atol=1e-6)
    ds = xray_dataset(twelve, PresentationLUTShape="IDENTITY")
    np.testing.assert_allclose(_load(ds, tmp_path, "id.dcm"), twelve / 4095.0, atol=1e-6)


def test_rescale_then_window(tmp_path, twelve):
    c, w = 3996.0, 4000.0  # in rescaled units
    ds = xray_dataset(twelve, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=c, WindowWidth=w)
    d = read_image(save(ds, tmp_path / "x.dcm"))
    expected = _linear_window(2.0 * twelve - 100.0, c, w)
    np.testing.assert_allclose(d.pixels, expected, atol=1e-5)
    # without the rescale the window would clip most of the image
    assert np.abs(_linear_window(twelve.astype(float), c, w) - expected).mean() > 0.2
    assert "slope 2, intercept -100" in d.meta.normalisation
    assert "[-100, 8090] -> [0, 1]" in d.meta.normalisation  # the VOI output range


def test_first_window_and_its_function(tmp_path, twelve):
    ds = xray_dataset(twelve, WindowCenter=[2048, 1000], WindowWidth=[1024, 300])
    np.testing.assert_allclose(_load(ds, tmp_path, "a.dcm"), _linear_window(twelve, 2048, 1024), atol=1e-5)
    ds = xray_dataset(twelve, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    expected = 1.0 / (1.0 + np.exp(-4.0 * (twelve - 2048.0) / 1024))  # C.11.2.1.3.1
    np.testing.assert_allclose(_load(ds, tmp_path, "s.dcm"), expected, atol=1e-5)


def _voi_lut_item(lut: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(lut), 0, bits]
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUT Data
    return item


def test_voi_lut_sequence_wins_over_the_window(tmp_path, twelve):
    lut = np.round(4095 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint16)  # a gamma curve
    ds = xray_dataset(twelve, WindowCenter=2048, WindowWidth=512)
    ds.VOILUTSequence = [_voi_lut_item(lut, 12)]
    d = read_image(save(ds, tmp_path / "x.dcm"))
    np.testing.assert_allclose(d.pixels, lut[twelve] / 4095.0, atol=1e-6)
    assert np.abs(d.pixels - _linear_window(twelve, 2048, 512)).mean() > 0.1
    assert "VOI LUT Sequence" in d.meta.normalisation
    # a LUT with 8-bit entries: its output range is [0, 255]
    ds.VOILUTSequence = [_voi_lut_item((lut // 16).astype(np.uint16), 8)]
    np.testing.assert_allclose(_load(ds, tmp_path, "y.dcm"), (lut // 16)[twelve] / 255.0, atol=1e-6)


@pytest.mark.parametrize("bits,allocated", [(8, 8), (10, 16), (16, 16)])
def test_bits_stored(tmp_path, bits, allocated):
    px = xray_pixels(4, (N, N)).astype(np.float64)
    stored = np.round(px / 255.0 * (2**bits - 1)).astype(np.uint16)
    x = _load(xray_dataset(stored, bits_stored=bits, bits_allocated=allocated), tmp_path)
    np.testing.assert_allclose(x, stored / (2**bits - 1), atol=1e-6)


def test_signed_pixel_representation(tmp_path, twelve):
    signed = twelve.astype(np.int16) - 2048  # -2048..2047
    assert signed.min() < 0
    x = _load(xray_dataset(signed, signed=True), tmp_path)
    np.testing.assert_allclose(x, twelve / 4095.0, atol=1e-6)  # range [-2048, 2047] -> [0, 1]
    # signed with a rescale and a window in rescaled units
    ds = xray_dataset(
        signed, signed=True, RescaleSlope=1, RescaleIntercept=1000, WindowCenter=900, WindowWidth=2000
    )
    np.testing.assert_allclose(
        _load(ds, tmp_path, "w.dcm"), _linear_window(signed + 1000.0, 900, 2000), atol=1e-5
    )


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, ImplicitVRLittleEndian])
def test_byte_order_and_vr_encoding(tmp_path, twelve, syntax):
    ds = xray_dataset(twelve, syntax=syntax)
    d = read_image(save(ds, tmp_path / "x.dcm"))
    np.testing.assert_allclose(d.pixels, twelve / 4095.0, atol=1e-6)
    assert d.meta.transfer_syntax_uid == str(syntax)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_no_preamble_no_meta_header(tmp_path, twelve, syntax):
    kw = {} if syntax is None else {"syntax": syntax}
    for name in ("raw.dcm", "raw_without_extension"):  # by extension, and by trying pydicom
        path = save(xray_dataset(twelve, **kw), tmp_path / name, preamble=False)
        assert path.read_bytes()[128:132] != b"DICM"
        with pytest.raises(pydicom.errors.InvalidDicomError):
            pydicom.dcmread(path)  # pydicom alone, without force=True, refuses it
        np.testing.assert_allclose(load_image(path), twelve / 4095.0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_lossless_compressed_equal_the_uncompressed(tmp_path, twelve, syntax):
    ds = xray_dataset(twelve)
    ds.compress(syntax)  # pydicom's encoders (native RLE, pylibjpeg-openjpeg, pyjpegls)
    d = read_image(save(ds, tmp_path / "x.dcm"))
    assert d.meta.transfer_syntax_uid == str(syntax)
    np.testing.assert_allclose(d.pixels, twelve / 4095.0, atol=1e-6)


def test_jpeg_baseline(tmp_path):
    px = xray_pixels(5, (N, N))
    ds = jpeg_baseline(xray_dataset(px.astype(np.uint16), bits_stored=8, bits_allocated=8), px)
    d = read_image(save(ds, tmp_path / "x.dcm"))
    assert d.meta.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    err = np.abs(d.pixels - px / 255.0)
    print(f"\nJPEG baseline q95 vs the original: mean abs error {err.mean() * 255:.2f} grey levels")
    assert err.mean() < 2 / 255 and err.max() < 40 / 255
    # the same stream decoded by Pillow alone: identical but for decoder rounding
    import io

    from pydicom.encaps import generate_frames

    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    pil = np.asarray(Image.open(io.BytesIO(stream)).convert("L")) / 255.0
    assert np.abs(d.pixels - pil).max() <= 2 / 255


def test_pydicom_variants_of_one_image_agree():
    """MR_small as stored uncompressed, big-endian, implicit, RLE, JPEG 2000 and JPEG-LS: one
    result (each accepted with the not-a-radiograph warning)."""
    ref = None
    for name in (
        "MR_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ):
        with pytest.warns(DicomWarning, match="Modality MR is not a radiograph"):
            d = read_image(pydicom_file(name), size=64)
        assert d.meta.modality == "MR" and d.meta.rows == d.meta.columns == 64
        assert any("MR" in w for w in d.meta.warnings)
        if ref is None:
            ref = d.pixels
            # window 600 / 1600 on the stored values (MR_small has no rescale)
            raw = pydicom.dcmread(pydicom_file(name)).pixel_array.astype(np.float64)
            np.testing.assert_allclose(ref, _linear_window(raw, 600, 1600), atol=1e-5)
        else:
            np.testing.assert_array_equal(d.pixels, ref, err_msg=name)


def test_ct_without_window_uses_the_stored_range():
    with pytest.warns(DicomWarning, match="Modality CT"):
        d = read_image(pydicom_file("CT_small.dcm"), size=128)
    raw = pydicom.dcmread(pydicom_file("CT_small.dcm")).pixel_array.astype(np.float64)
    # signed 16 bits, intercept -1024: range [-32768 - 1024, 32767 - 1024]
    np.testing.assert_allclose(d.pixels, (raw + 32768) / 65535, atol=1e-6)
    assert d.meta.pixel_spacing_source == "PixelSpacing"


def test_jpeg_extended_twelve_bit():
    with pytest.warns(DicomWarning, match="Modality NM"):
        d = read_image(pydicom_file("JPGExtended.dcm"))
    raw = pydicom.dcmread(pydicom_file("JPGExtended.dcm")).pixel_array
    assert d.meta.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
    ref = Image.fromarray((raw / 4095.0).astype(np.float32)).resize((256, 256), Image.BILINEAR)
    np.testing.assert_allclose(d.pixels, np.asarray(ref), atol=1e-6)  # Bits Stored 12: / 4095


@pytest.mark.parametrize(
    "name,problem",
    [
        ("reportsi.dcm", "no Pixel Data: Basic Text SR Storage"),
        ("rtplan.dcm", "no Pixel Data: RT Plan Storage"),
        ("ExplVR_LitEndNoMeta.dcm", "no Pixel Data: RT Ion Plan Storage"),
        ("SC_rgb_rle.dcm", "colour image (Photometric Interpretation RGB"),
        ("SC_rgb_jpeg_dcmtk.dcm", "colour image (Photometric Interpretation YBR_FULL,"),
        ("examples_palette.dcm", "colour image (Photometric Interpretation PALETTE COLOR"),
        ("SC_rgb_rle_2frame.dcm", "multi-frame image (2 frames)"),
        ("MR_truncated.dcm", "truncated pixel data"),
        ("no_meta.dcm", "not a DICOM file"),
        ("liver_1frame.dcm", "Bits Stored 1 is not supported"),
        ("rtdose_1frame.dcm", "Bits Stored 32 is not supported"),
        ("JPEG2000.dcm", "no contrast"),  # NM, no window: its values fill 0.03% of 16 bits
    ],
)
def test_pydicom_test_files_refused(name, problem):
    path = pydicom_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        with pytest.raises(DataError) as e:
            load_image(path)
    assert str(e.value).startswith(f"{path}: ")
    assert problem in e.value.problem, e.value.problem
    if "colour" in problem:
        assert "chest radiographs are grayscale" in e.value.problem


def test_synthetic_refusals(tmp_path, twelve):
    # a grayscale multi-frame image
    two = np.concatenate([twelve, twelve])
    ds = xray_dataset(two, NumberOfFrames=2)
    ds.Rows = N
    with pytest.raises(DataError, match="multi-frame image \\(2 frames\\)"):
        load_image(save(ds, tmp_path / "two.dcm"))
    # truncated: half the file
    good = save(xray_dataset(twelve), tmp_path / "good.dcm")
    data = good.read_bytes()
    for frac in (0.02, 0.5, 0.99):
        cut = tmp_path / f"cut{frac}.dcm"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(DataError) as e:
            load_image(cut)
        assert "truncated" in e.value.problem, (frac, e.value.problem)
    # a constant image
    with pytest.raises(DataError, match="no contrast: all black"):
        load_image(save(xray_dataset(np.zeros((N, N), np.uint16)), tmp_path / "black.dcm"))
    # a transfer syntax pydicom has no decoder for
    ds = xray_dataset(twelve)
    ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    with pytest.raises(
        DataError,
        match=r"transfer syntax MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\) cannot be decoded",
    ):
        load_image(save(ds, tmp_path / "mpeg.dcm"))
    # a text file named .dcm
    (tmp_path / "text.dcm").write_text("not dicom\n" * 20)
    with pytest.raises(DataError, match="not a DICOM file"):
        load_image(tmp_path / "text.dcm")


def test_missing_decoder_plugin_names_the_package(tmp_path, twelve):
    from pydicom.pixels.decoders.base import JPEGLSLosslessDecoder as decoder

    ds = xray_dataset(twelve)
    ds.compress(JPEGLSLossless)
    path = save(ds, tmp_path / "jls.dcm")
    plugins = [p for p in ("pyjpegls", "pylibjpeg") if p in decoder.available_plugins]
    for p in plugins:  # the real decoder, without its available plugins
        decoder.remove_plugin(p)
    try:
        with pytest.raises(DataError) as e:
            load_image(path)
    finally:
        for p in plugins:
            decoder.add_plugin(p, (f"pydicom.pixels.decoders.{p}", "_decode_frame"))
    assert "transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in e.value.problem
    assert "pip install pyjpegls" in e.value.problem
    np.testing.assert_allclose(load_image(path), twelve / 4095.0, atol=1e-6)  # restored


def test_other_modalities_accepted_with_a_warning(tmp_path, twelve):
    with pytest.warns(DicomWarning, match="Modality CT is not a radiograph \\(CR/DX\\)"):
        d = read_image(save(xray_dataset(twelve, modality="CT"), tmp_path / "ct.dcm"))
    np.testing.assert_allclose(d.pixels, twelve / 4095.0, atol=1e-6)
    assert len(d.meta.warnings) == 1
    for modality in ("CR", "DX"):
        _load(xray_dataset(twelve, modality=modality), tmp_path, f"{modality}.dcm")  # no warning


def test_metadata(tmp_path, twelve):
    native = np.round(xray_pixels(6, (300, 240)) / 255 * 4095).astype(np.uint16)
    ds = xray_dataset(native)
    d = read_image(save(ds, tmp_path / "x.dcm"))
    m = d.meta
    assert (m.rows, m.columns) == (300, 240) and d.pixels.shape == (256, 256)
    assert m.pixel_spacing_mm == (0.175, 0.175) and m.pixel_spacing_source == "ImagerPixelSpacing"
    assert m.view_position == "PA" and m.modality == "DX" and m.is_dicom
    assert (m.study_instance_uid, m.series_instance_uid, m.sop_instance_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    # resampled like any other image: the native [0, 1] values through the same bilinear resize
    ref = np.asarray(Image.fromarray((native / 4095.0).astype(np.float32)).resize((256, 256), Image.BILINEAR))
    np.testing.assert_allclose(d.pixels, ref, atol=1e-6)
    # calibrated Pixel Spacing is preferred over Imager Pixel Spacing
    ds.PixelSpacing = [0.143, 0.139]
    m = read_image(save(ds, tmp_path / "y.dcm")).meta
    assert m.pixel_spacing_mm == (0.143, 0.139) and m.pixel_spacing_source == "PixelSpacing"
    assert m.to_dict()["pixel_spacing_mm"] == [0.143, 0.139]
    # other formats: size and format, no DICOM fields
    png = tmp_path / "x.png"
    Image.fromarray(xray_pixels(6, (300, 240))).save(png)
    m = read_image(png).meta
    assert (m.format, m.rows, m.columns, m.sop_instance_uid) == ("PNG", 300, 240, None)


def test_training_loaders_read_dicom(tmp_path, twelve):
    for k, label in enumerate(("NORMAL", "PNEUMONIA")):
        (tmp_path / label).mkdir()
        stored = np.round(xray_pixels(10 + k, (N, N)) / 255 * 4095).astype(np.uint16)
        save(xray_dataset(stored), tmp_path / label / f"img{k}.dcm")
    (tmp_path / "NORMAL" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    data = ClassificationFolder(tmp_path, on_bad="skip")
    assert len(data) == 2 and len(data.skipped) == 1
    image, label = data[1]
    assert label == 1 and image.shape == (1, N, N)
    np.testing.assert_array_equal(image[0].numpy(), load_image(data.paths[1]))


def test_files_are_read_by_content(tmp_path):
    png = tmp_path / "png-named.dcm"
    Image.fromarray(xray_pixels(7, (64, 64))).save(png, format="PNG")
    d = read_image(png)
    assert d.meta.format == "PNG"
    np.testing.assert_array_equal(d.pixels, load_image(_copy(png, tmp_path / "same.png")))


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_hostile_dicom_files_fail_clearly(tmp_path, twelve):
    """Broken, truncated and lying DICOM files: each a DataError naming the file, nothing else."""
    rng = np.random.default_rng(0)
    plain = save(xray_dataset(twelve), tmp_path / "plain.dcm").read_bytes()
    ds = xray_dataset(twelve)
    ds.compress(JPEG2000Lossless)
    j2k = save(ds, tmp_path / "j2k.dcm").read_bytes()
    ds = xray_dataset(twelve)
    ds.compress(RLELossless)
    rle = save(ds, tmp_path / "rle.dcm").read_bytes()
    cases = {
        "empty.dcm": b"",
        "preamble-only.dcm": bytes(128) + b"DICM",
        "random.dcm": bytes(rng.integers(0, 256, 5000, dtype=np.uint8)),
        "dicm-random.dcm": bytes(128) + b"DICM" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8)),
        "random-noext": bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
    }
    for name, data in (("plain", plain), ("j2k", j2k), ("rle", rle)):
        for frac in (0.01, 0.05, 0.3, 0.7, 0.999):
            cases[f"{name}-cut{frac}.dcm"] = data[: int(len(data) * frac)]
        corrupt = bytearray(data)
        at = len(data) - 2000
        corrupt[at : at + 64] = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
        cases[f"{name}-corrupt.dcm"] = bytes(corrupt)  # the decoders may or may not notice
    big = xray_dataset(twelve[:8, :8])
    big.Rows = big.Columns = 60000  # claims 3.6 Gpx
    cases["bomb.dcm"] = save(big, tmp_path / "big.dcm").read_bytes()
    problems = []
    for name, data in cases.items():
        path = tmp_path / "cases" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        # the file, and the same bytes in memory (what the served multimix_image decodes)
        for source, label in ((path, name), (EncodedFile(data, f"image {name}"), f"{name} in memory")):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_image(source)
                if "corrupt" not in name:
                    problems.append(f"{label}: loaded")
            except DataError as e:
                if not str(e).startswith(f"{source}: "):
                    problems.append(f"{label}: {e}")
            except Exception as e:  # noqa: BLE001 - anything else is a finding
                problems.append(f"{label}: {type(e).__name__}: {e}")
    print(f"\n{len(cases)} hostile DICOM files, from disk and in memory: {len(problems)} problems")
    assert not problems, "\n".join(problems)
    with pytest.raises(DataError, match="possible decompression bomb \\(60000 x 60000"):
        load_image(tmp_path / "cases" / "bomb.dcm")
    with pytest.raises(DataError, match="^image 0: .*possible decompression bomb \\(60000 x 60000"):
        load_image(EncodedFile(cases["bomb.dcm"], "image 0"))


def test_bytes_in_memory_decode_as_the_file(tmp_path, twelve):
    """A DICOM file's bytes in memory (EncodedFile: no extension to go by) decode as the file:
    with and without preamble and meta header, inverted, compressed, big endian."""
    mono1 = xray_dataset(4095 - twelve, photometric="MONOCHROME1", modality="CR")
    j2k = xray_dataset(twelve)
    j2k.compress(JPEG2000Lossless)
    files = {
        "dx12.dcm": save(xray_dataset(twelve, WindowCenter=1800, WindowWidth=3000), tmp_path / "dx12.dcm"),
        "cr-mono1.dcm": save(mono1, tmp_path / "cr-mono1.dcm"),
        "j2k.dcm": save(j2k, tmp_path / "j2k.dcm"),
        "jpeg.dcm": save(jpeg_baseline(xray_dataset(twelve), xray_pixels(5, (N, N))), tmp_path / "jpeg.dcm"),
        "big-endian.dcm": save(xray_dataset(twelve, syntax=ExplicitVRBigEndian), tmp_path / "be.dcm"),
        "bare.dcm": save(
            xray_dataset(twelve, syntax=ImplicitVRLittleEndian), tmp_path / "bare.dcm", preamble=False
        ),
    }
    for name, path in files.items():
        want = read_image(path)
        got = read_image(EncodedFile(path.read_bytes(), name))
        np.testing.assert_array_equal(got.pixels, want.pixels, err_msg=name)
        assert got.meta == want.meta and got.meta.format == "DICOM", name


def _lut_item(descriptor_vr: str, descriptor: list, lut_entries: int = 4096) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, descriptor_vr, descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "US", list(range(lut_entries)))  # LUT Data
    return item


@pytest.mark.parametrize(
    "sequence,descriptor_vr,descriptor,problem",
    [
        ("VOILUTSequence", "UL", [4096, 0, 4_000_000_000], "VOI LUT: LUT Descriptor bits 4000000000"),
        ("ModalityLUTSequence", "UL", [4096, 0, 4_000_000_000], "Modality LUT: LUT Descriptor bits"),
        ("VOILUTSequence", "UV", [4096, 0, 2**40], "VOI LUT: LUT Descriptor bits 1099511627776"),
        ("VOILUTSequence", "IS", ["4096", "0", "4000000000"], "VOI LUT: LUT Descriptor bits"),
        ("ModalityLUTSequence", "IS", ["4096", "0", "99999999999"], "Modality LUT: LUT Descriptor bits"),
        ("VOILUTSequence", "UL", [4_000_000_000, 0, 12], "VOI LUT: LUT Descriptor entries 4000000000"),
        ("VOILUTSequence", "SL", [4096, -2_000_000_000, 12], "VOI LUT: LUT Descriptor first mapped value"),
        ("VOILUTSequence", "US", [4096, 0], "VOI LUT: LUT Descriptor has 2 values"),
        ("ModalityLUTSequence", "US", [4096, 0, 4], "Modality LUT: LUT Descriptor bits 4 outside 8..16"),
    ],
)
def test_hostile_lut_descriptors_are_refused_at_once(
    tmp_path, twelve, sequence, descriptor_vr, descriptor, problem
):
    """A LUT Descriptor is bounded before anything is computed from it (a bits value of 4e9 used to
    reach ``2 ** bits``: seconds of CPU and gigabytes), from disk and from memory alike."""
    import time

    ds = xray_dataset(twelve)
    setattr(ds, sequence, [_lut_item(descriptor_vr, descriptor)])
    path = save(ds, tmp_path / "lut.dcm")
    for source in (path, EncodedFile(path.read_bytes(), "image 0")):
        start = time.perf_counter()
        with pytest.raises(DataError, match=re.escape(problem)) as e:
            load_image(source)
        assert str(e.value).startswith(f"{source}: ")
        assert time.perf_counter() - start < 2.0, "refused, but only after real work"


@pytest.mark.parametrize(
    "attributes,problem",
    [
        ({"RescaleSlope": "nan"}, "invalid RescaleSlope"),
        ({"RescaleIntercept": "1e300"}, "invalid RescaleIntercept"),
        ({"WindowCenter": "inf", "WindowWidth": 100}, "invalid WindowCenter"),
        ({"WindowCenter": 2048, "WindowWidth": 0}, "invalid Window Width"),
    ],
)
def test_invalid_rescale_and_window_values_are_refused(tmp_path, twelve, attributes, problem):
    ds = xray_dataset(twelve, **attributes)
    with pytest.raises(DataError, match=re.escape(problem)):
        load_image(save(ds, tmp_path / "bad.dcm"))


def test_a_valid_modality_lut_sequence_still_reads(tmp_path, twelve):
    ds = xray_dataset(twelve)
    ds.ModalityLUTSequence = [_lut_item("US", [4096, 0, 16])]  # identity, 16-bit entries
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    x = _load(ds, tmp_path, "mlut.dcm")
    np.testing.assert_allclose(x, twelve / 65535.0, atol=1e-6)  # its output range: [0, 2**16 - 1]
