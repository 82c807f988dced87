//! Image input: 8/16-bit PNG and TIFF, DICOM (every transfer syntax we decode, windowing,
//! colour models, frames), and hostile inputs. The expected DICOM renderings in
//! tests/fixtures/dicom/*.png were made by pydicom + numpy (`make_expected.py` there) with the
//! same documented rules; they must match within 1 level (rounding of the linear function and
//! of the colour conversion), 0 for lossy JPEG with libjpeg-turbo (the `jpeg-turbo` feature), 2 without (jpeg-decoder's IDCT).

#[cfg(feature = "dicom")]
use std::path::PathBuf;

use minigpt_med::{ColorMode, Error, Image, ImageOptions, Pixels, VoiFunction, Window, WindowPreset};

#[cfg(feature = "dicom")]
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny")
}

fn dicom_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dicom")
}

fn png(pixels: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    pixels.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn encode(pixels: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    pixels.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A hostile input's result: decoded, or refused with a typed image error, never anything else
/// (and no decoder panic contained on the way).
fn assert_decoded_or_refused(r: Result<Image, Error>) -> Option<Image> {
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
    match r {
        Ok(img) => Some(img),
        Err(Error::Image { .. }) => None,
        Err(e) => panic!("expected an image or Error::Image, got {e:?}"),
    }
}

fn assert_image_err<T: std::fmt::Debug>(r: Result<T, Error>, needle: &str) {
    match r {
        Err(Error::Image { reason, .. }) => {
            assert!(reason.contains(needle), "error {reason:?} should mention {needle:?}")
        }
        other => panic!("expected Error::Image mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn png16_gray_is_windowed_on_stored_values() {
    let buf = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(4, 2, |x, y| {
        image::Luma([1000 + 1000 * (x + 4 * y) as u16])
    });
    let bytes = png(image::DynamicImage::ImageLuma16(buf));
    let img = Image::from_bytes(&bytes).unwrap();
    let Pixels::Gray16(v) = img.pixels() else { panic!("16-bit PNG must stay 16-bit, got {:?}", img.pixels()) };
    assert_eq!(v[..3], [1000, 2000, 3000]);
    // Default: min-max (1000 -> 0, 8000 -> 255).
    let Pixels::Gray8(g) = img.to_8bit().pixels().clone() else { panic!() };
    assert_eq!((g[0], g[7]), (0, 255));
    assert_eq!(g[1], (255.0f64 / 7.0).round() as u8);
    // An explicit window on the stored values.
    let w = Image::from_bytes_with(&bytes, &ImageOptions::default().with_window(Window::new(2500.0, 2.0).unwrap()))
        .unwrap();
    let Pixels::Gray8(g) = w.to_8bit().pixels().clone() else { panic!() };
    assert_eq!(g[..4], [0, 0, 255, 255]);
    assert_eq!(img.model_view(8).chw.len(), 3 * 64);
}

#[test]
fn tiff16_and_colour_formats_are_sniffed() {
    let buf = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(3, 3, |x, y| image::Luma([(x * 300 + y * 7) as u16]));
    let tiff = encode(image::DynamicImage::ImageLuma16(buf.clone()), image::ImageFormat::Tiff);
    let img = Image::from_bytes(&tiff).unwrap();
    assert_eq!(img.pixels(), &Pixels::Gray16(buf.into_raw()));

    let rgb16 =
        image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(2, 2, |x, _| image::Rgb([65535 * x as u16, 0, 32896]));
    let img = Image::from_bytes(&png(image::DynamicImage::ImageRgb16(rgb16))).unwrap();
    assert_eq!(img.pixels(), &Pixels::Rgb8(vec![0, 0, 128, 255, 0, 128, 0, 0, 128, 255, 0, 128]));

    let rgb = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 7]));
    for format in [image::ImageFormat::Bmp, image::ImageFormat::Tiff, image::ImageFormat::Png] {
        let img = Image::from_bytes(&encode(image::DynamicImage::ImageRgb8(rgb.clone()), format)).unwrap();
        assert_eq!(img.pixels(), &Pixels::Rgb8(rgb.clone().into_raw()), "{format:?}");
    }
    let jpeg = encode(image::DynamicImage::ImageRgb8(rgb), image::ImageFormat::Jpeg);
    assert_eq!(Image::from_bytes(&jpeg).unwrap().width(), 5);
}

#[test]
fn raw_buffers_are_checked() {
    assert!(Image::from_pixels(2, 2, Pixels::Gray16(vec![1, 2, 3, 4])).is_ok());
    assert!(Image::from_pixels(2, 2, Pixels::GrayF32(vec![-1000.0, 0.0, 1.0, 2.0])).is_ok());
    assert_image_err(Image::from_pixels(2, 2, Pixels::Rgb8(vec![0; 11])), "does not match");
    assert_image_err(Image::from_pixels(0, 2, Pixels::Gray8(vec![])), "zero size");
    assert_image_err(Image::from_pixels(usize::MAX, 2, Pixels::Gray8(vec![0; 4])), "side over 65535");
    assert_image_err(Image::from_pixels(3, 2, Pixels::Gray8(vec![0; 4])), "does not match");
    // Real values: the min-max default, or a window in those units; NaN renders black.
    let img = Image::from_pixels(2, 2, Pixels::GrayF32(vec![-1000.0, 0.0, f32::NAN, 1000.0])).unwrap();
    assert_eq!(img.to_8bit().pixels(), &Pixels::Gray8(vec![0, 128, 0, 255]));
    let lung = img.with_window(WindowPreset::Lung.window());
    assert_eq!(lung.to_8bit().pixels(), &Pixels::Gray8(vec![60, 230, 0, 255]));
}

#[test]
fn model_view_png_round_trips() {
    let img =
        Image::from_pixels(3, 2, Pixels::Rgb8((0..18).map(|v| v * 10).collect())).unwrap().with_color(ColorMode::Rgb);
    let view = img.model_view(16);
    let path = std::env::temp_dir().join(format!("minigpt-med-view-{}.png", std::process::id()));
    view.save_png(&path).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    std::fs::remove_file(&path).ok();
    assert_eq!(back.dimensions(), (16, 16));
    assert_eq!(back.into_raw(), view.to_hwc());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(width.to_be_bytes());
    chunk.extend(height.to_be_bytes());
    chunk.extend([8, 0, 0, 0, 0]);
    out.extend(13u32.to_be_bytes());
    out.extend(&chunk);
    out.extend(crc32(&chunk).to_be_bytes());
    // The decoder reads up to the first image data chunk before reporting the size.
    for (kind, data) in [(&b"IDAT"[..], &[0x78u8, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01][..]), (b"IEND", &[])] {
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

#[cfg(feature = "jpeg-turbo")]
/// The fixture JPEG with `segment` (marker and payload) inserted right after its SOI marker.
fn jpeg_with_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let jpeg = std::fs::read(fixtures().join("images/cxr_rsna.jpg")).unwrap();
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, marker]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend(&jpeg[2..]);
    out
}

#[cfg(feature = "jpeg-turbo")]
#[test]
fn jpeg_reads_what_pillow_reads_and_refuses_what_it_refuses() {
    let plain = Image::open(fixtures().join("images/cxr_rsna.jpg")).unwrap();
    // A malformed EXIF block and a truncated Adobe APP14 segment: metadata, ignored as by Pillow.
    let bad_exif = jpeg_with_segment(0xE1, b"Exif\0\0MM\0*\xff\xff\xff\xff garbage");
    let short_adobe = jpeg_with_segment(0xEE, b"Adob");
    for (what, bytes) in [("malformed EXIF", bad_exif), ("truncated APP14", short_adobe)] {
        let img = Image::from_bytes(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(img.model_view(64).chw, plain.model_view(64).chw, "{what}");
    }
    // A file cut short is refused (Pillow: "image file is truncated").
    let jpeg = std::fs::read(fixtures().join("images/cxr_rsna.jpg")).unwrap();
    assert_image_err(Image::from_bytes(&jpeg[..jpeg.len() / 2]), "truncated or corrupt");
    assert!(minigpt_med::image::jpeg_decoder().starts_with("libjpeg-turbo"));
    assert_eq!(minigpt_med::caught_panics(), 0);
}

#[test]
fn hostile_non_dicom_inputs_fail_cleanly() {
    assert_image_err(Image::from_bytes(&png_header(20_000, 20_000)), "pixel limit");
    // Under the pixel limit but far more than the bytes could hold: rejected before allocating.
    assert_image_err(Image::from_bytes(&png_header(9_000, 9_000)), "holds only");
    assert_image_err(Image::from_bytes(&png_header(0, 10)), "Invalid image dimensions");
    assert_image_err(Image::from_bytes(b""), "unrecognised");
    // A half-megabyte PNG of 1 x 268,435,455 pixels once made the resize allocate 448 x height.
    assert_image_err(Image::from_bytes(&png_header(1, 268_435_455)), "side over 65535");
    assert_image_err(Image::from_bytes(&png_header(268_435_455, 1)), "side over 65535");
    assert_image_err(Image::from_pixels(70_000, 1, Pixels::Gray8(vec![0; 70_000])), "side over 65535");
    // The widest accepted strip still resizes (bounded filter tables and passes).
    let strip = Image::from_pixels(65_535, 1, Pixels::Gray8((0..65_535).map(|i| (i % 251) as u8).collect())).unwrap();
    assert_eq!(strip.model_view(448).chw.len(), 3 * 448 * 448);
    let mut seed = 0x1234_5678u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as u8
    };
    let good =
        png(image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x ^ y) as u8]))));
    for _ in 0..200 {
        let random: Vec<u8> = (0..(next() as usize * 4)).map(|_| next()).collect();
        assert!(assert_decoded_or_refused(Image::from_bytes(&random)).is_none(), "random bytes decoded");
        let mut flipped = good.clone();
        for _ in 0..4 {
            let i = next() as usize * good.len() / 256;
            flipped[i] ^= next();
        }
        if let Some(img) = assert_decoded_or_refused(Image::from_bytes(&flipped)) {
            assert_eq!((img.width(), img.height()), (32, 32), "a damaged PNG may only decode as itself");
        }
        // Any cut before the 12-byte IEND chunk loses image data.
        let cut = next() as usize * (good.len() - 12) / 256;
        assert!(Image::from_bytes(&good[..cut]).is_err());
    }
    assert!(matches!(
        Image::from_bytes_with(&good, &ImageOptions::default().with_frame(1)),
        Err(Error::InvalidOption(_))
    ));
    let small = ImageOptions::default().with_max_pixels(100);
    assert_image_err(Image::from_bytes_with(&good, &small), "pixel limit");
    let both = ImageOptions::default().with_window(Window::new(0.0, 1.0).unwrap()).with_preset(WindowPreset::Bone);
    assert!(matches!(Image::from_bytes_with(&good, &both), Err(Error::InvalidOption(_))));
}

#[cfg(feature = "dicom")]
mod dicom {
    use super::*;

    fn open(name: &str, opts: &ImageOptions) -> Result<Image, Error> {
        Image::open_with(dicom_dir().join(format!("{name}.dcm")), opts)
    }

    fn bytes(name: &str) -> Vec<u8> {
        std::fs::read(dicom_dir().join(format!("{name}.dcm"))).unwrap()
    }

    /// Compares our 8-bit rendering with pydicom's; returns (max difference, differing values).
    fn compare_with(name: &str, opts: &ImageOptions, expected: &str, tolerance: u8) -> Image {
        let img = open(name, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = image::open(dicom_dir().join(expected)).unwrap();
        assert_eq!((img.width() as u32, img.height() as u32), (want.width(), want.height()), "{name}");
        let ours = img.to_8bit();
        let (got, want): (&[u8], Vec<u8>) = match ours.pixels() {
            Pixels::Gray8(v) => (v, want.to_luma8().into_raw()),
            Pixels::Rgb8(v) => (v, want.to_rgb8().into_raw()),
            other => panic!("{name}: to_8bit gave {other:?}"),
        };
        assert_eq!(got.len(), want.len(), "{name}: channels differ from the expected image");
        let max = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!("{name}: max difference {max}, {differing} of {} values differ", got.len());
        assert!(max <= tolerance, "{name}: differs from pydicom by {max} levels (tolerance {tolerance})");
        img
    }

    fn compare(name: &str, tolerance: u8) -> Image {
        compare_with(name, &ImageOptions::default(), &format!("{name}.png"), tolerance)
    }

    fn ts(img: &Image) -> &str {
        &img.dicom_info().unwrap().transfer_syntax
    }

    #[test]
    fn explicit_vr_little_endian_with_file_window() {
        let img = compare("MR_small", 1);
        assert_eq!(ts(&img), "1.2.840.10008.1.2.1");
        assert_eq!(img.window(), Some(Window::new(600.0, 1600.0).unwrap()));
        let info = img.dicom_info().unwrap();
        assert_eq!((info.frames, info.frame, info.modality.as_deref()), (1, 0, Some("MR")));
        assert!(matches!(img.pixels(), Pixels::GrayF32(_)));
        // The model sees the resized rendering.
        assert_eq!(img.model_view(448).chw.len(), 3 * 448 * 448);
    }

    #[test]
    fn ct_rescale_min_max_and_presets() {
        let img = compare("CT_small", 1);
        let info = img.dicom_info().unwrap();
        assert_eq!((info.rescale_slope, info.rescale_intercept, info.file_window), (1.0, -1024.0, None));
        let Pixels::GrayF32(v) = img.pixels() else { panic!() };
        assert!(v.iter().any(|&x| x < -500.0), "values must be Hounsfield units");
        assert!(img.window().is_none() && img.effective_window().is_some());
        compare_with("CT_small", &ImageOptions::default().with_preset(WindowPreset::Lung), "CT_small.lung.png", 1);
        compare_with(
            "CT_small",
            &ImageOptions::default().with_window("40,80".parse().unwrap()),
            "CT_small.brain.png",
            1,
        );
    }

    #[test]
    fn implicit_vr_little_endian() {
        assert_eq!(ts(&compare("MR_small_implicit", 1)), "1.2.840.10008.1.2");
        assert_eq!(ts(&compare("rtdose", 1)), "1.2.840.10008.1.2");
    }

    #[test]
    fn explicit_vr_big_endian() {
        assert_eq!(ts(&compare("MR_small_bigendian", 1)), "1.2.840.10008.1.2.2");
        // RGB, planar configuration 1.
        assert_eq!(ts(&compare("ExplVR_BigEnd", 0)), "1.2.840.10008.1.2.2");
    }

    #[test]
    fn deflated_explicit_vr_little_endian() {
        assert_eq!(ts(&compare("image_dfl", 1)), "1.2.840.10008.1.2.1.99");
    }

    #[test]
    fn rle_lossless() {
        assert_eq!(ts(&compare("MR_small_RLE", 1)), "1.2.840.10008.1.2.5");
        let two = compare("SC_rgb_rle_2frame", 0);
        assert_eq!((two.dicom_info().unwrap().frames, two.dicom_info().unwrap().frame), (2, 1));
        compare("SC_rgb_rle_16bit", 0);
    }

    #[test]
    fn jpeg_baseline_ybr() {
        assert_eq!(
            ts(&compare("SC_rgb_jpeg_dcmtk", if cfg!(feature = "jpeg-turbo") { 0 } else { 2 })),
            "1.2.840.10008.1.2.4.50"
        );
    }

    #[test]
    fn jpeg_lossless() {
        assert_eq!(ts(&compare("SC_rgb_jpeg_gdcm", 0)), "1.2.840.10008.1.2.4.70");
    }

    #[test]
    fn jpeg_extended_with_malformed_scan_fails_or_decodes_cleanly() {
        // libjpeg rejects this file's scan header; we only require no panic and a sane result.
        match open("JPEG-lossy", &ImageOptions::default()) {
            Ok(img) => {
                assert_eq!((img.width(), img.height()), (256, 1024));
                assert_eq!(ts(&img), "1.2.840.10008.1.2.4.51");
            }
            Err(e) => assert!(matches!(e, Error::Image { .. }), "{e}"),
        }
    }

    #[cfg(feature = "dicom-j2k")]
    #[test]
    fn jpeg_2000() {
        assert_eq!(ts(&compare("MR_small_jp2klossless", 1)), "1.2.840.10008.1.2.4.90");
        assert_eq!(ts(&compare("693_J2KI", 1)), "1.2.840.10008.1.2.4.91");
    }

    #[cfg(not(feature = "dicom-j2k"))]
    #[test]
    fn jpeg_2000_needs_its_feature() {
        assert_image_err(open("MR_small_jp2klossless", &ImageOptions::default()), "1.2.840.10008.1.2.4.90");
    }

    #[test]
    fn unsupported_transfer_syntax_is_named() {
        assert_image_err(open("MR_small_jpeg_ls_lossless", &ImageOptions::default()), "1.2.840.10008.1.2.4.80");
    }

    #[test]
    fn photometric_interpretations() {
        let m1 = compare("MR_small_mono1", 1);
        assert!(m1.is_inverted());
        let m2 = open("MR_small", &ImageOptions::default()).unwrap().to_8bit();
        let (Pixels::Gray8(a), Pixels::Gray8(b)) = (m1.to_8bit().pixels().clone(), m2.pixels().clone()) else {
            panic!()
        };
        assert!(a.iter().zip(&b).all(|(x, y)| *x == 255 - *y));
        compare("SC_ybr_full_422_uncompressed", 1);
        compare("SC_rgb_small_odd", 0);
        compare("palette_crop", 0);
        compare("liver_1frame", 0);
    }

    #[test]
    fn first_window_rescale_and_min_max() {
        let img = compare("MR_small_two_windows", 1);
        assert_eq!(img.window(), Some(Window::new(300.0, 400.0).unwrap()));
        let img = compare("MR_small_rescale_nowindow", 1);
        assert_eq!(img.dicom_info().unwrap().rescale_slope, 0.5);
    }

    #[test]
    fn frames_default_to_the_middle_one() {
        let img = compare("rtdose", 1);
        assert_eq!((img.dicom_info().unwrap().frames, img.dicom_info().unwrap().frame), (15, 7));
        compare_with("rtdose", &ImageOptions::default().with_frame(0), "rtdose.frame0.png", 1);
        assert!(matches!(open("rtdose", &ImageOptions::default().with_frame(15)), Err(Error::InvalidOption(_))));
        assert!(matches!(open("MR_small", &ImageOptions::default().with_frame(1)), Err(Error::InvalidOption(_))));
    }

    #[test]
    fn colour_mode_applies_to_dicom_rgb() {
        let img = open("SC_rgb_small_odd", &ImageOptions::default().with_color(ColorMode::Rgb)).unwrap();
        assert_eq!(img.color(), ColorMode::Rgb);
        let view = img.model_view(4);
        assert!(view.chw[..16] != view.chw[16..32], "RGB mode keeps distinct channels");
    }

    #[test]
    fn files_without_preamble_and_from_bytes() {
        let all = bytes("MR_small");
        let a = Image::from_bytes(&all).unwrap();
        let b = Image::from_bytes(&all[128..]).unwrap();
        assert_eq!(a.to_8bit(), b.to_8bit());
        assert_eq!(a.pixels(), open("MR_small", &ImageOptions::default()).unwrap().pixels());
    }

    #[test]
    fn truncated_and_corrupt_files_fail_cleanly() {
        assert_image_err(open("MR_truncated", &ImageOptions::default()), "");
        assert_image_err(Image::from_bytes(b"DICM"), "");
        let mut fake = vec![0u8; 128];
        fake.extend(b"DICMgarbage garbage garbage");
        assert_image_err(Image::from_bytes(&fake), "corrupt");
        assert_image_err(open("MR_small", &ImageOptions::default().with_max_pixels(1000)), "pixel limit");
    }

    /// Every fixture cut at many lengths and with random bytes flipped: errors, never panics.
    #[test]
    fn hostile_dicom_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n.max(1)
        };
        let mut names: Vec<String> = std::fs::read_dir(dicom_dir())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".dcm"))
            .collect();
        names.sort();
        for name in names {
            let all = std::fs::read(dicom_dir().join(&name)).unwrap();
            if all.len() > 64 * 1024 {
                continue;
            }
            for k in 1..12 {
                let cut = all.len() * k / 12;
                assert_decoded_or_refused(Image::from_bytes(&all[..cut]));
            }
            for _ in 0..40 {
                let mut bad = all.clone();
                for _ in 0..8 {
                    let i = 132 + next(bad.len() - 132);
                    bad[i] = next(256) as u8;
                }
                if let Some(img) = assert_decoded_or_refused(Image::from_bytes(&bad)) {
                    assert_eq!(img.model_view(16).chw.len(), 3 * 16 * 16);
                }
            }
        }
    }

    /// `file` (explicit VR little endian) with `element` inserted after its group-0008 elements.
    fn insert_after_group_8(file: &[u8], element: &[u8]) -> Vec<u8> {
        let mut pos = 132;
        let group = |pos: usize| u16::from_le_bytes([file[pos], file[pos + 1]]);
        while group(pos) <= 8 {
            let vr = &file[pos + 4..pos + 6];
            let long = [&b"OB"[..], b"OW", b"UN", b"SQ", b"UT", b"OF", b"UC", b"UR"].contains(&vr);
            let (hdr, len) = if long {
                (12, u32::from_le_bytes(file[pos + 8..pos + 12].try_into().unwrap()) as usize)
            } else {
                (8, usize::from(u16::from_le_bytes([file[pos + 6], file[pos + 7]])))
            };
            pos += hdr + len;
        }
        [&file[..pos], element, &file[pos..]].concat()
    }

    /// A private UN element of undefined length holding one item with one OB element that
    /// declares `inner_len` bytes (4 present); `implicit` writes the item's content in implicit
    /// VR, as the standard has it, else in the file's explicit VR, as dicom-rs reads it.
    fn un_sequence(inner_len: u32, implicit: bool) -> Vec<u8> {
        let mut e = vec![0x09, 0x00, 0x10, 0x10];
        e.extend(b"UN\0\0");
        e.extend(0xFFFF_FFFFu32.to_le_bytes());
        e.extend([0xFE, 0xFF, 0x00, 0xE0]);
        e.extend(0xFFFF_FFFFu32.to_le_bytes());
        e.extend([0x09, 0x00, 0x11, 0x10]);
        if !implicit {
            e.extend(b"OB\0\0");
        }
        e.extend(inner_len.to_le_bytes());
        e.extend([1, 2, 3, 4]);
        e.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        e.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        e
    }

    #[test]
    fn un_elements_of_undefined_length_are_checked_as_they_are_read() {
        let file = std::fs::read(dicom_dir().join("MR_small.dcm")).unwrap();
        let plain = Image::from_bytes(&file).unwrap();
        assert_eq!(plain.dicom_info().unwrap().transfer_syntax, "1.2.840.10008.1.2.1");
        let good = Image::from_bytes(&insert_after_group_8(&file, &un_sequence(4, false))).unwrap();
        assert_eq!(good.model_view(32).chw, plain.model_view(32).chw);
        // The length check no longer stops at such an element: a lie inside it is caught.
        let bad = insert_after_group_8(&file, &un_sequence(0x7FFF_FFF0, false));
        assert_image_err(Image::from_bytes(&bad), "declares 2147483632 bytes");
        // Implicit-VR content (which dicom-rs cannot read): a typed error, whatever the lengths.
        for inner in [4, 0x7FFF_FFF0] {
            assert_decoded_or_refused(Image::from_bytes(&insert_after_group_8(&file, &un_sequence(inner, true))));
        }
        assert_eq!(minigpt_med::caught_panics(), 0);
    }

    /// An explicit-VR little-endian element.
    fn element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut e = [group.to_le_bytes(), element.to_le_bytes()].concat();
        e.extend(vr);
        if vr == b"SQ" {
            e.extend([0, 0]);
            e.extend((value.len() as u32).to_le_bytes());
        } else {
            e.extend((value.len() as u16).to_le_bytes());
        }
        e.extend(value);
        e
    }

    fn plain_window(file: &[u8]) -> Window {
        Image::from_bytes(file).unwrap().effective_window().unwrap()
    }

    #[test]
    fn voi_and_modality_transforms_not_applied_are_named() {
        let file = std::fs::read(dicom_dir().join("MR_small.dcm")).unwrap();
        let empty_item = [0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0];
        // The file's window with its VOI LUT Function (the formulas are unit-tested in window.rs).
        let linear_view = Image::from_bytes(&file).unwrap().model_view(32).chw;
        for (text, function) in [(&b"SIGMOID "[..], VoiFunction::Sigmoid), (b"LINEAR_EXACT", VoiFunction::LinearExact)]
        {
            let img = Image::from_bytes(&insert_after_group_8(&file, &element(0x0028, 0x1056, b"CS", text))).unwrap();
            let w = img.effective_window().expect("MR_small has a window");
            assert_eq!(w.function(), function);
            assert_eq!((w.center(), w.width()), (plain_window(&file).center(), plain_window(&file).width()));
            if function == VoiFunction::Sigmoid {
                assert_ne!(img.model_view(32).chw, linear_view, "the sigmoid renders differently");
            }
        }
        let (what, extra) = ("VOI LUT Sequence (0028,3010)", element(0x0028, 0x3010, b"SQ", &empty_item));
        let bytes = insert_after_group_8(&file, &extra);
        assert_image_err(Image::from_bytes(&bytes), what);
        // With the caller's window it renders (linearly), as the same window on the plain file.
        let w = ImageOptions::default().with_window(Window::new(600.0, 1200.0).unwrap());
        let windowed = Image::from_bytes_with(&bytes, &w).unwrap();
        assert_eq!(windowed.model_view(32).chw, Image::from_bytes_with(&file, &w).unwrap().model_view(32).chw);
        let modality = insert_after_group_8(&file, &element(0x0028, 0x3000, b"SQ", &empty_item));
        assert_image_err(Image::from_bytes(&modality), "Modality LUT Sequence (0028,3000)");
        // LINEAR (the default) stays as it was.
        let linear = insert_after_group_8(&file, &element(0x0028, 0x1056, b"CS", b"LINEAR"));
        assert_eq!(
            Image::from_bytes(&linear).unwrap().model_view(32).chw,
            Image::from_bytes(&file).unwrap().model_view(32).chw
        );
        // A bare data set, without the preamble and meta group.
        let mut pos = 132;
        while file[pos..pos + 2] == [2, 0] {
            let long = [&b"OB"[..], b"OW", b"UN", b"SQ", b"UT"].contains(&&file[pos + 4..pos + 6]);
            pos += if long {
                12 + u32::from_le_bytes(file[pos + 8..pos + 12].try_into().unwrap()) as usize
            } else {
                8 + usize::from(u16::from_le_bytes([file[pos + 6], file[pos + 7]]))
            };
        }
        assert_image_err(Image::from_bytes(&file[pos..]), "without its file meta header");
        assert_eq!(minigpt_med::caught_panics(), 0);
    }

    /// Patches the value of a US element (explicit VR little endian) in a file.
    fn patch_us(file: &mut [u8], group: u16, element: u16, value: u16) {
        let mut tag = group.to_le_bytes().to_vec();
        tag.extend(element.to_le_bytes());
        tag.extend(b"US\x02\x00");
        let at = file.windows(8).position(|w| w == tag.as_slice()).expect("tag present");
        file[at + 8..at + 10].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn declared_sizes_beyond_the_data_are_rejected() {
        let mut big = bytes("MR_small");
        patch_us(&mut big, 0x0028, 0x0010, 60000); // Rows
        assert_image_err(Image::from_bytes(&big), "truncated");
        let mut zero = bytes("MR_small");
        patch_us(&mut zero, 0x0028, 0x0011, 0); // Columns
        assert_image_err(Image::from_bytes(&zero), "invalid size");
        let mut bits = bytes("MR_small");
        patch_us(&mut bits, 0x0028, 0x0100, 12); // Bits Allocated
        assert_image_err(Image::from_bytes(&bits), "Bits Allocated");
        // A JPEG codestream claiming 65535x65535 inside a 100x100 image.
        let mut jpeg = bytes("SC_rgb_jpeg_dcmtk");
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert_image_err(Image::from_bytes(&jpeg), "declares 65535x65535");
    }
}
